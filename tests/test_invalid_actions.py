"""Invalid actions: one rule for every env, and the smaller input checks of `TorchVectorEnv`.

- ``validate=False``: an invalid action is replaced by the nearest valid one before the transition,
  the same way in every env (Discrete: clamped into ``[start, start + n - 1]``; Box: ``NaN`` -> the
  env's ``neutral_action``, out of bounds -> clamped). The reference for "the same step" is the
  env's own step with the sanitised action, whose dynamics the Gymnasium parity tests check.
- ``validate=True``: raises at once on eager CPU (nothing changes); on CUDA or a compiled step the
  action is sanitised and recorded on the device, and the error comes at the next ``reset``,
  ``get_state`` or ``raise_pending``.
- Results never depend on ``validate`` for an action it accepts.
"""

from __future__ import annotations

from collections.abc import Mapping

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs
from envs.classic.cartpole import CartPoleEnv
from envs.classic.pendulum import PendulumEnv

DISCRETE = ["CartPole-v1", "MountainCar-v0", "Acrobot-v1", "FourRooms-v0"]
BOX = ["MountainCarContinuous-v0", "Pendulum-v1", "PointMaze-U-v0"]
ALL = DISCRETE + BOX
NEUTRAL = {  # the documented "do nothing" action of each task
    "CartPole-v1": None,  # every action pushes
    "MountainCar-v0": 1,
    "Acrobot-v1": 1,
    "FourRooms-v0": None,  # every action moves
    "MountainCarContinuous-v0": 0.0,
    "Pendulum-v1": 0.0,
    "PointMaze-U-v0": 0.0,
}


def _make(env_id, n=4, **kw):
    env = envs.make(f"hrl_nested/{env_id}", n, **kw)
    env.reset(seed=11)
    for _ in range(3):  # away from the reset state, so that actions matter
        env.step(_valid(env))
    return env


def _valid(env, seed=0):
    space = env.single_action_space
    g = torch.Generator().manual_seed(seed)
    if isinstance(space, gym.spaces.Discrete):
        return int(space.start) + torch.randint(0, int(space.n), (env.num_envs,), generator=g)
    low, high = (torch.as_tensor(b, dtype=env.dtype) for b in (space.low, space.high))
    return low + (high - low) * torch.rand(env.action_space.shape, generator=g, dtype=env.dtype)


def _flat(out):
    """Every tensor of a step's output (obs, reward, flags, info), in a fixed order."""
    leaves = []
    for x in out:
        if isinstance(x, Mapping):
            leaves += [t for k in sorted(x) for t in _flat([x[k]])]
        elif isinstance(x, torch.Tensor):
            leaves.append(x)
    return leaves


def _same_step(env, bad, good):
    """``env.step(bad)`` and ``env.step(good)`` from the same state give identical results."""
    snap = env.get_state()
    got = _flat(env.step(bad))
    got_state = env.get_state().tensors()
    env.set_state(snap)
    want = _flat(env.step(good))
    want_state = env.get_state().tensors()
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    for k, w in want_state.items():
        assert torch.equal(got_state[k], w), k
    return got


# ----------------------------------------------------------------------------- validate=False
@pytest.mark.parametrize("env_id", DISCRETE)
def test_out_of_range_discrete_actions_are_clamped(env_id):
    env = _make(env_id, validate=False)
    n = int(env.single_action_space.n)
    bad = torch.tensor([n + 5, -3, n, 100])  # Acrobot 7, MountainCar 100: the cases
    good = torch.tensor([n - 1, 0, n - 1, n - 1])
    _same_step(env, bad, good)


@pytest.mark.parametrize("env_id", BOX)
def test_nan_box_actions_are_the_neutral_action_and_do_not_poison(env_id):
    env = _make(env_id, validate=False)
    assert type(env).neutral_action == NEUTRAL[env_id]
    good = _valid(env, seed=1)
    bad = good.clone()
    bad[1] = float("nan")
    bad[3, 0] = float("nan")  # one coordinate only (PointMaze: the other one still acts)
    good[1] = NEUTRAL[env_id]
    good[3, 0] = NEUTRAL[env_id]
    _same_step(env, bad, good)
    for t in range(5):
        obs = env.step(_valid(env, seed=2 + t))[0]
        assert all(torch.isfinite(x).all() for x in _flat([obs]))


