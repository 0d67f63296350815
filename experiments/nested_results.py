"""The nested-HRL results table: algorithms x tasks x seeds with identical env-step budgets.

    python experiments/nested_results.py                       # the full table (days on a 2-core CPU)
    python experiments/nested_results.py --out /tmp/t --tasks hrl_nested/FourRooms-v0 --seeds 0 \\
        --algos ppo hrl --budget-scale 0.001                  # a smoke run

Resumable: a run directory with a ``summary.json`` is skipped (the table takes longer than one sitting),
so rerunning the same command continues where it stopped. Each run is ``experiments/train.py`` in its
own directory ``OUT/runs/<algo>/<task>/seed-<s>``; an interrupted run resumes from its checkpoint.

Writes ``OUT/results.md`` (per row: seeds reaching 0.9 eval success within the budget, median env steps
to 0.9, final success mean and 95% bootstrap interval; then the issue's aims checked against the table),
``OUT/results.json`` (what the table used), ``OUT/aims.json`` (the aims' numbers) and
``OUT/curves_<task>.png`` (eval success against env steps, mean and 95% interval over seeds) and
``OUT/aggregate.png`` (rliable's IQM, optimality gap and performance profile over tasks), each with the
numbers behind it in a ``.json`` beside it, all drawn by ``experiments/plot.py``.

Seeds: the table uses seeds 100-... (``--first-seed``); every algorithm runs with its shipped defaults,
which were not tuned on these seeds (flat PPO's were tuned on CartPole seeds 0-31).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TASKS = {  # task -> (env steps, seeds)
    "hrl_nested/FourRooms-v0": (2_000_000, 10),
    "hrl_nested/PointMaze-U-v0": (2_000_000, 10),
    "hrl_nested/PointMaze-Medium-v0": (3_000_000, 8),
    "hrl_nested/PointMaze-Large-v0": (3_000_000, 8),
}
ALGOS = {  # row name -> train.py flags
    "ppo": ["--algo", "ppo"],
    # control: flat PPO with temporally extended exploration (Nachum et al. 2019: much of a hierarchy's gain)
    "ppo+explore": ["--algo", "ppo", "--ppo.explore", "ez-greedy"],
    "hrl": ["--algo", "hrl"],
    "lirpg": ["--algo", "lirpg"],
    "nested-hrl": ["--algo", "nested-hrl", "--nested-hrl.hypergrad", "truncated"],
    # control: one learned weight on hrl's fixed shaping, by the same hypergradient as nested-hrl
    "nested-hrl-scalar": [
        "--algo", "nested-hrl", "--nested-hrl.hypergrad", "truncated", "--nested-hrl.shaping", "scalar",
    ],
}  # fmt: skip
CONTROLS = {  # control row -> (the row it adds one thing to, the full method whose gain it tests)
    "ppo+explore": ("ppo", "nested-hrl"),
    "nested-hrl-scalar": ("hrl", "nested-hrl"),
}
ABLATION = {
    f"nested-hrl/{m}": ["--algo", "nested-hrl", "--nested-hrl.hypergrad", m, "--nested-hrl.check-every", "10"]
    for m in ("unrolled", "truncated", "cg", "neumann", "es")
}
SOLVED = 0.9


def run_one(run_dir: Path, flags: list[str], env: str, steps: int, seed: int, extra: list[str]) -> None:
    """Train one run into ``run_dir`` unless it is finished; resume it if it stopped midway."""
    if (run_dir / "summary.json").is_file():
        return
    if (run_dir / "checkpoint.pt").is_file():
        argv = ["--resume", str(run_dir), "--total-steps", str(steps)]
    else:
        if run_dir.is_dir() and any(run_dir.iterdir()):
            # Stopped before its first checkpoint (checkpoints are not committed): nothing to resume from,
            # so the run starts over; its partial rows would otherwise block the fresh --run-dir.
            print(f"{run_dir}: unfinished and without a checkpoint; starting it again", flush=True)
            shutil.rmtree(run_dir)
        argv = [*flags, "--env", env, "--total-steps", str(steps), "--seed", str(seed),
                "--run-dir", str(run_dir),
                "--wandb-mode", "disabled", *extra]  # fmt: skip
    subprocess.run([sys.executable, str(REPO / "experiments" / "train.py"), *argv], check=True)


def _curve(run_dir: Path) -> tuple[list[int], list[float]]:
    steps, success = [], []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "eval_success_rate" in row:
            steps.append(int(row["env_steps"]))
            success.append(float(row["eval_success_rate"]))
    return steps, success


def _bootstrap_ci(x: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean."""
    if len(x) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = rng.choice(x, size=(n, len(x)), replace=True).mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize(curves: dict[int, tuple[list[int], list[float]]], budget: int) -> dict:
    """One table row from the seeds' curves."""
    first = []
    finals = []
    for steps, success in curves.values():
        hit = [s for s, v in zip(steps, success) if v >= SOLVED and s <= budget]
        first.append(hit[0] if hit else None)
        finals.append(success[-1] if success else math.nan)
    solved = [f for f in first if f is not None]
    finals_a = np.array([f for f in finals if not math.isnan(f)])
    lo, hi = _bootstrap_ci(finals_a)
    return {
        "seeds": len(curves),
        "solved": len(solved),
        "median_steps_to_0.9": float(np.median(solved)) if solved else None,
        "final_success_mean": float(finals_a.mean()) if len(finals_a) else None,
        "final_success_ci95": [lo, hi],
    }


