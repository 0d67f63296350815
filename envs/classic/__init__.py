"""Gymnasium's classic-control tasks as batched torch environments."""

from envs.classic.acrobot import AcrobotEnv
from envs.classic.cartpole import CartPoleEnv
from envs.classic.continuous_mountain_car import MountainCarContinuousEnv
from envs.classic.mountain_car import MountainCarEnv
from envs.classic.pendulum import PendulumEnv

__all__ = ["AcrobotEnv", "CartPoleEnv", "MountainCarContinuousEnv", "MountainCarEnv", "PendulumEnv"]
