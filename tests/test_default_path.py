"""The default env path (``compile="auto"``): when it compiles, that its errors still surface (at the
sync point), that its streams are those of the eager and the explicitly compiled paths, and that a
failed automatic compile falls back to the eager step."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import envs
import envs.compiled_step
from envs import rng
from envs.compiled_step import AUTO_COMPILE_MIN_ENVS_CPU, resolve_compile

N = 24  # small: the tests lower the CPU threshold of compile="auto" to this size
FOUR_ROOMS = dict(slip_prob=1.0 / 3.0, max_episode_steps=7)  # slips and frequent time limits


def test_resolve_compile_as_documented():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_compile("auto", cpu, AUTO_COMPILE_MIN_ENVS_CPU) is True
    assert resolve_compile("auto", cpu, AUTO_COMPILE_MIN_ENVS_CPU - 1) is False
    assert resolve_compile("auto", cuda, 1) is True
    assert resolve_compile(False, cuda, 10**6) is False
    assert resolve_compile(True, cpu, 1) is True
    with pytest.raises(ValueError, match="compile: expected True, False or 'auto', got 'yes'"):
        resolve_compile("yes", cpu, 8)


def test_make_defaults_to_auto():
    small = envs.make("hrl_nested/CartPole-v1", 64)
    assert small.compiled is False and small._compiled_step is None
    big = envs.make("hrl_nested/CartPole-v1", AUTO_COMPILE_MIN_ENVS_CPU)  # made, not stepped: no compile
    assert big.compiled is True and big._compiled_step.auto is True
    assert envs.make("hrl_nested/CartPole-v1", AUTO_COMPILE_MIN_ENVS_CPU, compile=False).compiled is False
    with pytest.raises(ValueError, match="compile"):
        envs.make("hrl_nested/CartPole-v1", 8, compile="sometimes")


@pytest.fixture(scope="module")
def default_env():
    """A FourRooms env made with default options, compiled by compile="auto" (threshold lowered)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(envs.compiled_step, "AUTO_COMPILE_MIN_ENVS_CPU", N)
    mp.setattr(envs.compiled_step, "_notice_given", False)
    try:
        env = envs.make("hrl_nested/FourRooms-v0", N, **FOUR_ROOMS)
        assert env.compiled and env._compiled_step.auto
        env.reset(seed=3)
        env.step(torch.zeros(N, dtype=torch.int64))  # compiles
        assert env._compiled_step.failed is None, env._compiled_step.failed
        yield env
    finally:
        mp.undo()


def _rollout(env, seed: int, steps: int) -> list[np.ndarray]:
    """Every number the env returns over ``steps`` steps of a fixed action sequence, as arrays."""
    obs, _ = env.reset(seed=seed)
    g = torch.Generator().manual_seed(seed)
    out = [np.concatenate([v.numpy() for v in obs.values()], 1)]
    for _ in range(steps):
        a = torch.randint(0, 4, (env.num_envs,), generator=g)
        obs, r, term, trunc, _ = env.step(a)
        out += [np.concatenate([v.numpy() for v in obs.values()], 1), r.numpy(), term.numpy(), trunc.numpy()]
    return out


def test_default_path_invalid_action_raises_at_the_sync_point(default_env):
    env = default_env
    env.reset(seed=0)
    bad = torch.zeros(N, dtype=torch.int64)
    bad[5] = 7  # FourRooms has 4 actions
    env.step(bad)  # compiled: recorded on the device, no host sync here
    with pytest.raises(ValueError, match=r"envs \[5\] got 7"):
        env.raise_pending()
    env.raise_pending()  # the record was cleared
    env.step(bad)
    with pytest.raises(ValueError):
        env.reset(seed=0)  # reset is a sync point too
    env.step(bad)
    with pytest.raises(ValueError):
        env.get_state()
    # Shape errors are not deferred.
    with pytest.raises(ValueError):
        env.step(torch.zeros(N + 1, dtype=torch.int64))


def test_default_eager_and_compiled_streams_identical(default_env):
    """FourRooms is integer state with slip and reset draws: every path must give the same numbers."""
    eager = envs.make("hrl_nested/FourRooms-v0", N, compile=False, **FOUR_ROOMS)
    compiled = envs.make("hrl_nested/FourRooms-v0", N, compile=True, **FOUR_ROOMS)
    ref = _rollout(eager, 11, 40)
    for env in (default_env, compiled):
        got = _rollout(env, 11, 40)
        assert len(got) == len(ref)
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(a, b)
    # The check is not vacuous: episodes ended (time limit 7), and slips happened (different seeds differ).
    assert any(t.any() for t in ref[4::4])
    assert not all(np.array_equal(a, b) for a, b in zip(_rollout(eager, 12, 40), ref))


