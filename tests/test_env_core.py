"""`TorchVectorEnv` semantics: autoreset against Gymnasium's own vector envs, time limits, seeding,
exact state restore, input checks, and the compiled step against the eager one."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from envs.classic.acrobot import AcrobotEnv
from envs.classic.cartpole import CartPoleEnv
from envs.classic.continuous_mountain_car import MountainCarContinuousEnv
from envs.classic.pendulum import PendulumEnv
from envs.core import Draw, EnvState, TorchVectorEnv

EPS32 = 2.0**-24


def _random_actions(env, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    space = env.single_action_space
    if isinstance(space, gym.spaces.Discrete):
        return torch.randint(0, int(space.n), (steps, env.num_envs), generator=g)
    lo, hi = float(space.low.min()), float(space.high.max())
    return (lo + (hi - lo) * torch.rand(steps, *env.action_space.shape, generator=g)).to(env.dtype)


def _rollout(env, actions):
    out = []
    for a in actions:
        obs, r, te, tr, info = env.step(a)
        out.append((obs.clone(), r.clone(), te.clone(), tr.clone()))
    return out


def _assert_same_rollout(a, b):
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            assert torch.equal(u, v)


# ----------------------------------------------------------------------------- autoreset
def test_next_step_autoreset_matches_gymnasium_cartpole_vector_env():
    """Same flags, rewards and observations as Gymnasium's ``CartPoleVectorEnv`` step for step.

    Reset states come from different random generators, so after each autoreset our env takes over
    Gymnasium's reset state; everything else is compared as is."""
    n, limit = 16, 30
    ref = CartPoleVectorEnv(num_envs=n, max_episode_steps=limit)
    ref.reset(seed=0)
    env = CartPoleEnv(num_envs=n, max_episode_steps=limit, dtype=torch.float64)
    env.reset(seed=0)
    env.state = torch.as_tensor(ref.state.T.copy())
    rng = np.random.default_rng(0)
    seen_term = seen_trunc = seen_reset = 0
    for _ in range(150):
        pending = env.get_state().needs_reset.numpy()
        assert (pending == ref.prev_done).all()
        a = rng.integers(0, 2, n)
        # The action of a resetting env is ignored: give those envs the other action.
        ours_a = torch.as_tensor(np.where(pending, 1 - a, a))
        r_obs, r_rew, r_term, r_trunc, _ = ref.step(a)
        obs, rew, term, trunc, info = env.step(ours_a)
        assert info == {}
        assert (term.numpy() == r_term).all() and (trunc.numpy() == r_trunc).all()
        assert (rew.numpy() == r_rew).all()
        live = ~pending
        np.testing.assert_allclose(obs.numpy()[live], r_obs[live], rtol=EPS32, atol=1e-30)
        # The reset step: the fresh state, reward 0, both flags False.
        assert torch.equal(obs[pending], env.state[pending])
        assert (obs[pending].abs() <= 0.05).all()
        assert (rew[pending] == 0).all() and not term[pending].any() and not trunc[pending].any()
        state = env.state.clone()
        state[pending] = torch.as_tensor(ref.state.T[pending])
        env.state = state
        seen_term += int(term.sum())
        seen_trunc += int(trunc.sum())
        seen_reset += int(pending.sum())
    assert seen_term > 0 and seen_trunc > 0 and seen_reset > 0


def test_same_step_autoreset_matches_gymnasium_sync_vector_env():
    n, limit = 8, 25
    ref = SyncVectorEnv(
        [lambda: gym.make("CartPole-v1", max_episode_steps=limit) for _ in range(n)],
        autoreset_mode=AutoresetMode.SAME_STEP,
    )
    ref.reset(seed=0)
    env = CartPoleEnv(num_envs=n, max_episode_steps=limit, dtype=torch.float64, autoreset_mode="same_step")
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    env.reset(seed=0)
    env.state = torch.as_tensor(np.stack([e.unwrapped.state for e in ref.envs]))
    rng = np.random.default_rng(1)
    ends = 0
    for _ in range(120):
        a = rng.integers(0, 2, n)
        r_obs, r_rew, r_term, r_trunc, r_info = ref.step(a)
        obs, rew, term, trunc, info = env.step(torch.as_tensor(a))
        assert (term.numpy() == r_term).all() and (trunc.numpy() == r_trunc).all()
        assert (rew.numpy() == r_rew).all()
        done = term | trunc
        assert info["final_obs"].shape == (n, 4) and info["_final_obs"].dtype == torch.bool
        assert torch.equal(info["_final_obs"], done)
        if done.any():
            assert (r_info["_final_obs"] == done.numpy()).all()
            for i in np.flatnonzero(done.numpy()):
                np.testing.assert_allclose(info["final_obs"][i].numpy(), r_info["final_obs"][i], rtol=EPS32)
            # Reset in the same call: the returned observation is the new episode's first.
            assert torch.equal(obs[done], env.state[done]) and (obs[done].abs() <= 0.05).all()
        live = ~done.numpy()
        np.testing.assert_allclose(obs.numpy()[live], r_obs[live], rtol=EPS32, atol=1e-30)
        env.state = torch.as_tensor(np.stack([e.unwrapped.state for e in ref.envs]))
        ends += int(done.sum())
    assert ends > 0


