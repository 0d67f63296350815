"""The five ``hrl_nested/`` classic-control ids: ``gymnasium.make_vec``, ``envs.make``, spaces, limits."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs
from envs.classic import AcrobotEnv, CartPoleEnv, MountainCarContinuousEnv, MountainCarEnv, PendulumEnv
from envs.core import TorchVectorEnv

# id -> (class, Gymnasium's max_episode_steps, observation size)
IDS = {
    "CartPole-v1": (CartPoleEnv, 500, 4),
    "MountainCar-v0": (MountainCarEnv, 200, 2),
    "MountainCarContinuous-v0": (MountainCarContinuousEnv, 999, 2),
    "Acrobot-v1": (AcrobotEnv, 500, 6),
    "Pendulum-v1": (PendulumEnv, 200, 3),
}


def _actions(env):
    a = torch.as_tensor(env.action_space.sample())
    return a.to(env.dtype) if a.is_floating_point() else a


@pytest.mark.parametrize("name", list(IDS))
def test_make_vec_builds_our_env_with_gymnasiums_limits(name):
    cls, limit, dim = IDS[name]
    env = gym.make_vec(f"hrl_nested/{name}", num_envs=5)
    assert type(env) is cls and isinstance(env, TorchVectorEnv)
    assert env.num_envs == 5 and env.max_episode_steps == limit == gym.spec(name).max_episode_steps
    assert env.single_observation_space == gym.make(name).observation_space  # same bounds and float32
    assert env.single_action_space == gym.make(name).action_space
    assert env.observation_space.shape == (5, dim)
    obs, info = env.reset(seed=0)
    assert obs.shape == (5, dim) and obs.dtype == torch.float32 and info == {}
    obs, rew, term, trunc, info = env.step(_actions(env))
    assert rew.shape == (5,) and term.dtype == trunc.dtype == torch.bool
    assert env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    assert envs.check_vector_env(env, num_steps=16) == []


@pytest.mark.parametrize("name", list(IDS))
def test_envs_make_passes_options_and_float64_spaces(name):
    env = envs.make(f"hrl_nested/{name}", num_envs=3, device="cpu", dtype=torch.float64, max_episode_steps=4)
    assert env.max_episode_steps == 4 and env.device == torch.device("cpu")
    for space in (env.single_observation_space, env.observation_space):
        assert space.dtype == np.float64
    if isinstance(env.single_action_space, gym.spaces.Box):
        assert env.single_action_space.dtype == np.float64
    obs, _ = env.reset(seed=1)
    assert obs.dtype == torch.float64 and env.state.dtype == torch.float64
    truncs = [env.step(_actions(env))[3] for _ in range(4)]
    assert truncs[-1].all() and not any(t.any() for t in truncs[:-1])
    same = envs.make(f"hrl_nested/{name}", num_envs=3, autoreset_mode="same_step")
    assert same.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP


def test_task_options_pass_through_make():
    assert envs.make("hrl_nested/Pendulum-v1", num_envs=2, g=9.81).g == 9.81
    assert envs.make("hrl_nested/MountainCar-v0", num_envs=2, goal_velocity=0.02).goal_velocity == 0.02
    assert envs.make("hrl_nested/MountainCarContinuous-v0", goal_velocity=0.1).goal_velocity == 0.1
    assert envs.make("hrl_nested/Acrobot-v1", book_or_nips="nips").book_or_nips == "nips"
    with pytest.raises(ValueError, match="book_or_nips: expected 'book' or 'nips', got 'paper'"):
        envs.make("hrl_nested/Acrobot-v1", book_or_nips="paper")
    with pytest.raises(ValueError, match="dtype: expected torch.float32 or torch.float64"):
        envs.make("hrl_nested/Pendulum-v1", dtype=torch.float16)
