"""Each run gets its own directory: two runs started in the same second (two ``wandb agent`` processes)
never share or overwrite one, and a run started under an agent is named after the agent's run id."""

import datetime as _datetime
import json
import sys
from pathlib import Path

import pytest

from hrl_nested import tracking
from hrl_nested.tracking import Run, RunDirError, default_run_dir
from tests._scripts import load_script

REPO = Path(__file__).resolve().parents[1]
TINY = ["--total-steps", "512", "--num-envs", "16", "--ppo.num-steps", "32", "--eval-episodes", "2",
        "--device", "cpu", "--wandb-mode", "disabled"]  # fmt: skip


class _FrozenDatetime(_datetime.datetime):
    """A clock stuck on one second: what two processes starting together see."""

    @classmethod
    def now(cls, tz=None):
        return cls(2026, 1, 2, 3, 4, 5)


@pytest.fixture
def frozen_clock(monkeypatch):
    module = sys.modules[default_run_dir.__module__]
    monkeypatch.setattr(module, "datetime", _FrozenDatetime)


@pytest.fixture
def train_main():
    yield load_script("train.py", "train_script_run_dir").main
    sys.modules.pop("train_script_run_dir", None)


def test_default_dirs_in_the_same_second_differ(frozen_clock, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    paths = {default_run_dir("ppo", "hrl_nested/CartPole-v1", 0, root=tmp_path) for _ in range(20)}
    assert len(paths) == 20
    for p in paths:
        assert p.name.startswith("ppo-hrl_nested_CartPole-v1-0-20260102-030405-")
        assert not p.exists()


def test_default_dir_never_points_at_an_existing_run(frozen_clock, tmp_path):
    first = default_run_dir("ppo", "E", 1, root=tmp_path, run_id="abc")
    assert first.name == "ppo-E-1-20260102-030405-abc"
    first.mkdir()
    (first / "config.json").write_text("{}")
    second = default_run_dir("ppo", "E", 1, root=tmp_path, run_id="abc")  # same id, same second
    assert second != first and not second.exists()
    second.mkdir()
    third = default_run_dir("ppo", "E", 1, root=tmp_path, run_id="abc")
    assert len({first, second, third}) == 3 and not third.exists()


def test_default_dir_is_named_after_the_agents_run_id(frozen_clock, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_RUN_ID", "swp7x2k9")
    assert default_run_dir("ppo", "E", 0, root=tmp_path).name.endswith("-swp7x2k9")
    assert tracking.choose_run_id() == "swp7x2k9"
    run = Run(tmp_path / "r", config={}, algo="ppo", env="E", seed=0, total_steps=1, progress=False)
    assert run.run_id == "swp7x2k9"
    monkeypatch.delenv("WANDB_RUN_ID")
    a, b = tracking.choose_run_id(), tracking.choose_run_id()
    assert a != b and len(a) == 8 and a.isalnum() and a.islower()


def test_two_runs_claiming_one_fresh_dir_at_once_cannot_both_write(tmp_path):
    """Both pass the "empty directory" check before either writes; the second to write config.json loses
    with a clear error and the first run's files stay as they were."""
    run_dir = tmp_path / "run"
    kwargs = dict(algo="ppo", env="E", seed=0, total_steps=10, progress=False)
    first = Run(run_dir, config={"who": "first"}, **kwargs)
    second = Run(run_dir, config={"who": "second"}, **kwargs)
    run_dir.mkdir()
    first_config = run_dir / "config.json"
    tracking.write_json(first_config, {"who": "first"}, exclusive=True)  # the first run's claim
    with pytest.raises(FileExistsError):
        tracking.write_json(first_config, {"who": "second"}, exclusive=True)
    assert json.loads(first_config.read_text()) == {"who": "first"}
    assert [p.name for p in run_dir.iterdir()] == ["config.json"]  # no temp file left behind
    first_config.unlink()

    # The race inside `Run.start`: the second run's emptiness check passed before the first wrote.
    real_prepare = sys.modules[Run.__module__].prepare_run_dir
    first.start()
    sys.modules[Run.__module__].prepare_run_dir = lambda path, resume: Path(path)
    try:
        with pytest.raises(RunDirError, match="another run"):
            second.start()
    finally:
        sys.modules[Run.__module__].prepare_run_dir = real_prepare
    assert json.loads(first_config.read_text()) == {"who": "first"}
    first.finish({})


def test_two_train_runs_in_one_second_get_two_directories(frozen_clock, train_main, monkeypatch, tmp_path):
    """What two ``wandb agent`` processes do: ``train.py`` without ``--run-dir``, at the same moment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    train_main(TINY)
    train_main([*TINY, "--seed", "0"])
    dirs = sorted((tmp_path / "runs").iterdir())
    assert len(dirs) == 2
    for d in dirs:
        assert d.name.startswith("ppo-hrl_nested_CartPole-v1-0-20260102-030405-")
        assert json.loads((d / "summary.json").read_text())["env_steps"] == 512
        assert json.loads((d / "config.json").read_text())["run_dir"] == str(Path("runs") / d.name)
