"""A resume that cannot continue the run changes nothing in its directory and says why.

A change to a state-shaping flag (batch shape, network sizes, normalization) is refused with a named error
and exit code 2 before anything is written; a checkpoint that does not fit, or lacks a key, is a
`CheckpointError` naming the file, raised before ``config.json`` or ``metrics.jsonl`` are touched.
"""

from pathlib import Path

import pytest
import torch

from hrl_nested.algos import Task
from hrl_nested.algos.ppo import PPOConfig, train
from hrl_nested.tracking import CheckpointError, load_checkpoint, save_checkpoint
from tests._ppo_runs import ppo_run
from tests._scripts import load_script

REPO = Path(__file__).resolve().parents[1]
TINY = ["--total-steps", "1024", "--num-envs", "32", "--ppo.num-steps", "16", "--eval-episodes", "2",
        "--device", "cpu", "--wandb-mode", "disabled"]  # fmt: skip


@pytest.fixture(scope="module")
def main():
    return load_script("train.py", "train_script_resume").main


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(main, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("resume") / "run"
    main([*TINY, "--run-dir", str(run_dir)])
    return run_dir


@pytest.mark.parametrize(
    "flags, flag",
    [
        (["--ppo.num-steps", "64"], "--ppo.num-steps"),
        (["--ppo.hidden", "32", "32"], "--ppo.hidden"),
        (["--ppo.no-norm-obs"], "--ppo.norm-obs"),
        (["--num-envs", "16"], "--num-envs"),
    ],
)
def test_a_state_shaping_change_is_refused_and_writes_nothing(main, finished_run, capsys, flags, flag):
    before = _snapshot(finished_run)
    with pytest.raises(SystemExit) as exc:
        main(["--resume", str(finished_run), "--total-steps", "4096", *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "differs from the run's" in err and "Traceback" not in err, err
    assert _snapshot(finished_run) == before  # config.json, metrics, checkpoint: byte for byte


def test_after_a_refused_resume_a_plain_resume_continues(main, tmp_path, capsys):
    run_dir = tmp_path / "run"
    main([*TINY, "--run-dir", str(run_dir)])
    with pytest.raises(SystemExit):
        main(["--resume", str(run_dir), "--total-steps", "2048", "--ppo.hidden", "32", "32"])
    summary = main(["--resume", str(run_dir), "--total-steps", "2048", "--wandb-mode", "disabled"])
    assert summary["env_steps"] == 2048  # trained on, not "nothing to do"
    assert summary["iterations"] == 4


def test_a_checkpoint_missing_a_key_is_named(main, tmp_path, capsys):
    run_dir = tmp_path / "run"
    main([*TINY, "--run-dir", str(run_dir)])
    state = load_checkpoint(run_dir / "checkpoint.pt")
    del state["optimizer"]
    save_checkpoint(run_dir / "checkpoint.pt", state)
    before = _snapshot(run_dir)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["--resume", str(run_dir), "--total-steps", "2048"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "'optimizer'" in err and str(run_dir / "checkpoint.pt") in err, err
    assert "KeyError" not in err and "Traceback" not in err
    assert _snapshot(run_dir) == before


def _run(run_dir, task, resume=False, config=None):
    return ppo_run(run_dir, task, resume, config=config or {"hidden": "as saved"})


def test_a_checkpoint_that_does_not_fit_changes_nothing(tmp_path):
    """Below the CLI's flag check: the algorithm fails to load the checkpoint; the Run has not yet
    rewritten config.json or cut metrics.jsonl back."""
    task = Task(total_steps=1024, num_envs=32, seed=0, device="cpu", eval_episodes=2)
    run_dir = tmp_path / "run"
    with _run(run_dir, task) as run:
        train(task, PPOConfig(num_steps=16), run)
    # One row beyond the checkpoint, as after a crash: a successful resume would cut it.
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"env_steps": 1536, "wall_s": 9.0}\n')
    before = _snapshot(run_dir)
    with pytest.raises(CheckpointError, match=r"checkpoint .*checkpoint\.pt does not fit this run"):
        with _run(run_dir, task, resume=True, config={"hidden": [32, 32]}) as run:
            train(task, PPOConfig(num_steps=16, hidden=(32, 32)), run)
    assert _snapshot(run_dir) == before


class _NotATensor:
    pass


def test_a_foreign_pickle_never_advises_weights_only_false(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format_version": 1, "env_steps": 1, "iteration": 1, "x": _NotATensor()}, path)
    with pytest.raises(CheckpointError, match="corrupt or unreadable") as exc:
        load_checkpoint(path)
    assert "weights_only" not in str(exc.value)


def test_run_touches_nothing_until_started(tmp_path):
    task = Task(total_steps=10, env="E")
    run_dir = tmp_path / "run"
    with _run(run_dir, task) as run:  # a fresh run whose setup fails leaves no directory at all
        pass
    assert not run_dir.exists()
    with _run(run_dir, task) as run:
        run.save_checkpoint({"env_steps": 5, "iteration": 1})
    before = _snapshot(run_dir)
    assert set(before) == {"config.json", "metrics.jsonl", "checkpoint.pt"}
    run = _run(run_dir, task, resume=True, config={"changed": True})
    run.close(exit_code=1)  # e.g. the algorithm raised while loading the checkpoint
    assert _snapshot(run_dir) == before
