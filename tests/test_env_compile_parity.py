"""Compiled and eager steps agree: every registered task, 100 free-running steps, within 1e-5.

``compile=True`` fuses the step into one inductor kernel whose math functions (vectorized ``sin``,
``cos``, ``remainder``) and operation order are not ATen's eager ones: the low bits of a step can
differ. The two paths compute the same dynamics, so from the same seed and actions their
trajectories agree to rounding. This runs both for 100 steps of random actions (with resets), with
no re-synchronisation between them, in float64 so that the check is about the dynamics rather than
about how fast a task amplifies rounding: in float32 a one-ulp difference per step grows, on
Pendulum, to about 1e-4 after 100 steps (``tests/test_env_core.py`` compares float32 steps from a
shared state instead). Terminated and truncated must be identical.

Each case compiles one kernel (seconds on CPU; inductor's on-disk cache makes reruns faster).
"""

from __future__ import annotations

from collections.abc import Mapping

import gymnasium as gym
import pytest
import torch

import envs

IDS = [
    "hrl_nested/CartPole-v1",
    "hrl_nested/MountainCar-v0",
    "hrl_nested/MountainCarContinuous-v0",
    "hrl_nested/Acrobot-v1",
    "hrl_nested/Pendulum-v1",
    "hrl_nested/FourRooms-v0",
    "hrl_nested/PointMaze-U-v0",
]
STEPS, N, TOL = 100, 4, 1e-5


def _actions(env, steps: int, seed: int) -> torch.Tensor:
    """``steps`` batches of uniformly random in-space actions."""
    g = torch.Generator().manual_seed(seed)
    space = env.single_action_space
    if isinstance(space, gym.spaces.Discrete):
        return int(space.start) + torch.randint(0, int(space.n), (steps, env.num_envs), generator=g)
    low = torch.as_tensor(space.low, dtype=env.dtype)
    high = torch.as_tensor(space.high, dtype=env.dtype)
    u = torch.rand(steps, *env.action_space.shape, generator=g, dtype=env.dtype)
    return low + (high - low) * u


def _leaves(obs):
    return [obs[k] for k in sorted(obs)] if isinstance(obs, Mapping) else [obs]


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(got, want, rtol=TOL, atol=TOL, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("env_id", IDS)
def test_compiled_and_eager_steps_agree_for_100_steps(env_id):
    kw = dict(num_envs=N, dtype=torch.float64, autoreset_mode="same_step", validate=False)
    eager = envs.make(env_id, compile=False, **kw)
    compiled = envs.make(env_id, compile=True, **kw)
    eager.reset(seed=3)
    compiled.reset(seed=3)
    for t, a in enumerate(_actions(eager, STEPS, seed=7)):
        e_obs, e_rew, e_term, e_trunc, e_info = eager.step(a)
        c_obs, c_rew, c_term, c_trunc, c_info = compiled.step(a)
        where = f"{env_id}, step {t}"
        for x, y in zip(_leaves(e_obs), _leaves(c_obs)):
            _close(y, x, f"{where}: obs")
        _close(c_rew, e_rew, f"{where}: reward")
        assert torch.equal(c_term, e_term) and torch.equal(c_trunc, e_trunc), where
        assert torch.equal(c_info["_final_obs"], e_info["_final_obs"]), where
        for x, y in zip(_leaves(e_info["final_obs"]), _leaves(c_info["final_obs"])):
            _close(y, x, f"{where}: final_obs")
    assert compiled.compile_seconds > 0  # the compiled kernel is what ran
    got = compiled.get_state().tensors()
    for k, t in eager.get_state().tensors().items():
        if t.is_floating_point():
            _close(got[k], t, f"{env_id}: state {k}")
        else:
            assert torch.equal(got[k], t), k
