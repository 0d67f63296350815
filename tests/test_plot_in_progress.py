"""experiments/plot.py on a folder where runs are still going (a sweep's agents at work): a run that has
not evaluated yet is left out as unfinished, never an error that stops the whole figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._scripts import load_script

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plot():
    return load_script("plot.py", "hrl_nested_plot", reuse=True)


def _run(root: Path, seed: int, evals: list[tuple[int, float]], *, finished: bool) -> Path:
    d = root / f"seed-{seed}"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"algo": "ppo", "env": "hrl_nested/A-v0", "seed": seed}))
    rows = [{"env_steps": 5, "wall_s": 0.1, "policy_loss": 0.3}]  # a training row: every run has one
    rows += [{"env_steps": s, "wall_s": 1.0, "eval_return_mean": v} for s, v in evals]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        summary = {"seed": seed, **({"eval_return_mean": evals[-1][1]} if evals else {})}
        (d / "summary.json").write_text(json.dumps(summary))
    return d


@pytest.mark.parametrize("include_unfinished", [False, True])
def test_a_run_that_has_not_evaluated_yet_is_left_out(plot, tmp_path, capsys, include_unfinished):
    _run(tmp_path, 0, [(10, 1.0), (20, 3.0)], finished=True)
    _run(tmp_path, 1, [(10, 3.0), (20, 5.0)], finished=True)
    starting = _run(tmp_path, 2, [], finished=False)  # started, no evaluation logged yet
    out = tmp_path / "f.png"
    args = [str(tmp_path), "--out", str(out), "--reps", "50", "--no-aggregate"]
    data = plot.main([*args, *(["--include-unfinished"] if include_unfinished else [])])
    assert "unfinished" in capsys.readouterr().err
    curve = data["curves"]["hrl_nested/A-v0"]["ppo"]
    assert curve["seeds"] == [0, 1] and curve["mean"] == [2.0, 4.0]
    assert [Path(p).name for p in data["left_out_unfinished"]] == [starting.name]


def test_a_finished_run_without_the_metric_is_still_an_error(plot, tmp_path, capsys):
    _run(tmp_path, 0, [(10, 1.0)], finished=True)
    _run(tmp_path, 1, [], finished=True)  # finished, never logged eval_return_mean: a mixed set
    with pytest.raises(SystemExit) as e:
        plot.main([str(tmp_path), "--out", str(tmp_path / "f.png"), "--reps", "50"])
    assert e.value.code == 2
    assert "mixed runs" in capsys.readouterr().err
