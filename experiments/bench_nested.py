"""Time per iteration (split as logged) and env steps/s of nested-hrl with each estimator, against flat PPO,
on the same task and batch size, in one process.

    python experiments/bench_nested.py                                   # CPU; the results table's settings
    python experiments/bench_nested.py --iterations 2 --num-envs 8 --num-steps 16 --out /tmp/b.json  # smoke

Target (issue 10): truncated and cg cost at most 3x flat PPO per env step. The first iteration of every
run (warm-up: allocation, first-call overheads) is excluded from the means; the live unrolled check is
off, so the memory of truncated, cg and neumann does not grow with n_inner.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import torch

from hrl_nested.algos import Task, get_algorithm
from hrl_nested.tracking import Run, read_metrics

METHODS = ("unrolled", "truncated", "cg", "neumann", "es")


class PeakMemory:
    """Peak memory of one run, in MiB above what was held when it started.

    CUDA: ``torch.cuda.max_memory_allocated`` (exact, tensors only). CPU: the process's resident set
    sampled every 5 ms from ``/proc/self/statm`` (tensors, autograd graph and allocator slack; a
    spike shorter than 5 ms can be missed). ``nan`` where neither is available.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib = float("nan")

    @staticmethod
    def _rss() -> int | None:
        try:
            pages = int(Path("/proc/self/statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            return None
        return pages * (os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._start = self._rss()
        self._peak = self._start
        self._stop = threading.Event()
        if self._start is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            rss = self._rss()
            if rss is not None and rss > self._peak:
                self._peak = rss

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
            return
        if self._start is None:
            return
        self._stop.set()
        self._thread.join()
        self.peak_mib = (max(self._peak, self._rss() or 0) - self._start) / 2**20


def _run(algo: str, task: Task, cfg, root: Path) -> dict:
    run = Run(
        root / algo.replace("/", "-"),
        config={},
        algo=algo,
        env=task.env,
        seed=task.seed,
        total_steps=task.total_steps,
        progress=False,
    )
    t0 = time.perf_counter()
    with PeakMemory(torch.device(task.device)) as memory:
        get_algorithm(algo.split("/")[0]).train(task, cfg, run)
    wall = time.perf_counter() - t0
    rows = read_metrics(root / algo.replace("/", "-") / "metrics.jsonl")
    steady = rows[1:] or rows
    split = {}
    for k in sorted({k for r in steady for k in r if k.startswith("time_")}):
        split[k] = sum(r.get(k, 0.0) for r in steady) / len(steady)
    per_iter = [r["wall_s"] - p["wall_s"] - r.get("eval_s", 0.0) for p, r in zip(rows, rows[1:])]
    batch = task.num_envs * cfg.num_steps
    s_iter = sum(per_iter) / len(per_iter) if per_iter else wall
    return {"s_per_iteration": s_iter, "env_steps_per_s": batch / s_iter, "split_s": split, "wall_s": wall,
            "peak_memory_mib": memory.peak_mib}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="hrl_nested/FourRooms-v0")
    p.add_argument("--num-envs", type=int, default=128)
    p.add_argument("--num-steps", type=int, default=64)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--out", default=None, help="JSON output (default: experiments/results/bench_nested_<dev>.json)"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    task = Task(
        env=args.env,
        total_steps=args.iterations * args.num_envs * args.num_steps,
        num_envs=args.num_envs,
        device=args.device,
        eval_episodes=2,
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ppo_cfg = get_algorithm("ppo").Config(num_steps=args.num_steps, eval_every=0)
        results["ppo"] = _run("ppo", task, ppo_cfg, root)
        for m in args.methods:
            cfg = get_algorithm("nested-hrl").Config(num_steps=args.num_steps, hypergrad=m, eval_every=0)
            results[f"nested-hrl/{m}"] = _run(f"nested-hrl/{m}", task, cfg, root)
    base = results["ppo"]["s_per_iteration"]
    print(
        f"{args.env}, {args.num_envs} envs x {args.num_steps} steps, {args.device} ({platform.processor()})"
    )
    print(f"{'run':<22} {'s/iter':>8} {'env steps/s':>12} {'x ppo':>6} {'peak MiB':>9}  split (s)")
    for name, r in results.items():
        r["cost_vs_ppo"] = r["s_per_iteration"] / base
        split = ", ".join(f"{k[5:-2]} {v:.3f}" for k, v in r["split_s"].items())
        print(
            f"{name:<22} {r['s_per_iteration']:>8.3f} {r['env_steps_per_s']:>12.0f} "
            f"{r['cost_vs_ppo']:>6.2f} {r['peak_memory_mib']:>9.1f}  {split}"
        )
    out = Path(
        args.out or Path(__file__).parent / "results" / f"bench_nested_{args.device.split(':')[0]}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "results": results}, indent=1))
    return results


if __name__ == "__main__":
    main()
