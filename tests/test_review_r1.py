"""Review R1: regressions found in the torchrun and K-seed PPO changes, each checked against an
independent reference (one process's own update)."""

from __future__ import annotations

import copy
import json
import threading
import time

import gymnasium as gym
import pytest
import torch

import envs
from hrl_nested.algos.ppo import PPOConfig, _make_update_step
from hrl_nested.algos.ppo_distributed import MINIBATCH_SEED_OFFSET, ShardedUpdate
from hrl_nested.distributed import World
from hrl_nested.networks import ActorCritic
from hrl_nested.tracking import Run

T, N, SEED = 4, 6, 2
CFG = PPOConfig(num_steps=T, lr=3e-3, update_epochs=2, num_minibatches=3, max_grad_norm=0.5, anneal_lr=False)


def _goal_batch(space: gym.spaces.Dict, act_dim: int) -> dict:
    """A (T * N)-row float64 batch with goal-``Dict`` observations, as the learner flattens it."""
    g = torch.Generator().manual_seed(4)
    rows = T * N
    obs = {k: torch.randn(rows, *s.shape, generator=g, dtype=torch.float64) for k, s in space.spaces.items()}
    return {
        "obs": obs,
        "actions": torch.randn(rows, act_dim, generator=g, dtype=torch.float64),
        "logprobs": -2.0 + 0.3 * torch.randn(rows, generator=g, dtype=torch.float64),
        "values": torch.randn(rows, generator=g, dtype=torch.float64),
        "advantages": 1.5 * torch.randn(rows, generator=g, dtype=torch.float64) + 0.2,
        "returns": torch.randn(rows, generator=g, dtype=torch.float64),
    }


def test_sharded_update_takes_goal_dict_observations():
    """``torchrun ... --env hrl_nested/PointMaze-U-v0`` (the README's example): the sharded update must take
    a batch whose ``obs`` is a dict (it crashed reading ``.device`` off the first column). With one rank it
    is exactly one process's update on the same minibatch permutation."""
    env = envs.make("hrl_nested/PointMaze-U-v0", 2, device="cpu")
    space, act = env.single_observation_space, env.single_action_space
    assert isinstance(space, gym.spaces.Dict)
    torch.manual_seed(0)
    agent = ActorCritic(space, act, hidden=(16, 16)).double()
    flat = _goal_batch(space, act.shape[0])

    dist_agent = copy.deepcopy(agent)
    opt = torch.optim.Adam(dist_agent.parameters(), lr=CFG.lr, eps=1e-5)
    stats = ShardedUpdate(dist_agent, opt, CFG, World(), N, SEED).update(flat)

    ref_agent = copy.deepcopy(agent)
    ref_opt = torch.optim.Adam(ref_agent.parameters(), lr=CFG.lr, eps=1e-5)
    step = _make_update_step(ref_agent, ref_opt, CFG)
    g = torch.Generator().manual_seed(SEED + MINIBATCH_SEED_OFFSET)
    size, total = T * N // CFG.num_minibatches, torch.zeros(6, dtype=torch.float64)
    for _ in range(CFG.update_epochs):
        perm = torch.randperm(T * N, generator=g)
        for start in range(0, T * N, size):
            idx = perm[start : start + size]
            mb = {
                k: ({kk: vv[idx] for kk, vv in v.items()} if isinstance(v, dict) else v[idx])
                for k, v in flat.items()
            }
            total += step(mb)
    moved = max((a - b).abs().max().item() for a, b in zip(ref_agent.parameters(), agent.parameters()))
    assert moved > 1e-3
    for p, ref in zip(dist_agent.parameters(), ref_agent.parameters(), strict=True):
        torch.testing.assert_close(p, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(
        stats, total / (CFG.update_epochs * CFG.num_minibatches), rtol=1e-8, atol=1e-12
    )


def test_k_seed_run_that_crashes_keeps_every_row_logged_before(tmp_path, monkeypatch):
    """The background `RowWriter`: a K-seed run that fails in iteration 4 has rows 1-3 of every seed on
    disk (the rows of iteration 3 were still pending in the writer thread when the error came)."""
    from hrl_nested.algos import Task, ppo_multiseed

    calls = {"n": 0}
    episode_stats = ppo_multiseed._episode_stats

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated failure in iteration 4")
        return episode_stats(*args, **kwargs)

    monkeypatch.setattr(ppo_multiseed, "_episode_stats", failing)
    log = Run.log

    def slow_in_background(self, row):  # the writer thread lags: a lost pending batch shows
        if row["iteration"] == 3 and threading.current_thread() is not threading.main_thread():
            time.sleep(1.0)  # longer than iteration 4 takes to fail
        return log(self, row)

    monkeypatch.setattr(Run, "log", slow_in_background)
    task = Task(total_steps=16 * 8 * 6, num_envs=16, eval_episodes=2, seed=0, device="cpu")
    cfg = PPOConfig(num_steps=8, num_minibatches=2, eval_every=0)
    runs = ppo_multiseed.seed_runs(
        tmp_path, {}, algo="ppo", env=task.env, seeds=[0, 1, 2], total_steps=task.total_steps,
        wandb_mode="disabled", progress=False,
    )  # fmt: skip
    probe = ppo_multiseed.RowWriter(runs)
    assert probe._pool is not None  # files only: the rows really go through the writer thread
    probe.close()
    try:
        with pytest.raises(RuntimeError, match="simulated failure"):
            ppo_multiseed.train_seeds(task, cfg, 3, runs)
    finally:
        for run in runs:
            run.close()
    for s in range(3):
        lines = (tmp_path / f"seed-{s}" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["iteration"] for line in lines] == [1, 2, 3], s


def test_resuming_one_seed_of_a_k_seed_run_says_why_it_cannot(tmp_path):
    """A seed directory of a ``--num-seeds K`` run holds no env state: resuming it as a single run is a
    `CheckpointError` that says so (not "written by another version or algorithm, or edited")."""
    from hrl_nested.algos import Task, ppo, ppo_multiseed
    from hrl_nested.tracking import CheckpointError

    task = Task(total_steps=8 * 16, num_envs=8, eval_episodes=2, seed=0, device="cpu")
    cfg = PPOConfig(num_steps=16, num_minibatches=2)
    runs = ppo_multiseed.seed_runs(
        tmp_path, {}, algo="ppo", env=task.env, seeds=[0, 1], total_steps=task.total_steps,
        wandb_mode="disabled", progress=False,
    )  # fmt: skip
    ppo_multiseed.train_seeds(task, cfg, 2, runs)
    seed_dir = tmp_path / "seed-0"
    rows_before = (seed_dir / "metrics.jsonl").read_text()
    with Run(seed_dir, config={}, algo="ppo", env=task.env, seed=0, total_steps=256, resume=True) as run:
        with pytest.raises(CheckpointError, match=r"--num-seeds.*cannot be resumed"):
            ppo.train(Task(**{**task.__dict__, "total_steps": 256}), cfg, run)
    assert (seed_dir / "metrics.jsonl").read_text() == rows_before
