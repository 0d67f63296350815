"""Wiring tests for the PPO loop: which values, rewards and masks reach GAE and the losses.

The pieces (`hrl_nested.returns.gae`, `hrl_nested.losses`) are tested on their own elsewhere; these
tests check how a training loop *connects* them, against slow per-step references on a tiny batch.
Two plausible bugs pass every piece test and still solve CartPole: bootstrapping GAE with ``V(o_t)``
instead of ``V(next_obs)``, and normalizing advantages without centering them.

Reusable for every algorithm loop (flat PPO today, nested HRL's manager and subpolicies tomorrow):

- `record_calls` wraps a module-level function (``gae``, a loss) and records each call's bound
  arguments and result;
- `RecordingCollector` / `record_rollouts` keep a copy of every rollout `Batch`;
- `assert_gae_wiring(call, batch, value_fn, gamma=, lam=)` checks one recorded GAE call against a
  per-step Python-loop reference built from the batch alone (plus ``value_fn`` at episode cuts);
- `assert_minibatches_cover(minibatches, flat, num_minibatches)` checks that every epoch's
  minibatches are a permutation of the flattened batch rows the loss should see.

A nested-HRL test would run one outer iteration with `record_calls(monkeypatch, module, "gae")` and
call `assert_gae_wiring` once per GAE call (manager: its own batch, extrinsic rewards; subpolicies:
``rewards=`` the shaped rewards ``r_ext * beta + r_in``, ``truncated=`` the mask that also cuts at
segment ends, ``values=`` the critic that GAE used), then `assert_minibatches_cover` on what reached
the inner loss.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from gymnasium import spaces

import envs
import hrl_nested.algos.ppo as ppo
from hrl_nested.algos import Task
from hrl_nested.batch import Batch, tree_map
from hrl_nested.networks import ActorCritic

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread


# ------------------------------------------------------------------------------ recording helpers
@dataclasses.dataclass
class Call:
    """One recorded call: ``args`` by parameter name (defaults applied) and the ``result``."""

    args: dict[str, Any]
    result: Any


def _clone(x: Any) -> Any:
    return tree_map(lambda t: t.detach().clone(), x) if x is not None else None


def record_calls(monkeypatch, module, name: str, on_call: Callable[[Call], None] | None = None) -> list[Call]:
    """Replace ``module.<name>`` by a wrapper that records every call; returns the (growing) list.

    Tensors are cloned, so buffers reused by the caller cannot rewrite the record. ``on_call`` runs
    right after each recorded call (e.g. to snapshot a model while it is still unchanged).
    """
    real = getattr(module, name)
    signature = inspect.signature(real)
    calls: list[Call] = []

    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        recorded = {
            k: v if isinstance(v, torch.nn.Module) else _clone_any(v) for k, v in bound.arguments.items()
        }
        calls.append(Call(recorded, _clone_any(result)))
        if on_call is not None:
            on_call(calls[-1])
        return result

    monkeypatch.setattr(module, name, wrapper)
    return calls


def _clone_any(x: Any) -> Any:
    """Clone the tensors of a pytree; leave anything else (floats, configs) as it is."""
    if isinstance(x, torch.Tensor | dict | list | tuple) or dataclasses.is_dataclass(x):
        try:
            return _clone(x)
        except TypeError:
            return x
    return x


class RecordingCollector:
    """Wraps a rollout collector; keeps a copy of each returned ``batch`` (everything else delegated)."""

    def __init__(self, inner: Any, batches: list[Batch]):
        self._inner, self._batches = inner, batches

    def __call__(self, *args, **kwargs):
        result = self._inner(*args, **kwargs)
        self._batches.append(_clone(result.batch))
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def record_rollouts(monkeypatch, module) -> list[Batch]:
    """Make ``module.make_rollout`` return `RecordingCollector` s; returns the list of batches."""
    real = module.make_rollout
    batches: list[Batch] = []
    monkeypatch.setattr(module, "make_rollout", lambda *a, **k: RecordingCollector(real(*a, **k), batches))
    return batches


# ------------------------------------------------------------------------------ slow references
def slow_gae(rewards, values, next_values, terminated, truncated, gamma: float, lam: float):
    """GAE one env and one step at a time, in Python floats (float64), straight from the paper's
    recursion: ``delta_t = r_t + gamma * (0 if terminated_t else v_{t+1}) - v_t``,
    ``A_t = delta_t + gamma * lam * (0 if terminated_t or truncated_t else A_{t+1})``, ``R_t = A_t + v_t``.
    ``next_values[t][i]`` may be None where ``terminated[t][i]`` (it must never be read there)."""
    num_steps, num_envs = len(rewards), len(rewards[0])
    adv = [[0.0] * num_envs for _ in range(num_steps)]
    for i in range(num_envs):
        a_next = 0.0
        for t in reversed(range(num_steps)):
            boot = 0.0 if terminated[t][i] else next_values[t][i]
            delta = rewards[t][i] + gamma * boot - values[t][i]
            a_next = delta + gamma * lam * (0.0 if terminated[t][i] or truncated[t][i] else a_next)
            adv[t][i] = a_next
    ret = [[adv[t][i] + values[t][i] for i in range(num_envs)] for t in range(num_steps)]
    return adv, ret


def _obs_row(obs: Any, t: int, i: int) -> Any:
    """Observation of step ``t``, env ``i`` with a batch dim of 1 (tensor or dict obs)."""
    if isinstance(obs, dict):
        return {k: v[t, i].unsqueeze(0) for k, v in obs.items()}
    return obs[t, i].unsqueeze(0)


def _obs_equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return all(torch.equal(a[k], b[k]) for k in a)
    return torch.equal(a, b)


def reference_next_values(
    values: torch.Tensor,
    next_obs: Any,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    value_fn: Callable[[Any], torch.Tensor],
) -> list[list[float | None]]:
    """The value each step must bootstrap from, built step by step:

    - inside an episode (not done, not the last step): the next step's own value ``values[t + 1]``;
    - truncated (time limit, or a segment end the caller treats as a cut), or the rollout's last
      step: ``V(next_obs[t])`` of the true final observation, ``value_fn`` on one observation at a time;
    - terminated: None (nothing to bootstrap).
    """
    num_steps, num_envs = values.shape
    out: list[list[float | None]] = [[None] * num_envs for _ in range(num_steps)]
    for t in range(num_steps):
        for i in range(num_envs):
            if bool(terminated[t, i]):
                continue
            if bool(truncated[t, i]) or t == num_steps - 1:
                with torch.no_grad():
                    out[t][i] = float(value_fn(_obs_row(next_obs, t, i)).reshape(()))
            else:
                out[t][i] = float(values[t + 1, i])
    return out


# ------------------------------------------------------------------------------ the wiring checks
def assert_gae_wiring(
    call: Call,
    batch: Batch,
    value_fn: Callable[[Any], torch.Tensor],
    *,
    gamma: float,
    lam: float,
    rewards: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
    truncated: torch.Tensor | None = None,
    atol: float = 1e-5,
) -> None:
    """Check one recorded call of `hrl_nested.returns.gae` against the batch it was computed from.

    1. The rewards, the values ``V(o_t)`` and the terminated / truncated masks passed in are the
       batch's (or the overrides below), and ``gamma`` and ``lam`` are the configured ones.
    2. The batch is self-consistent: ``next_obs[t] == obs[t + 1]`` wherever no episode ended.
    3. The next values passed in are ``values[t + 1]`` wherever no episode ended, and ``V(final obs)``
       (``value_fn(next_obs[t])``) at truncations and at the rollout's last step. At terminations
       they may be anything: they must not be used.
    4. The advantages and returns GAE produced equal `slow_gae` on these inputs, with nothing
       bootstrapped at terminations.

    Args:
        call: a `Call` recorded by ``record_calls(monkeypatch, module, "gae")``.
        batch: the rollout batch recorded for the same iteration (`record_rollouts`).
        value_fn: the critic as it was when GAE ran, mapping a ``(1, ...)`` observation to its value.
        gamma, lam: the configured discount and GAE lambda.
        rewards: the rewards GAE should have seen when they are not ``batch.rewards`` (shaped rewards).
        values: the ``V(o_t)`` GAE should have seen when they are not ``batch.values`` (another critic).
        truncated: the cut mask GAE should have seen when it is not ``batch.truncated`` (e.g. time
            limits or goal-segment ends, and never a termination).
        atol: tolerance for float32 values recomputed by a different code path.
    """
    a = call.args
    rewards = batch.rewards if rewards is None else rewards
    values = batch.values if values is None else values
    truncated = batch.truncated if truncated is None else truncated
    for name, got, want in (
        ("r_t (rewards)", a["r_t"], rewards),
        ("v_t (values)", a["v_t"], values),
        ("terminated_t", a["terminated_t"], batch.terminated),
        ("truncated_t", a["truncated_t"], truncated),
    ):
        assert torch.equal(got, want), f"gae received other {name} than expected"
    assert float(a["gamma"]) == pytest.approx(gamma) and float(a["lam"]) == pytest.approx(lam)

    num_steps, num_envs = rewards.shape
    done = batch.terminated | truncated
    for t in range(num_steps - 1):
        for i in range(num_envs):
            if not bool(done[t, i]):
                assert _obs_equal(_obs_row(batch.next_obs, t, i), _obs_row(batch.obs, t + 1, i)), (
                    f"batch: next_obs[{t}, {i}] is not obs[{t + 1}, {i}] inside an episode"
                )

    ref_next = reference_next_values(values, batch.next_obs, batch.terminated, truncated, value_fn)
    v_tp1 = a["v_tp1"]
    for t in range(num_steps):
        for i in range(num_envs):
            if ref_next[t][i] is None:
                continue
            where = (
                "inside an episode"
                if not bool(done[t, i]) and t < num_steps - 1
                else ("at a truncation" if bool(truncated[t, i]) else "at the rollout's last step")
            )
            assert float(v_tp1[t, i]) == pytest.approx(ref_next[t][i], abs=atol, rel=atol), (
                f"gae's next value at step {t}, env {i} ({where}) is {float(v_tp1[t, i])}, "
                f"expected {ref_next[t][i]}"
            )

    ref_adv, ref_ret = slow_gae(
        rewards.tolist(), values.tolist(), ref_next, batch.terminated.tolist(), truncated.tolist(), gamma, lam
    )
    adv, ret = call.result
    dt = torch.float64
    torch.testing.assert_close(adv.to(dt), torch.tensor(ref_adv, dtype=dt), atol=10 * atol, rtol=10 * atol)
    torch.testing.assert_close(ret.to(dt), torch.tensor(ref_ret, dtype=dt), atol=10 * atol, rtol=10 * atol)


def _rows(tensors: dict[str, torch.Tensor], keys: list[str]) -> collections.Counter:
    """The multiset of rows ``(key_1 columns, key_2 columns, ...)`` as tuples of Python floats."""
    size = tensors[keys[0]].shape[0]
    cols = [tensors[k].reshape(size, -1).to(torch.float64) for k in keys]
    return collections.Counter(map(tuple, torch.cat(cols, dim=1).tolist()))


def assert_minibatches_cover(
    minibatches: list[dict[str, torch.Tensor]], flat: dict[str, torch.Tensor], num_minibatches: int
) -> None:
    """Every epoch's ``num_minibatches`` consecutive minibatches together hold each row of ``flat``
    exactly once (a permutation of the flattened batch), on every key of ``flat``: the loss sees the
    observations, actions, old log-probs, old values, advantages and returns of the same transition."""
    keys = sorted(flat)
    assert minibatches and len(minibatches) % num_minibatches == 0, (
        f"expected whole epochs of {num_minibatches} minibatches, got {len(minibatches)} minibatches"
    )
    for mb in minibatches:
        missing = set(keys) - set(mb)
        assert not missing, f"minibatch lacks {sorted(missing)}"
    want = _rows(flat, keys)
    for e in range(len(minibatches) // num_minibatches):
        epoch = minibatches[e * num_minibatches : (e + 1) * num_minibatches]
        got = _rows({k: torch.cat([mb[k] for mb in epoch]) for k in keys}, keys)
        assert got == want, f"epoch {e}: the minibatches are not a permutation of the flattened batch rows"


# ------------------------------------------------------------------------------ PPO's loop
def _one_ppo_iteration(monkeypatch, *, time_limit: int, num_envs: int, cfg: ppo.PPOConfig, seed: int = 0):
    """Run one iteration of `ppo.train` on CartPole with a short time limit (so truncations occur),
    recording the rollout batch, the GAE calls, the loss's minibatches and the agent as it was before
    its first update."""
    real_make = envs.make
    monkeypatch.setattr(envs, "make", lambda *a, **k: real_make(*a, **{"max_episode_steps": time_limit, **k}))
    batches = record_rollouts(monkeypatch, ppo)
    gae_calls = record_calls(monkeypatch, ppo, "gae")
    agents: list[ActorCritic] = []

    def snapshot_agent(call: Call) -> None:
        if not agents:  # the first loss call comes before the first optimizer step
            agents.append(copy.deepcopy(call.args["agent"]))

    loss_calls = record_calls(monkeypatch, ppo, "ppo_loss", on_call=snapshot_agent)
    task = Task(
        total_steps=num_envs * cfg.num_steps, num_envs=num_envs, seed=seed, device="cpu", eval_episodes=1
    )
    summary = ppo.train(task, cfg)
    assert summary["iterations"] == 1
    return batches, gae_calls, loss_calls, agents


def test_ppo_feeds_gae_the_next_steps_values_and_the_loss_its_outputs(monkeypatch):
    """One PPO iteration, observation normalization off: GAE bootstraps with ``V(next_obs)`` (the next
    step's value inside an episode, ``V(final obs)`` at a truncation, nothing at a termination) and
    the losses see exactly the advantages and returns GAE produced, each row once per epoch."""
    cfg = ppo.PPOConfig(num_steps=32, num_minibatches=4, update_epochs=2, norm_obs=False, eval_every=0)
    batches, gae_calls, loss_calls, agents = _one_ppo_iteration(
        monkeypatch, time_limit=12, num_envs=8, cfg=cfg
    )
    assert len(batches) == 1 and len(gae_calls) == 1 and agents
    batch = batches[0]
    # The batch must exercise every case, or the test proves nothing.
    done = batch.terminated | batch.truncated
    assert bool(batch.truncated.any()), "no truncation in the batch: shorten the time limit"
    assert bool(batch.terminated.any()), "no termination in the batch: lengthen the time limit"
    assert bool((~done[:-1]).any())

    agent = agents[0]
    assert_gae_wiring(gae_calls[0], batch, agent.value, gamma=cfg.gamma, lam=cfg.gae_lambda)

    adv, ret = gae_calls[0].result
    size = batch.rewards.numel()
    flat = {
        "obs": batch.obs.reshape(size, -1),
        "actions": batch.actions.reshape(size, -1),
        "logprobs": batch.logprobs.reshape(size),
        "values": batch.values.reshape(size),
        "advantages": adv.reshape(size),
        "returns": ret.reshape(size),
    }
    minibatches = [c.args["mb"] for c in loss_calls]
    assert len(minibatches) == cfg.update_epochs * cfg.num_minibatches
    assert_minibatches_cover(minibatches, flat, cfg.num_minibatches)


def test_gae_wiring_check_catches_bootstrapping_from_the_current_value(monkeypatch):
    """The checker itself: handed ``V(o_t)`` as next values (the classic wiring slip), it fails."""
    cfg = ppo.PPOConfig(num_steps=16, num_minibatches=2, update_epochs=1, norm_obs=False, eval_every=0)
    batches, gae_calls, _, agents = _one_ppo_iteration(monkeypatch, time_limit=12, num_envs=4, cfg=cfg)
    call, batch = gae_calls[0], batches[0]
    wrong = Call({**call.args, "v_tp1": batch.values.clone()}, call.result)
    with pytest.raises(AssertionError, match="next value"):
        assert_gae_wiring(wrong, batch, agents[0].value, gamma=cfg.gamma, lam=cfg.gae_lambda)
    swapped = Call({**call.args, "terminated_t": call.args["truncated_t"]}, call.result)
    with pytest.raises(AssertionError, match="terminated_t"):
        assert_gae_wiring(swapped, batch, agents[0].value, gamma=cfg.gamma, lam=cfg.gae_lambda)


# ------------------------------------------------------------------------------ PPO's objective
def _minibatch(
    agent: ActorCritic, size: int, generator: torch.Generator, num_actions: int = 2, adv_mean: float = 1.5
) -> dict[str, torch.Tensor]:
    """A float64 minibatch (4-dim observations, ``num_actions`` discrete actions) whose old log-probs sit
    near the current ones, so some ratios clip; advantages ``~ N(adv_mean, 2^2)``."""
    obs = torch.randn(size, 4, generator=generator, dtype=torch.float64)
    actions = torch.randint(0, num_actions, (size,), generator=generator)
    with torch.no_grad():
        dist_params, _ = agent(obs)
        logp = agent.distribution(dist_params).log_prob(actions)
    return {
        "obs": obs,
        "actions": actions,
        "logprobs": logp + 0.3 * torch.randn(size, generator=generator, dtype=torch.float64),
        "values": torch.randn(size, generator=generator, dtype=torch.float64),
        "advantages": 2.0 * torch.randn(size, generator=generator, dtype=torch.float64) + adv_mean,
        "returns": torch.randn(size, generator=generator, dtype=torch.float64),
    }


def _reference_pg_loss(agent, mb, clip_coef: float, normalize: bool) -> float:
    """``-mean(min(rho * A, clip(rho, 1 - eps, 1 + eps) * A))`` one sample at a time, with ``A``
    standardized over the minibatch (mean 0, sample std 1) when ``normalize``."""
    with torch.no_grad():
        dist_params, _ = agent(mb["obs"])
        logp = agent.distribution(dist_params).log_prob(mb["actions"]).tolist()
    adv, old = mb["advantages"].tolist(), mb["logprobs"].tolist()
    n = len(adv)
    if normalize:
        mean = sum(adv) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in adv) / (n - 1))
        adv = [(x - mean) / (std + 1e-8) for x in adv]
    total = 0.0
    for lp, olp, a in zip(logp, old, adv):
        ratio = math.exp(lp - olp)
        total += min(ratio * a, min(max(ratio, 1 - clip_coef), 1 + clip_coef) * a)
    return -total / n


def test_ppo_loss_with_normalized_advantages_is_invariant_to_affine_rescaling():
    """With ``norm_adv`` the objective sees standardized advantages, so ``A -> 3 A + 5`` changes
    nothing; without it, it does (so the comparison can fail). Dropping the centering breaks this."""
    torch.manual_seed(0)
    agent = ActorCritic(spaces.Box(-math.inf, math.inf, (4,)), spaces.Discrete(2), hidden=(16, 16)).double()
    mb = _minibatch(agent, 64, torch.Generator().manual_seed(1))
    shifted = {**mb, "advantages": 3.0 * mb["advantages"] + 5.0}
    on, off = ppo.PPOConfig(norm_adv=True), ppo.PPOConfig(norm_adv=False)

    loss, stats = ppo.ppo_loss(agent, mb, on)
    loss_shifted, stats_shifted = ppo.ppo_loss(agent, shifted, on)
    torch.testing.assert_close(stats_shifted[0], stats[0], atol=1e-10, rtol=1e-8)  # policy loss
    torch.testing.assert_close(loss_shifted, loss, atol=1e-10, rtol=1e-8)
    ref = _reference_pg_loss(agent, mb, on.clip_coef, normalize=True)
    assert float(stats[0]) == pytest.approx(ref, rel=1e-9, abs=1e-12)
    with torch.no_grad():
        ratio = (agent.distribution(agent(mb["obs"])[0]).log_prob(mb["actions"]) - mb["logprobs"]).exp()
    clipped = (ratio - 1.0).abs() > on.clip_coef
    assert bool(clipped.any()) and bool((~clipped).any())  # both branches of the clip are exercised

    _, stats_off = ppo.ppo_loss(agent, mb, off)
    _, stats_off_shifted = ppo.ppo_loss(agent, shifted, off)
    assert abs(float(stats_off_shifted[0]) - float(stats_off[0])) > 1e-2
    assert float(stats_off[0]) == pytest.approx(_reference_pg_loss(agent, mb, off.clip_coef, False), rel=1e-9)
