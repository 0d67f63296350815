"""Temporally extended exploration for flat PPO (`hrl_nested.exploration`, ``--ppo.explore``).

The duration law against scipy's truncated zeta (``zipfian``) by chi-square; the step's semantics by
hand; the PPO ratio at zero policy change on the on-policy steps of a real iteration; the masked
objective against the unmasked one on the on-policy rows; the rollout without exploration bit for bit
against the policy step as it was; exact resume; config errors.
"""

from __future__ import annotations

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from scipy import stats

import envs
import hrl_nested.algos.ppo as ppo
from hrl_nested.algos import ConfigError, Task
from hrl_nested.distributions import Categorical, DiagGaussian
from hrl_nested.exploration import (
    Exploration,
    end_runs,
    explore_step,
    initial_explore_carry,
    sample_zeta,
    uniform_action,
    zeta_cdf,
    zeta_pmf,
)
from hrl_nested.networks import ActorCritic, actor_critic_apply, params_of
from hrl_nested.ppo_objective import ppo_objective
from hrl_nested.rollout import PolicyOutput, actor_critic_policy, make_rollout
from hrl_nested.tracking import Run, read_metrics
from tests._ppo_runs import crash_after_iteration, ppo_run
from tests._scripts import load_script
from tests.test_ppo_wiring import _minibatch, assert_gae_wiring, record_calls, record_rollouts

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread

ALPHA = 1e-3  # chi-square significance: a correct sampler fails with probability 1e-3 for a random seed