@pytest.mark.parametrize("env_id", BOX)
def test_infinite_box_actions_are_clamped_to_the_bounds(env_id):
    env = _make(env_id, validate=False)
    space = env.single_action_space
    good = _valid(env, seed=1)
    bad = good.clone()
    bad[0], bad[2] = float("inf"), -float("inf")
    good[0] = torch.as_tensor(space.high, dtype=env.dtype)
    good[2] = torch.as_tensor(space.low, dtype=env.dtype)
    out = _same_step(env, bad, good)
    assert torch.isfinite(out[1]).all()  # the reward, too (MountainCarContinuous charges the action)


def test_out_of_bounds_box_actions_of_a_task_that_does_not_clip_are_clamped():
    env = _make("PointMaze-U-v0", validate=False)
    _same_step(
        env,
        torch.tensor([[5.0, 0.2], [-3.0, -7.0], [0.5, 1.5], [0.0, 0.0]]),
        torch.tensor([[1.0, 0.2], [-1.0, -1.0], [0.5, 1.0], [0.0, 0.0]]),
    )


@pytest.mark.parametrize("env_id", ALL)
def test_results_do_not_depend_on_validate_for_accepted_actions(env_id):
    strict, loose = _make(env_id, validate=True), _make(env_id, validate=False)
    for t in range(5):
        a = _valid(strict, seed=t)
        if getattr(strict, "clip_actions", False):  # Gymnasium clips these tasks' actions itself
            a = a * 3.0
        for x, y in zip(_flat(strict.step(a)), _flat(loose.step(a))):
            assert torch.equal(x, y)


# ----------------------------------------------------------------------------- validate=True
@pytest.mark.parametrize("env_id", ALL)
def test_invalid_actions_raise_at_once_on_eager_cpu_and_change_nothing(env_id):
    env = _make(env_id, validate=True)
    space = env.single_action_space
    bad = _valid(env)
    if isinstance(space, gym.spaces.Discrete):
        bad[2] = int(space.n) + 4
        match = rf"expected integers in \[0, {int(space.n)}\) .* got {int(space.n) + 4} at env 2"
    else:
        bad[2] = float("nan")
        match = r"expected finite values .* at env 2"
    snap = env.get_state()
    with pytest.raises(ValueError, match=match):
        env.step(bad)
    for k, t in snap.tensors().items():
        assert torch.equal(env.get_state().tensors()[k], t), k
    env.raise_pending()  # nothing is pending: the error was raised at once


def _emulate_cuda(env):
    """Make an eager CPU env defer its checks as it does on CUDA (where nothing may sync)."""
    env._defer_checks = True
    return env


@pytest.mark.parametrize("env_id", ["Acrobot-v1", "Pendulum-v1", "PointMaze-U-v0"])
def test_deferred_checks_record_on_device_and_raise_at_the_next_sync_point(env_id):
    env = _emulate_cuda(_make(env_id, validate=True))
    ref = _make(env_id, validate=False)
    space = env.single_action_space
    bad = _valid(env)
    if isinstance(space, gym.spaces.Discrete):
        bad[1], bad[3] = 7, -2
        shown = ["7", "-2"]
    else:
        bad[1] = float("nan")
        bad[3] = 9.0 if not env.clip_actions else float("inf")
        shown = ["nan", "9.0" if not env.clip_actions else "inf"]
    # The step goes on, sanitised exactly as with validate=False: no env is poisoned.
    for x, y in zip(_flat(env.step(bad)), _flat(ref.step(bad))):
        assert torch.equal(x, y)
    env.step(_valid(env))  # a valid step in between keeps what was recorded
    with pytest.raises(ValueError, match=r"envs \[1, 3\]") as err:
        env.raise_pending()
    assert all(s in str(err.value) for s in shown), str(err.value)
    env.raise_pending()  # raising clears the record
    for sync in (env.get_state, lambda: env.reset(seed=0)):
        env.step(bad)
        with pytest.raises(ValueError, match=r"envs \[1, 3\]"):
            sync()
        sync()  # cleared: works now


