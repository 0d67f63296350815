"""W&B sweeps: the sweep files are valid and name real flags with valid ranges, ``train.py`` parses the
``--key=value`` forms ``wandb agent`` writes, and one sampled point runs offline as the agent would run it
(the argv built by W&B's own agent code, the agent's run id, no ``--run-dir``)."""

import json
import math
import random
import sys
from pathlib import Path

import pytest
import yaml

from hrl_nested.tracking import SweepArgError, config_flags, normalize_agent_args
from tests._scripts import load_script

wandb = pytest.importorskip("wandb")  # a dev dependency; absent on the bare GPU machine
sweep_utils = pytest.importorskip("wandb.sdk.launch.sweeps.utils")

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "experiments" / "sweeps").glob("*.yaml"))
DISTRIBUTIONS = {"uniform", "int_uniform", "log_uniform_values", "q_uniform", "categorical"}


@pytest.fixture(scope="module")
def train():
    yield load_script("train.py", "train_script_sweeps")
    sys.modules.pop("train_script_sweeps", None)


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _fixed_args(sweep: dict) -> list[str]:
    return [c for c in sweep["command"] if not str(c).startswith("${")]


def _sample(spec: dict, rng: random.Random):
    """One value of a parameter, as W&B's random search draws it."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    lo, hi = spec["min"], spec["max"]
    kind = spec.get(
        "distribution", "int_uniform" if isinstance(lo, int) and isinstance(hi, int) else "uniform"
    )
    if kind == "int_uniform":
        return rng.randint(lo, hi)
    if kind == "log_uniform_values":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return rng.uniform(lo, hi)


def _agent_argv(sweep: dict, params: dict) -> list[str]:
    """The command ``wandb agent`` runs for ``params``, built with the agent's own helpers."""
    command = sweep_utils.create_sweep_command(list(sweep["command"]))
    sweep_vars = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    sweep_vars.update(env=["/usr/bin/env"], interpreter=["python"], program=[sweep["program"]])
    argv: list[str] = []
    for c in map(str, command):
        argv += (sweep_vars.get(c[2:-1]) or []) if c.startswith("${") and c.endswith("}") else [c]
    return argv


def _get(cfg, dotted_flag: str):
    for part in dotted_flag.split("."):
        cfg = getattr(cfg, part.replace("-", "_"))
    return cfg


def test_there_is_a_sweep_for_ppo_and_for_nested_hrl():
    assert {p.name for p in SWEEPS} >= {"ppo.yaml", "nested_hrl.yaml"}


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_sweep_file_is_a_valid_sweep_of_real_flags(path, train):
    sweep = _load(path)
    assert sweep["program"] == "experiments/train.py" and (REPO / sweep["program"]).is_file()
    assert sweep["method"] in ("bayes", "random")
    assert sweep["metric"] == {"name": "eval_return_mean", "goal": "maximize"}
    command = [str(c) for c in sweep["command"]]
    macros = [c for c in command if c.startswith("${")]
    assert macros == ["${env}", "${interpreter}", "${program}", "${args}"]
    assert any(c.startswith("--algo=") for c in command)
    algo = next(c.split("=", 1)[1] for c in command if c.startswith("--algo="))
    flags = config_flags(train.TrainConfig)
    section = algo.replace("_", "-") + "."
    assert len(sweep["parameters"]) >= 5
    for name, spec in sweep["parameters"].items():
        assert name in flags and name.startswith(section), f"{path.name}: {name} is not a --{section}* flag"
        scalars = (
            spec["values"]
            if "values" in spec
            else [spec.get(k) for k in ("value", "min", "max") if k in spec]
        )
        assert scalars and all(isinstance(v, bool | int | float | str) for v in scalars), (name, spec)
        if "min" in spec:
            assert spec["min"] < spec["max"], (name, spec)
            assert spec.get("distribution", "uniform") in DISTRIBUTIONS, (name, spec)
        # Every end of every range, alone, is a config train.py accepts (validate_config runs in parse).
        for value in scalars:
            agent_args = _agent_argv({"command": ["${args}"], "program": ""}, {name: value})
            cfg = train.parse_config([*_fixed_args(sweep), *agent_args])
            got = _get(cfg, name)
            assert got == value, (name, value, got)


