"""Run bookkeeping: run dirs, metrics cut-back, atomic/corrupt checkpoints, W&B fallbacks."""

import json
import random
import sys
import types

import numpy as np
import pytest
import torch

from hrl_nested import tracking
from hrl_nested.tracking import (
    CheckpointError,
    Run,
    RunDirError,
    WandbLogger,
    has_wandb_api_key,
    load_checkpoint,
    prepare_run_dir,
    read_metrics,
    resolve_wandb_mode,
    save_checkpoint,
    truncate_metrics,
)


@pytest.fixture
def no_wandb_key(monkeypatch, tmp_path):
    """No API key anywhere: no env var, an empty home (no ~/.netrc), no $NETRC."""
    for var in ("WANDB_API_KEY", "NETRC", "WANDB_BASE_URL", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


# ---------------------------------------------------------------------------- run dir and metrics
def test_prepare_run_dir_refuses_a_non_empty_dir_unless_resuming(tmp_path):
    fresh = prepare_run_dir(tmp_path / "a" / "b", resume=False)
    assert fresh.is_dir()
    assert prepare_run_dir(fresh, resume=False) == fresh  # empty: fine
    (fresh / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(RunDirError, match="not empty.*--resume"):
        prepare_run_dir(fresh, resume=False)
    assert prepare_run_dir(fresh, resume=True) == fresh
    with pytest.raises(RunDirError, match="no such run directory"):
        prepare_run_dir(tmp_path / "missing", resume=True)


def test_a_fresh_run_creates_its_directory_only_when_it_starts(tmp_path):
    """A run that fails between construction and `start` (a bad --env, a failed capture) leaves nothing."""
    run_dir = tmp_path / "a" / "run"
    run = Run(run_dir, config={"x": 1}, algo="ppo", env="E", seed=0, total_steps=10, progress=False)
    assert not run_dir.exists() and not (tmp_path / "a").exists()
    run.close(exit_code=1)  # the "failed start"
    assert not (tmp_path / "a").exists()
    run_dir.mkdir(parents=True)
    (run_dir / "other.txt").write_text("someone else's file")
    with pytest.raises(RunDirError, match="not empty"):  # still checked at construction
        Run(run_dir, config={}, algo="ppo", env="E", seed=0, total_steps=10, progress=False)
    (run_dir / "other.txt").unlink()
    run = Run(run_dir, config={"x": 1}, algo="ppo", env="E", seed=0, total_steps=10, progress=False)
    (run_dir / "late.txt").write_text("written between the check and start")
    with pytest.raises(RunDirError, match="not empty"):  # and again when the directory is opened
        run.start()


def test_default_run_dir_is_filesystem_safe():
    path = tracking.default_run_dir("ppo", "hrl_nested/CartPole-v1", 3)
    assert path.parent.name == "runs"
    assert path.name.startswith("ppo-hrl_nested_CartPole-v1-3-")
    assert "/" not in path.name


def test_truncate_metrics_keeps_rows_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"env_steps": 100 * i, "wall_s": float(i)} for i in range(1, 6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"env_steps": 600, "wa')  # torn last line
    assert len(read_metrics(path)) == 5
    assert truncate_metrics(path, 300) == 3
    assert [r["env_steps"] for r in read_metrics(path)] == [100, 200, 300]
    assert path.read_text().endswith("\n")


# ---------------------------------------------------------------------------- checkpoints
def test_checkpoint_roundtrip_and_atomic_replace(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"env_steps": 10, "iteration": 1, "w": torch.arange(3.0)})
    assert not (tmp_path / "checkpoint.pt.tmp").exists()
    state = load_checkpoint(path)
    assert state["env_steps"] == 10 and torch.equal(state["w"], torch.arange(3.0))

    # A crash in the middle of writing the next checkpoint leaves the previous one intact.
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"env_steps": 20, "iteration": 2, "w": torch.zeros(3)})
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["env_steps"] == 10