def _chi_square_p(samples: np.ndarray, pmf: np.ndarray, min_expected: float = 20.0) -> float:
    """p-value of Pearson's chi-square of integer ``samples`` in ``1..len(pmf)`` against ``pmf``; bins
    with fewer than ``min_expected`` expected counts are pooled into one tail bin (the test's
    asymptotics need them large)."""
    n = len(samples)
    counts = np.bincount(samples - 1, minlength=len(pmf)).astype(float)
    expected = n * pmf
    keep = int(np.argmax(expected < min_expected)) if (expected < min_expected).any() else len(pmf)
    obs = np.append(counts[:keep], counts[keep:].sum())
    exp = np.append(expected[:keep], expected[keep:].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    assert len(obs) >= 10, "too few bins for a meaningful test"
    return float(stats.chisquare(obs, exp).pvalue)


# ------------------------------------------------------------------------------ the duration law
def test_zeta_pmf_is_scipys_truncated_zeta():
    """`zeta_pmf` is ``P(n) ∝ n^-mu`` on ``1..M``: scipy's ``zipfian(mu, M)`` (independent code)."""
    for mu, m in ((2.0, 10_000), (1.5, 50), (3.0, 7)):
        ref = stats.zipfian(mu, m).pmf(np.arange(1, m + 1))
        np.testing.assert_allclose(zeta_pmf(mu, m).numpy(), ref, rtol=1e-10, atol=0)
    cdf = zeta_cdf(2.0, 10_000)
    assert cdf[-1].item() == 1.0 and bool((cdf[1:] >= cdf[:-1]).all())


def test_sampled_durations_follow_the_zeta_law():
    """10^6 inverse-CDF draws (mu = 2, Dabney et al.'s; M = 10^4) pass a chi-square test against the
    exact pmf at level 1e-3, while an off-by-one duration or mu = 2.05 fail it (the test has power)."""
    mu, m, n = 2.0, 10_000, 1_000_000
    g = torch.Generator().manual_seed(0)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    durations = sample_zeta(zeta_cdf(mu, m), u).numpy()
    assert durations.min() >= 1 and durations.max() <= m
    pmf = zeta_pmf(mu, m).numpy()
    assert _chi_square_p(durations, pmf) > ALPHA
    assert _chi_square_p(np.minimum(durations + 1, m), pmf) < 1e-12  # a run one step too long
    assert _chi_square_p(sample_zeta(zeta_cdf(2.05, m), u).numpy(), pmf) < ALPHA
    # the mean of the law, E[n] = H(M, mu - 1) / H(M, mu), to sampling error (sd of the mean ~ 0.3)
    mean = float((np.arange(1, m + 1) * pmf).sum())
    assert abs(durations.mean() - mean) < 5 * math.sqrt(((np.arange(1, m + 1) - mean) ** 2 * pmf).sum() / n)


def test_runs_taken_in_a_rollout_follow_the_zeta_law():
    """End to end through `Exploration.step`: with eps = 1 every env is always in a run, so each env's
    successive runs (a start, then its repeats) have the law's durations, the start step included."""
    mu, m, n_envs, steps = 2.0, 20, 2000, 200  # 10 runs of at most 20 steps fit in 200: none censored
    exploration = Exploration("ez-greedy", 1.0, mu, m, gym.spaces.Discrete(5))
    dist = Categorical(torch.zeros(n_envs, 5))
    carry = initial_explore_carry(n_envs, torch.zeros(n_envs, dtype=torch.int64))
    torch.manual_seed(0)
    starts = []
    for _ in range(steps):
        was_idle = carry["explore_left"] == 0
        _, carry = exploration.step(dist, dist.sample(), carry)
        assert bool(carry["off_policy"].all())
        starts.append(was_idle)
    starts = torch.stack(starts).T  # (envs, steps)
    lengths = []
    for row in starts:
        t = row.nonzero().squeeze(-1).numpy()
        lengths.append(np.diff(t)[:10])  # the first 10 complete runs of each env
    lengths = np.concatenate(lengths)
    assert len(lengths) == 10 * n_envs
    assert _chi_square_p(lengths, zeta_pmf(mu, m).numpy(), min_expected=5.0) > ALPHA


# ------------------------------------------------------------------------------ one step, by hand
def test_explore_step_by_hand():
    carry = {
        "explore_left": torch.tensor([2, 0, 0, 1]),
        "explore_action": torch.tensor([7, 0, 0, 8]),
        "off_policy": torch.tensor([True, False, False, True]),
    }
    policy = torch.tensor([1, 2, 3, 4])
    new = torch.tensor([5, 6, 6, 6])
    u = torch.tensor([0.0, 0.05, 0.5, 0.0])  # env 0 and 3 are running: their u does not matter
    duration = torch.tensor([9, 3, 3, 9])
    action, out = explore_step(carry, policy, new, u, duration, eps=0.1, policy_starts=False)
    assert action.tolist() == [7, 6, 3, 8]  # held, new run, policy, held (its last step)
    assert out["explore_left"].tolist() == [1, 2, 0, 0]
    assert out["off_policy"].tolist() == [True, True, False, True]
    assert out["explore_action"].tolist() == [7, 6, 0, 8]
    # action repeat: a run starts with the policy's own draw (on-policy), its repeats are off-policy
    action, out = explore_step(carry, policy, policy, u, duration, eps=0.1, policy_starts=True)
    assert action.tolist() == [7, 2, 3, 8] and out["off_policy"].tolist() == [True, False, False, True]
    assert out["explore_action"].tolist() == [7, 2, 0, 8]
    ended = end_runs(out, torch.tensor([True, False, False, False]))
    assert ended["explore_left"].tolist() == [0, 2, 0, 0]
    # eps = 0 never starts a run
    idle = initial_explore_carry(4, policy)
    action, out = explore_step(idle, policy, new, torch.zeros(4), duration, eps=0.0, policy_starts=False)
    assert torch.equal(action, policy) and not bool(out["off_policy"].any())


def test_uniform_random_actions_in_the_stored_parametrization():
    r = torch.rand(50_000, 2, generator=torch.Generator().manual_seed(1))
    low, high = np.array([-2.0, 0.0], np.float32), np.array([2.0, 1.0], np.float32)
    box = gym.spaces.Box(low, high)
    mean = torch.zeros(50_000, 2)
    for squash in ("tanh", "clip"):
        dist = DiagGaussian(
            mean, torch.zeros(2), squash=squash, low=torch.tensor(low), high=torch.tensor(high)
        )
        u = uniform_action(dist, box, r)
        assert bool(torch.isfinite(dist.log_prob(u)).all())
        torch.testing.assert_close(dist.env_action(u), torch.tensor(low) + torch.tensor(high - low) * r)
    k = uniform_action(Categorical(torch.zeros(50_000, 3)), gym.spaces.Discrete(3), r[:, 0])
    counts = torch.bincount(k, minlength=3).numpy()
    assert stats.chisquare(counts).pvalue > ALPHA and k.min() == 0 and k.max() == 2
    with pytest.raises(ValueError, match="Discrete or a bounded 1-D Box"):
        Exploration("ez-greedy", 0.1, 2.0, 100, gym.spaces.Box(-np.inf, np.inf, (2,)))
    Exploration("repeat", 0.1, 2.0, 100, gym.spaces.Box(-np.inf, np.inf, (2,)))  # needs no random action


# ------------------------------------------------------------------------------ the PPO loss
def _one_iteration(monkeypatch, env_id: str, cfg: ppo.PPOConfig, num_envs: int = 16):
    batches = record_rollouts(monkeypatch, ppo)
    gae_calls = record_calls(monkeypatch, ppo, "gae")
    agents: list[ActorCritic] = []

    def snapshot(call):
        if not agents:  # the first loss call comes before the first optimizer step
            agents.append(copy.deepcopy(call.args["agent"]))

    loss_calls = record_calls(monkeypatch, ppo, "ppo_loss", on_call=snapshot)
    task = Task(
        env=env_id, total_steps=num_envs * cfg.num_steps, num_envs=num_envs, device="cpu", eval_episodes=1
    )
    ppo.train(task, cfg)
    return batches[0], gae_calls[0], loss_calls, agents[0]


@pytest.mark.parametrize(
    "env_id,mode",
    [("hrl_nested/FourRooms-v0", "ez-greedy"), ("hrl_nested/PointMaze-U-v0", "ez-greedy"),
     ("hrl_nested/FourRooms-v0", "repeat")],
)  # fmt: skip
def test_ppo_ratio_is_one_on_policy_steps_and_exploratory_steps_are_masked(monkeypatch, env_id, mode):
    """One PPO iteration with exploration: at zero policy change the ratio is exactly 1 on the on-policy
    rows (their stored action and log-prob are the policy's own draw), the loss masks exactly the
    exploratory rows out, and every reward, exploratory or not, reaches GAE as it is wired without
    exploration."""
    cfg = ppo.PPOConfig(
        num_steps=32, num_minibatches=4, norm_obs=False, eval_every=0, explore=mode, explore_eps=0.2
    )
    batch, gae_call, loss_calls, agent = _one_iteration(monkeypatch, env_id, cfg)
    off = batch.carry["off_policy"]
    assert 0.1 < float(off.float().mean()) < 0.9, "both kinds of step must be in the batch"
    mbs = [c.args["mb"] for c in loss_calls]
    assert all("policy_mask" in mb for mb in mbs)
    assert sum(int((~mb["policy_mask"]).sum()) for mb in mbs[: cfg.num_minibatches]) == int(off.sum())
    mb = mbs[0]
    with torch.no_grad():
        logp = agent.distribution(agent(mb["obs"])[0]).log_prob(mb["actions"])
    on = mb["policy_mask"]
    ratio = (logp - mb["logprobs"]).exp()
    assert bool((ratio[on] == 1.0).all()), "the PPO ratio at zero policy change must be 1 on on-policy steps"
    assert bool(torch.isfinite(mb["logprobs"]).all())
    # exploratory rows do not reach the policy loss: arbitrary advantages there change nothing
    junk = {**mb, "advantages": torch.where(on, mb["advantages"], torch.full_like(mb["advantages"], 1e6))}
    _, st = ppo.ppo_loss(agent, mb, cfg)
    _, st_junk = ppo.ppo_loss(agent, junk, cfg)
    assert st.policy_loss == st_junk.policy_loss and st.value_loss == st_junk.value_loss
    assert_gae_wiring(gae_call, batch, agent.value, gamma=cfg.gamma, lam=cfg.gae_lambda)


def test_masked_objective_is_the_objective_of_the_on_policy_rows():
    """With ``policy_mask``, ``L_clip``, the advantage normalization, approx-KL and clip fraction are
    those of the on-policy rows alone (boolean-indexed reference), the value loss and entropy those of
    every row; the masked rows' policy gradient is zero, even with an infinite stored log-prob."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    agent = ActorCritic(gym.spaces.Box(-np.inf, np.inf, (4,)), gym.spaces.Discrete(3), hidden=(8,)).double()
    b = 64
    mb = _minibatch(agent, b, g, num_actions=3, adv_mean=1.0)
    mask = torch.rand(b, generator=g) < 0.6
    params = dict(agent.named_parameters())

    def dist_fn(p, o):
        out, v = actor_critic_apply(agent, p, o)
        return agent.distribution(out), v

    kw = {"clip_coef": 0.2, "vf_coef": 0.5, "ent_coef": 0.01}
    loss, st = ppo_objective(dist_fn, params, {**mb, "policy_mask": mask}, **kw)
    _, ref = ppo_objective(dist_fn, params, {k: v[mask] for k, v in mb.items()}, **kw)
    _, full = ppo_objective(dist_fn, params, mb, **kw)
    for name in ("policy_loss", "approx_kl", "clip_fraction"):
        torch.testing.assert_close(getattr(st, name), getattr(ref, name), rtol=1e-12, atol=1e-12)
    for name in ("value_loss", "entropy"):
        torch.testing.assert_close(getattr(st, name), getattr(full, name), rtol=1e-12, atol=1e-12)
    assert 0 < float(ref.clip_fraction) < 1  # both branches of the clip are exercised
    # an all-true mask is the unmasked objective
    _, all_on = ppo_objective(dist_fn, params, {**mb, "policy_mask": torch.ones(b, dtype=torch.bool)}, **kw)
    torch.testing.assert_close(all_on.policy_loss, full.policy_loss, rtol=1e-12, atol=1e-12)

    bad = {**mb, "logprobs": torch.where(mask, mb["logprobs"], torch.full_like(mb["logprobs"], -math.inf))}
    bad["advantages"] = torch.where(mask, mb["advantages"], torch.full_like(mb["advantages"], math.nan))
    grads = torch.autograd.grad(loss, list(params.values()))
    bad_loss, _ = ppo_objective(dist_fn, params, {**bad, "policy_mask": mask}, **kw)
    bad_grads = torch.autograd.grad(bad_loss, list(params.values()))
    torch.testing.assert_close(bad_loss, loss, rtol=0, atol=0)
    for a, c in zip(grads, bad_grads):
        torch.testing.assert_close(a, c, rtol=0, atol=0)
    with pytest.raises(ValueError, match="policy_mask"):
        ppo_objective(dist_fn, params, {**mb, "policy_mask": mask.float()}, **kw)


# ------------------------------------------------------------------------------ the rollout
def _reference_policy(module):
    """The policy step of `actor_critic_policy` as it was before exploration existed (a frozen copy)."""

    def policy_fn(params, obs, carry):
        dist_params, value = actor_critic_apply(module, params, obs)
        dist = module.distribution(dist_params)
        if isinstance(dist, DiagGaussian):
            action, logprob = dist.sample_and_log_prob()
            return PolicyOutput(action, logprob, value, carry, dist.env_action(action))
        action = dist.sample()
        return PolicyOutput(action, dist.log_prob(action), value, carry)

    return policy_fn


def _collect(
    env_id: str,
    policy_factory,
    capture: str = "none",
    explore: bool = False,
    steps: int = 24,
    seed: int = 0,
    reset: bool = True,
    device: str = "cpu",
    env_compile: bool | str = "auto",
    **rollout_kw,
):
    """Two collects of ``steps`` x 8 envs (time limit 10) from a fixed seed; with ``explore`` the carry
    starts as `initial_explore_carry` and, with ``reset``, runs end at episode ends (`end_runs`)."""
    env = envs.make(
        env_id,
        8,
        device=device,
        autoreset_mode="same_step",
        validate=False,
        max_episode_steps=10,
        compile=env_compile,
    )
    torch.manual_seed(seed)
    ac = ActorCritic(env.single_observation_space, env.single_action_space, hidden=(16,)).to(device)
    reset_carry = end_runs if explore and reset else None
    collect = make_rollout(
        env, policy_factory(ac), steps, capture=capture, reset_carry=reset_carry, **rollout_kw
    )
    obs, _ = env.reset(seed=seed)
    carry = None
    if explore:
        discrete = ac.log_std is None
        like = torch.zeros(8, dtype=torch.int64) if discrete else torch.zeros(8, 2)
        carry = initial_explore_carry(8, like.to(device))
    torch.manual_seed(seed + 1)
    out = []
    for _ in range(2):
        res = collect(params_of(ac), obs, carry)
        obs, carry = res.obs, res.carry
        out.append(res)
    return out, torch.get_rng_state()


def _leaves(x):
    out = []
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        for k in sorted(x):
            out += _leaves(x[k])
    elif isinstance(x, tuple | list):
        for v in x:
            out += _leaves(v)
    elif x is not None and hasattr(x, "__dataclass_fields__"):
        for k in x.__dataclass_fields__:
            out += _leaves(getattr(x, k))
    return out


@pytest.mark.parametrize("env_id", ["hrl_nested/FourRooms-v0", "hrl_nested/PointMaze-U-v0"])
def test_rollout_without_exploration_is_bit_identical_to_the_policy_step_as_it_was(env_id):
    (a, rng_a), (b, rng_b) = _collect(env_id, actor_critic_policy), _collect(env_id, _reference_policy)
    assert torch.equal(rng_a, rng_b)  # no extra random draw
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        assert torch.equal(x, y)
    assert a[0].batch.carry is None


def _exploring(ac):
    return actor_critic_policy(ac, Exploration("ez-greedy", 0.3, 2.0, 50, ac.action_space))


def _carry_over_time(results, *keys):
    """The two collects back to back (the second continues the first's carry), ``(2T, N, ...)`` each."""
    return [torch.cat([r.batch.carry[k] for r in results]) for k in keys]


@pytest.mark.parametrize("env_id", ["hrl_nested/FourRooms-v0", "hrl_nested/PointMaze-U-v0"])
def test_exploring_rollout_static_buffers_equal_eager_and_runs_continue_inside_an_episode(env_id):
    """The capture path (static buffers, warm-up and rewind, as under a CUDA graph) gives the eager
    rollout bit for bit with the exploration carry; inside an episode an open run holds its action."""
    (eager, _), (static, _) = (
        _collect(env_id, _exploring, "none", True),
        _collect(env_id, _exploring, "static", True),
    )
    for x, y in zip(_leaves(eager), _leaves(static), strict=True):
        assert torch.equal(x, y)
    off, left, held = _carry_over_time(eager, "off_policy", "explore_left", "explore_action")
    assert bool(off.any()) and bool((~off).any())
    done = torch.cat([r.batch.terminated | r.batch.truncated for r in eager])[:-1]
    cont = ~done & (left[:-1] > 0)
    assert bool(cont.any())
    assert torch.equal(held[1:][cont], held[:-1][cont]) and bool(off[1:][cont].all())
    assert torch.equal(left[1:][cont], left[:-1][cont] - 1)
    actions = torch.cat([r.batch.actions for r in eager])
    assert torch.equal(actions[off], held[off])  # the batch stores the action actually taken


@pytest.mark.cuda
@pytest.mark.parametrize("env_id", ["hrl_nested/FourRooms-v0", "hrl_nested/PointMaze-U-v0"])
def test_exploring_rollout_captured_as_a_cuda_graph_equals_eager(env_id):
    """Exploration is capture-safe: no host sync or copy inside the step (the CDF table and the Box
    bounds are made on the device during the warm-up), and the replay gives the eager rollout."""
    (eager, _), (graph, _) = (  # the graph of the eager step (the compiled one: the next test)
        _collect(env_id, _exploring, "none", True, device="cuda", compile_step=False),
        _collect(env_id, _exploring, "cuda_graph", True, device="cuda", compile_step=False),
    )
    for x, y in zip(_leaves(eager), _leaves(graph), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert bool(eager[0].batch.carry["off_policy"].any())


@pytest.mark.cuda
@pytest.mark.parametrize("env_id", ["hrl_nested/FourRooms-v0", "hrl_nested/PointMaze-U-v0"])
def test_exploring_rollout_compiled_and_captured_equals_eager(env_id):
    """The CUDA default (the whole step compiled, then captured): the eager rollout's actions and
    exploration carry exactly, floats within the compiled path's low-bit tolerance."""
    (eager, _), (graph, _) = (
        _collect(env_id, _exploring, "none", True, device="cuda", compile_step=False),
        _collect(env_id, _exploring, "cuda_graph", True, device="cuda"),
    )
    for e, g in zip(eager, graph, strict=True):
        assert torch.equal(e.batch.actions, g.batch.actions)
        assert torch.equal(e.batch.carry["off_policy"], g.batch.carry["off_policy"])
    for x, y in zip(_leaves(eager), _leaves(graph), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("env_id", ["hrl_nested/FourRooms-v0", "hrl_nested/PointMaze-U-v0"])
def test_exploring_step_compiles_without_a_graph_break(env_id):
    """ez-greedy inside the compiled rollout step (a compiled env, as on CUDA) is one graph: no host read
    of the action space (a graph break there splits the step and leaves its ops between compiled
    regions)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    (eager, _), (compiled, _) = (
        _collect(env_id, _exploring, "none", True, steps=6, compile_step=False),
        _collect(env_id, _exploring, "static", True, steps=6, env_compile=True, compile_step=True),
    )
    breaks = dict(torch._dynamo.utils.counters["graph_break"])
    assert not breaks, f"graph breaks in the exploring step: {breaks}"
    for e, c in zip(eager, compiled, strict=True):
        assert torch.equal(e.batch.actions, c.batch.actions)


def test_an_episode_end_closes_the_run():
    """Continuous actions (a fresh random action never equals the held one): after an episode end no run
    continues with ``end_runs`` as the collector's ``reset_carry``, while without it some do."""

    def continued(reset: bool) -> torch.Tensor:
        (res, _) = _collect("hrl_nested/PointMaze-U-v0", _exploring, "none", True, reset=reset)
        off, left, held = _carry_over_time(res, "off_policy", "explore_left", "explore_action")
        done = torch.cat([r.batch.terminated | r.batch.truncated for r in res])[:-1]
        ended = done & (left[:-1] > 0)
        assert int(ended.sum()) >= 3, "open runs must meet episode ends for this check"
        # a continuation: the next step is exploratory with the held action (a fresh run draws a new one)
        return off[1:][ended] & (held[1:][ended] == held[:-1][ended]).all(-1)

    assert not bool(continued(True).any())
    assert bool(continued(False).any())


# ------------------------------------------------------------------------------ PPO runs
def _run(run_dir, task, resume=False):
    return ppo_run(run_dir, task, resume, checkpoint_every_s=0.0)


def test_exploring_ppo_resumes_exactly(tmp_path, monkeypatch):
    """The exploration carry is checkpointed: a crash and resume gives the uninterrupted run bit for bit."""
    task = Task(env="hrl_nested/FourRooms-v0", total_steps=4 * 256, num_envs=16, seed=1, device="cpu",
                eval_episodes=2)  # fmt: skip
    cfg = ppo.PPOConfig(num_steps=16, num_minibatches=2, eval_every=2, explore="ez-greedy", explore_eps=0.1)
    ppo.train(task, cfg, _run(tmp_path / "straight", task))
    real_log = crash_after_iteration(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt), _run(tmp_path / "crashed", task) as run:
        ppo.train(task, cfg, run)
    monkeypatch.setattr(Run, "log", real_log)
    ppo.train(task, cfg, _run(tmp_path / "crashed", task, resume=True))
    timing = {"wall_s", "sps", "eval_s"}

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in timing} for r in rows]

    a = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    b = read_metrics(tmp_path / "crashed" / "metrics.jsonl")
    assert strip(a) == strip(b) and all(0 < r["explore_fraction"] < 1 for r in a)
    state = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    assert set(state["explore_carry"]) == {"explore_left", "explore_action", "off_policy"}


# ------------------------------------------------------------------------------ config errors
@pytest.mark.parametrize(
    "field,value,expected",
    [
        ("explore", "eps-greedy", "--ppo.explore: expected one of none, ez-greedy, repeat, got eps-greedy"),
        ("explore_eps", 1.5, "--ppo.explore-eps: expected a probability in [0, 1], got 1.5"),
        ("explore_eps", -0.1, "--ppo.explore-eps: expected a probability in [0, 1], got -0.1"),
        ("explore_zeta_mu", 1.0, "--ppo.explore-zeta-mu: expected a finite number > 1, got 1.0"),
        ("explore_max_duration", 0, "--ppo.explore-max-duration: expected a positive int, got 0"),
    ],
)
def test_bad_explore_values_name_what_was_expected(field, value, expected):
    with pytest.raises(ConfigError) as e:
        ppo.PPOConfig(**{field: value}).validate()
    assert str(e.value) == expected


def test_ez_greedy_on_an_unbounded_box_is_a_config_error():
    class UnboundedEnv:
        single_action_space = gym.spaces.Box(-np.inf, np.inf, (2,))

    with pytest.raises(ConfigError, match=r"--ppo.explore: expected repeat or none .*bounded 1-D Box"):
        ppo._exploration(ppo.PPOConfig(explore="ez-greedy"), UnboundedEnv())
    assert ppo._exploration(ppo.PPOConfig(explore="repeat"), UnboundedEnv()).mode == "repeat"
    assert ppo._exploration(ppo.PPOConfig(), UnboundedEnv()) is None


def test_bad_explore_flags_on_the_command_line_exit_2_naming_the_flag(tmp_path, capsys):
    from tests.test_train_cli_errors import BASE, SCRIPT, _check_message

    module = load_script(SCRIPT.name, "train_script_explore")
    for flags, flag, expected in (
        (["--ppo.explore-eps", "2"], "--ppo.explore-eps", "a probability in [0, 1]"),
        (["--ppo.explore-zeta-mu", "0.5"], "--ppo.explore-zeta-mu", "> 1"),
    ):
        with pytest.raises(SystemExit) as exc:
            module.main([*BASE, "--ppo.explore", "ez-greedy", *flags, "--run-dir", str(tmp_path / "run")])
        assert exc.value.code == 2
        _check_message(capsys.readouterr().err, flag, expected, flags)
        assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit) as exc:  # tyro's own check of the choices
        module.main([*BASE, "--ppo.explore", "eps-greedy", "--run-dir", str(tmp_path / "run")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--ppo.explore" in err and "ez-greedy" in err and "repeat" in err


def test_the_results_script_has_both_control_rows_and_reads_them_against_their_baselines():
    module = load_script("nested_results.py", "nested_results_controls")
    assert module.ALGOS["ppo+explore"] == ["--algo", "ppo", "--ppo.explore", "ez-greedy"]
    flags = module.ALGOS["nested-hrl-scalar"]
    assert flags[:2] == ["--algo", "nested-hrl"] and flags[-2:] == ["--nested-hrl.shaping", "scalar"]

    def row(final, solved=5, seeds=10, median=1e5):
        return {"final_success_mean": final, "solved": solved, "seeds": seeds, "planned": 10,
                "median_steps_to_0.9": median}  # fmt: skip

    table = {
        "T": {
            "ppo": row(0.4),
            "ppo+explore": row(0.7, seeds=4),
            "nested-hrl": row(1.0),
            "hrl": row(0.95),
            "nested-hrl-scalar": row(0.3),
        }
    }
    text = "\n".join(module.controls_markdown(table))
    assert "| T | ppo+explore | ppo / nested-hrl | 5/10 / 5/4 / 5/10 |" in text
    assert "0.40 / 0.70 / 1.00 | 0.50 |" in text  # (0.7 - 0.4) / (1.0 - 0.4)
    assert "ppo+explore recovers 50% of nested-hrl's gain over ppo" in text
    assert "Incomplete rows (seeds done/planned): ppo+explore 4/10" in text
    assert (
        "nested-hrl gains less than 0.1 over hrl here" in text
        and "nested-hrl-scalar is 0.65 below hrl" in text
    )
    assert module.controls_markdown({"T": {"ppo": row(0.4), "nested-hrl": row(1.0)}}) == []


def test_exploring_step_traces_no_host_read_of_the_action_space():
    """Gymnasium's ``Discrete.n`` is an ``np.int64``: read inside ``torch.compile`` it becomes a traced
    scalar and a ``.item()`` (``wrapped_item``), which the CUDA backend refused on an H200, splitting the
    compiled rollout step. `Exploration` reads it once, outside: the traced step holds no such node."""
    targets = []

    def recording_backend(gm, example_inputs):
        targets.extend(getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes)
        return gm.forward

    explore = Exploration("ez-greedy", 0.5, 2.0, 10, gym.spaces.Discrete(4))
    logits = torch.zeros(8, 4)
    carry = initial_explore_carry(8, torch.zeros(8, dtype=torch.int64))
    explore.cdf(logits.device)  # made outside the compiled step, as the rollout's warm-up does
    step = torch.compile(
        lambda lg, a, c: explore.step(Categorical(lg), a, c), backend=recording_backend, fullgraph=True
    )
    torch._dynamo.reset()
    action, _ = step(logits, torch.zeros(8, dtype=torch.int64), carry)
    assert action.shape == (8,) and targets, "nothing was traced"
    host_reads = [t for t in targets if t in ("wrapped_item", "item", "_local_scalar_dense")]
    assert not host_reads, targets