def test_truncation_is_per_env_and_never_terminated():
    env = PendulumEnv(num_envs=6, max_episode_steps=5)
    env.reset(seed=0)
    zero = torch.zeros(6, 1)
    env.step(zero)
    env.step(zero)
    env.reset(options={"reset_mask": torch.tensor([True, False, True, False, False, False])})
    truncs = [env.step(zero)[3].clone() for _ in range(5)]
    # Envs 1, 3, 4, 5 were 2 steps in: truncated on their 5th step; envs 0 and 2 three steps later.
    assert truncs[2].tolist() == [False, True, False, True, True, True]
    assert truncs[4].tolist() == [True, False, True, False, False, False]
    # NEXT_STEP: the step after a truncation is the reset step (flags False).
    assert not truncs[3][[1, 3, 4, 5]].any()
    env2 = PendulumEnv(num_envs=2, max_episode_steps=3, autoreset_mode="same_step")
    env2.reset(seed=0)
    out = [env2.step(torch.zeros(2, 1)) for _ in range(7)]
    assert [bool(o[3][0]) for o in out] == [False, False, True, False, False, True, False]
    assert not any(o[2].any() for o in out)


# ----------------------------------------------------------------------------- seeding
def test_same_seed_same_trajectory_different_seed_differs():
    acts = _random_actions(CartPoleEnv(num_envs=16), 60)
    runs = []
    for seed in (3, 3, 4):
        env = CartPoleEnv(num_envs=16)
        first = env.reset(seed=seed)[0].clone()
        runs.append((first, _rollout(env, acts)))
    assert torch.equal(runs[0][0], runs[1][0])
    _assert_same_rollout(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], runs[2][0])


@pytest.mark.parametrize("cls", [CartPoleEnv, AcrobotEnv])
def test_env_trajectory_does_not_depend_on_num_envs(cls):
    small, big = cls(num_envs=8, max_episode_steps=20), cls(num_envs=64, max_episode_steps=20)
    o_small, o_big = small.reset(seed=11)[0], big.reset(seed=11)[0]
    assert torch.equal(o_small[3], o_big[3])
    acts = _random_actions(big, 80, seed=5)
    for a in acts:  # several episodes: the autoreset draws must agree too
        s = small.step(a[:8])
        b = big.step(a)
        for x, y in zip(s[:4], b[:4]):
            assert torch.equal(x[3], y[3])


