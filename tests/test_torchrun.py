"""``torchrun --nproc-per-node 2 experiments/train.py --algo ppo ...`` end to end (gloo on CPU): one run
directory written by rank 0, a checkpoint holding both ranks' envs, ``--resume`` under torchrun, and a
clear error for a resume with another world size."""

from __future__ import annotations

import json

import pytest
import torch
from _scripts import load_script

from tests._torchrun import RUN_FILES, metrics_rows, torchrun


def test_torchrun_ppo_writes_one_run_and_resumes(tmp_path, capsys):
    run_dir = tmp_path / "run"
    flags = ["--algo", "ppo", "--env", "hrl_nested/CartPole-v1", "--device", "cpu", "--num-envs", "8"]
    flags += ["--ppo.num-steps", "16", "--ppo.num-minibatches", "4", "--eval-episodes", "2"]
    out = torchrun(*flags, "--total-steps", "256", "--run-dir", str(run_dir), "--wandb-mode", "disabled")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("ppo on hrl_nested/CartPole-v1") == 1  # rank 0 alone reports
    assert sorted(p.name for p in run_dir.iterdir()) == RUN_FILES
    rows = metrics_rows(run_dir)
    assert [r["env_steps"] for r in rows] == [128, 256]  # the union batch: 8 envs x 16 steps
    assert all("wall_s" in r for r in rows) and "eval_return_mean" in rows[-1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 256 and summary["algo"] == "ppo"
    assert json.loads((run_dir / "config.json").read_text())["num_envs"] == 8

    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2
    obs0, obs1 = (part["obs"] for part in ckpt["ranks"])
    assert obs0.shape == obs1.shape == (4, 4) and not torch.equal(obs0, obs1)

    out = torchrun("--resume", str(run_dir), "--total-steps", "384")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = metrics_rows(run_dir)
    assert [r["env_steps"] for r in rows] == [128, 256, 384]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 384 and summary["env_state_restored"] is True

    # one process cannot continue a two-process run: a clear error, the run directory unchanged
    train = load_script("train.py", "train_script_torchrun")
    with pytest.raises(SystemExit) as e:
        train.main(["--resume", str(run_dir), "--total-steps", "512"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "written by a run of 2 process(es)" in err and "this run has 1" in err
    assert len(metrics_rows(run_dir)) == 3
