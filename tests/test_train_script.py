"""Subprocess smoke runs of experiments/train.py: defaults, run directory, W&B offline, resume, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "train.py"
TINY = ["--total-steps", "1024", "--num-envs", "32", "--ppo.num-steps", "16", "--eval-episodes", "2",
        "--device", "cpu"]  # fmt: skip


def _env(tmp_path: Path) -> dict[str, str]:
    """A clean environment: no W&B key (an empty home), W&B files under tmp_path, 2 CPU threads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), WANDB_DIR=str(tmp_path / "wandb_dir"), WANDB_SILENT="true",
               OMP_NUM_THREADS="2", PYTHONPATH=str(REPO))  # fmt: skip
    return env


def _train(tmp_path: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd or tmp_path, env=_env(tmp_path),
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_defaults_learn_cartpole_and_write_the_run_dir(tmp_path):
    """``python experiments/train.py`` with no flags: the README's main command.

    The threshold itself (475) is `test_ppo.py::test_ppo_solves_cartpole`'s job: it is reached within
    this budget, but the last evaluation of a fixed budget varies with the seed (400-500).
    """
    proc = _train(tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("ppo-hrl_nested_CartPole-v1-0-")
    for name in ("config.json", "metrics.jsonl", "summary.json", "checkpoint.pt"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval_return_mean"] >= 200.0, summary  # a random policy scores about 20
    # No API key: online fell back to offline with one line, and W&B wrote an offline run.
    assert proc.stdout.count("W&B: no API key") == 1
    assert list((tmp_path / "wandb_dir" / "wandb").glob("offline-run-*"))
    assert "Traceback" not in proc.stderr


def test_tiny_run_writes_every_file(tmp_path):
    run_dir = tmp_path / "run"
    proc = _train(tmp_path, *TINY, "--run-dir", str(run_dir), "--wandb-mode", "disabled", "--seed", "5")
    assert proc.returncode == 0, proc.stderr
    config = json.loads((run_dir / "config.json").read_text())
    assert config["algo"] == "ppo" and config["seed"] == 5 and config["ppo"]["num_steps"] == 16
    rows = _rows(run_dir)
    assert [r["env_steps"] for r in rows] == [512, 1024]
    for row in rows:
        assert {"env_steps", "wall_s", "sps", "policy_loss", "value_loss", "entropy"} <= row.keys()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"algo", "env", "seed", "env_steps", "wall_s", "eval_return_mean"} <= summary.keys()
    assert summary["env"] == "hrl_nested/CartPole-v1" and summary["env_steps"] == 1024
    assert "eval_success_rate" not in summary  # CartPole is not a goal env
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["env_steps"] == 1024
    assert not (tmp_path / "wandb_dir").exists()  # disabled: W&B wrote nothing

    # Never overwrite a run.
    again = _train(tmp_path, *TINY, "--run-dir", str(run_dir), "--wandb-mode", "disabled")
    assert again.returncode == 2
    assert "not empty" in again.stderr and "--resume" in again.stderr
    assert "Traceback" not in again.stderr


def test_offline_wandb_writes_its_files(tmp_path):
    run_dir = tmp_path / "run"
    proc = _train(tmp_path, *TINY, "--run-dir", str(run_dir), "--wandb-mode", "offline")
    assert proc.returncode == 0, proc.stderr
    assert "W&B: no API key" not in proc.stdout  # offline was asked for: no notice
    assert len(list((tmp_path / "wandb_dir" / "wandb").glob("offline-run-*"))) == 1
    assert (run_dir / "summary.json").is_file()


def test_resume_continues_with_unique_rows(tmp_path):
    run_dir = tmp_path / "run"
    first = _train(tmp_path, *TINY, "--run-dir", str(run_dir), "--wandb-mode", "offline")
    assert first.returncode == 0, first.stderr
    run_id = torch.load(run_dir / "checkpoint.pt", weights_only=True)["wandb_run_id"]

    resumed = _train(tmp_path, "--resume", str(run_dir), "--total-steps", "2048", "--wandb-mode", "offline")
    assert resumed.returncode == 0, resumed.stderr
    steps = [r["env_steps"] for r in _rows(run_dir)]
    assert steps == [512, 1024, 1536, 2048]  # no row twice, env_steps continue
    assert [r["iteration"] for r in _rows(run_dir)] == [1, 2, 3, 4]
    walls = [r["wall_s"] for r in _rows(run_dir)]
    assert walls == sorted(walls)  # training time accumulates across the restart
    config = json.loads((run_dir / "config.json").read_text())
    assert config["total_steps"] == 2048 and config["ppo"]["num_steps"] == 16  # flags over the saved config
    assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == 2048
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["wandb_run_id"] == run_id  # the same W&B run continues
    assert len(list((tmp_path / "wandb_dir" / "wandb").glob(f"offline-run-*-{run_id}"))) == 2


def test_resume_errors_are_clear(tmp_path):
    missing = _train(tmp_path, "--resume", str(tmp_path / "nope"), "--wandb-mode", "disabled")
    assert missing.returncode == 2 and "no config.json" in missing.stderr

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"algo": "ppo", "num_envs": 32, "total_steps": 1024}))
    (run_dir / "checkpoint.pt").write_bytes(b"\x00garbage")
    corrupt = _train(tmp_path, "--resume", str(run_dir), "--wandb-mode", "disabled")
    assert corrupt.returncode == 2, corrupt.stderr
    assert "corrupt" in corrupt.stderr and "Traceback" not in corrupt.stderr

    other_env = _train(tmp_path, "--resume", str(run_dir), "--num-envs", "64", "--wandb-mode", "disabled")
    assert other_env.returncode == 2 and "num-envs" in other_env.stderr


def test_help_lists_the_flags(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for flag in ("--algo", "--env", "--total-steps", "--num-envs", "--seed", "--device", "--run-dir",
                 "--wandb-mode", "--wandb-project", "--resume", "--eval-episodes", "--checkpoint-every-s",
                 "--ppo.lr", "--ppo.num-steps"):  # fmt: skip
        assert flag in proc.stdout, flag