def test_corrupt_or_missing_checkpoint_gives_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"env_steps": 10, "iteration": 1, "w": torch.randn(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated, e.g. a disk that filled up
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    torch.save({"something": "else"}, path)
    with pytest.raises(CheckpointError, match="not an hrl_nested checkpoint"):
        load_checkpoint(path)


class _Foreign:
    """A pickled custom class: ``weights_only=True`` refuses it, and torch's message advises how to load it
    unsafely, with ANSI colour codes."""

    def __init__(self):
        self.payload = [1, 2, 3]


@pytest.mark.parametrize("kind", ["foreign_pickle", "random_bytes", "empty"])
def test_corrupt_checkpoint_message_names_the_file_and_never_advises_unsafe_loading(tmp_path, kind):
    path = tmp_path / "checkpoint.pt"
    if kind == "foreign_pickle":
        torch.save({"env_steps": 1, "iteration": 1, "obj": _Foreign()}, path)
    elif kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert "\x1b" not in msg and "[0m" not in msg, msg
    assert "weights_only" not in msg and "can still be loaded" not in msg, msg
    assert "\n" not in msg, msg
    reason = msg[msg.index("(") + 1 : msg.index(")")]
    name, _, text = reason.partition(":")
    assert name.strip() and text.strip(), msg  # an exception name and a non-empty reason, never "(X: )"


def test_rng_state_roundtrip():
    state = tracking.rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(()).item())
    tracking.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expected


def test_run_resume_cuts_metrics_back_and_keeps_the_wandb_id(tmp_path):
    run_dir = tmp_path / "run"
    kwargs = dict(config={"x": 1}, algo="ppo", env="E", seed=0, total_steps=500, progress=False)
    run = Run(run_dir, **kwargs)
    for step in (100, 200):
        run.log({"env_steps": step, "loss": 1.0})
    run.save_checkpoint({"env_steps": 200, "iteration": 2})
    run.log({"env_steps": 300, "loss": 1.0})  # after the checkpoint: repeated on resume
    run_id = run.run_id
    run.close(exit_code=1)  # the "crash"

    with pytest.raises(RunDirError, match="not empty"):
        Run(run_dir, **kwargs)
    config_before = (run_dir / "config.json").read_text()
    resumed = Run(run_dir, resume=True, **{**kwargs, "config": {"x": 2}})
    assert resumed.resume_state["env_steps"] == 200
    assert resumed.run_id == run_id
    assert resumed.wall_s >= resumed.resume_state["wall_s"]
    # Until the algorithm has loaded the checkpoint and calls start(), nothing on disk changes.
    assert [r["env_steps"] for r in read_metrics(run_dir / "metrics.jsonl")] == [100, 200, 300]
    assert (run_dir / "config.json").read_text() == config_before
    resumed.start()
    assert [r["env_steps"] for r in read_metrics(run_dir / "metrics.jsonl")] == [100, 200]
    assert json.loads((run_dir / "config.json").read_text()) == {"x": 2}
    for step in (300, 400):
        resumed.log({"env_steps": step, "loss": 2.0})
    summary = resumed.finish({"eval_return_mean": 1.5})
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["env_steps"] for r in rows] == [100, 200, 300, 400]
    assert all("wall_s" in r for r in rows)
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk == summary
    assert {
        "algo": "ppo",
        "env": "E",
        "seed": 0,
        "env_steps": 400,
        "eval_return_mean": 1.5,
    }.items() <= summary.items()


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    run_dir = tmp_path / "run"
    kwargs = dict(config={}, algo="ppo", env="E", seed=0, total_steps=10, progress=False)
    Run(run_dir, **kwargs).start().close()  # started, then stopped before its first checkpoint
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Run(run_dir, resume=True, **kwargs)


# ---------------------------------------------------------------------------- W&B mode decision
def test_api_key_from_env_or_netrc(tmp_path, no_wandb_key):
    assert not has_wandb_api_key()
    assert has_wandb_api_key({"WANDB_API_KEY": "k" * 40})
    assert not has_wandb_api_key({"WANDB_API_KEY": "  "})
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    netrc_file.chmod(0o600)
    assert has_wandb_api_key({}, netrc_path=netrc_file)
    assert has_wandb_api_key({"NETRC": str(netrc_file)})
    # The entry must be for the server W&B would talk to.
    assert not has_wandb_api_key({"WANDB_BASE_URL": "https://wandb.example.org"}, netrc_path=netrc_file)
    (no_wandb_key / ".netrc").write_text("machine wandb.example.org login u password p\n")
    (no_wandb_key / ".netrc").chmod(0o600)
    assert has_wandb_api_key({"WANDB_BASE_URL": "https://wandb.example.org"})


