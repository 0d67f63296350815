"""Bad flags to experiments/train.py: a message naming the flag as typed, what was expected and what came,
exit code 2, no traceback, and no file written (so a retry with the same --run-dir works)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hrl_nested.algos import ConfigError, Task
from hrl_nested.algos.ppo import PPOConfig, train
from tests._scripts import load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "train.py"
BASE = ["--total-steps", "1024", "--num-envs", "8", "--ppo.num-steps", "16", "--eval-episodes", "2",
        "--wandb-mode", "disabled"]  # fmt: skip

# (flags, the flag the message must name, text the message must contain)
BAD = [
    (["--ppo.num-minibatches", "0"], "--ppo.num-minibatches", "positive"),
    (["--ppo.num-minibatches", "7"], "--ppo.num-minibatches", "divisor of the batch size"),  # 8 x 16 = 128
    (["--num-envs", "0"], "--num-envs", "positive"),
    (["--eval-episodes", "0"], "--eval-episodes", "positive"),
    (["--total-steps", "-5"], "--total-steps", "positive"),
    (["--ppo.clip-coef", "-0.2"], "--ppo.clip-coef", "> 0"),
    (["--ppo.lr", "0"], "--ppo.lr", "> 0"),
    (["--ppo.gamma", "1.5"], "--ppo.gamma", "<= 1"),
    (["--ppo.hidden", "64", "0"], "--ppo.hidden", "positive layer sizes"),
    (["--device", "nonsense"], "--device", "cpu, cuda"),
]
if not torch.cuda.is_available():
    BAD.append((["--device", "cuda"], "--device", "CUDA device(s) here"))
IDS = [" ".join(flags) for flags, _, _ in BAD]
# The list, also run as a real process (each start costs seconds of imports).
LISTED = [b for b in BAD if b[0][0] in ("--num-envs", "--eval-episodes", "--total-steps", "--ppo.clip-coef")
          or b[0] in (["--ppo.num-minibatches", "0"], ["--device", "cuda"])]  # fmt: skip


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        HOME=str(tmp_path), WANDB_DIR=str(tmp_path / "wandb"), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"
    )
    return env


def _check_message(err: str, flag: str, expected: str, given: list[str]) -> None:
    assert "Traceback" not in err, err
    line = next(ln for ln in err.splitlines() if ln.startswith("error:"))
    assert flag in line and expected in line, line
    assert f"got {' '.join(given[1:])}" in line, line  # what came, as typed


@pytest.mark.parametrize("flags, flag, expected", LISTED, ids=[" ".join(f) for f, _, _ in LISTED])
def test_bad_flag_via_subprocess(tmp_path, flags, flag, expected):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *BASE, *flags, "--run-dir", str(run_dir)],
        cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    _check_message(proc.stderr, flag, expected, flags)
    assert not run_dir.exists()
    assert not (tmp_path / "runs").exists() and not (tmp_path / "wandb").exists()


@pytest.fixture(scope="module")
def main():
    return load_script(SCRIPT.name, "train_script_cli").main


@pytest.mark.parametrize("flags, flag, expected", BAD, ids=IDS)
def test_bad_flag_via_main(main, tmp_path, capsys, flags, flag, expected):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main([*BASE, *flags, "--run-dir", str(run_dir)])
    assert exc.value.code == 2
    _check_message(capsys.readouterr().err, flag, expected, flags)
    assert not run_dir.exists()


def test_a_retry_with_the_same_run_dir_works_after_a_bad_flag(main, tmp_path, capsys):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit):
        main([*BASE, "--ppo.num-minibatches", "0", "--run-dir", str(run_dir), "--device", "cpu"])
    summary = main([*BASE, "--run-dir", str(run_dir), "--device", "cpu"])
    assert summary["env_steps"] == 1024


def test_configs_validate_themselves_in_library_use():
    """The same checks guard `train` called directly, before any env is built."""
    with pytest.raises(ConfigError, match=r"--ppo.num-minibatches: expected a positive int, got 0"):
        PPOConfig(num_minibatches=0).validate()
    with pytest.raises(ConfigError, match=r"--ppo.num-minibatches: expected a divisor.*= 96, got 64"):
        PPOConfig(num_steps=16, num_minibatches=64).validate(Task(num_envs=6))
    with pytest.raises(ConfigError, match=r"--total-steps: expected a positive int, got -5"):
        Task(total_steps=-5).validate()
    with pytest.raises(ConfigError, match="--ppo.clip-coef"):
        train(Task(device="cpu", total_steps=64, num_envs=4), PPOConfig(clip_coef=-0.2))
    PPOConfig().validate(Task())  # the defaults are valid
    assert ConfigError("num_envs", "a positive int", 0).flag == "--num-envs"


@pytest.mark.parametrize(
    "env_id, why",
    [("does_not_exist:Nope", "No module named 'does_not_exist'"), ("gymnasium.spaces:Box", "TypeError")],
    ids=["missing-module", "not-an-env-class"],
)
def test_an_env_that_cannot_be_made_is_a_flag_error_and_leaves_no_run_dir(tmp_path, env_id, why):
    """The env is built inside `train`, after the run is set up: the run directory must still not exist."""
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *BASE, "--env", env_id, "--run-dir", str(run_dir)],
        cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("error:"))
    assert "--env" in line and f"got {env_id}" in line and why in line, line
    assert not run_dir.exists()


def test_device_is_checked_in_one_place():
    """`Task.validate` and the algorithms' `resolve_device` give the same verdict and the same message."""
    from hrl_nested.algos import resolve_device

    bad = ["nonsense", "cuda:99"] + ([] if torch.cuda.is_available() else ["cuda", "cuda:0"])
    for device in bad:
        with pytest.raises(ConfigError) as from_task:
            Task(device=device).validate()
        with pytest.raises(ConfigError) as from_resolve:
            resolve_device(device)
        assert str(from_resolve.value) == str(from_task.value)
        assert from_resolve.value.flag == "--device" and f"got {device}" in str(from_resolve.value)
    assert resolve_device("cpu") == torch.device("cpu")
    Task(device="cpu").validate()
