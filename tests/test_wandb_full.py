"""W&B, fully: one offline ``train.py`` run, read back from W&B's own ``.wandb`` transaction log.

Every metric is plotted against ``env_steps``; each checkpoint and the final model are artifacts (staged
for ``wandb sync``); the run's W&B config and summary hold exactly ``config.json`` and ``summary.json``;
the agent's ``WANDB_RUN_ID`` names the run; with no API key, ``online`` falls back to ``offline``.
"""

import contextlib
import hashlib
import io
import json
import struct
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from hrl_nested.tracking import Run, WandbLogger, read_metrics, resolve_wandb_mode
from tests._scripts import load_script

wandb = pytest.importorskip("wandb")  # a dev dependency; absent on the bare GPU machine
wandb_pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")

REPO = Path(__file__).resolve().parents[1]
RUN_ID = "wbfull42"
TINY = ["--total-steps", "1024", "--num-envs", "16", "--ppo.num-steps", "32", "--eval-episodes", "2",
        "--device", "cpu", "--checkpoint-every-s", "0", "--ppo.eval-every", "1"]  # fmt: skip


def wandb_records(path: Path) -> list:
    """The protobuf records of a ``.wandb`` file: W&B's LevelDB-style log (a 7-byte header ``:W&B``,
    magic, version; then 32 KiB blocks of records, each a 7-byte header (crc32, length, type) and data;
    types FULL=1, FIRST=2, MIDDLE=3, LAST=4 chain a record across blocks)."""
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", data[:7]
    pos, chunks, out = 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):  # a record still being written
            break
        if kind == 0:
            pos += left
            continue
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_pb.Record()
            record.ParseFromString(chunks)
            out.append(record)
            chunks = b""
    return out


def _merge(updates, into: dict) -> None:
    for item in updates:
        keys = list(item.nested_key) or [item.key]
        target = into
        for k in keys[:-1]:
            target = target.setdefault(k, {})
        target[keys[-1]] = json.loads(item.value_json)


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    """``train.py`` with its default ``--wandb-mode online``, no API key, under an agent's run id."""
    tmp = tmp_path_factory.mktemp("wandb_full")
    home = tmp / "home"
    home.mkdir()
    module = load_script("train.py", "train_wandb_full")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        for var in ("WANDB_API_KEY", "NETRC", "WANDB_BASE_URL", "WANDB_MODE", "WANDB_SWEEP_PARAM_PATH"):
            mp.delenv(var, raising=False)
        mp.setenv("HOME", str(home))
        mp.setenv("WANDB_DIR", str(tmp / "wandb_dir"))
        mp.setenv("WANDB_DATA_DIR", str(tmp / "wandb_data"))  # W&B's artifact staging area
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("WANDB_RUN_ID", RUN_ID)
        mp.chdir(tmp)
        wandb.teardown()  # a fresh W&B process state: earlier tests' settings must not leak in
        summary = module.main(TINY)  # no --run-dir: the default directory, as under `wandb agent`
    sys.modules.pop("train_wandb_full", None)
    (run_dir,) = (tmp / "runs").iterdir()
    offline = list((tmp / "wandb_dir" / "wandb").glob(f"offline-run-*-{RUN_ID}"))
    assert len(offline) == 1, list((tmp / "wandb_dir").rglob("*"))
    (log_file,) = offline[0].glob("*.wandb")
    # W&B's service process writes the log on its own; it is complete once it holds the exit record.
    deadline = time.monotonic() + 60
    records = wandb_records(log_file)
    while not any(r.WhichOneof("record_type") == "exit" for r in records):
        assert time.monotonic() < deadline, f"{log_file} never got its exit record"
        time.sleep(0.2)
        records = wandb_records(log_file)
    kinds: dict[str, list] = {}
    for r in records:
        kind = r.WhichOneof("record_type")
        kinds.setdefault(kind, []).append(getattr(r, kind))
    return types.SimpleNamespace(
        run_dir=run_dir, summary=summary, kinds=kinds, stdout=out.getvalue(), data_dir=tmp / "wandb_data"
    )


def test_no_api_key_falls_back_to_offline_with_one_notice(offline_run):
    notices = [line for line in offline_run.stdout.splitlines() if line.startswith("W&B")]
    assert len(notices) == 1 and "offline" in notices[0], offline_run.stdout
    (run,) = offline_run.kinds["run"]
    assert run.run_id == RUN_ID


def test_the_agents_run_id_names_the_run_and_its_directory(offline_run):
    assert offline_run.run_dir.name.endswith(f"-{RUN_ID}")
    assert torch.load(offline_run.run_dir / "checkpoint.pt", weights_only=True)["wandb_run_id"] == RUN_ID


def test_every_metric_is_plotted_against_env_steps(offline_run):
    metrics = offline_run.kinds["metric"]
    assert any(m.glob_name == "*" and m.step_metric == "env_steps" for m in metrics), metrics
    history = []
    for h in offline_run.kinds["history"]:
        row: dict = {}
        _merge(h.item, row)
        history.append(row)
    rows = read_metrics(offline_run.run_dir / "metrics.jsonl")
    assert [h["env_steps"] for h in history] == [r["env_steps"] for r in rows] == [512, 1024]
    for h, r in zip(history, rows, strict=True):
        assert {k: h[k] for k in r} == r  # every metrics.jsonl value, the same in W&B


