"""The pieces of nested HRL against independent references: the pure PPO objective, the shaping R_φ,
goal segments and the manager's SMDP transitions (slow Python loops), and the rollout's carry."""

from __future__ import annotations

import math

import pytest
import torch

import envs
from hrl_nested.distributions import Categorical
from hrl_nested.hierarchy import goal_bounds
from hrl_nested.ppo_objective import PPOStats, normalize_advantages, ppo_objective
from hrl_nested.rollout import make_rollout
from hrl_nested.segments import segment_ends, smdp_gae, smdp_transitions
from hrl_nested.shaping import fixed_shaping, goal_shaping, init_goal_shaping, potential
from tests._hierarchies import small_hierarchy

D = torch.float64


# ------------------------------------------------------------------------------ PPO objective
def _linear_dist(p, obs):
    return Categorical(obs @ p["w"]), obs @ p["v"]


def _reference_ppo(p, mb, clip, vf, ent_coef):
    """Per-row Python loop in float64: the PPO loss written out from Schulman et al. 2017."""
    rows = range(mb["obs"].shape[0])
    w = [1.0] * len(rows)
    n = sum(w)
    adv = [float(a) for a in mb["advantages"]]
    mean = sum(wi * a for wi, a in zip(w, adv)) / n
    std = math.sqrt(sum(wi * (a - mean) ** 2 for wi, a in zip(w, adv)) / (n - 1))
    pg = vl = ent = 0.0
    for i in rows:
        logits = [float(x) for x in mb["obs"][i] @ p["w"]]
        m = max(logits)
        lse = m + math.log(sum(math.exp(x - m) for x in logits))
        logp = logits[int(mb["actions"][i])] - lse
        probs = [math.exp(x - lse) for x in logits]
        ratio = math.exp(logp - float(mb["logprobs"][i]))
        a = (adv[i] - mean) / (std + 1e-8)
        pg += w[i] * -min(ratio * a, min(max(ratio, 1 - clip), 1 + clip) * a)
        v = float(mb["obs"][i] @ p["v"])
        vl += w[i] * 0.5 * (v - float(mb["returns"][i])) ** 2
        ent += w[i] * -sum(q * math.log(q) for q in probs)
    return (pg + vf * vl - ent_coef * ent) / n, pg / n, vl / n, ent / n


def _mb(g, n=12):
    return {
        "obs": torch.randn(n, 3, generator=g, dtype=D),
        "actions": torch.randint(0, 4, (n,), generator=g),
        "logprobs": -1.4 + 0.3 * torch.randn(n, generator=g, dtype=D),
        "advantages": torch.randn(n, generator=g, dtype=D),
        "values": torch.randn(n, generator=g, dtype=D),
        "returns": torch.randn(n, generator=g, dtype=D),
    }


def test_ppo_objective_matches_a_per_row_reference_and_names_its_statistics():
    g = torch.Generator().manual_seed(0)
    p = {"w": 0.5 * torch.randn(3, 4, generator=g, dtype=D), "v": torch.randn(3, generator=g, dtype=D)}
    mb = _mb(g)
    loss, stats = ppo_objective(_linear_dist, p, mb, clip_coef=0.2, vf_coef=0.5, ent_coef=0.01)
    ref, pg, vl, ent = _reference_ppo(p, mb, 0.2, 0.5, 0.01)
    assert isinstance(stats, PPOStats)
    assert float(loss) == pytest.approx(ref, rel=1e-10)
    assert float(stats.policy_loss) == pytest.approx(pg, rel=1e-10)
    assert float(stats.value_loss) == pytest.approx(vl, rel=1e-10)
    assert float(stats.entropy) == pytest.approx(ent, rel=1e-10)


def test_ppo_objective_is_a_pure_function_of_params_differentiable_in_the_advantages():
    g = torch.Generator().manual_seed(1)
    p = {"w": 0.5 * torch.randn(3, 4, generator=g, dtype=D), "v": torch.randn(3, generator=g, dtype=D)}
    mb = _mb(g)
    adv = mb["advantages"].clone().requires_grad_()
    loss, _ = ppo_objective(_linear_dist, p, {**mb, "advantages": adv}, clip_coef=0.2)
    (grad,) = torch.autograd.grad(loss, adv)
    assert grad.abs().sum() > 0
    grads = torch.func.grad(lambda q: ppo_objective(_linear_dist, q, mb, clip_coef=0.2)[0])(p)
    assert set(grads) == {"w", "v"} and all(torch.isfinite(v).all() for v in grads.values())
    assert normalize_advantages(torch.tensor([1.0, 3.0])).tolist() == pytest.approx([-0.70710678, 0.70710678])