def test_reset_with_list_of_seeds_and_reset_mask():
    env = AcrobotEnv(num_envs=4)
    obs = env.reset(seed=[7, 7, 7, 7])[0]
    assert torch.equal(obs, AcrobotEnv(num_envs=4).reset(seed=7)[0])
    mixed = env.reset(seed=[1, 2, 3, 4])[0]
    for i, s in enumerate([1, 2, 3, 4]):
        assert torch.equal(mixed[i], AcrobotEnv(num_envs=4).reset(seed=s)[0][i])
    with pytest.raises(ValueError, match="seed: expected"):
        env.reset(seed=[1, 2])
    env.step(torch.ones(4, dtype=torch.int64))
    before = env.get_state()
    mask = torch.tensor([True, False, False, True])
    env.reset(options={"reset_mask": mask})
    after = env.get_state()
    assert torch.equal(after.vars["state"][~mask], before.vars["state"][~mask])
    assert not torch.equal(after.vars["state"][mask], before.vars["state"][mask])
    assert after.elapsed.tolist() == [0, 1, 1, 0]
    with pytest.raises(ValueError, match=r"reset_mask: expected a bool tensor of shape \(4,\)"):
        env.reset(options={"reset_mask": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="reset options"):
        env.reset(options={"low": -0.2})


@pytest.mark.cuda
def test_same_trajectory_on_cpu_and_cuda():
    acts = _random_actions(CartPoleEnv(num_envs=32), 50)
    cpu, gpu = (
        CartPoleEnv(num_envs=32, dtype=torch.float64),
        CartPoleEnv(num_envs=32, dtype=torch.float64, device="cuda"),
    )
    torch.testing.assert_close(cpu.reset(seed=2)[0], gpu.reset(seed=2)[0].cpu(), rtol=0, atol=0)
    for a in acts:
        c, g = cpu.step(a), gpu.step(a.cuda())
        torch.testing.assert_close(c[0], g[0].cpu(), rtol=1e-12, atol=1e-12)
        assert torch.equal(c[2], g[2].cpu()) and torch.equal(c[3], g[3].cpu())


# ----------------------------------------------------------------------------- state
@pytest.mark.parametrize("mode", ["next_step", "same_step"])
def test_get_set_state_continues_exactly(mode):
    env = CartPoleEnv(num_envs=32, max_episode_steps=15, autoreset_mode=mode)
    env.reset(seed=0)
    acts = _random_actions(env, 60, seed=2)
    for a in acts[:15]:
        env.step(a)
    snap = env.get_state()
    assert isinstance(snap, EnvState)
    assert mode == "same_step" or snap.needs_reset.any()  # a pending NEXT_STEP reset is in the snapshot
    first = _rollout(env, acts[15:])
    ptrs = {k: t.data_ptr() for k, t in env.get_state().tensors().items()}
    live = {k: t.data_ptr() for k, t in [("state", env.state)]}
    env.set_state(snap)
    second = _rollout(env, acts[15:])
    _assert_same_rollout(first, second)
    # In place: the env's own tensors keep their addresses.
    assert env.state.data_ptr() == live["state"]
    env.state = torch.zeros_like(env.state)
    assert env.state.data_ptr() == live["state"] and not env.state.any()
    assert set(ptrs) == set(snap.tensors())


def test_set_state_rejects_mismatches():
    env = CartPoleEnv(num_envs=4)
    snap = env.get_state()
    with pytest.raises(ValueError, match=r"vars\['state'\]: expected torch.float32 of shape \(4, 4\), got"):
        env.set_state(EnvState({"state": torch.zeros(3, 4)}, *list(snap.tensors().values())[1:]))
    with pytest.raises(ValueError, match="expected torch.float32 .* got torch.float64"):
        env.state = torch.zeros(4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="elapsed: expected torch.int64"):
        env.set_state(
            EnvState(snap.vars, snap.elapsed.int(), snap.needs_reset, snap.rng_key, snap.rng_counter)
        )
    with pytest.raises(ValueError, match="set_state: expected an EnvState"):
        env.set_state(snap.tensors())
    with pytest.raises(ValueError, match="expected vars"):
        env.set_state(EnvState({}, snap.elapsed, snap.needs_reset, snap.rng_key, snap.rng_counter))


# ----------------------------------------------------------------------------- bad input
class _BoxEnv(TorchVectorEnv):
    """A minimal Box-action env that does not clip (so out-of-bounds actions are errors)."""

    def __init__(self, num_envs=3, **kw):
        super().__init__(
            num_envs,
            single_observation_space=gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
            single_action_space=gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
            **kw,
        )

    def _sample_reset(self, draw: Draw):
        return {"state": draw.uniform(2)}

    def _transition(self, vars, action, draw):
        s = vars["state"] + action
        return {"state": s}, s.sum(-1), torch.zeros(s.shape[0], dtype=torch.bool)

    def _observe(self, vars):
        return vars["state"].clone()


def test_bad_actions_raise_value_errors_naming_expected_and_got():
    env = CartPoleEnv(num_envs=4)
    env.reset(seed=0)
    cases = [
        (torch.zeros(5, dtype=torch.int64), r"expected shape \(4,\) .* got \(5,\)"),
        (torch.zeros(4, 1, dtype=torch.int64), r"expected shape \(4,\) .* got \(4, 1\)"),
        (torch.zeros(4), r"expected an integer tensor .* got torch.float32"),
        (torch.zeros(4, dtype=torch.bool), r"expected an integer tensor .* got torch.bool"),
        (torch.tensor([0, 1, 2, 0]), r"expected integers in \[0, 2\) .* got 2 at env 2"),
        (torch.tensor([0, -1, 0, 0]), r"expected integers in \[0, 2\) .* got -1 at env 1"),
        (torch.zeros(4, dtype=torch.int64, device="meta"), r"expected a tensor on cpu, got one on meta"),
    ]
    for a, msg in cases:
        with pytest.raises(ValueError, match=msg):
            env.step(a)
    env.step(np.array([0, 1, 1, 0]))  # NumPy actions are accepted
    pend = PendulumEnv(num_envs=2)
    pend.reset(seed=0)
    with pytest.raises(ValueError, match=r"expected finite values .* got \[nan\] \(NaN/inf\) at env 1"):
        pend.step(torch.tensor([[0.0], [float("nan")]]))
    with pytest.raises(ValueError, match="expected a floating-point tensor .* got torch.int64"):
        pend.step(torch.zeros(2, 1, dtype=torch.int64))
    box = _BoxEnv()
    box.reset(seed=0)
    with pytest.raises(ValueError, match=r"expected values within the bounds .* got \[0.0, 1.5\] at env 1"):
        box.step(torch.tensor([[0.0, 0.0], [0.0, 1.5], [0.0, 0.0]]))


def test_clipping_tasks_accept_out_of_bounds_actions_and_validate_false_skips_checks():
    pend = PendulumEnv(num_envs=2, dtype=torch.float64)
    pend.reset(seed=0)
    snap = pend.get_state()
    big = pend.step(torch.tensor([[5.0], [-7.0]], dtype=torch.float64))
    pend.set_state(snap)
    clipped = pend.step(torch.tensor([[2.0], [-2.0]], dtype=torch.float64))
    assert torch.equal(big[0], clipped[0])  # same dynamics; the action cost uses the clipped torque
    mcc = MountainCarContinuousEnv(num_envs=1)
    mcc.reset(seed=0)
    mcc.step(torch.tensor([[3.0]]))
    fast = CartPoleEnv(num_envs=3, validate=False)
    fast.reset(seed=0)
    fast.step(torch.tensor([0, 5, -2]))  # no value check: out-of-range acts as "not 1"
    with pytest.raises(ValueError, match="expected shape"):  # shape checks stay on
        fast.step(torch.tensor([0, 1]))
    box = _BoxEnv(validate=False)
    box.reset(seed=0)
    box.step(torch.full((3, 2), 4.0))


# ----------------------------------------------------------------------------- compiled step
def _sync_compare(eager, compiled, steps, seed):
    acts = _random_actions(eager, steps, seed=seed)
    for a in acts:
        compiled.set_state(eager.get_state())
        e, c = eager.step(a), compiled.step(a)
        for x, y in zip(e[:2], c[:2]):
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6)
        assert torch.equal(e[2], c[2]) and torch.equal(e[3], c[3])
        assert c[0].is_contiguous() and c[2].dtype == torch.bool
        for k in e[4]:
            torch.testing.assert_close(c[4][k], e[4][k], rtol=1e-5, atol=1e-6)
        for k, t in eager.get_state().tensors().items():
            if t.is_floating_point():
                torch.testing.assert_close(compiled.get_state().tensors()[k], t, rtol=1e-5, atol=1e-6)
            else:
                assert torch.equal(compiled.get_state().tensors()[k], t), k


