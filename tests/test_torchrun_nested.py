"""``torchrun --nproc-per-node 2 experiments/train.py --algo nested-hrl ...`` end to end (gloo on CPU): one
run directory written once by rank 0, a checkpoint holding both ranks' envs and open segments, ``--resume``
under torchrun continuing exactly as an uninterrupted run, a one-process resume of it refused by name; a
run directory rank 0 refuses is the same named error on every rank; the resume notice of a simulator env
is printed by rank 0 alone."""

from __future__ import annotations

import json

import pytest
import torch
from _scripts import load_script

from hrl_nested.tracking import reset_for_resume
from tests._torchrun import RUN_FILES, metrics_rows, torchrun

FLAGS = ["--algo", "nested-hrl", "--env", "hrl_nested/FourRooms-v0", "--device", "cpu", "--num-envs", "4"]
FLAGS += ["--eval-episodes", "1", "--wandb-mode", "disabled", "--nested-hrl.hypergrad", "cg"]
FLAGS += ["--nested-hrl.num-steps", "8", "--nested-hrl.n-inner", "2", "--nested-hrl.num-minibatches", "2"]
FLAGS += ["--nested-hrl.hidden", "8", "--nested-hrl.check-every", "1", "--nested-hrl.eval-every", "0"]
FLAGS += ["--nested-hrl.goal-horizon", "3"]  # segments stay open across the checkpoint (8 steps a batch)


def _learning(row: dict) -> dict:
    """A metrics row without its timings (wall clock, splits, steps per second) and evaluation (a run
    evaluates at its last iteration: the interrupted one at 64 steps too)."""
    return {k: v for k, v in row.items() if not (k.endswith("_s") or k == "sps" or k.startswith("eval_"))}


def test_torchrun_nested_hrl_writes_one_run_resumes_and_refuses_a_used_directory(tmp_path, capsys):
    run_dir = tmp_path / "run"
    out = torchrun(*FLAGS, "--total-steps", "64", "--run-dir", str(run_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("nested-hrl on hrl_nested/FourRooms-v0") == 1  # rank 0 alone reports
    assert out.stdout.count("goal bounds from") == 1
    assert sorted(p.name for p in run_dir.iterdir()) == RUN_FILES
    rows = metrics_rows(run_dir)
    assert [r["env_steps"] for r in rows] == [32, 64]  # the union batch: 4 envs x 8 steps
    for r in rows:
        assert r["outer_skipped"] == 0 and r["hypergrad_norm"] > 0
        assert -1.0 - 1e-6 <= r["hypergrad_cosine"] <= 1.0 + 1e-6  # the live check ran under torchrun
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 64 and summary["algo"] == "nested-hrl" and "eval_success_rate" in summary

    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2
    carry0, carry1 = (part["carry"] for part in ckpt["ranks"])
    assert carry0["goal"].shape == carry1["goal"].shape == (2, 2)  # each rank's open segments
    obs0, obs1 = (part["obs"] for part in ckpt["ranks"])
    assert not torch.equal(obs0["observation"], obs1["observation"])

    # one process cannot resume it: each rank's envs and open segments are in the checkpoint
    train = load_script("train.py", "train", reuse=True)
    with pytest.raises(SystemExit) as e:
        train.main(["--resume", str(run_dir), "--total-steps", "96"])
    assert e.value.code == 2
    assert "written by a run of 2 process(es)" in capsys.readouterr().err

    out = torchrun("--resume", str(run_dir), "--total-steps", "96")
    assert out.returncode == 0, out.stderr[-3000:]
    assert [r["env_steps"] for r in metrics_rows(run_dir)] == [32, 64, 96]
    straight = tmp_path / "straight"  # the same run, uninterrupted: resume continued it exactly
    out = torchrun(*FLAGS, "--total-steps", "96", "--run-dir", str(straight))
    assert out.returncode == 0, out.stderr[-3000:]
    assert [_learning(r) for r in metrics_rows(run_dir)] == [_learning(r) for r in metrics_rows(straight)]

    # a run directory in use: every rank exits with the named error (no connection traceback)
    out = torchrun(*FLAGS, "--total-steps", "64", "--run-dir", str(run_dir))
    assert out.returncode != 0
    assert out.stderr.count("error: run dir") == 2, out.stderr[-3000:]
    assert "Connection" not in out.stderr and "gloo" not in out.stderr.lower()
    assert [r["env_steps"] for r in metrics_rows(run_dir)] == [32, 64, 96]


class _Env:
    def reset(self, seed):
        return torch.zeros(1), {}


def test_resume_notice_is_printed_by_rank_zero_alone(monkeypatch, capsys):
    reset_for_resume(_Env(), "CartPole-v1", 0, 3)
    assert "resume: CartPole-v1 keeps its state in a simulator" in capsys.readouterr().out
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    reset_for_resume(_Env(), "CartPole-v1", 0, 3)
    assert capsys.readouterr().out == ""
