"""The manager's PPO in the nested loop: it trains on the segments that ended, only on them, with the
log-probs its rollout saw; the loop's own decisions (estimator checks, resume refusals, the training
success rate) are what the config and the env say."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import envs
from hrl_nested.algos import Task, nested_hrl, nested_steps
from hrl_nested.algos import nested_parts as parts
from hrl_nested.hierarchy import goal_bounds
from hrl_nested.rollout import make_rollout
from tests._hierarchies import small_hierarchy, small_nested_config
from tests._scripts import load_script

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread


def _setup(horizon: int, norm_obs: bool, num_envs: int = 4, num_steps: int = 8):
    torch.manual_seed(0)
    env = envs.make("hrl_nested/PointMaze-U-v0", num_envs, autoreset_mode="same_step", validate=False)
    spaces = env.single_observation_space, env.single_action_space, goal_bounds(env.goal_space, 1.0, CPU)
    h = small_hierarchy(*spaces, horizon=horizon, norm_obs=norm_obs)
    cfg = nested_hrl.NestedHRLConfig(num_steps=num_steps, manager_epochs=2, manager_minibatches=2)
    collect = make_rollout(env, h.policy_fn(), num_steps, reset_carry=h.reset_carry)
    obs, _ = env.reset(seed=0)
    return env, h, cfg, collect, obs, h.initial_carry(obs)


def _rollout_and_prepare(h, cfg, collect, obs, carry):
    stats = h.stats()
    res = collect(h.rollout_params(h.theta0, stats), obs, carry)
    prep = parts.prepare(h, res.batch, carry, stats, cfg, "goal")
    return res, prep, {**res.carry, "seg_return": prep.open_return}


def test_a_manager_update_without_ended_segments_leaves_the_manager_and_its_optimizer_unchanged():
    """Adam moves parameters on zero gradients through its momentum: with no segment ended since the
    last update there must be no optimizer step at all."""
    env, h, cfg, collect, obs, carry = _setup(horizon=2, norm_obs=False)
    opt = torch.optim.Adam(h.manager.parameters(), lr=1e-2, eps=1e-5)
    res, prep, carry = _rollout_and_prepare(h, cfg, collect, obs, carry)
    assert int(prep.smdp.mask.sum()) > 0
    before = copy.deepcopy(h.manager.state_dict())
    stats = parts.update_manager(h, opt, [prep.manager_rows], cfg)  # builds up Adam's momentum
    assert any(not torch.equal(before[k], v) for k, v in h.manager.state_dict().items())
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in stats.values())

    h.horizon, h.tolerance = 10_000, -1.0  # no segment can end in the next (short) rollout
    res, prep, carry = _rollout_and_prepare(h, cfg, collect, res.obs, carry)
    assert int(prep.smdp.mask.sum()) == 0 and not bool((res.batch.terminated | res.batch.truncated).any())
    params, opt_state = copy.deepcopy(h.manager.state_dict()), copy.deepcopy(opt.state_dict())
    stats = parts.update_manager(h, opt, [prep.manager_rows], cfg)
    for k, v in h.manager.state_dict().items():
        assert torch.equal(v, params[k]), f"manager parameter {k} moved without a single ended segment"
    after = opt.state_dict()
    assert after["state"].keys() == opt_state["state"].keys()
    for i, s in opt_state["state"].items():
        for k, v in s.items():
            assert torch.equal(torch.as_tensor(after["state"][i][k]), torch.as_tensor(v)), (
                f"Adam's state {k} of parameter {i} changed without a single ended segment"
            )
    assert float(stats["manager_transitions"]) == 0.0


def test_manager_rows_are_the_ended_segments_only():
    env, h, cfg, collect, obs, carry = _setup(horizon=3, norm_obs=False)
    _, prep, _ = _rollout_and_prepare(h, cfg, collect, obs, carry)
    rows = prep.manager_rows
    n = int(prep.smdp.mask.sum())
    assert 0 < n < prep.smdp.mask.numel()
    assert "weights" not in rows and all(v.shape[0] == n for v in rows.values())
    torch.testing.assert_close(rows["returns"], rows["advantages"] + rows["values"])


def test_manager_ratio_is_one_at_zero_policy_change_for_segments_crossing_a_rollout_boundary():
    """``m_logp`` was computed with the observation statistics in use at the segment's start; the
    manager's rows must present the input it saw then, even after the statistics were updated."""
    env, h, cfg, collect, obs, carry = _setup(horizon=6, norm_obs=True, num_steps=4)
    res, prep, carry = _rollout_and_prepare(h, cfg, collect, obs, carry)
    h.rms.update(res.batch.obs)  # the loop updates the statistics between rollouts
    res, prep, carry = _rollout_and_prepare(h, cfg, collect, res.obs, carry)
    step, mask = res.batch.carry["step"], prep.smdp.mask
    t = torch.arange(step.shape[0])[:, None].expand_as(step)
    crossing = mask & (step > t)  # the segment ending here started in the previous rollout
    assert bool(crossing.any()), "no segment crosses the boundary: lengthen the horizon"
    rows = prep.manager_rows
    params = {k: v.detach() for k, v in h.manager.named_parameters()}
    with torch.no_grad():
        dist, _ = h.manager_dist(params, rows["obs"])
        ratio = (dist.log_prob(rows["actions"]) - rows["logprobs"]).exp()
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ the loop's decisions
def _task(env: str, steps: int, num_envs: int = 4) -> Task:
    return Task(env=env, total_steps=steps, num_envs=num_envs, seed=0, device="cpu", eval_episodes=2)