def test_compiled_step_matches_eager_and_sees_attribute_changes():
    kw = dict(num_envs=64, max_episode_steps=12)
    eager, compiled = CartPoleEnv(**kw), CartPoleEnv(compile=True, **kw)
    eager.reset(seed=0)
    compiled.reset(seed=0)
    ptr = compiled.state.data_ptr()
    _sync_compare(eager, compiled, 40, seed=1)
    assert compiled.compile_seconds > 0 and compiled.state.data_ptr() == ptr
    assert compiled._compiled_step._direct  # the verified direct call is what ran
    # Outputs are fresh tensors: the next step does not overwrite them.
    obs = compiled.step(torch.zeros(64, dtype=torch.int64))[0]
    kept = obs.clone()
    compiled.step(torch.ones(64, dtype=torch.int64))
    assert torch.equal(obs, kept)
    # An attribute assigned after the first compiled step is honoured (re-traced through dynamo).
    eager.max_episode_steps = compiled.max_episode_steps = 3
    _sync_compare(eager, compiled, 10, seed=2)
    compiled.reset(seed=0)
    assert [bool(compiled.step(torch.zeros(64, dtype=torch.int64))[3].all()) for _ in range(3)][-1]


def test_compiled_same_step_float64_box_actions_match_eager():
    kw = dict(num_envs=16, max_episode_steps=7, dtype=torch.float64, autoreset_mode="same_step")
    eager, compiled = PendulumEnv(**kw), PendulumEnv(compile=True, **kw)
    eager.reset(seed=4)
    compiled.reset(seed=4)
    _sync_compare(eager, compiled, 20, seed=3)
