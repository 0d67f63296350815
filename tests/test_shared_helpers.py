"""Helpers that replaced duplicated blocks (issue 9): the initializers' one `TensorOptions`, the one
``meta`` of the benchmarks (`experiments/bench_machine.py`) that bench_envs and bench_sb3 both write, and
the one warning of the env step's and the rollout's ``"auto"`` compile fallbacks."""

import json
import logging
import platform

import numpy as np
import pytest
import stable_baselines3
import torch

from envs.compiled_step import warn_compile_fallback
from hrl_nested.shaping import (
    TensorOptions,
    init_free_shaping,
    init_goal_shaping,
    init_scalar_shaping,
    mlp_init,
)
from tests._scripts import load_script

INITS = {
    "init_goal_shaping": lambda **kw: init_goal_shaping(2, (4,), **kw),
    "init_free_shaping": lambda **kw: init_free_shaping(3, (4,), **kw),
    "init_scalar_shaping": lambda **kw: init_scalar_shaping(**kw),
    "mlp_init": lambda **kw: mlp_init(2, (4,), 1, "m", **kw),
}


@pytest.mark.parametrize("name", sorted(INITS))
def test_the_initializers_share_one_set_of_tensor_options(name):
    init = INITS[name]
    assert set(TensorOptions.__annotations__) == {"dtype", "device"}
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:  # the default is float32 whatever torch's default dtype, as before the options object
        assert {v.dtype for v in init().values()} == {torch.float32}
    finally:
        torch.set_default_dtype(before)
    assert {v.dtype for v in init(dtype=torch.float64).values()} == {torch.float64}
    assert {v.device for v in init(device="cpu").values()} == {torch.device("cpu")}
    with pytest.raises(TypeError, match=rf"{name}: expected keyword options dtype, device; got dtyp"):
        init(dtyp=torch.float64)


def test_machine_meta_records_the_machine_the_versions_and_the_load_window(monkeypatch):
    bench_machine = load_script("bench_machine.py", "bench_machine_under_test")
    monkeypatch.setattr(bench_machine.os, "getloadavg", lambda: (2.5, 1.0, 0.5))
    meta = bench_machine.machine_meta("cpu", 1.25, seed=3, method="m")
    assert meta["device"] == "cpu" and meta["threads"] == torch.get_num_threads()
    assert (meta["torch"], meta["numpy"]) == (torch.__version__, np.__version__)
    assert meta["device_name"] == bench_machine.cpu_name() != ""
    assert (meta["seed"], meta["method"]) == (3, "m")
    assert meta["load_average_1min"] == {"before": 1.25, "after": 2.5}
    assert bench_machine.load_average() == 2.5
    monkeypatch.delattr(bench_machine.os, "getloadavg")
    assert bench_machine.load_average() is None
    assert bench_machine.machine_meta("cpu", None)["load_average_1min"] == {"before": None, "after": None}
    monkeypatch.setattr("builtins.open", lambda *a, **k: (_ for _ in ()).throw(OSError("no /proc")))
    assert bench_machine.cpu_name() == (platform.processor() or platform.machine())


def test_bench_sb3_writes_the_shared_meta(tmp_path):
    """The smallest bench_sb3 run (8 envs, one PPO rollout): its JSON's meta is `machine_meta`'s plus its
    own fields."""
    bench_sb3 = load_script("bench_sb3.py", "bench_sb3_under_test")
    out = tmp_path / "sb3.json"
    cfg = bench_sb3.BenchConfig(num_envs=(8,), vecenv_steps=64, ppo_steps=64, out=out)
    bench_sb3.main(cfg)
    meta = json.loads(out.read_text())["meta"]
    expected = {"device", "device_name", "threads", "torch", "gymnasium", "numpy", "load_average_1min"}
    assert expected | {"stable_baselines3", "seed", "method"} == set(meta)
    assert meta["stable_baselines3"] == stable_baselines3.__version__ and meta["seed"] == 0
    assert set(meta["load_average_1min"]) == {"before", "after"}


@pytest.mark.parametrize(
    ("logger", "option", "what"),
    [("envs", "compile", "CartPoleEnv step"), ("hrl_nested", "compile_step", "rollout step")],
)
def test_the_env_step_and_the_rollout_warn_of_a_compile_fallback_in_one_format(caplog, logger, option, what):
    """`warn_compile_fallback` writes the line both ``"auto"`` fallbacks wrote before it existed: the
    root error behind dynamo's wrapper and the option that skips the attempt."""
    root = ValueError("no C++ compiler here\nsecond line")
    wrapper = RuntimeError("backend failed")
    wrapper.__cause__ = root
    with caplog.at_level(logging.WARNING, logger=logger):
        warn_compile_fallback(logging.getLogger(logger), option, what, wrapper)
    assert [r.getMessage() for r in caplog.records] == [
        f"{logger}: {option}='auto' could not compile the {what} (ValueError: no C++ compiler here); "
        f"running it eagerly (pass {option}=False to skip the attempt)"
    ]
