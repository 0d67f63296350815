"""A user's environment, defined only in tests/: registers, passes the checker, trains via train.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import envs

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINT = "tests.custom_env_example:ReachTargetEnv"


@pytest.fixture
def importable_tests(monkeypatch):
    """Make ``tests.custom_env_example`` importable the way a user's package is: from the repo root."""
    monkeypatch.syspath_prepend(str(REPO))


def test_registers_with_a_vector_entry_point(importable_tests):
    env_id = "my_project/ReachTarget-v0"
    if env_id not in gym.registry:
        gym.register(id=env_id, vector_entry_point=ENTRY_POINT, max_episode_steps=30)
    try:
        env = gym.make_vec(env_id, num_envs=8, autoreset_mode="same_step")
        assert type(env).__name__ == "ReachTargetEnv" and env.max_episode_steps == 30
        same = envs.make(env_id, num_envs=8, device="cpu", dtype=torch.float64)  # any namespace
        assert type(same).__name__ == "ReachTargetEnv" and same.dtype == torch.float64
        assert envs.check_vector_env(env) == [] and envs.check_vector_env(same) == []
    finally:
        gym.registry.pop(env_id, None)


def test_entry_point_passes_the_checker(importable_tests):
    env = envs.make(ENTRY_POINT, num_envs=16)
    assert type(env).__name__ == "ReachTargetEnv"
    assert envs.check_vector_env(env) == []


def test_trains_through_the_train_script(tmp_path):
    script = REPO / "experiments" / "train.py"
    if not script.exists():
        pytest.skip("experiments/train.py is not there yet")
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, str(script), "--algo", "ppo", "--env", ENTRY_POINT, "--total-steps", "1536",
        "--num-envs", "16", "--seed", "0", "--device", "cpu", "--run-dir", str(run_dir),
        "--wandb-mode", "disabled", "--eval-episodes", "4",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env"] == ENTRY_POINT and summary["env_steps"] >= 1536
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    assert len(metrics) >= 1 and all("env_steps" in m for m in metrics)
