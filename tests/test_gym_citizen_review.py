"""Issue 13 item 5, reviewed: ``np_random_seed`` after ``reset(seed=...)`` on every torch vector env of
ours, the wrapped Gymnasium ids (`GymnasiumVectorAdapter`) included, as Gymnasium's ``VectorEnv.reset``
sets it; reference: Gymnasium's own ``seeding.np_random``."""

import gymnasium as gym
import pytest

import envs


@pytest.mark.parametrize("env_id", ["CartPole-v1", "hrl_nested/CartPole-v1"])
def test_np_random_seed_after_reset_seed(env_id):
    env = envs.make(env_id, 3)
    env.reset(seed=42)
    assert env.np_random_seed == 42
    ref, _ = gym.utils.seeding.np_random(42)
    assert env.np_random.random() == ref.random()
    env.reset()  # no seed: kept
    assert env.np_random_seed == 42
    env.reset(seed=[1, 2, 3])  # per-env seeds: not one int seed, Gymnasium's -1
    assert env.np_random_seed == -1
