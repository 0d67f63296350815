"""The nested-HRL results table: algorithms x tasks x seeds with identical env-step budgets.

    python experiments/nested_results.py                       # the full table (days on a 2-core CPU)
    python experiments/nested_results.py --out /tmp/t --tasks hrl_nested/FourRooms-v0 --seeds 0 \\
        --algos ppo hrl --budget-scale 0.001                  # a smoke run

Resumable: a run directory with a ``summary.json`` is skipped (the table takes longer than one sitting),
so rerunning the same command continues where it stopped. Each run is ``experiments/train.py`` in its
own directory ``OUT/runs/<algo>/<task>/seed-<s>``; an interrupted run resumes from its checkpoint.

Writes ``OUT/results.md`` (per row: seeds reaching 0.9 eval success within the budget, median env steps
to 0.9, final success mean and 95% bootstrap interval), ``OUT/results.json`` (what the table used) and
``OUT/curves_<task>.png`` (eval success against env steps, mean and 95% interval over seeds).

Seeds: the table uses seeds 100-... (``--first-seed``); every algorithm runs with its shipped defaults,
which were not tuned on these seeds (flat PPO's were tuned on CartPole seeds 0-31).
"""

from __future__ import annotations

import argparse
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
    "hrl": ["--algo", "hrl"],
    "lirpg": ["--algo", "lirpg"],
    "nested-hrl": ["--algo", "nested-hrl", "--nested-hrl.hypergrad", "truncated"],
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


def plot_curves(path: Path, task: str, rows: dict[str, dict[int, tuple[list[int], list[float]]]]) -> None:
    """Eval success against env steps: mean over seeds and a 95% bootstrap band, one line per algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curves in rows.items():
        grid = sorted({s for steps, _ in curves.values() for s in steps})
        if not grid:
            continue
        # each seed's success as a step function of env steps, on the union of evaluation points
        mat = np.array(
            [
                np.interp(grid, steps, success) if steps else np.full(len(grid), np.nan)
                for steps, success in curves.values()
            ]
        )
        mean = np.nanmean(mat, 0)
        band = np.array([_bootstrap_ci(col[~np.isnan(col)]) for col in mat.T])
        ax.plot(grid, mean, label=name)
        ax.fill_between(grid, band[:, 0], band[:, 1], alpha=0.2)
    ax.set(xlabel="env steps", ylabel="eval success rate", title=task, ylim=(-0.02, 1.02))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
            lines += [
                "",
                f"Estimator ablation on {task}:",
                "",
                "| estimator | s / iteration | mean hypergrad_cosine |",
                "|---|---|---|",
            ]
            for n, r in ablation.items():
                cos = "-" if r["hypergrad_cosine_mean"] is None else f"{r['hypergrad_cosine_mean']:.3f}"
                lines.append(f"| {n} | {r['s_per_iteration']:.3f} | {cos} |")
    path.write_text("\n".join(lines) + "\n")


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
        plot_curves(
            out / f"curves_{task.replace('/', '_')}.png", task, {k: v["curves"] for k, v in rows.items()}
        )
    (out / "results.json").write_text(json.dumps(table, indent=1))
    write_markdown(out / "results.md", table, args)
    return table


if __name__ == "__main__":
    main()
