"""Seconds per iteration of K CartPole PPO agents trained in one process (``train.py --num-seeds K``).

    python experiments/bench_num_seeds.py               # CUDA: 2048 agents x 4 envs; CPU: K = 16, 64, 256
    python experiments/bench_num_seeds.py --num-seeds 64 256 1024 --iterations 8
    python experiments/bench_num_seeds.py --device cuda --iterations 30 --max-seconds 60

The anchor is PureJaxRL's headline: 2048 CartPole PPO agents x 500k env steps each in under 98 s on one
A100 (4 envs x 128 steps per agent and iteration, as here; its update is 4 epochs x 4 minibatches, ours by
default `PPOConfig`'s 2 epochs x 8 minibatches: the same 16 gradient steps per iteration, on minibatches of
64 rows per agent instead of 128; ``--update-epochs 4 --num-minibatches 4`` gives PureJaxRL's).
Each K runs `hrl_nested.algos.ppo_multiseed.train_seeds` for ``--iterations`` iterations
(capped further by ``--max-seconds``), with every seed's run directory written as ``train.py`` writes it
(``--no-run-dirs``: in memory), a final evaluation of ``--eval-episodes`` episodes per seed and no other.
Per K: the set-up and first iteration (agents, envs, compile, capture), the steady seconds per iteration
(the median of iterations 2 ... n-1; the last one also evaluates and writes checkpoints), env steps per
second, and the time projected for ``--total-steps`` env steps per agent (the measured run plus the
missing iterations at the steady pace) against ``--target-s``. A run cut by ``--max-seconds`` has not
run its final evaluation and checkpoints (seconds at K = 2048), which its projection then leaves out.

Prints a table and writes JSON to ``experiments/results/bench_num_seeds_<device>.json`` (``--out``
elsewhere).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import tyro

from hrl_nested.algos import Task, resolve_device
from hrl_nested.algos.ppo import PPOConfig
from hrl_nested.algos.ppo_multiseed import RNG_MODES, seed_runs, train_seeds

RESULTS = Path(__file__).resolve().parent / "results"
ENV = "hrl_nested/CartPole-v1"


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """K PPO agents in one process: seconds per iteration and the projection to PureJaxRL's target."""

    num_seeds: tuple[int, ...] | None = None
    """The K to time. Default: 2048 on CUDA (PureJaxRL's setting); 16, 64 and 256 on a CPU."""
    num_envs: int = 4
    """Envs per agent (PureJaxRL's CartPole: 4)."""
    num_steps: int = 128
    """Steps per env and iteration (PureJaxRL's CartPole: 128)."""
    update_epochs: int = PPOConfig.update_epochs
    """Epochs per iteration (PureJaxRL's CartPole: 4)."""
    num_minibatches: int = PPOConfig.num_minibatches
    """Minibatches per epoch (PureJaxRL's CartPole: 4)."""
    iterations: int = 30
    """Iterations timed per K (at most; see ``max_seconds``)."""
    max_seconds: float = 60.0
    """Stop a K's run after the first iteration that ends past this many seconds (its set-up included),
    so that a slow K cannot exceed the device time of one call; the projection uses what ran."""
    total_steps: int = 500_000
    """Env steps per agent of the projected run (PureJaxRL: 500k)."""
    target_s: float = 98.0
    """The projected run's target wall time (PureJaxRL on one A100: 98 s)."""
    eval_episodes: int = 4
    """Evaluation episodes per agent (one evaluation, after the last iteration)."""
    rng: str = "auto"
    """Per-seed randomness of `train_seeds`: auto, generator or counter."""
    capture: str = "auto"
    """``--ppo.capture``: ``auto`` (on CUDA the rollout and the update each one CUDA graph) or ``none``
    (both eager, to see what the graphs save)."""
    run_dirs: bool = True
    """Write every seed's run directory (config, metrics, checkpoint, summary) into a temp dir, as
    ``train.py --run-dir`` does; ``--no-run-dirs`` keeps the runs in memory."""
    device: str = "auto"
    """``auto``: CUDA when available."""
    threads: int = 1
    """torch CPU threads (1, as ``train.py``; 0: torch's default)."""
    out: str | None = None
    """JSON output; default ``experiments/results/bench_num_seeds_<device>.json``."""


class _Stop(Exception):
    """Raised from the first seed's ``log`` to end a run at ``max_seconds``."""