def test_config_matches_config_json(offline_run):
    config: dict = {}
    (run,) = offline_run.kinds["run"]
    _merge(run.config.update, config)  # the config given to wandb.init
    for c in offline_run.kinds.get("config", []):  # and any later run.config updates
        _merge(c.update, config)
    config.pop("_wandb", None)
    assert config == json.loads((offline_run.run_dir / "config.json").read_text())


def test_summary_matches_summary_json(offline_run):
    summary: dict = {}
    for s in offline_run.kinds["summary"]:
        _merge(s.update, summary)
    on_disk = json.loads((offline_run.run_dir / "summary.json").read_text())
    assert on_disk == offline_run.summary
    assert {k: summary.get(k) for k in on_disk} == on_disk
    assert "eval_return_mean" in on_disk


def test_checkpoints_and_final_model_are_artifacts_staged_for_sync(offline_run):
    artifacts = offline_run.kinds["artifact"]
    checkpoints = [a for a in artifacts if a.type == "checkpoint"]
    models = [a for a in artifacts if a.type == "model"]
    assert [a.name for a in checkpoints] == [f"checkpoint-{RUN_ID}"] * 2  # --checkpoint-every-s 0: 2 iters
    assert [json.loads(a.metadata)["env_steps"] for a in checkpoints] == [512, 1024]
    assert [f"step-{s}" for s in (512, 1024)] == [next(x for x in a.aliases if x.startswith("step-"))
                                                  for a in checkpoints]  # fmt: skip
    (model,) = models
    assert model.name == f"model-{RUN_ID}" and "final" in model.aliases
    assert json.loads(model.metadata)["eval_return_mean"] == offline_run.summary["eval_return_mean"]
    final = (offline_run.run_dir / "checkpoint.pt").read_bytes()
    for a in (*checkpoints, model):
        (entry,) = a.manifest.contents
        assert entry.path == "checkpoint.pt"
        staged = Path(entry.local_path)
        assert staged.is_file() and offline_run.data_dir in staged.parents  # a copy `wandb sync` uploads
        state = torch.load(staged, weights_only=True)
        assert state["env_steps"] == json.loads(a.metadata)["env_steps"]
    staged_model = Path(model.manifest.contents[0].local_path).read_bytes()
    assert hashlib.sha256(staged_model).digest() == hashlib.sha256(final).digest()


def test_wandb_mode_env_var_only_lowers_the_mode():
    key = {"WANDB_API_KEY": "k" * 40}
    assert resolve_wandb_mode("online", environ={**key, "WANDB_MODE": "offline"}) == ("offline", None)
    assert resolve_wandb_mode("online", environ={**key, "WANDB_MODE": "dryrun"}) == ("offline", None)
    assert resolve_wandb_mode("offline", environ={**key, "WANDB_MODE": "disabled"}) == ("disabled", None)
    assert resolve_wandb_mode("disabled", environ={**key, "WANDB_MODE": "online"}) == ("disabled", None)
    assert resolve_wandb_mode("offline", environ={**key, "WANDB_MODE": "online"}) == ("offline", None)


def test_a_failing_artifact_upload_keeps_metrics_going(monkeypatch, tmp_path, capsys):
    logged, artifact_calls = [], []

    class FakeRun:
        summary: dict = {}

        def define_metric(self, *a, **k):
            pass

        def log(self, row):
            logged.append(row)

        def log_artifact(self, artifact, aliases=()):
            artifact_calls.append(aliases)
            raise ConnectionError("storage unreachable")

        def finish(self, exit_code=0):
            pass

    class FakeArtifact:
        def __init__(self, name, type, metadata=None):
            self.name = name

        def add_file(self, path, name=None):
            assert Path(path).is_file()

    fake = types.SimpleNamespace(
        init=lambda **kw: FakeRun(), Settings=lambda **kw: dict(kw), Artifact=FakeArtifact
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = Run(tmp_path / "run", config={}, algo="ppo", env="E", seed=0, total_steps=4, wandb_mode="offline",
              progress=False)  # fmt: skip
    for step in (1, 2, 3):
        run.log({"env_steps": step})
        run.save_checkpoint({"env_steps": step, "iteration": step})
    run.finish({"eval_return_mean": 1.0})
    assert [r["env_steps"] for r in logged] == [1, 2, 3]
    assert artifact_calls == [["step-1"]]  # tried once, then off
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "artifact" in out[0] and "storage unreachable" in out[0], out
    assert isinstance(run.wandb, WandbLogger) and run.wandb.mode == "offline"


def test_under_a_sweep_the_run_keeps_the_agents_id_and_wandbs_names(monkeypatch, tmp_path):
    calls = []

    class FakeRun:
        def define_metric(self, *a, **k):
            pass

    def init(**kwargs):
        calls.append(kwargs)
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init, Settings=lambda **kw: kw))
    monkeypatch.setenv("WANDB_RUN_ID", "agentrun")
    kwargs = dict(config={}, algo="ppo", env="E", seed=0, total_steps=1, wandb_mode="offline", progress=False)
    Run(tmp_path / "a", **kwargs).start()
    monkeypatch.setenv("WANDB_SWEEP_ID", "sw33p")
    Run(tmp_path / "b", **kwargs).start()
    assert [c["id"] for c in calls] == ["agentrun", "agentrun"]
    assert [c["name"] for c in calls] == ["ppo-E-0", None]
