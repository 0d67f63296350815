"""The proximal weight's default depends on the estimator: 1.0 for cg and neumann, whose implicit system is
ill-posed without it (cg then met non-positive curvature at its first iteration and returned a zero
hypergradient on most early FourRooms iterations), 0 for unrolled, truncated and es; an explicit value
wins."""

from __future__ import annotations

import pytest
import torch

from hrl_nested.algos import nested_hrl, nested_steps
from hrl_nested.algos.lirpg import LIRPGConfig


@pytest.mark.parametrize(
    ("method", "expected"),
    [("cg", 1.0), ("neumann", 1.0), ("unrolled", 0.0), ("truncated", 0.0), ("es", 0.0)],
)
def test_default_prox_per_estimator(method, expected):
    assert nested_hrl.NestedHRLConfig(hypergrad=method).resolved_prox() == expected
    assert LIRPGConfig(hypergrad=method).resolved_prox() == expected


@pytest.mark.parametrize("method", ["cg", "truncated"])
@pytest.mark.parametrize("value", [0.0, 2.5])
def test_an_explicit_prox_wins(method, value):
    assert nested_hrl.NestedHRLConfig(hypergrad=method, prox=value).resolved_prox() == value


def test_the_inner_problem_gets_the_resolved_prox(monkeypatch):
    seen = {}

    def fake(*args, **kw):
        seen.update(kw)
        return "io"

    monkeypatch.setattr(nested_steps, "make_inner_outer", fake)
    h = type("H", (), {"sub_dist": None})()
    for method, expected in (("cg", 1.0), ("truncated", 0.0)):
        cfg = nested_hrl.NestedHRLConfig(hypergrad=method)
        nested_steps.inner_outer(h, None, None, [], None, {}, cfg)
        assert seen["prox"] == expected


def test_a_negative_prox_is_still_refused():
    with pytest.raises(Exception, match="prox"):
        nested_hrl.NestedHRLConfig(prox=-1.0).validate()


def test_the_summary_records_the_prox_in_use(tmp_path, monkeypatch):
    """config.json keeps ``prox: null`` (the method default); summary.json says which λ that was."""
    import json
    import sys
    from pathlib import Path

    from tests._scripts import load_script

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(repo))
    main = load_script("train.py", "train_script_prox_default").main
    run_dir = tmp_path / "run"
    threads = torch.get_num_threads()  # train.py sets one thread
    try:
        main(["--algo", "nested-hrl", "--env", "hrl_nested/FourRooms-v0", "--total-steps", "64",
              "--num-envs", "4", "--eval-episodes", "1", "--device", "cpu", "--wandb-mode", "disabled",
              "--run-dir", str(run_dir), "--nested-hrl.hypergrad", "cg", "--nested-hrl.num-steps", "8",
              "--nested-hrl.n-inner", "2", "--nested-hrl.num-minibatches", "2",
              "--nested-hrl.hidden", "8"])  # fmt: skip
    finally:
        sys.modules.pop("train_script_prox_default", None)
        torch.set_num_threads(threads)
    assert json.loads((run_dir / "config.json").read_text())["nested_hrl"]["prox"] is None
    assert json.loads((run_dir / "summary.json").read_text())["prox"] == 1.0