def time_num_seeds(cfg: BenchConfig, k: int, device: torch.device) -> dict[str, Any]:
    """One `train_seeds` run of ``k`` agents; its timings and the projection (see the module docstring)."""
    batch = cfg.num_envs * cfg.num_steps
    task = Task(env=ENV, total_steps=cfg.iterations * batch, num_envs=cfg.num_envs, seed=0,
                device=str(device), eval_episodes=cfg.eval_episodes)  # fmt: skip
    ppo = PPOConfig(num_steps=cfg.num_steps, update_epochs=cfg.update_epochs,
                    num_minibatches=cfg.num_minibatches, eval_every=0, capture=cfg.capture)  # fmt: skip
    seeds = list(range(k))
    tmp = tempfile.TemporaryDirectory(prefix=f"bench_num_seeds_{k}_") if cfg.run_dirs else None
    t0 = time.perf_counter()
    runs = seed_runs(None if tmp is None else tmp.name, {"bench": "num_seeds"}, algo="ppo", env=ENV,
                     seeds=seeds, total_steps=task.total_steps, progress=False)  # fmt: skip
    ends: list[float] = []  # perf_counter at each of the first seed's logged iterations
    log = runs[0].log

    def timed_log(row: dict[str, Any]) -> dict[str, Any]:
        out = log(row)
        ends.append(time.perf_counter())
        if ends[-1] - t0 > cfg.max_seconds and row["iteration"] < cfg.iterations:
            raise _Stop
        return out

    runs[0].log = timed_log
    stopped = False
    try:
        summaries = train_seeds(task, ppo, k, runs, rng=cfg.rng)
    except _Stop:
        stopped, summaries = True, []
    finally:
        for run in runs:
            run.close()
    total = time.perf_counter() - t0
    if tmp is not None:
        tmp.cleanup()
    steady = [b - a for a, b in zip(ends, ends[1:])]
    steady = steady if stopped else steady[:-1]  # a finished run's last iteration also evaluates
    per_iter = statistics.median(steady) if steady else float("nan")
    needed = max(1, math.ceil(cfg.total_steps / batch))
    projected = total + (needed - len(ends)) * per_iter
    return {
        "num_seeds": k,
        "num_envs": cfg.num_envs,
        "num_steps": cfg.num_steps,
        "iterations": len(ends),
        "stopped_at_max_seconds": stopped,
        "first_iteration_end_s": ends[0] - t0 if ends else None,
        "s_per_iteration": per_iter,
        "s_per_iteration_min": min(steady) if steady else None,
        "env_steps_per_s": k * batch / per_iter,
        "total_s": total,
        "final_eval_return_mean": (
            statistics.mean(s["eval_return_mean"] for s in summaries) if summaries else None
        ),
        "projected_iterations": needed,
        "projected_s": projected,
        "target_s": cfg.target_s,
        "projected_over_target": projected / cfg.target_s,
    }


def table(rows: list[dict[str, Any]], cfg: BenchConfig, device_name: str) -> str:
    steps = f"{cfg.total_steps / 1000:g}k"
    lines = [
        f"K PPO agents in one process on {device_name} ({ENV}, {cfg.num_envs} envs x {cfg.num_steps} steps "
        f"per agent and iteration); projected: {steps} env steps per agent, target {cfg.target_s:g} s",
        "| K | iterations | set-up + 1st iter s | s / iter | env steps / s | projected s "
        "| projected / target |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        first = "-" if r["first_iteration_end_s"] is None else f"{r['first_iteration_end_s']:.1f}"
        lines.append(
            f"| {r['num_seeds']} | {r['iterations']}{' (cut)' if r['stopped_at_max_seconds'] else ''} | "
            f"{first} | {r['s_per_iteration']:.4f} | {r['env_steps_per_s']:,.0f} | {r['projected_s']:.0f} | "
            f"{r['projected_over_target']:.2f}x |"
        )
    return "\n".join(lines)


def main(cfg: BenchConfig) -> dict[str, Any]:
    if cfg.rng not in RNG_MODES:
        raise SystemExit(f"--rng: expected one of {', '.join(RNG_MODES)}, got {cfg.rng}")
    if cfg.capture not in ("auto", "none"):
        raise SystemExit(f"--capture: expected auto or none, got {cfg.capture}")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    ks = cfg.num_seeds or ((2048,) if device.type == "cuda" else (16, 64, 256))
    if any(k < 1 for k in ks):
        raise SystemExit(f"--num-seeds: expected positive ints, got {ks}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    rows = []
    for k in ks:
        rows.append(time_num_seeds(cfg, k, device))
        r = rows[-1]
        print(f"K={k}: {r['s_per_iteration']:.4f} s/iter, projected {r['projected_s']:.0f} s", flush=True)
    text = table(rows, cfg, name)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(text)
    print(
        f"load average {load}; torch threads {torch.get_num_threads()}; rng {cfg.rng}; capture {cfg.capture}"
    )
    report = {
        "config": dataclasses.asdict(cfg),
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "load_avg": load,
        "rows": rows,
        "table": text,
    }
    out = Path(cfg.out) if cfg.out else RESULTS / f"bench_num_seeds_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