@pytest.fixture(scope="module")
def compiled_cartpole():
    """One compiled CartPole (validate=True) shared by the tests below: each compile takes seconds."""
    env = CartPoleEnv(num_envs=4, compile=True, validate=True)
    env.reset(seed=0)
    env.step(torch.tensor([0, 1, 0, 1]))
    return env


def test_a_compiled_step_defers_invalid_actions_to_reset_get_state_and_raise_pending(compiled_cartpole):
    env = compiled_cartpole
    ref = CartPoleEnv(num_envs=4, validate=False)
    ref.set_state(env.get_state())
    seconds = env.compile_seconds
    bad = torch.tensor([0, 5, 1, -3])
    # No raise; clamped like validate=False (compiled: equal up to the low bits).
    for x, y in zip(_flat(env.step(bad)), _flat(ref.step(bad))):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"envs \[1, 3\].*got 5, -3.*\[0, 2\)"):
        env.raise_pending()
    env.raise_pending()
    env.step(torch.tensor([0, 1, 1, 0]))
    env.raise_pending()  # valid actions record nothing
    env.step(bad)
    with pytest.raises(ValueError, match=r"envs \[1, 3\]"):
        env.get_state()
    env.step(bad)
    with pytest.raises(ValueError, match=r"envs \[1, 3\]"):
        env.reset(seed=0)
    env.reset(seed=0)
    assert env.compile_seconds == seconds  # all of it ran in the one compiled kernel


def test_assigning_state_on_a_compiled_env_copies_in_place_without_a_retrace(compiled_cartpole):
    env = compiled_cartpole
    env.reset(seed=1)
    eager = CartPoleEnv(num_envs=4, validate=True)
    eager.reset(seed=1)
    seconds, graphs, ptr = env.compile_seconds, len(env._compiled_step._direct), env.state.data_ptr()
    assert graphs == 1  # the verified direct call of the one compiled graph
    for t in range(3):
        new = torch.randn(4, 4, generator=torch.Generator().manual_seed(t)) * 0.05
        env.state = new
        eager.state = new
        a = torch.tensor([t % 2, 1, 0, 1])
        for x, y in zip(_flat(env.step(a)), _flat(eager.step(a))):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
    assert env.state.data_ptr() == ptr
    assert env.compile_seconds == seconds and len(env._compiled_step._direct) == graphs


# ----------------------------------------------------------------------------- dtype and seed checks
def test_box_actions_of_another_dtype_raise_with_validate_and_are_cast_without():
    for dtype, other in [
        (torch.float32, torch.float16),
        (torch.float32, torch.bfloat16),
        (torch.float32, torch.float64),
        (torch.float64, torch.float32),
    ]:
        env = PendulumEnv(num_envs=2, dtype=dtype)
        env.reset(seed=0)
        with pytest.raises(ValueError, match=rf"expected {dtype} .* got {other}"):
            env.step(torch.zeros(2, 1, dtype=other))
        loose = PendulumEnv(num_envs=2, dtype=dtype, validate=False)
        loose.reset(seed=0)
        a = torch.tensor([[0.3], [-1.7]], dtype=other)
        _same_step(loose, a, a.to(dtype))


@pytest.mark.parametrize("seed", [True, False, 1.5, "3", np.float64(2.0), [0, 1.5, 2], [True, 1, 2]])
def test_bad_seeds_raise_value_errors_naming_expected_and_got(seed):
    env = CartPoleEnv(num_envs=3)
    with pytest.raises(ValueError, match=r"seed: expected .* got"):
        env.reset(seed=seed)
