"""The flat policy of ``--algo lirpg`` (the nested loop with ``manager=False, shaping="free"``) on a goal env:
it and its critics see the env's desired goal, only episode ends end anything (no goal horizon, no
"subgoal reached"), the goal step's extrinsic reward is kept and not bootstrapped past, and R_φ is exactly
0 before φ's first step. Regression tests for the checks of experiments/results/nested/lirpg_findings.md
(PointMaze-U: 0 of 10 seeds), which found no bug on these paths."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hrl_nested.algos import nested_parts as parts
from hrl_nested.algos.lirpg import LIRPGConfig
from hrl_nested.algos.nested_hrl import _hierarchy, _init_phi
from hrl_nested.algos.ppo import _make_env
from hrl_nested.nested_objective import shaped_advantages
from hrl_nested.rollout import make_rollout
from hrl_nested.shaping import extrinsic_weight

CPU = torch.device("cpu")
ENV = "hrl_nested/PointMaze-U-v0"


def _flat_setup(num_envs: int, **env_kwargs):
    """The env, config and hierarchy `run_nested` builds for ``--algo lirpg`` (small networks)."""
    env = _make_env(ENV, num_envs, CPU, **env_kwargs)
    cfg = LIRPGConfig(num_steps=8, hidden=(8,), num_minibatches=2)
    return env, cfg, _hierarchy(env, cfg, False, CPU)


def _rollout(env, h, steps: int, seed: int = 0):
    torch.manual_seed(seed)
    obs, _ = env.reset(seed=seed)
    carry = h.initial_carry(obs)
    collect = make_rollout(env, h.policy_fn(), steps, capture="none", reset_carry=h.reset_carry)
    stats = h.stats()
    return collect(h.rollout_params(h.theta0, stats), obs, carry), carry, stats


def _gae_reference(r, v, v_next, term, trunc, gamma, lam):
    """Float64 GAE, one env and one step at a time: no bootstrap at a termination, trace cut at any end."""
    r, v, v_next = (x.detach().double() for x in (r, v, v_next))
    adv = torch.zeros_like(r)
    for n in range(r.shape[1]):
        following = 0.0
        for t in reversed(range(r.shape[0])):
            boot = 0.0 if term[t, n] else float(v_next[t, n])
            delta = float(r[t, n]) + gamma * boot - float(v[t, n])
            cut = bool(term[t, n] or trunc[t, n])
            following = delta + (0.0 if cut else gamma * lam * following)
            adv[t, n] = following
    return adv


def test_flat_policy_and_its_critics_are_conditioned_on_the_episodes_desired_goal():
    env, _, h = _flat_setup(4, random_goal=True, max_episode_steps=3)  # a new goal every 3 steps
    result, _, stats = _rollout(env, h, 8)
    batch = result.batch
    assert h.manager is None and h.sub_in == 4 + 2  # (x, y, vx, vy) and the desired goal (x, y)
    # the goal a step acted on is its own episode's, also right after an autoreset and at the final obs
    assert bool(batch.truncated[2].all()) and bool(batch.truncated[5].all())
    torch.testing.assert_close(batch.carry["goal"], batch.obs["desired_goal"], rtol=0, atol=0)
    torch.testing.assert_close(batch.carry["goal"], batch.next_obs["desired_goal"], rtol=0, atol=0)
    assert not torch.equal(batch.obs["desired_goal"][2], batch.obs["desired_goal"][3])  # goals did change
    # the actor and both critics read the goal: moving it alone moves their outputs
    obs = {k: v[0] for k, v in batch.obs.items()}
    moved = {**obs, "desired_goal": obs["desired_goal"] + 1.0}
    x = h.sub_input(obs, obs["desired_goal"], stats)
    x_moved = h.sub_input(moved, moved["desired_goal"], stats)
    k = torch.zeros(4, dtype=torch.int64)
    mean = h.sub_dist(h.theta0, (x, k))[0].mean
    mean_moved = h.sub_dist(h.theta0, (x_moved, k))[0].mean
    assert (mean - mean_moved).abs().max() > 1e-6
    for before, after in zip(h.critic_values(x, k), h.critic_values(x_moved, k)):
        assert (before - after).abs().max() > 1e-4


@pytest.mark.parametrize("gamma, lam", [(0.99, 0.95), (0.9, 0.5)])
def test_without_a_manager_only_episode_ends_count_and_the_goal_reward_is_not_bootstrapped(gamma, lam):
    env, cfg, h = _flat_setup(3)
    cfg = dataclasses.replace(cfg, gamma=gamma, gae_lambda=lam)
    assert h.horizon == 1  # the manager's horizon setting would end a segment at every step: it must not
    result, carry_in, stats = _rollout(env, h, 8)
    term = torch.zeros(8, 3, dtype=torch.bool)
    trunc = torch.zeros(8, 3, dtype=torch.bool)
    rewards = torch.zeros(8, 3)
    term[2, 0], rewards[2, 0] = True, 1.0  # env 0 reaches the goal at step 2
    trunc[5, 1] = True  # env 1 hits its time limit at step 5
    term[6, 2] = trunc[6, 2] = True  # both flags: a termination (no bootstrap)
    rewards[6, 2] = 1.0
    batch = dataclasses.replace(result.batch, terminated=term, truncated=trunc, rewards=rewards)

    prep = parts.prepare(h, batch, carry_in, stats, cfg, "free")

    assert prep.smdp is None and prep.manager_rows is None
    assert not bool(prep.reached.any())
    assert torch.equal(prep.seg_end, term | trunc)
    assert torch.equal(prep.sb.terminated, term)
    assert torch.equal(prep.sb.truncated, trunc & ~term)
    # R_φ is exactly zero before φ's first step, and β = 1: the policy starts as flat PPO on r_ext
    phi = _init_phi(h, cfg, "free", CPU)
    reward_fn = parts.reward_fn_for("free", cfg.gamma)
    assert float(extrinsic_weight(phi)) == 1.0
    assert torch.equal(reward_fn(phi, prep.sb.features), torch.zeros(8, 3))
    adv_w, _ = shaped_advantages(phi, prep.sb, reward_fn, gamma, lam)
    ref_w = _gae_reference(rewards, prep.sb.values, prep.sb.next_values, term, trunc, gamma, lam)
    torch.testing.assert_close(adv_w.double(), ref_w, rtol=1e-5, atol=1e-6)
    for t, n in ((2, 0), (6, 2)):  # the goal step: its reward minus V, nothing after it
        assert float(adv_w[t, n]) == pytest.approx(1.0 - float(prep.sb.values[t, n]), abs=1e-6)
    # the outer loss's extrinsic advantages: the same episode semantics with V_ext
    x = h.sub_input(batch.obs, batch.carry["goal"], stats)
    x_next = h.sub_input(batch.next_obs, batch.carry["goal"], stats)
    k = batch.carry["k"]
    ref_ext = _gae_reference(
        rewards, h.critic_values(x, k)[1], h.critic_values(x_next, k)[1], term, trunc, gamma, lam
    )
    torch.testing.assert_close(prep.pb.adv_ext.double(), ref_ext.reshape(-1), rtol=1e-5, atol=1e-6)