def _estimator_stats(run_dirs: list[Path]) -> dict:
    """Mean seconds per iteration (all logged phases) and mean logged ``hypergrad_cosine`` over runs."""
    times, cosines = [], []
    for d in run_dirs:
        for line in (d / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            times.append(sum(v for k, v in row.items() if k.startswith("time_")))
            if "hypergrad_cosine" in row:
                cosines.append(row["hypergrad_cosine"])
    return {
        "s_per_iteration": float(np.mean(times)) if times else None,
        "hypergrad_cosine_mean": float(np.mean(cosines)) if cosines else None,
    }


PLOT_REPS = 2000  # bootstrap resamples behind each plotted interval
_ROW_ORDER = [*ALGOS, *ABLATION]  # one color per row in every figure


def _plot_module():
    """``experiments/plot.py`` (a script beside this one, not a package module)."""
    if "hrl_nested_plot" not in sys.modules:
        spec = importlib.util.spec_from_file_location("hrl_nested_plot", Path(__file__).with_name("plot.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules["hrl_nested_plot"]


def _row_runs(out: Path, task: str, rows: dict[str, dict]) -> list:
    """plot.py's runs of a task's rows, labelled by row (ablation rows share config.json's ``algo``)."""
    plot = _plot_module()
    runs = []
    for name, row in rows.items():
        for s in row["curves"]:
            run_dir = out / "runs" / name.replace("/", "-") / task.replace("/", "_") / f"seed-{s}"
            run = plot.load_run(run_dir, "eval_success_rate")
            if run is not None:  # no evaluation logged yet: nothing to draw
                runs.append(dataclasses.replace(run, algo=name))
    return runs


def plot_curves(out: Path, task: str, rows: dict[str, dict]) -> None:
    """``OUT/curves_<task>.png`` (+ ``.json``): eval success against env steps, one line per row, through
    ``experiments/plot.py`` (mean over seeds on a common env-step grid, 95% bootstrap band)."""
    runs = _row_runs(out, task, rows)
    if runs:
        path = out / f"curves_{task.replace('/', '_')}.png"
        _plot_module().write_figure(
            runs, path, "eval_success_rate", algo_order=_ROW_ORDER, aggregate=False, reps=PLOT_REPS
        )


def plot_aggregate(out: Path, table: dict[str, dict]) -> None:
    """``OUT/aggregate.png`` (+ ``.json``): the main rows (no control, no ablation: those run on fewer
    tasks, which would shrink the common task set) on every task, with rliable's IQM, optimality gap and
    performance profile of final eval success over the tasks every main row ran; success is normalized
    by its own range 0:1."""
    main_rows = [n for n in ALGOS if n not in CONTROLS]
    runs = [
        r
        for task, rows in table.items()
        for r in _row_runs(out, task, {n: row for n, row in rows.items() if n in main_rows})
    ]
    if runs:
        _plot_module().write_figure(
            runs,
            out / "aggregate.png",
            "eval_success_rate",
            algo_order=_ROW_ORDER,
            score_range={task: (0.0, 1.0) for task in {r.env for r in runs}},
            reps=PLOT_REPS,
        )


def write_markdown(path: Path, table: dict, args) -> None:
    lines = [
        "# Nested HRL results",
        "",
        f"Seeds {args.first_seed} and up, each algorithm with its shipped defaults (no hyperparameter was "
        "tuned on these seeds). A seed is solved when an evaluation reaches "
        f"{SOLVED} success within the budget; the final-success interval is a 95% bootstrap of the mean. "
        "`seeds` counts the finished runs out of the planned ones: rows with fewer are incomplete "
        "(rerun the script to continue them).",
        "",
        "| task | algorithm | budget | seeds (done/planned) | solved | median steps to 0.9 "
        "| final success (95% CI) |",
        "|---|---|---|---|---|---|---|",
    ]
    ablation_lines: list[str] = []  # after the main table, which must stay one unbroken table
    for task, rows in table.items():
        for name, r in rows.items():
            med = "-" if r["median_steps_to_0.9"] is None else f"{r['median_steps_to_0.9']:.0f}"
            fin = (
                "-"
                if r["final_success_mean"] is None
                else (
                    f"{r['final_success_mean']:.2f} "
                    f"[{r['final_success_ci95'][0]:.2f}, {r['final_success_ci95'][1]:.2f}]"
                )
            )
            lines.append(
                f"| {task} | {name} | {r['budget']} | {r['seeds']}/{r.get('planned', r['seeds'])} | "
                f"{r['solved']} | {med} | {fin} |"
            )
        ablation = {n: r for n, r in rows.items() if "s_per_iteration" in r}
        if ablation:
            ablation_lines += [
                "",
                f"Estimator ablation on {task} (each estimator with its defaults: cg and neumann with the "
                "proximal weight 1.0, the others with none; the cosine is to the exact unrolled "
                "hypergradient of the same batch, logged every 10 iterations, and for unrolled itself to "
                "the ES estimate):",
                "",
                "| estimator | s / iteration | mean hypergrad_cosine |",
                "|---|---|---|",
            ]
            for n, r in ablation.items():
                cos = "-" if r["hypergrad_cosine_mean"] is None else f"{r['hypergrad_cosine_mean']:.3f}"
                ablation_lines.append(f"| {n} | {r['s_per_iteration']:.3f} | {cos} |")
    lines += ablation_lines
    lines += controls_markdown(table)
    lines += aims_markdown(aims(table))
    path.write_text("\n".join(lines) + "\n")


AIMS = [  # (task, row, comparison row or None, minimum seeds solved): the stated aims
    ("hrl_nested/FourRooms-v0", "nested-hrl", None, 9),
    ("hrl_nested/PointMaze-Medium-v0", "nested-hrl", None, 7),
    ("hrl_nested/PointMaze-Large-v0", "nested-hrl", None, 7),
    ("hrl_nested/PointMaze-U-v0", "nested-hrl", "ppo", None),  # not worse than flat PPO
    ("hrl_nested/PointMaze-U-v0", "nested-hrl", "hrl", None),  # beats hrl
]


def _finals(row: dict) -> np.ndarray:
    return np.array([success[-1] for _, success in row["curves"].values() if success], dtype=float)


def iqm(x: np.ndarray) -> float:
    """Interquartile mean, exactly rliable's (Agarwal et al. 2021): ``scipy.stats.trim_mean(x, 0.25)``, the
    mean after cutting ``floor(n / 4)`` values from each end."""
    from scipy.stats import trim_mean

    return float(trim_mean(np.asarray(x, dtype=float), 0.25)) if len(x) else math.nan


def iqm_difference_ci(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of ``IQM(a) - IQM(b)``, resampling each row's seeds apart."""
    rng = np.random.default_rng(seed)
    diffs = [iqm(rng.choice(a, len(a))) - iqm(rng.choice(b, len(b))) for _ in range(n)]
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def aims(table: dict) -> list[dict]:
    """The issue's aims against the table: at least ``k`` solved seeds, or, against a comparison row,
    "not worse than" (``ppo``: as many seeds solved, or a 95% interval of the final-success IQM difference
    that does not lie below 0) and "beats" (``hrl``: more seeds solved, or that interval above 0).
    ``met`` is None while a row is missing or incomplete."""
    out = []
    for task, name, other, k in AIMS:
        rows = table.get(task, {})
        row, ref = rows.get(name), rows.get(other) if other else None
        item: dict = {"task": task, "row": name, "against": other, "min_solved": k}
        missing = row is None or (other is not None and ref is None)
        complete = not missing and all(r["seeds"] >= r.get("planned", r["seeds"]) for r in (row, ref) if r)
        if missing:
            item.update(met=None, measured="row missing")
        elif other is None:
            item.update(solved=row["solved"], seeds=row["seeds"])
            item["measured"] = f"{row['solved']}/{row['seeds']} solved"
            item["met"] = row["solved"] >= k if complete else None
        else:
            lo, hi = iqm_difference_ci(_finals(row), _finals(ref))
            item.update(solved=row["solved"], other_solved=ref["solved"], iqm_diff_ci95=[lo, hi])
            item["measured"] = (
                f"{row['solved']}/{row['seeds']} vs {ref['solved']}/{ref['seeds']} solved; "
                f"IQM difference 95% CI [{lo:.2f}, {hi:.2f}]"
            )
            if other == "ppo":  # not worse: as many solved, or the interval not wholly below 0
                ok = row["solved"] >= ref["solved"] or hi >= 0
            else:  # beats: more solved, or the interval wholly above 0
                ok = row["solved"] > ref["solved"] or lo > 0
            item["met"] = ok if complete else None
        out.append(item)
    return out


def aims_markdown(items: list[dict]) -> list[str]:
    """The aims as a table (every number from ``results.json``)."""
    if not items:
        return []
    lines = ["", "The issue's aims, checked against the table above (why: `findings.md`, and "
             "`lirpg_findings.md` for lirpg, written by hand from these runs):", "",
             "| task | aim | measured | met |", "|---|---|---|---|"]  # fmt: skip
    for it in items:
        if it["against"] is None:
            aim = f"{it['row']} solves at least {it['min_solved']} seeds"
        elif it["against"] == "ppo":
            aim = f"{it['row']} not worse than ppo"
        else:
            aim = f"{it['row']} beats {it['against']}"
        met = {True: "yes", False: "no", None: "not yet (rows incomplete)"}[it["met"]]
        lines.append(f"| {it['task']} | {aim} | {it['measured']} | {met} |")
    return lines


def controls_markdown(table: dict) -> list[str]:
    """The controls beside what they control for, per task where all three rows have finished seeds:
    ``ppo+explore`` between ``ppo`` and ``nested-hrl`` (how much of the hierarchy's gain exploration
    alone recovers), ``nested-hrl-scalar`` between ``hrl`` and ``nested-hrl`` (how much of the learned
    shaping's gain one learned weight recovers). ``share of the gap`` is ``(control - base) / (full -
    base)`` of the final success means, shown only where ``full - base >= 0.1``; a sentence per row
    reads it (all numbers from the table: nothing here is written by hand)."""
    rows_md, sentences = [], []
    for task, rows in table.items():
        for control, (base, full) in CONTROLS.items():
            names = (base, control, full)
            if not all(n in rows and rows[n]["final_success_mean"] is not None for n in names):
                continue
            fin = {n: rows[n]["final_success_mean"] for n in names}
            med = {n: rows[n]["median_steps_to_0.9"] for n in names}
            gap = fin[full] - fin[base]
            share = (fin[control] - fin[base]) / gap if gap >= 0.1 else None
            steps = " / ".join("-" if med[n] is None else f"{med[n]:.0f}" for n in names)
            solved = " / ".join(f"{rows[n]['solved']}/{rows[n]['seeds']}" for n in names)
            rows_md.append(
                f"| {task} | {control} | {base} / {full} | {solved} | {steps} | "
                + " / ".join(f"{fin[n]:.2f}" for n in names)
                + f" | {'-' if share is None else f'{share:.2f}'} |"
            )
            sentences.append(_control_sentence(task, control, base, full, rows, fin, share))
    if not rows_md:
        return []
    return [
        "",
        "Controls (each cell: base / control / full method):",
        "",
        "| task | control | base / full | solved | median steps to 0.9 | final success | share of the gap |",
        "|---|---|---|---|---|---|---|",
        *rows_md,
        "",
        *sentences,
    ]


def _control_sentence(task, control, base, full, rows, fin, share) -> str:
    incomplete = [f"{n} {rows[n]['seeds']}/{rows[n]['planned']}" for n in (base, control, full)
                  if rows[n]["seeds"] < rows[n].get("planned", rows[n]["seeds"])]  # fmt: skip
    text = (
        f"- {task}: final success {base} {fin[base]:.2f}, {control} {fin[control]:.2f}, "
        f"{full} {fin[full]:.2f}. "
    )
    if share is None:
        text += f"{full} gains less than 0.1 over {base} here, so there is no gain for {control} to explain"
        diff = fin[control] - fin[base]
        side = "above" if diff > 0 else "below"
        text += "." if abs(diff) < 0.1 else f"; {control} is {abs(diff):.2f} {side} {base}."
    elif share >= 0.8:
        text += f"{control} recovers {share:.0%} of {full}'s gain over {base}: the control erases it."
    elif share <= 0.2:
        text += f"{control} recovers {share:.0%} of {full}'s gain over {base}: the gain is not due to it."
    else:
        text += f"{control} recovers {share:.0%} of {full}'s gain over {base}: part of it."
    if incomplete:
        text += f" Incomplete rows (seeds done/planned): {', '.join(incomplete)}."
    return text


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "experiments" / "results" / "nested"))
    p.add_argument("--tasks", nargs="*", default=list(TASKS))
    p.add_argument("--algos", nargs="*", default=list(ALGOS) + list(ABLATION))
    p.add_argument("--seeds", type=int, default=None, help="seeds per task (default: the table's, per task)")
    p.add_argument("--first-seed", type=int, default=100)
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply every budget (smoke runs)")
    p.add_argument("--ablation-task", default="hrl_nested/FourRooms-v0")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write the table, JSON and plots from the runs that have finished so far "
        "(each row says how many of its planned seeds are in)",
    )
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags passed to every train.py run")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table: dict[str, dict] = {}
    for task in args.tasks:
        budget, n_seeds = TASKS.get(task, (2_000_000, 5))
        budget = max(1, int(budget * args.budget_scale))
        n_seeds = args.seeds or n_seeds
        rows: dict[str, dict] = {}
        for name in args.algos:
            flags = ALGOS.get(name) or ABLATION.get(name)
            if flags is None:
                raise SystemExit(
                    f"--algos: expected names from {sorted(ALGOS) + sorted(ABLATION)}, got {name!r}"
                )
            if name in ABLATION and task != args.ablation_task:
                continue
            seeds = range(
                args.first_seed, args.first_seed + (min(n_seeds, 5) if name in ABLATION else n_seeds)
            )
            curves = {}
            for s in seeds:
                run_dir = out / "runs" / name.replace("/", "-") / task.replace("/", "_") / f"seed-{s}"
                if args.report_only and not (run_dir / "summary.json").is_file():
                    continue  # not finished yet: left out of the row, which says so
                if not args.report_only:
                    run_one(run_dir, flags, task, budget, s, args.extra)
                curves[s] = _curve(run_dir)
            if not curves:
                continue
            rows[name] = {
                "curves": curves,
                **summarize(curves, budget),
                "budget": budget,
                "planned": len(seeds),
            }
            if name in ABLATION:
                rows[name].update(
                    _estimator_stats(
                        [
                            out / "runs" / name.replace("/", "-") / task.replace("/", "_") / f"seed-{s}"
                            for s in curves
                        ]
                    )
                )
        if not rows:
            continue
        table[task] = rows
        plot_curves(out, task, rows)
    plot_aggregate(out, table)
    (out / "results.json").write_text(json.dumps(table, indent=1))
    (out / "aims.json").write_text(json.dumps(aims(table), indent=1))
    write_markdown(out / "results.md", table, args)
    return table


if __name__ == "__main__":
    main()