# ------------------------------------------------------------------------------ shaping
def _goal_batch(g, shape=(5, 3), d=2):
    ag = torch.randn(*shape, d, generator=g, dtype=D)
    ag_next = torch.randn(*shape, d, generator=g, dtype=D)
    goal = torch.randn(*shape, d, generator=g, dtype=D)
    return ag, ag_next, goal


def test_shaping_at_initialization_equals_the_fixed_shaping_of_hrl():
    g = torch.Generator().manual_seed(2)
    ag, ag_next, goal = _goal_batch(g)
    reached = torch.rand(5, 3, generator=g) < 0.3
    phi = init_goal_shaping(2, (16,), dtype=D)
    r = goal_shaping(phi, ag, ag_next, goal, reached, reached, 0.99, scale=2.0)
    ref = torch.tensor(
        [[-math.dist(ag_next[i, j].tolist(), goal[i, j].tolist()) for j in range(3)] for i in range(5)],
        dtype=D,
    )
    torch.testing.assert_close(r, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fixed_shaping(ag_next, goal), ref, rtol=1e-12, atol=1e-12)
    assert float(phi["beta"]) == 1.0 and float(phi["w_bonus"]) == 0.0


def test_potential_term_telescopes_along_a_segment_with_zero_potential_at_a_terminal_state():
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    phi = init_goal_shaping(2, (8,), dtype=D)
    phi = {k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=D) for k, v in phi.items()}
    phi_pot = {**phi, "w_dist": torch.zeros((), dtype=D), "w_bonus": torch.zeros((), dtype=D)}
    gamma, L = 0.9, 6
    states = torch.randn(L + 1, 2, generator=g, dtype=D)
    goal = torch.randn(1, 2, generator=g, dtype=D).expand(L, 2)
    for terminal_end in (False, True):
        terminal = torch.zeros(L, dtype=torch.bool)
        terminal[-1] = terminal_end
        f = goal_shaping(phi_pot, states[:-1], states[1:], goal, terminal, terminal, gamma, scale=1.5)
        total = sum(gamma**t * float(f[t]) for t in range(L))
        pot = lambda s: float(potential(phi, s[None], goal[:1], 1.5))  # noqa: E731
        end = 0.0 if terminal_end else pot(states[L])
        assert total == pytest.approx(gamma**L * end - pot(states[0]), rel=1e-10, abs=1e-12)


# ------------------------------------------------------------------------------ segments
def _segment_data(seed, T=40, N=5, horizon=4, tol=0.3):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(T, N, generator=g, dtype=D)
    term = torch.rand(T, N, generator=g) < 0.05
    trunc = (torch.rand(T, N, generator=g) < 0.05) & ~term
    goal = torch.randn(T, N, 2, generator=g, dtype=D)
    near = torch.rand(T, N, generator=g) < 0.15
    ag_next = torch.where(near[..., None], goal + 0.1, goal + 3.0)
    # step_t from the rollout's rule, in a plain loop: a step after a segment end starts at 0
    step = torch.zeros(T, N, dtype=torch.int64)
    step0 = torch.randint(0, horizon, (N,), generator=g)
    for n in range(N):
        s = int(step0[n])
        for t in range(T):
            step[t, n] = s
            ended = s + 1 >= horizon or bool(near[t, n]) or bool(term[t, n] | trunc[t, n])
            s = 0 if ended else s + 1
    return r, term, trunc, goal, ag_next, near, step, torch.randn(N, generator=g, dtype=D), horizon, tol


