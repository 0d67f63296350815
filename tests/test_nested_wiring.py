"""Wiring of the nested-HRL loop (issue 15): which rewards, values and masks reach GAE, checked with the
reusable helpers of `tests/test_ppo_wiring.py` against masks and rewards rebuilt here step by step.

One iteration of the shared loop (``hrl``: the fixed shaping ``r_w = β r_ext - ||ag(s') - g||`` with
β = 1, so the expected shaped reward is known without φ), observation normalization off. The subpolicies'
critics see ``(observation, subgoal)``; the check runs on those inputs, so "the next step's value
inside a trace" also means "for the same goal": a trace that crossed a goal change would fail it.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

import envs
from hrl_nested.algos import Task, hrl, nested_hrl
from hrl_nested.algos import nested_parts as parts
from tests.test_ppo_wiring import assert_gae_wiring, record_calls, record_rollouts

HORIZON, TOL = 3, 0.15


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread


def _one_iteration(monkeypatch):
    real_make = envs.make
    monkeypatch.setattr(envs, "make", lambda *a, **k: real_make(*a, **{"max_episode_steps": 7, **k}))
    batches = record_rollouts(monkeypatch, nested_hrl)
    hs = []
    real_h = nested_hrl._hierarchy
    monkeypatch.setattr(nested_hrl, "_hierarchy", lambda *a: hs.append(real_h(*a)) or hs[-1])
    critics = []
    calls = record_calls(
        monkeypatch, parts, "gae", on_call=lambda c: critics.append(copy.deepcopy(hs[0].critics))
    )
    cfg = hrl.HRLConfig(
        num_steps=16,
        n_inner=1,
        num_minibatches=2,
        hidden=(8,),
        norm_obs=False,
        goal_horizon=HORIZON,
        goal_tolerance=TOL,
        eval_every=0,
    )
    task = Task(
        env="hrl_nested/FourRooms-v0", total_steps=16 * 6, num_envs=6, seed=0, device="cpu", eval_episodes=1
    )
    hrl.train(task, cfg)
    return cfg, batches[0], hs[0], calls, critics


def _reference_masks(batch, h):
    """Segment ends, subgoal reached and the per-step masks, one env and one step at a time."""
    c, T, N = batch.carry, *batch.rewards.shape
    ag_next = h.achieved_goal(batch.next_obs)
    reached = torch.zeros(T, N, dtype=torch.bool)
    seg_end = torch.zeros(T, N, dtype=torch.bool)
    shaped = torch.zeros(T, N)
    for t in range(T):
        for i in range(N):
            dist = math.dist(ag_next[t, i].tolist(), c["goal"][t, i].tolist())
            reached[t, i] = dist <= TOL
            episode_end = bool(batch.terminated[t, i] | batch.truncated[t, i])
            seg_end[t, i] = int(c["step"][t, i]) + 1 >= HORIZON or bool(reached[t, i]) or episode_end
            shaped[t, i] = float(batch.rewards[t, i]) - dist  # β = 1, R = -||ag(s') - g||
    return reached, seg_end, shaped


def test_nested_loop_feeds_gae_goal_conditioned_values_and_cuts_at_goal_changes(monkeypatch):
    cfg, batch, h, calls, critics = _one_iteration(monkeypatch)
    assert len(calls) >= 2  # prepare (V_ext) then the V_w targets, in the first iteration
    reached, seg_end, shaped = _reference_masks(batch, h)
    term, trunc = batch.terminated, batch.truncated
    assert bool(trunc.any()) and bool(reached.any()) and bool((seg_end & ~reached & ~term & ~trunc).any())
    c = batch.carry
    # The critics' inputs: (observation, the goal of step t) at s_t and at s_{t+1} (same goal).
    x = h.sub_input(batch.obs, c["goal"], {})
    x_next = h.sub_input(batch.next_obs, c["goal"], {})

    def as_batch(critic, terminated, truncated):
        with torch.no_grad():
            values = critic(x).squeeze(-1)
        return dataclasses.replace(
            batch, obs=x, next_obs=x_next, values=values, terminated=terminated, truncated=truncated
        )

    def value_fn(critic):
        return lambda row: critic(row).squeeze(-1)

    # V_ext: extrinsic rewards; episode terminations terminal; every segment end (and truncation) a cut
    # that bootstraps with V_ext(s', g_old).
    ext_trunc = (seg_end | trunc) & ~term
    v_ext = critics[0]["ext"]
    assert_gae_wiring(
        calls[0], as_batch(v_ext, term, ext_trunc), value_fn(v_ext), gamma=cfg.gamma, lam=cfg.gae_lambda
    )
    # V_w: shaped rewards; reaching the subgoal is terminal for the subpolicy; a horizon end or an
    # episode's truncation bootstraps with V_w(s', g_old) from the true final observation.
    sub_term = term | reached
    sub_trunc = (seg_end | trunc) & ~sub_term
    v_w = critics[1]["w"]
    torch.testing.assert_close(calls[1].args["r_t"], shaped, atol=1e-5, rtol=1e-5)
    assert_gae_wiring(
        calls[1],
        as_batch(v_w, sub_term, sub_trunc),
        value_fn(v_w),
        gamma=cfg.gamma,
        lam=cfg.gae_lambda,
        rewards=calls[1].args["r_t"],
        atol=1e-5,
    )
