"""Learning curves and rliable aggregate metrics from run directories, as a PNG and the JSON behind it.

    python experiments/plot.py experiments/results/nested/runs --out /tmp/nested.png
    python experiments/plot.py runs/ppo runs/nested-hrl --metric eval_success_rate --out fig.png \\
        --score-range hrl_nested/FourRooms-v0=0:1

Each RUN_DIR is a run directory written by ``experiments/train.py`` (``config.json``, ``metrics.jsonl``,
``summary.json``) or a folder searched recursively for them. Runs are grouped by task (``config.json``'s
``env``) and algorithm (its ``algo``, or the keys given by ``--group-by``); seeds are the runs of a group.
Unfinished runs (no ``summary.json``) are left out, with a notice, unless ``--include-unfinished``.

Learning curves: each seed's evaluations of ``--metric`` (the ``metrics.jsonl`` rows that hold it) are
linearly interpolated (``np.interp``) onto a common env-step grid: the union of the seeds' evaluation
steps, or ``--grid-points N`` evenly spaced steps, in both cases only from the latest first evaluation to
the earliest last one over the seeds (nothing is extrapolated). The line is the mean over seeds at each
grid point, the band its 95% percentile-bootstrap interval over seeds (rliable's stratified bootstrap).

Aggregates across tasks (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice"), with
rliable: the score of a run is its last evaluation, normalized per task as ``(x - lo) / (hi - lo)``.
``lo``/``hi`` come from ``--score-range TASK=LO:HI`` where given, otherwise from the runs themselves: the
minimum and maximum of the metric over every evaluation of every run (all algorithms, all seeds) on that
task. Then IQM (mean of the middle 50% of the pooled normalized scores), optimality gap
(``1 - mean(min(score, 1))``) and the performance profile (fraction of runs with score > tau), each with
a 95% stratified-bootstrap interval, over the tasks that every algorithm ran (the others are listed as
left out). ``FILE.json`` beside ``FILE.png`` holds every plotted number.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import os
import sys
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hrl_nested.tracking import read_metrics

CONFIDENCE = 0.95


class PlotInputError(ValueError):
    """Run directories or options that cannot be plotted; the message says what was expected."""


@dataclass(frozen=True)
class Run:
    """One run's evaluations of the plotted metric.

    Attributes:
        path: the run directory.
        algo: the group label (``config.json``'s ``algo`` unless grouped otherwise).
        env: the task id (``config.json``'s ``env``).
        seed: ``config.json``'s ``seed``.
        env_steps: env steps of each evaluation, increasing.
        values: the metric at those evaluations.
        finished: whether the run wrote its ``summary.json``.
    """

    path: Path
    algo: str
    env: str
    seed: int
    env_steps: np.ndarray
    values: np.ndarray
    finished: bool

    @property
    def final(self) -> float:
        """The run's score for the aggregates: its last evaluation."""
        return float(self.values[-1])


# ---------------------------------------------------------------------------- reading runs
def is_run_dir(path: Path) -> bool:
    """A run directory holds ``config.json`` and ``metrics.jsonl``."""
    return (path / "config.json").is_file() and (path / "metrics.jsonl").is_file()


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Every run directory given, or found (recursively, not inside a run) under a folder given."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise PlotInputError(f"RUN_DIR {str(p)!r} does not exist")
        if is_run_dir(p):
            found.append(p)
            continue
        below = sorted(_walk(p))
        if not below:
            raise PlotInputError(
                f"RUN_DIR {str(p)!r}: expected a run directory (config.json and metrics.jsonl, as "
                "experiments/train.py writes) or a folder containing some; found none"
            )
        found += below
    if not found:
        raise PlotInputError("expected at least one RUN_DIR (a run directory or a folder of them); got none")
    return list(dict.fromkeys(found))


def _walk(folder: Path) -> Iterator[Path]:
    for child in sorted(c for c in folder.iterdir() if c.is_dir()):
        if is_run_dir(child):
            yield child
        else:
            yield from _walk(child)


def _config_value(config: Mapping, dotted: str, path: Path):
    value = config
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise PlotInputError(
                f"{path / 'config.json'}: expected the key {dotted!r} (--group-by); not there"
            )
        value = value[part]
    return value


def load_run(path: str | Path, metric: str, group_by: Sequence[str] = ("algo",)) -> Run | None:
    """Read one run directory; ``None`` when its ``metrics.jsonl`` never logs ``metric``."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    for key in ("env", "seed"):
        if key not in config:
            raise PlotInputError(
                f"{path / 'config.json'}: expected the key {key!r}; keys are {sorted(config)}"
            )
    rows = [r for r in read_metrics(path / "metrics.jsonl") if metric in r]
    if not rows:
        return None
    if any("env_steps" not in r for r in rows):
        raise PlotInputError(
            f"{path / 'metrics.jsonl'}: expected env_steps in every row that logs {metric!r}"
        )
    steps = np.array([r["env_steps"] for r in rows], dtype=np.float64)
    try:
        values = np.array([r[metric] for r in rows], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise PlotInputError(f"{path / 'metrics.jsonl'}: expected numbers for {metric!r}; {e}") from None
    if not np.all(np.isfinite(values)):
        raise PlotInputError(f"{path / 'metrics.jsonl'}: {metric!r} is not finite at some evaluation")
    if np.any(np.diff(steps) <= 0):
        raise PlotInputError(f"{path / 'metrics.jsonl'}: expected increasing env_steps over evaluations")
    label = "/".join(str(_config_value(config, k, path)) for k in group_by)
    finished = (path / "summary.json").is_file()
    return Run(path, label, str(config["env"]), int(config["seed"]), steps, values, finished)


def load_runs(
    paths: Iterable[str | Path],
    metric: str,
    *,
    group_by: Sequence[str] = ("algo",),
    include_unfinished: bool = False,
) -> tuple[list[Run], list[Path]]:
    """The runs under ``paths`` that log ``metric``, and the unfinished ones left out.

    Raises ``PlotInputError`` when no run logs ``metric``, when only some finished runs do (a mixed set:
    each run of a figure must log the same metric), or when two runs share task, group and seed. An
    unfinished run that has not logged ``metric`` yet is left out (listed as unfinished) either way.
    """
    dirs = find_run_dirs(paths)
    loaded = {d: load_run(d, metric, group_by) for d in dirs}
    # A run still going that has not evaluated yet (a sweep's agents at work) is unfinished, not a mixed set.
    not_yet = [d for d, r in loaded.items() if r is None and not (d / "summary.json").is_file()]
    missing = [d for d, r in loaded.items() if r is None and d not in not_yet]
    if len(missing) + len(not_yet) == len(dirs):
        logged = sorted(_logged_eval_keys(dirs))
        raise PlotInputError(
            f"--metric {metric!r}: expected the runs' metrics.jsonl to log it; none of the {len(dirs)} runs "
            f"does (they log {logged or 'no eval_* metric'})"
        )
    if missing:
        logging = len(dirs) - len(missing) - len(not_yet)
        raise PlotInputError(
            f"--metric {metric!r}: mixed runs: {logging} log it but {len(missing)} do not "
            f"({', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''}); expected every "
            "run to log it"
        )
    runs = [r for r in loaded.values() if r is not None]
    skipped = [*not_yet, *(r.path for r in runs if not r.finished and not include_unfinished)]
    runs = [r for r in runs if r.finished or include_unfinished]
    if not runs:
        raise PlotInputError(
            f"expected finished runs (with summary.json); all {len(skipped)} are unfinished "
            "(pass --include-unfinished to plot them)"
        )
    seen: dict[tuple[str, str, int], Path] = {}
    for r in runs:
        key = (r.env, r.algo, r.seed)
        if key in seen:
            raise PlotInputError(
                f"two runs of {r.algo!r} on {r.env!r} with seed {r.seed}: {seen[key]} and {r.path}; expected "
                "one per seed (tell them apart with --group-by, e.g. --group-by algo nested_hrl.hypergrad)"
            )
        seen[key] = r.path
    return runs, skipped


def _logged_eval_keys(dirs: Iterable[Path]) -> set[str]:
    return {
        k for d in dirs for row in read_metrics(d / "metrics.jsonl") for k in row if k.startswith("eval_")
    }


def group_runs(runs: Iterable[Run]) -> dict[str, dict[str, list[Run]]]:
    """``{task: {algo: [runs sorted by seed]}}``, tasks and algorithms in order of first appearance."""
    out: dict[str, dict[str, list[Run]]] = {}
    for r in runs:
        out.setdefault(r.env, {}).setdefault(r.algo, []).append(r)
    for algos in out.values():
        for rs in algos.values():
            rs.sort(key=lambda r: r.seed)
    return out


# ---------------------------------------------------------------------------- rliable and bootstrap
def _rliable():
    """rliable's ``library`` and ``metrics``, adapted to arch >= 8 where needed.

    rliable 1.2 passes ``random_state=`` to arch's bootstrap base classes, which arch 8 (the first arch
    to import under pandas 3) no longer accepts; its resampling draws from NumPy's global generator
    anyway, so the argument is dropped on the way to arch (see ``_bootstrap_seed``).
    """
    try:
        from arch import bootstrap as arch_bs
        from rliable import library, metrics
    except Exception as e:  # arch < 8 fails inside its own import under pandas >= 3 (a TypeError)
        raise ImportError(
            f"rliable (and its arch dependency) must import: {e!r}; arch < 8 needs pandas < 3: "
            "pip install rliable 'pandas<3' (or arch >= 8, which rliable's metadata forbids)"
        ) from e

    if "random_state" in inspect.signature(arch_bs.IIDBootstrap.__init__).parameters:
        return library, metrics
    if not getattr(library, "_seed_adapted", False):
        library.StratifiedBootstrap = _adapt(library.StratifiedBootstrap, arch_bs.IIDBootstrap)
        library.StratifiedIndependentBootstrap = _adapt(
            library.StratifiedIndependentBootstrap, arch_bs.IndependentSamplesBootstrap
        )
        library._seed_adapted = True
    return library, metrics


def _adapt(cls: type, arch_base: type) -> type:
    # Sits between the rliable class and arch's base in the MRO, so rliable's super().__init__ lands here.
    def __init__(self, *args, random_state=None, **kwargs):
        arch_base.__init__(self, *args, **kwargs)

    bridge = type(f"_{arch_base.__name__}NoRandomState", (arch_base,), {"__init__": __init__})
    return type(cls.__name__, (cls, bridge), {"__module__": cls.__module__})


@contextlib.contextmanager
def _bootstrap_seed(seed: int, *names: str) -> Iterator[None]:
    """rliable resamples with ``np.random.choice``: seed NumPy's global generator, then restore it.

    The stream is keyed on ``names`` (task, algorithm, metric) as well, so an interval does not change
    when other runs join the figure or arrive in another order.
    """
    state = np.random.get_state()
    np.random.seed([seed, zlib.crc32("\0".join(names).encode())])
    try:
        yield
    finally:
        np.random.set_state(state)


def bootstrap_mean_ci(
    per_seed: np.ndarray, reps: int = 2000, seed: int = 0, key: Sequence[str] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds and its 95% percentile-bootstrap interval, at each column.

    Args:
        per_seed: ``(num_seeds, num_points)``; seeds are resampled with replacement (rliable's
            ``get_interval_estimates``), one interval per point.

    Returns:
        ``mean (num_points,)`` and ``ci (2, num_points)`` (lower row, upper row).
    """
    per_seed = np.asarray(per_seed, dtype=np.float64)
    assert per_seed.ndim == 2, per_seed.shape
    library, _ = _rliable()
    scores = per_seed[:, None, :]  # (runs, tasks=1, points), rliable's layout
    with _bootstrap_seed(seed, *key):
        point, ci = library.get_interval_estimates(
            {"m": scores}, lambda s: s.mean(axis=(0, 1)), reps=reps, confidence_interval_size=CONFIDENCE
        )
    return point["m"], np.asarray(ci["m"])


# ---------------------------------------------------------------------------- learning curves
def common_grid(runs: Sequence[Run], grid_points: int | None = None) -> np.ndarray:
    """The env steps at which every seed is interpolated: see the module docstring."""
    lo = max(r.env_steps[0] for r in runs)
    hi = min(r.env_steps[-1] for r in runs)
    if hi < lo:
        late = max(runs, key=lambda r: r.env_steps[0])
        early = min(runs, key=lambda r: r.env_steps[-1])
        raise PlotInputError(
            f"{late.algo!r} on {late.env!r}: expected the seeds' evaluations to overlap in env steps; seed "
            f"{early.seed} ends at {early.env_steps[-1]:.0f}, before seed {late.seed} starts at {lo:.0f}"
        )
    if grid_points is not None:
        return np.linspace(lo, hi, grid_points) if hi > lo else np.array([lo])
    union = np.unique(np.concatenate([r.env_steps for r in runs]))
    return union[(union >= lo) & (union <= hi)]


def learning_curve(
    runs: Sequence[Run], grid_points: int | None = None, reps: int = 2000, seed: int = 0
) -> dict:
    """Mean over seeds and 95% bootstrap interval of one algorithm on one task, on the common grid."""
    grid = common_grid(runs, grid_points)
    per_seed = np.stack([np.interp(grid, r.env_steps, r.values) for r in runs])
    mean, ci = bootstrap_mean_ci(per_seed, reps=reps, seed=seed, key=(runs[0].env, runs[0].algo, "curve"))
    return {
        "seeds": [r.seed for r in runs],
        "env_steps": grid.tolist(),
        "mean": mean.tolist(),
        "ci_low": ci[0].tolist(),
        "ci_high": ci[1].tolist(),
    }


def learning_curves(runs: Iterable[Run], grid_points: int | None = None, reps: int = 2000, seed: int = 0):
    """``{task: {algo: learning_curve(...)}}``."""
    return {
        task: {algo: learning_curve(rs, grid_points, reps, seed) for algo, rs in algos.items()}
        for task, algos in group_runs(runs).items()
    }


# ---------------------------------------------------------------------------- aggregates
def parse_score_ranges(items: Iterable[str]) -> dict[str, tuple[float, float]]:
    """``["TASK=LO:HI", ...]`` -> ``{TASK: (LO, HI)}`` (split at the last ``=``)."""
    out = {}
    for item in items:
        task, sep, rng = item.rpartition("=")
        lo_s, colon, hi_s = rng.partition(":")
        try:
            lo, hi = float(lo_s), float(hi_s)
        except ValueError:
            lo = hi = math.nan
        if not (sep and colon and task) or not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
            raise PlotInputError(f"--score-range: expected TASK=LO:HI with numbers LO < HI; got {item!r}")
        out[task] = (lo, hi)
    return out


def score_ranges(
    runs: Iterable[Run], given: Mapping[str, tuple[float, float]] | None = None
) -> dict[str, dict]:
    """Per task ``{"lo", "hi", "source"}``: from ``given``, else the runs' min/max over all evaluations."""
    given = dict(given or {})
    out = {}
    for task, algos in group_runs(runs).items():
        if task in given:
            lo, hi = given.pop(task)
            out[task] = {"lo": lo, "hi": hi, "source": "given (--score-range)"}
            continue
        values = np.concatenate([r.values for rs in algos.values() for r in rs])
        lo, hi = float(values.min()), float(values.max())
        if hi <= lo:
            raise PlotInputError(
                f"task {task!r}: every evaluation of every run is {lo}, so the runs' own min/max cannot "
                f"normalize it; expected --score-range {task}=LO:HI"
            )
        out[task] = {"lo": lo, "hi": hi, "source": "runs' min/max over all evaluations of all algorithms"}
    if given:
        raise PlotInputError(f"--score-range names tasks no run has: {sorted(given)}")
    return out


def normalized_scores(runs: Iterable[Run], ranges: Mapping[str, Mapping]) -> dict[str, dict[str, np.ndarray]]:
    """``{algo: {task: (x_final - lo) / (hi - lo) per seed}}``."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for task, algos in group_runs(runs).items():
        lo, hi = ranges[task]["lo"], ranges[task]["hi"]
        for algo, rs in algos.items():
            out.setdefault(algo, {})[task] = (np.array([r.final for r in rs]) - lo) / (hi - lo)
    return out


def aggregate_metrics(
    runs: Sequence[Run], ranges: Mapping[str, Mapping], reps: int = 2000, seed: int = 0, num_taus: int = 101
) -> dict:
    """IQM, optimality gap (gamma = 1) and performance profile with rliable, over the common tasks.

    A task enters when every algorithm has runs on it. With as many seeds on each task, an algorithm's
    scores are rliable's ``(num_runs, num_tasks)`` matrix; otherwise one array per task (rliable's
    ``StratifiedIndependentBootstrap``), and the metrics pool all runs the same way.
    """
    scores = normalized_scores(runs, ranges)
    # sorted, so an interval does not depend on the order the runs were found in
    tasks = sorted(t for t in group_runs(runs) if all(t in per_task for per_task in scores.values()))
    left_out = {
        t: sorted(a for a, per_task in scores.items() if t not in per_task)
        for t in group_runs(runs)
        if t not in tasks
    }
    result: dict = {"tasks": tasks, "left_out_tasks": left_out, "score": "last evaluation, normalized"}
    if not tasks:
        return result
    per_algo = {a: [per_task[t] for t in tasks] for a, per_task in scores.items()}
    pooled = np.concatenate([x for xs in per_algo.values() for x in xs])
    taus = np.linspace(min(0.0, pooled.min()), max(1.0, pooled.max()), num_taus)
    result["normalized_scores"] = {
        a: {t: x.tolist() for t, x in zip(tasks, xs)} for a, xs in per_algo.items()
    }

    result["performance_profile"] = {"tau": taus.tolist()}
    for algo, xs in per_algo.items():
        one = _algo_aggregates(algo, xs, taus, reps, seed)
        result.setdefault("iqm", {})[algo] = one["iqm"]
        result.setdefault("optimality_gap", {})[algo] = one["optimality_gap"]
        result["performance_profile"][algo] = one["performance_profile"]
    return result


def _algo_aggregates(algo: str, xs: list[np.ndarray], taus: np.ndarray, reps: int, seed: int) -> dict:
    """One algorithm's IQM, optimality gap and profile (values and 95% intervals), each its own stream."""
    library, metrics = _rliable()
    scores = _rliable_input({algo: xs})
    out = {}
    funcs = {
        "iqm": lambda *x: np.array([metrics.aggregate_iqm(_pool(x))]),
        "optimality_gap": lambda *x: np.array([metrics.aggregate_optimality_gap(_pool(x), gamma=1)]),
    }
    for name, func in funcs.items():
        with _bootstrap_seed(seed, algo, name):
            point, ci = library.get_interval_estimates(
                scores, func, reps=reps, confidence_interval_size=CONFIDENCE
            )
        out[name] = {"value": float(point[algo][0]), "ci": ci[algo][:, 0].tolist()}
    with _bootstrap_seed(seed, algo, "performance_profile"):
        if isinstance(scores[algo], np.ndarray):
            prof, ci = library.create_performance_profile(
                scores, taus, reps=reps, confidence_interval_size=CONFIDENCE
            )
        else:  # one array per task: create_performance_profile takes only the matrix form
            prof, ci = library.get_interval_estimates(
                scores,
                lambda *x: library.score_distributions(_pool(x), taus),
                reps=reps,
                confidence_interval_size=CONFIDENCE,
            )
    out["performance_profile"] = {
        "fraction": prof[algo].tolist(),
        "ci_low": ci[algo][0].tolist(),
        "ci_high": ci[algo][1].tolist(),
    }
    return out