def test_neumann_alpha_is_checked_once_when_check_every_is_zero(monkeypatch):
    calls = []
    real = nested_steps.check_neumann_alpha
    monkeypatch.setattr(nested_steps, "check_neumann_alpha", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = small_nested_config(hypergrad="neumann", check_every=0, eval_every=0)
    summary = nested_hrl.train(_task("hrl_nested/FourRooms-v0", 3 * 32), cfg)
    assert summary["iterations"] == 3
    assert len(calls) == 1, (
        f"check_every=0 (never): expected one alpha check at the first φ step, got {len(calls)}"
    )


@pytest.fixture(scope="module")
def main():
    module = load_script("train.py", "train_script_nested_mgr")
    return module.main


TINY = ["--num-envs", "4", "--eval-episodes", "2", "--device", "cpu", "--wandb-mode", "disabled"]


@pytest.mark.parametrize("algo", ["hrl", "nested-hrl"])
def test_resume_changing_the_number_of_subpolicies_exits_2_before_writing(main, tmp_path, capsys, algo):
    run_dir = tmp_path / "run"
    flags = [f"--{algo}.num-steps", "8", f"--{algo}.n-inner", "1", f"--{algo}.num-minibatches", "2",
             f"--{algo}.hidden", "8", f"--{algo}.num-subpolicies", "2"]  # fmt: skip
    main(["--algo", algo, "--env", "hrl_nested/FourRooms-v0", "--total-steps", "32",
          "--run-dir", str(run_dir), *TINY, *flags])  # fmt: skip
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.rglob("*") if p.is_file()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["--resume", str(run_dir), "--total-steps", "64", f"--{algo}.num-subpolicies", "3"])
    assert e.value.code == 2
    assert f"--{algo}.num-subpolicies" in capsys.readouterr().err
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.rglob("*") if p.is_file()}
    assert after == before


def test_training_success_rate_is_success_not_termination(monkeypatch, tmp_path):
    """A wrapped goal env that terminates without success (a failure state) must not report success."""
    monkeypatch.syspath_prepend(str(REPO))
    cfg = small_nested_config(n_inner=1, eval_every=0)
    from hrl_nested.tracking import Run

    run = Run(tmp_path / "r", config={}, algo="nested-hrl", env="x", seed=0, total_steps=32, progress=False)
    nested_hrl.train(_task("tests._nested_goal_env:FailingGoalEnv", 32), cfg, run)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["episodes"] > 0  # episodes ended (all by failing termination)
    assert rows[0].get("success_rate", 0.0) == 0.0