def test_compiled_philox_words_match_numpy():
    """The compiled CPU Philox (word-wise form) gives the NumPy path's bits, for 1 and several blocks."""
    n = 257
    g = torch.Generator().manual_seed(0)
    key = torch.cat(
        (torch.randint(0, 2**32, (n, 3), generator=g), torch.randint(0, 2**8, (n, 1), generator=g)), 1
    )
    counter = torch.randint(0, 2**32, (n, 2), generator=g)

    def draws(key, counter):
        return [rng.random_bits(key, counter, 1, 5, w) for w in (1, 4, 6)]

    got = torch.compile(draws, dynamic=False)(key, counter)
    for w, b in zip((1, 4, 6), got):
        np.testing.assert_array_equal(b.numpy(), rng.random_bits(key, counter, 1, 5, w).numpy())
    # And against Random123's known-answer vector (all-zero counter and key), compiled.
    z = torch.zeros(1, 4, dtype=torch.int64)
    words = torch.compile(lambda z: rng._bits_words(z, z[:, :2], 0), dynamic=False)(z)
    assert [f"{w:08x}" for w in words[0].tolist()] == ["6627e8d5", "e169c58d", "bc57ac4c", "9b00dbd8"]


def test_failed_auto_compile_falls_back_to_eager(monkeypatch, caplog):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(envs.compiled_step, "AUTO_COMPILE_MIN_ENVS_CPU", 8)
    monkeypatch.setattr(envs.compiled_step, "inductor_backend", broken_backend)
    monkeypatch.setattr(envs.compiled_step, "_notice_given", False)
    env = envs.make("hrl_nested/CartPole-v1", 8, dtype=torch.float64)
    eager = envs.make("hrl_nested/CartPole-v1", 8, dtype=torch.float64, compile=False)
    with caplog.at_level(logging.WARNING, logger="envs"):
        o1, _ = env.reset(seed=1)
        o2, _ = eager.reset(seed=1)
        for _ in range(30):
            a = torch.tensor([0, 1] * 4)
            o1, r1, t1, u1, _ = env.step(a)
            o2, r2, t2, u2, _ = eager.step(a)
            assert torch.equal(o1, o2) and torch.equal(r1, r2) and torch.equal(t1, t2) and torch.equal(u1, u2)
    assert isinstance(env._compiled_step.failed, Exception)
    messages = [rec.getMessage() for rec in caplog.records if rec.name == "envs"]
    assert any("is compiling the CartPoleEnv step" in m for m in messages)  # the one-line notice
    assert any("could not compile" in m and "no C++ compiler here" in m for m in messages)
    # Still the deferred-check path: an invalid action surfaces at the sync point.
    env.step(torch.tensor([0, 1, 2, 0, 1, 0, 1, 0]))
    with pytest.raises(ValueError):
        env.raise_pending()


def test_compiled_env_step_inside_a_callers_compile():
    """A compiled FourRooms step traced into a caller's graph whose float selects read its flags (what
    ``make_rollout(compile_step=True)`` does) compiles on CPU (torch 2.13 failed with ``Vectorized<bool>``
    has no ``cast``) and returns the eager step's numbers."""
    opts = dict(autoreset_mode="same_step", validate=False, **FOUR_ROOMS)
    compiled = envs.make("hrl_nested/FourRooms-v0", 8, compile=True, **opts)
    eager = envs.make("hrl_nested/FourRooms-v0", 8, compile=False, **opts)

    def step(env, a):
        obs, r, term, trunc, info = env.step(a)
        done = term | trunc
        kept = torch.where(done.unsqueeze(1), info["final_obs"]["observation"], obs["observation"])
        return kept, torch.where(term, r + 1.0, r), done.float()

    fn = torch.compile(step, dynamic=False)
    compiled.reset(seed=5)
    eager.reset(seed=5)
    g = torch.Generator().manual_seed(5)
    ended = 0.0
    for _ in range(20):
        a = torch.randint(0, 4, (8,), generator=g)
        got, want = fn(compiled, a), step(eager, a)
        for x, y in zip(got, want):
            assert torch.equal(x, y)
        ended += float(want[2].sum())
    assert ended > 0  # the selects saw episode ends (time limit 7)