def _pool(xs: Sequence[np.ndarray]) -> np.ndarray:
    return xs[0] if len(xs) == 1 else np.concatenate([np.ravel(x) for x in xs])


def _rliable_input(per_algo: Mapping[str, list[np.ndarray]]) -> dict:
    # Equal seed counts: rliable's (num_runs, num_tasks) matrix; otherwise a list of (num_runs_t, 1) arrays.
    out = {}
    for algo, xs in per_algo.items():
        out[algo] = np.stack(xs, axis=1) if len({len(x) for x in xs}) == 1 else [x[:, None] for x in xs]
    return out


# ---------------------------------------------------------------------------- figure and JSON
def plot_data(
    runs: Sequence[Run],
    metric: str,
    *,
    score_range: Mapping[str, tuple[float, float]] | None = None,
    aggregate: bool = True,
    grid_points: int | None = None,
    reps: int = 2000,
    seed: int = 0,
) -> dict:
    """Every number a figure shows: curves per task and algorithm, and (``aggregate``) rliable's metrics."""
    data: dict = {
        "metric": metric,
        "confidence": CONFIDENCE,
        "bootstrap": {"reps": reps, "seed": seed, "method": "percentile, seeds resampled per task (rliable)"},
        "grid": (
            f"{grid_points} evenly spaced env steps"
            if grid_points
            else "union of the seeds' evaluation steps"
        )
        + " from the latest first evaluation to the earliest last one; each seed linearly interpolated",
        "runs": [
            {
                "path": str(r.path),
                "algo": r.algo,
                "env": r.env,
                "seed": r.seed,
                "finished": r.finished,
                "final_env_steps": float(r.env_steps[-1]),
                "final": r.final,
            }
            for r in runs
        ],  # fmt: skip
        "curves": learning_curves(runs, grid_points, reps, seed),
    }
    if aggregate:
        ranges = score_ranges(runs, score_range)
        data["score_ranges"] = ranges
        data["aggregate"] = aggregate_metrics(runs, ranges, reps=reps, seed=seed)
    return data