def test_online_without_a_key_falls_back_to_offline(no_wandb_key):
    mode, notice = resolve_wandb_mode("online")
    assert mode == "offline"
    assert "\n" not in notice and "offline" in notice
    assert resolve_wandb_mode("online", environ={"WANDB_API_KEY": "k" * 40}) == ("online", None)
    assert resolve_wandb_mode("offline") == ("offline", None)
    assert resolve_wandb_mode("disabled") == ("disabled", None)
    with pytest.raises(ValueError, match="wandb mode"):
        resolve_wandb_mode("maybe")


class _FakeRun:
    def __init__(self, fail_log_at: int | None):
        self.logged, self.fail_log_at, self.finished = [], fail_log_at, False
        self.summary: dict = {}
        self.defined: list = []

    def define_metric(self, name, **kwargs):
        self.defined.append((name, kwargs))

    def log(self, row):
        if self.fail_log_at is not None and len(self.logged) == self.fail_log_at:
            raise RuntimeError("wandb service died")
        self.logged.append(row)

    def finish(self, exit_code=0):
        self.finished = True


def _tiny_run(run_dir, config, *, wandb_mode):
    """A quiet ten-step PPO `Run` on env ``"E"`` logging to W&B in ``wandb_mode``."""
    fixed = {"algo": "ppo", "env": "E", "seed": 0, "total_steps": 10, "progress": False}
    return Run(run_dir, config=config, wandb_mode=wandb_mode, **fixed)


def _fake_wandb(monkeypatch, *, online_fails=False, fail_log_at=None):
    """A stand-in ``wandb`` module recording every ``init`` call."""
    calls: list[dict] = []
    runs: list[_FakeRun] = []

    def init(**kwargs):
        calls.append(kwargs)
        if "settings" in kwargs:
            assert kwargs["settings"]["init_timeout"] <= 60  # a short timeout, never a hang
        if kwargs["mode"] == "online" and online_fails:
            raise TimeoutError("Timed out while retrying: dial tcp: no such host")
        runs.append(_FakeRun(fail_log_at))
        return runs[-1]

    module = types.SimpleNamespace(init=init, Settings=lambda **kw: dict(kw))
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls, runs


def test_no_key_never_calls_wandb_online(monkeypatch, no_wandb_key, tmp_path, capsys):
    calls, _ = _fake_wandb(monkeypatch)
    logger = WandbLogger("online", project="p", run_id="abc", name="n", config={}, directory=tmp_path)
    assert [c["mode"] for c in calls] == ["offline"]
    assert logger.mode == "offline"
    assert len([line for line in capsys.readouterr().out.splitlines() if "W&B" in line]) == 1


def test_unreachable_server_falls_back_to_offline(monkeypatch, no_wandb_key, tmp_path, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    calls, runs = _fake_wandb(monkeypatch, online_fails=True)
    logger = WandbLogger("online", project="p", run_id="abc", name="n", config={"a": 1}, directory=tmp_path)
    assert [c["mode"] for c in calls] == ["online", "offline"]
    assert all(c["id"] == "abc" and c["resume"] == "allow" for c in calls)
    assert logger.mode == "offline" and logger.run is runs[0]
    assert ("*", {"step_metric": "env_steps"}) in runs[0].defined
    assert "offline" in capsys.readouterr().out


def test_wandb_failing_mid_run_does_not_stop_the_local_files(monkeypatch, no_wandb_key, tmp_path, capsys):
    _, runs = _fake_wandb(monkeypatch, fail_log_at=2)
    run = _tiny_run(tmp_path / "run", {"a": 1}, wandb_mode="offline")
    for step in range(1, 6):
        run.log({"env_steps": step, "loss": 0.5})
    run.finish({"eval_return_mean": 3.0})
    assert [r["env_steps"] for r in runs[0].logged] == [1, 2]
    assert [r["env_steps"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["eval_return_mean"] == 3.0
    out = capsys.readouterr().out
    assert out.count("W&B: log failed") == 1
    assert run.wandb.mode == "disabled"


def test_offline_mode_writes_wandb_files(monkeypatch, no_wandb_key, tmp_path):
    pytest.importorskip("wandb")
    wandb_dir = tmp_path / "wandb_dir"
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = _tiny_run(tmp_path / "run", {"lr": 0.1}, wandb_mode="online")  # no key: falls back to offline
    assert run.wandb.mode == "offline"
    run.log({"env_steps": 5, "loss": 0.5})
    run.finish({"eval_return_mean": 1.0})
    offline_runs = list((wandb_dir / "wandb").glob(f"offline-run-*-{run.run_id}"))
    assert len(offline_runs) == 1
    assert list(offline_runs[0].glob("*.wandb"))