def _reference_segments(r, term, trunc, near, step, open_ret, horizon, gamma):
    """Slow loop: each env's segments, as (t_end, R, discount, terminated, length)."""
    out = {}
    T, N = r.shape
    for n in range(N):
        acc = float(open_ret[n])
        for t in range(T):
            if int(step[t, n]) == 0:
                acc = 0.0
            acc += gamma ** int(step[t, n]) * float(r[t, n])
            if int(step[t, n]) + 1 >= horizon or bool(near[t, n]) or bool(term[t, n] | trunc[t, n]):
                L = int(step[t, n]) + 1
                out[(t, n)] = (acc, gamma**L, bool(term[t, n]), L)
        out[("open", n)] = 0.0 if (t, n) in out else acc
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_segment_ends_and_smdp_transitions_match_a_slow_reference_loop(seed):
    r, term, trunc, goal, ag_next, near, step, open_ret, horizon, tol = _segment_data(seed)
    ends = segment_ends(step, goal, ag_next, term, trunc, horizon=horizon, tolerance=tol)
    torch.testing.assert_close(ends.reached, near)
    torch.testing.assert_close(ends.horizon, step + 1 >= horizon)
    torch.testing.assert_close(ends.episode, term | trunc)
    # the third signal is its own: segment ends that are no episode end exist and stay out of term/trunc
    only_segment = ends.any & ~(term | trunc)
    assert only_segment.any() and not (only_segment & (term | trunc)).any()
    gamma = 0.9
    tr, open_T = smdp_transitions(r, step, ends.any, term, gamma, open_ret)
    ref = _reference_segments(r, term, trunc, near, step, open_ret, horizon, gamma)
    T, N = r.shape
    for t in range(T):
        for n in range(N):
            if (t, n) in ref:
                R, disc, terminated, L = ref[(t, n)]
                assert bool(tr.mask[t, n])
                assert float(tr.reward[t, n]) == pytest.approx(R, rel=1e-10, abs=1e-12)
                assert float(tr.discount[t, n]) == pytest.approx(disc, rel=1e-12)
                assert bool(tr.terminated[t, n]) == terminated and int(tr.length[t, n]) == L
            else:
                assert not bool(tr.mask[t, n]) and float(tr.reward[t, n]) == 0.0
    for n in range(N):
        assert float(open_T[n]) == pytest.approx(ref[("open", n)], rel=1e-10, abs=1e-12)


def test_smdp_gae_matches_a_per_env_chain_reference():
    r, term, trunc, goal, ag_next, near, step, open_ret, horizon, tol = _segment_data(4)
    ends = segment_ends(step, goal, ag_next, term, trunc, horizon=horizon, tolerance=tol)
    tr, _ = smdp_transitions(r, step, ends.any, term, 0.9, open_ret)
    g = torch.Generator().manual_seed(5)
    v_start, v_next = torch.randn(r.shape, generator=g, dtype=D), torch.randn(r.shape, generator=g, dtype=D)
    lam = 0.8
    adv, ret = smdp_gae(tr, term | trunc, v_start, v_next, lam)
    T, N = r.shape
    for n in range(N):
        a_next = 0.0
        for t in reversed(range(T)):
            if not bool(tr.mask[t, n]):
                assert float(adv[t, n]) == 0.0
                continue
            boot = 0.0 if bool(tr.terminated[t, n]) else float(v_next[t, n])
            delta = float(tr.reward[t, n]) + float(tr.discount[t, n]) * boot - float(v_start[t, n])
            cont = 0.0 if bool(term[t, n] | trunc[t, n]) else 1.0
            a = delta + float(tr.discount[t, n]) * lam * cont * a_next
            assert float(adv[t, n]) == pytest.approx(a, rel=1e-10, abs=1e-12)
            assert float(ret[t, n]) == pytest.approx(a + float(v_start[t, n]), rel=1e-10, abs=1e-12)
            a_next = a


# ------------------------------------------------------------------------------ the rollout's carry
def test_rollout_carry_starts_a_segment_exactly_where_the_batch_says_one_ended_across_rollouts():
    torch.manual_seed(0)
    env = envs.make("hrl_nested/PointMaze-U-v0", 6, autoreset_mode="same_step", validate=False)
    goal = goal_bounds(env.goal_space, 1.0, torch.device("cpu"))
    spaces = env.single_observation_space, env.single_action_space, goal
    h = small_hierarchy(*spaces, hidden=(16,), relative_goals=True, horizon=5, tolerance=0.6, norm_obs=True)
    collect = make_rollout(env, h.policy_fn(), 30, reset_carry=h.reset_carry)
    obs, _ = env.reset(seed=0)
    carry = h.initial_carry(obs)
    params = h.rollout_params(h.theta0, h.stats())
    # the statistics travel next to the parameters, never among them
    assert not any(k.startswith("obs_norm") for k in h.theta0) and any(
        k.startswith("obs_norm.") for k in params
    )
    steps, ends = [], []
    for _ in range(2):  # two rollouts: segments cross the boundary through the carry
        res = collect(params, obs, carry)
        b, obs, carry = res.batch, res.obs, res.carry
        e = segment_ends(
            b.carry["step"],
            b.carry["goal"],
            h.achieved_goal(b.next_obs),
            b.terminated,
            b.truncated,
            horizon=5,
            tolerance=0.6,
        )
        steps.append(b.carry["step"])
        ends.append(e.any)
    step, end = torch.cat(steps), torch.cat(ends)
    assert bool((step[1:] == 0).eq(end[:-1]).all())  # a new segment iff the previous step ended one
    assert bool((step < 5).all()) and bool(end.any()) and bool((step > 0).any())
    assert set(torch.cat([b.carry["k"].flatten()]).tolist()) <= {0, 1}
