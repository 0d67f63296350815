"""experiments/plot.py: the plotted numbers (the JSON beside the PNG) against the runs' own files.

Every expected value is recomputed here from the synthetic run directories with NumPy/SciPy (np.interp
onto the grid, mean over seeds, scipy.stats.trim_mean, the optimality-gap and profile formulas), not
read back from plot.py's helpers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from tests._scripts import load_script

REPO = Path(__file__).resolve().parents[1]
REPS = ["--reps", "300"]


def _load(name: str, file: str):
    return load_script(file, name, reuse=True)


@pytest.fixture(scope="module")
def plot():
    return _load("hrl_nested_plot", "plot.py")


def make_run(root: Path, algo, env, seed, steps, values, *, metric="eval_return_mean", finished=True) -> Path:
    """A run directory as experiments/train.py writes it: eval rows between plain training rows."""
    d = root / algo / env.replace("/", "_") / f"seed-{seed}"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"algo": algo, "env": env, "seed": seed, "ppo": {"lr": 1e-3}}))
    rows = []
    for i, (s, v) in enumerate(zip(steps, values)):
        rows.append({"iteration": 2 * i, "env_steps": int(s) - 1, "wall_s": 0.1 * i, "policy_loss": 0.5})
        rows.append({"iteration": 2 * i + 1, "env_steps": int(s), "wall_s": 0.1 * i + 0.05, metric: float(v)})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        summary = {
            "algo": algo,
            "env": env,
            "seed": seed,
            "env_steps": int(steps[-1]),
            metric: float(values[-1]),
        }
        (d / "summary.json").write_text(json.dumps(summary))
    return d


def run_plot(plot, args) -> dict:
    out = Path(args[args.index("--out") + 1])
    plot.main([*args, *([] if "--reps" in args else REPS)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads(out.with_suffix(".json").read_text())


def _runs_json(d: Path, metric="eval_return_mean"):
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if metric in r]
    return np.array([r["env_steps"] for r in rows], float), np.array([r[metric] for r in rows], float)


@pytest.fixture
def two_tasks(tmp_path):
    """Two algorithms x two tasks x three seeds; seeds evaluate at different steps (interpolation needed)."""
    rng = np.random.default_rng(0)
    dirs = {}
    for env in ("hrl_nested/A-v0", "hrl_nested/B-v0"):
        for algo, slope in (("ppo", 1.0), ("nested-hrl", 2.0)):
            for seed in range(3):
                steps = np.arange(1, 9) * 1000 + 250 * seed
                values = slope * steps / 1000 + rng.normal(0, 0.5, len(steps))
                dirs[env, algo, seed] = make_run(tmp_path / "runs", algo, env, seed, steps, values)
    return tmp_path, dirs


def test_curves_are_the_seed_mean_on_a_common_grid(plot, two_tasks):
    tmp, dirs = two_tasks
    data = run_plot(plot, [str(tmp / "runs"), "--out", str(tmp / "fig.png")])
    assert data["metric"] == "eval_return_mean"
    for (env, algo), curve in {(e, a): data["curves"][e][a] for e, a, _ in dirs}.items():
        per_seed = [_runs_json(dirs[env, algo, s]) for s in range(3)]
        lo, hi = max(st[0] for st, _ in per_seed), min(st[-1] for st, _ in per_seed)
        union = np.unique(np.concatenate([st for st, _ in per_seed]))
        grid = union[(union >= lo) & (union <= hi)]
        np.testing.assert_array_equal(curve["env_steps"], grid)
        expected = np.mean([np.interp(grid, st, v) for st, v in per_seed], axis=0)
        np.testing.assert_allclose(curve["mean"], expected, rtol=1e-12)
        assert curve["seeds"] == [0, 1, 2]
        assert np.all(np.array(curve["ci_low"]) <= expected + 1e-12)
        assert np.all(np.array(curve["ci_high"]) >= expected - 1e-12)
        assert np.any(np.array(curve["ci_high"]) > np.array(curve["ci_low"]))


def test_grid_points_are_evenly_spaced(plot, two_tasks):
    tmp, dirs = two_tasks
    data = run_plot(plot, [str(tmp / "runs"), "--out", str(tmp / "fig.png"), "--grid-points", "7"])
    curve = data["curves"]["hrl_nested/A-v0"]["ppo"]
    per_seed = [_runs_json(dirs["hrl_nested/A-v0", "ppo", s]) for s in range(3)]
    grid = np.linspace(1500.0, 8000.0, 7)  # latest first evaluation (seed 2) .. earliest last one (seed 0)
    np.testing.assert_allclose(curve["env_steps"], grid)
    np.testing.assert_allclose(curve["mean"], np.mean([np.interp(grid, s, v) for s, v in per_seed], 0))


def test_run_dirs_and_their_folder_give_the_same_numbers(plot, two_tasks):
    tmp, dirs = two_tasks
    a = run_plot(plot, [str(tmp / "runs"), "--out", str(tmp / "a.png")])
    b = run_plot(plot, [*map(str, dirs.values()), "--out", str(tmp / "b.png")])
    assert a["curves"] == b["curves"] and a["aggregate"] == b["aggregate"]


def test_bootstrap_interval_matches_numpy_and_shrinks_with_more_seeds(plot, tmp_path):
    base = np.array([[1.0, 2.0, 3.0], [3.0, 5.0, 4.0], [5.0, 5.0, 9.0], [8.0, 6.0, 5.0]])  # 4 seeds x 3 evals
    widths = {}
    for repeat in (1, 10):  # the same values 10 times over: same spread, 10x the seeds
        root = tmp_path / f"x{repeat}"
        values = np.tile(base, (repeat, 1))
        for seed, v in enumerate(values):
            make_run(root, "ppo", "hrl_nested/A-v0", seed, [100, 200, 300], v)
        data = run_plot(
            plot, [str(root), "--out", str(tmp_path / f"x{repeat}.png"), "--reps", "4000", "--no-aggregate"]
        )
        curve = data["curves"]["hrl_nested/A-v0"]["ppo"]
        lo, hi, mean = (np.array(curve[k]) for k in ("ci_low", "ci_high", "mean"))
        np.testing.assert_allclose(mean, values.mean(0), rtol=1e-12)
        assert np.all((lo <= mean) & (mean <= hi))
        if repeat == 10:  # 4 seeds give too few distinct resample means for percentiles to agree closely
            # an independent percentile bootstrap of the mean over seeds
            rng = np.random.default_rng(0)
            means = values[rng.integers(0, len(values), (20000, len(values)))].mean(1)
            ref_lo, ref_hi = np.percentile(means, [2.5, 97.5], axis=0)
            np.testing.assert_allclose(lo, ref_lo, atol=0.05 * (ref_hi - ref_lo).max())
            np.testing.assert_allclose(hi, ref_hi, atol=0.05 * (ref_hi - ref_lo).max())
        widths[repeat] = hi - lo
    assert np.all(widths[10] < 0.5 * widths[1])


def _final_normalized(dirs, env, algo, seeds, lo, hi):
    return np.array([(_runs_json(dirs[env, algo, s])[1][-1] - lo) / (hi - lo) for s in seeds])


def test_aggregates_are_rliable_formulas_of_normalized_final_scores(plot, two_tasks):
    tmp, dirs = two_tasks
    data = run_plot(
        plot, [str(tmp / "runs"), "--out", str(tmp / "fig.png"), "--score-range", "hrl_nested/B-v0=-2:30"]
    )
    # A: the runs' own min/max over every evaluation of both algorithms; B: the given range
    a_values = np.concatenate([_runs_json(d)[1] for (e, _, _), d in dirs.items() if e == "hrl_nested/A-v0"])
    ranges = {"hrl_nested/A-v0": (a_values.min(), a_values.max()), "hrl_nested/B-v0": (-2.0, 30.0)}
    for env, (lo, hi) in ranges.items():
        assert (data["score_ranges"][env]["lo"], data["score_ranges"][env]["hi"]) == pytest.approx((lo, hi))
    assert "--score-range" in data["score_ranges"]["hrl_nested/B-v0"]["source"]
    agg = data["aggregate"]
    assert sorted(agg["tasks"]) == sorted(ranges) and agg["left_out_tasks"] == {}
    taus = np.array(agg["performance_profile"]["tau"])
    for algo in ("ppo", "nested-hrl"):
        x = np.concatenate(
            [_final_normalized(dirs, e, algo, range(3), lo, hi) for e, (lo, hi) in ranges.items()]
        )
        iqm, gap = agg["iqm"][algo], agg["optimality_gap"][algo]
        assert iqm["value"] == pytest.approx(scipy.stats.trim_mean(x, 0.25), rel=1e-12)
        assert gap["value"] == pytest.approx(1.0 - np.mean(np.minimum(x, 1.0)), rel=1e-12)
        for m in (iqm, gap):
            assert m["ci"][0] <= m["value"] + 1e-12 and m["value"] - 1e-12 <= m["ci"][1]
        prof = np.array(agg["performance_profile"][algo]["fraction"])
        np.testing.assert_allclose(prof, [(x > t).mean() for t in taus])
        assert np.all(np.diff(prof) <= 0)
        assert np.all(np.array(agg["performance_profile"][algo]["ci_low"]) <= prof + 1e-12)
    assert taus[0] <= 0.0 and taus[-1] >= 1.0


def test_unequal_seed_counts_pool_all_runs(plot, tmp_path):
    dirs = {}
    rng = np.random.default_rng(2)
    counts = {"hrl_nested/A-v0": 2, "hrl_nested/B-v0": 5}
    for env, n in counts.items():
        for algo in ("ppo", "hrl"):
            for seed in range(n):
                dirs[env, algo, seed] = make_run(tmp_path, algo, env, seed, [10, 20], rng.uniform(0, 1, 2))
    ranges = [a for env in counts for a in ("--score-range", f"{env}=0:1")]
    data = run_plot(plot, [str(tmp_path), "--out", str(tmp_path / "f.png"), *ranges])
    x = np.concatenate([_final_normalized(dirs, e, "hrl", range(n), 0, 1) for e, n in counts.items()])
    agg = data["aggregate"]
    assert agg["iqm"]["hrl"]["value"] == pytest.approx(scipy.stats.trim_mean(x, 0.25), rel=1e-12)
    assert agg["optimality_gap"]["hrl"]["value"] == pytest.approx(
        1.0 - np.mean(np.minimum(x, 1.0)), rel=1e-12
    )
    taus = np.array(agg["performance_profile"]["tau"])
    np.testing.assert_allclose(agg["performance_profile"]["hrl"]["fraction"], [(x > t).mean() for t in taus])


def test_tasks_missing_an_algorithm_are_left_out_of_the_aggregates(plot, two_tasks):
    tmp, dirs = two_tasks
    make_run(tmp / "runs", "ppo", "hrl_nested/C-v0", 0, [1000, 2000], [0.0, 1.0])
    data = run_plot(plot, [str(tmp / "runs"), "--out", str(tmp / "fig.png")])
    assert "hrl_nested/C-v0" in data["curves"]
    assert data["aggregate"]["left_out_tasks"] == {"hrl_nested/C-v0": ["nested-hrl"]}
    assert "hrl_nested/C-v0" not in data["aggregate"]["tasks"]


def test_success_metric_and_unfinished_runs(plot, tmp_path, capsys):
    make_run(tmp_path, "ppo", "hrl_nested/A-v0", 0, [10, 20, 30], [0.0, 0.5, 1.0], metric="eval_success_rate")
    make_run(tmp_path, "ppo", "hrl_nested/A-v0", 1, [10, 20, 30], [0.0, 0.0, 1.0], metric="eval_success_rate")
    make_run(tmp_path, "ppo", "hrl_nested/A-v0", 2, [10], [1.0], metric="eval_success_rate", finished=False)
    args = [str(tmp_path), "--out", str(tmp_path / "s.png"), "--metric", "eval_success_rate"]
    data = run_plot(plot, args)
    assert "unfinished" in capsys.readouterr().err
    assert data["curves"]["hrl_nested/A-v0"]["ppo"]["mean"] == [0.0, 0.25, 1.0]
    assert len(data["left_out_unfinished"]) == 1
    assert {tmp_path / r["path"] for r in data["runs"]} == {
        tmp_path / "ppo" / "hrl_nested_A-v0" / f"seed-{s}" for s in (0, 1)
    }
    data = run_plot(plot, [*args, "--include-unfinished"])
    assert data["curves"]["hrl_nested/A-v0"]["ppo"]["seeds"] == [0, 1, 2]


def _error(plot, capsys, args) -> str:
    with pytest.raises(SystemExit) as e:
        plot.main([*args, *REPS])
    assert e.value.code == 2
    return capsys.readouterr().err


def test_bad_input_names_what_was_expected(plot, tmp_path, capsys):
    out = ["--out", str(tmp_path / "f.png")]
    (tmp_path / "empty").mkdir()
    assert "at least one RUN_DIR" in _error(plot, capsys, out)
    assert "expected a run directory" in _error(plot, capsys, [str(tmp_path / "empty"), *out])
    assert "does not exist" in _error(plot, capsys, [str(tmp_path / "nope"), *out])
    runs = tmp_path / "runs"
    make_run(runs, "ppo", "hrl_nested/A-v0", 0, [10, 20], [1.0, 2.0])
    err = _error(plot, capsys, [str(runs), *out, "--metric", "eval_success_rate"])
    assert "'eval_success_rate'" in err and "eval_return_mean" in err  # what it wanted, what the runs log
    make_run(runs, "hrl", "hrl_nested/A-v0", 0, [10, 20], [0.0, 1.0], metric="eval_success_rate")
    err = _error(plot, capsys, [str(runs), *out])
    assert "mixed" in err and "1 log it but 1 do not" in err and "seed-0" in err
    for bad in ("hrl_nested/A-v0=1", "hrl_nested/A-v0=3:1", "=0:1", "hrl_nested/A-v0=a:b"):
        assert "TASK=LO:HI" in _error(plot, capsys, [str(runs / "ppo"), *out, "--score-range", bad])
    assert "no run has" in _error(plot, capsys, [str(runs / "ppo"), *out, "--score-range", "other=0:1"])
    assert ".png" in _error(plot, capsys, [str(runs / "ppo"), "--out", str(tmp_path / "f.pdf")])
    late = tmp_path / "late"
    make_run(late, "ppo", "hrl_nested/A-v0", 0, [10, 20], [1.0, 2.0])
    make_run(late, "ppo", "hrl_nested/A-v0", 1, [30, 40], [1.0, 2.0])
    assert "expected the seeds' evaluations to overlap" in _error(plot, capsys, [str(late), *out])


def test_duplicate_seeds_and_flat_scores_are_errors(plot, tmp_path, capsys):
    make_run(tmp_path / "x", "ppo", "hrl_nested/A-v0", 0, [10, 20], [1.0, 1.0])
    make_run(tmp_path / "y", "ppo", "hrl_nested/A-v0", 0, [10, 20], [1.0, 1.0])
    out = ["--out", str(tmp_path / "f.png")]
    err = _error(plot, capsys, [str(tmp_path), *out])
    assert "seed 0" in err and "--group-by" in err
    err = _error(plot, capsys, [str(tmp_path / "x"), *out])
    assert "--score-range hrl_nested/A-v0=LO:HI" in err
    data = run_plot(plot, [str(tmp_path / "x"), *out, "--score-range", "hrl_nested/A-v0=0:2"])
    assert data["aggregate"]["iqm"]["ppo"]["value"] == pytest.approx(0.5)


def test_group_by_config_keys(plot, tmp_path):
    make_run(tmp_path, "ppo", "hrl_nested/A-v0", 0, [10, 20], [1.0, 2.0])
    data = run_plot(plot, [str(tmp_path), "--out", str(tmp_path / "f.png"), "--group-by", "algo", "ppo.lr"])
    assert list(data["curves"]["hrl_nested/A-v0"]) == ["ppo/0.001"]


def test_nested_results_report_plots_through_plot_py(plot, tmp_path, monkeypatch):
    nested = _load("nested_results_for_plot_test", "nested_results.py")
    monkeypatch.setattr(nested, "PLOT_REPS", 200)
    tasks = ("hrl_nested/FourRooms-v0", "hrl_nested/PointMaze-U-v0")
    for task in tasks:
        for algo in ("ppo", "hrl"):
            for seed in (100, 101):
                values = [0.0, 0.5 if algo == "hrl" else 0.0, 1.0 if seed == 100 else 0.0]
                make_run(
                    tmp_path / "runs",
                    algo,
                    task,
                    seed,
                    [1000, 2000, 3000],
                    values,
                    metric="eval_success_rate",
                )
    nested.main(["--out", str(tmp_path), "--report-only", "--tasks", *tasks, "--algos", "ppo", "hrl"])
    curves = json.loads((tmp_path / "curves_hrl_nested_FourRooms-v0.json").read_text())["curves"]
    assert curves["hrl_nested/FourRooms-v0"]["hrl"]["mean"] == [0.0, 0.5, 0.5]
    assert (tmp_path / "curves_hrl_nested_PointMaze-U-v0.png").is_file()
    agg = json.loads((tmp_path / "aggregate.json").read_text())
    assert sorted(agg["aggregate"]["tasks"]) == sorted(tasks)
    assert agg["aggregate"]["optimality_gap"]["ppo"]["value"] == pytest.approx(0.5)
    assert (tmp_path / "aggregate.png").read_bytes()[:4] == b"\x89PNG"