def draw(data: Mapping, path: str | Path, algo_order: Sequence[str] | None = None) -> None:
    """The PNG for ``plot_data``'s output: a curve panel per task, then IQM, optimality gap, profile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = data["curves"]
    present = dict.fromkeys(a for per_task in curves.values() for a in per_task)
    algos = [*(algo_order or []), *(a for a in present if a not in (algo_order or []))]
    # tab20 pairs a dark and a light shade of each hue: the first 10 algorithms get the dark ones
    colors = {a: plt.get_cmap("tab20")((2 * i + (i // 10) % 2) % 20) for i, a in enumerate(algos)}
    agg = data.get("aggregate")
    ncols = max(len(curves), 3 if agg else 1)
    nrows = 2 if agg else 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax, (task, per_algo) in zip(axes[0], curves.items()):
        for algo, c in per_algo.items():
            ax.plot(c["env_steps"], c["mean"], color=colors[algo], label=f"{algo} ({len(c['seeds'])} seeds)")
            ax.fill_between(c["env_steps"], c["ci_low"], c["ci_high"], color=colors[algo], alpha=0.2)
        ax.set(title=task, xlabel="env steps", ylabel=data["metric"])
        ax.legend(fontsize=7)
    for ax in axes[0][len(curves) :]:
        ax.axis("off")
    if agg:
        _draw_aggregate(axes[1], agg, colors)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _draw_aggregate(axes, agg: Mapping, colors: Mapping) -> None:
    for ax in axes[3:]:
        ax.axis("off")
    if not agg["tasks"]:
        axes[0].text(0.5, 0.5, "no task that every algorithm ran", ha="center", va="center")
        for ax in axes[:3]:
            ax.axis("off")
        return
    tasks = ", ".join(t.split("/")[-1] for t in agg["tasks"])
    for ax, key, label in ((axes[0], "iqm", "IQM"), (axes[1], "optimality_gap", "optimality gap")):
        names = list(agg[key])
        for y, name in enumerate(names):
            v, (lo, hi) = agg[key][name]["value"], agg[key][name]["ci"]
            # a zero-width interval (every resample equal) still shows as the point
            ax.plot([lo, hi], [y, y], color=colors[name], linewidth=8, alpha=0.5, solid_capstyle="butt")
            ax.plot([v], [y], marker="|", markersize=16, color="black")
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_ylim(len(names) - 0.3, -0.7)  # first algorithm on top, as in the legends
        ax.margins(x=0.05)
        ax.set(xlabel=f"{label} of normalized score (95% CI)", title=f"{label}: {tasks}")
        ax.title.set_fontsize(8)
    prof = agg["performance_profile"]
    for name in agg["iqm"]:
        p = prof[name]
        axes[2].plot(prof["tau"], p["fraction"], color=colors[name], label=name)
        axes[2].fill_between(prof["tau"], p["ci_low"], p["ci_high"], color=colors[name], alpha=0.2)
    axes[2].set(
        xlabel="normalized score tau", ylabel="fraction of runs with score > tau", title="performance profile"
    )
    axes[2].legend(fontsize=7)


def write_figure(
    runs: Sequence[Run], out: str | Path, metric: str, algo_order=None, notes: Mapping | None = None, **kwargs
) -> dict:
    """``plot_data`` (``kwargs``) -> ``out`` (PNG) and ``out`` with ``.json`` (the data and ``notes``)."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise PlotInputError(f"--out: expected a .png file name; got {str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {**plot_data(runs, metric, **kwargs), **(notes or {})}
    # relative to the JSON's folder, so a committed figure does not carry this machine's paths
    data["run_paths"] = "relative to this file's folder"
    for row in data["runs"]:
        row["path"] = os.path.relpath(row["path"], out.parent)
    draw(data, out, algo_order)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    return data


def main(argv: list[str] | None = None) -> dict:
    """The command line (see the module docstring); bad input exits with code 2 and says what was expected."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run directories or folders holding them")
    p.add_argument("--out", required=True, help="the PNG to write; FILE.json beside it gets the numbers")
    p.add_argument(
        "--metric",
        default="eval_return_mean",
        help="the metrics.jsonl key to plot (default eval_return_mean; e.g. eval_success_rate)",
    )
    p.add_argument(
        "--score-range",
        action="append",
        default=[],
        metavar="TASK=LO:HI",
        help="normalization of TASK's scores for the aggregates (repeatable); "
        "default: the runs' min/max over all evaluations on that task",
    )
    p.add_argument(
        "--group-by",
        nargs="+",
        default=["algo"],
        metavar="KEY",
        help="config.json keys (dotted when nested) naming an algorithm, e.g. algo nested_hrl.hypergrad",
    )
    p.add_argument(
        "--grid-points", type=int, default=None, help="evenly spaced curve points (default: eval steps)"
    )
    p.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--include-unfinished", action="store_true", help="also plot runs without summary.json")
    p.add_argument("--no-aggregate", action="store_true", help="learning curves only")
    args = p.parse_args(argv)
    if args.grid_points is not None and args.grid_points < 2:
        p.error(f"--grid-points: expected an integer >= 2; got {args.grid_points}")
    if args.seed < 0:
        p.error(f"--seed: expected a non-negative integer; got {args.seed}")
    if args.reps < 1:
        p.error(f"--reps: expected a positive integer; got {args.reps}")
    if Path(args.out).suffix.lower() != ".png":
        p.error(f"--out: expected a .png file name; got {args.out!r}")
    try:
        score_range = parse_score_ranges(args.score_range)
        runs, skipped = load_runs(
            args.run_dirs, args.metric, group_by=args.group_by, include_unfinished=args.include_unfinished
        )
        if skipped:
            names = ", ".join(map(str, skipped))
            print(f"left out {len(skipped)} unfinished runs (no summary.json): {names}", file=sys.stderr)
        data = write_figure(
            runs,
            args.out,
            args.metric,
            score_range=score_range,
            aggregate=not args.no_aggregate,
            grid_points=args.grid_points,
            reps=args.reps,
            seed=args.seed,
            notes={"left_out_unfinished": [str(s) for s in skipped]},
        )
    except PlotInputError as e:
        p.error(str(e))
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')} ({len(runs)} runs)")
    return data


if __name__ == "__main__":
    main()