@pytest.mark.parametrize(
    "token, expected",
    [
        ("--ppo.anneal-lr=False", ["--ppo.no-anneal-lr"]),
        ("--ppo.anneal-lr=True", ["--ppo.anneal-lr"]),
        ("--ppo.anneal_lr=false", ["--ppo.no-anneal-lr"]),
        ("--nested-hrl.meta-ent-coef=1", ["--nested-hrl.meta-ent-coef"]),
        ("--ppo.hidden=[64, 32]", ["--ppo.hidden", "64", "32"]),
        ("--ppo.hidden=[64,32]", ["--ppo.hidden", "64", "32"]),
        ("--ppo.hidden=64,32", ["--ppo.hidden", "64", "32"]),
        ("--ppo.hidden=(64, 32)", ["--ppo.hidden", "64", "32"]),
        ("--ppo.hidden=[]", ["--ppo.hidden"]),
        ("--ppo.lr=0.001", ["--ppo.lr=0.001"]),
        ("--run-dir=runs/x", ["--run-dir=runs/x"]),
        ("--not-a-flag=True", ["--not-a-flag=True"]),
    ],
)
def test_agent_forms_become_tyro_forms(train, token, expected):
    assert normalize_agent_args([token], train.TrainConfig) == expected


def test_ordinary_command_lines_pass_unchanged(train):
    argv = [
        "--algo",
        "ppo",
        "--ppo.hidden",
        "32",
        "16",
        "--ppo.no-anneal-lr",
        "--ppo.clip-vloss",
        "--seed",
        "3",
    ]
    assert normalize_agent_args(argv, train.TrainConfig) == argv
    # The agent's ${args_no_equals} form: a bool flag followed by its value.
    assert normalize_agent_args(["--ppo.norm-adv", "False", "--seed", "1"], train.TrainConfig) == [
        "--ppo.no-norm-adv",
        "--seed",
        "1",
    ]


def test_train_parses_the_agent_forms(train):
    cfg = train.parse_config(["--ppo.anneal-lr=False", "--ppo.hidden=[32, 16]", "--ppo.lr=0.0007",
                              "--ppo.clip-vloss=True", "--nested-hrl.phi-hidden=8,8"])  # fmt: skip
    assert cfg.ppo.anneal_lr is False and cfg.ppo.clip_vloss is True
    assert cfg.ppo.hidden == (32, 16) and cfg.nested_hrl.phi_hidden == (8, 8)
    assert cfg.ppo.lr == 0.0007


def test_a_bad_boolean_is_a_flag_error(train, capsys, tmp_path):
    with pytest.raises(SweepArgError, match=r"--ppo.anneal-lr: expected True or False, got 'maybe'"):
        normalize_agent_args(["--ppo.anneal-lr=maybe"], train.TrainConfig)
    with pytest.raises(SystemExit) as exc:
        train.main(["--ppo.anneal-lr=maybe", "--run-dir", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "--ppo.anneal-lr" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_sampled_point_runs_offline_as_the_agent_runs_it(train, monkeypatch, tmp_path):
    sweep = _load(REPO / "experiments" / "sweeps" / "ppo.yaml")
    rng = random.Random(3)
    params = {name: _sample(spec, rng) for name, spec in sweep["parameters"].items()}
    params["ppo.anneal-lr"] = False  # the form tyro rejected
    params["ppo.hidden"] = [32, 32]  # a list value, as a sweep's `value: [32, 32]` passes it
    argv = _agent_argv(sweep, params)
    assert argv[:3] == ["/usr/bin/env", "python", "experiments/train.py"]
    assert "--ppo.anneal-lr=False" in argv and "--ppo.hidden=[32, 32]" in argv
    tiny = ["--total-steps=1", "--num-envs=16", "--eval-episodes=2", "--device=cpu", "--threads=1"]

    home = tmp_path / "home"
    home.mkdir()
    for var in ("WANDB_API_KEY", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_RUN_ID", "sweep0run1")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    # What the agent does besides the argv: the sweep's values in a file that wandb.init reads.
    param_file = tmp_path / "sweep-params.yaml"
    param_file.write_text(yaml.safe_dump({k: {"value": v} for k, v in params.items()}))
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(param_file))
    monkeypatch.chdir(tmp_path)
    try:
        summary = train.main([*argv[3:], *tiny])
    finally:
        # wandb keeps process-wide settings (the sweep's parameter file among them) until teardown:
        # without it, every later wandb.init in this process would take this sweep's config.
        wandb.teardown()

    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.endswith("-sweep0run1")
    config = json.loads((run_dir / "config.json").read_text())
    assert config["algo"] == "ppo" and config["env"] == "hrl_nested/CartPole-v1"
    for name, value in params.items():
        section, field = name.split(".")
        assert config[section][field.replace("-", "_")] == value, name
    assert summary["env_steps"] > 0 and "eval_return_mean" in summary
    assert list((tmp_path / "wandb").glob("offline-run-*-sweep0run1"))
