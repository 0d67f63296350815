"""Gymnasium's classic-control tasks as batched torch environments."""

from envs.classic.cartpole import CartPoleEnv

__all__ = ["CartPoleEnv"]
