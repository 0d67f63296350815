"""Time per iteration (split as logged) and env steps/s of nested-hrl with each estimator, against flat PPO,
on the same task and batch size, in one process.

    python experiments/bench_nested.py                                   # CPU; the results table's settings
    python experiments/bench_nested.py --iterations 2 --num-envs 8 --num-steps 16 --out /tmp/b.json  # smoke
    python experiments/bench_nested.py --n-inner 1 2 4 8 --num-envs 16 --num-steps 16 --iterations 2 \
        --out experiments/results/bench_nested_memory_cpu.json       # peak memory against n_inner

Target (issue 10): truncated and cg cost at most 3x flat PPO per env step; memory constant in n_inner for
truncated, cg and neumann. The first iteration of every run (warm-up: allocation, first-call overheads) is
excluded from the time means; the live unrolled check is off (``check_every=0``).

Peak memory, in MiB above what was held when the run started: on CUDA ``torch.cuda.max_memory_allocated``
of the timed run; on CPU the peak of live tensor bytes from torch.profiler's memory events
(`TensorPeakBytes`), measured in a second, profiled run of ``--memory-iterations`` iterations (the
profiler slows every op, so it never overlaps the timed run). Both count tensors only (activations, the
tensors autograd saves for backward, optimizer states, batches), exactly and deterministically; the
process's RSS, which the allocator's caching and fragmentation confound, is not used.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from hrl_nested.algos import Task, get_algorithm
from hrl_nested.tracking import Run, read_metrics

METHODS = ("unrolled", "truncated", "cg", "neumann", "es")


class TensorPeakBytes:
    """Peak bytes of CPU tensors alive at once inside a ``with`` block, above those alive when it began.

    torch.profiler with ``profile_memory=True`` records every allocation and free of the CPU allocator with
    its size in bytes (a ``[memory]`` event, negative for a free); replayed in time order, their running sum
    is the live tensor bytes and its maximum the peak. Exact and deterministic for a deterministic
    program (no sampling, no allocator caching), and it sees what ``torch.func`` transforms allocate (the
    saved-tensor hooks cannot: ``torch.func.grad`` refuses them). Every op is slower under the profiler.

    >>> with TensorPeakBytes() as m:
    ...     x = torch.empty(1000, dtype=torch.float32)
    ...     del x
    >>> m.peak_bytes
    4000
    """

    def __init__(self):
        self.peak_bytes = 0
        self.end_bytes = 0

    def __enter__(self) -> TensorPeakBytes:
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._prof.__exit__(*exc)
        events = [
            e
            for e in self._prof.profiler.kineto_results.events()
            if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
        ]
        events.sort(key=lambda e: e.start_ns())  # stable: an alloc and a free at the same ns keep their order
        live = peak = 0
        for e in events:
            live += e.nbytes()
            peak = max(peak, live)
        self.peak_bytes, self.end_bytes = peak, live


class CudaPeakMemory:
    """``torch.cuda.max_memory_allocated`` inside a ``with`` block, in bytes above the allocation at its
    start."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes = 0

    def __enter__(self) -> CudaPeakMemory:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._start = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc) -> None:
        torch.cuda.synchronize(self.device)
        self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._start


def _train(algo: str, task: Task, cfg, run_dir: Path) -> None:
    run = Run(
        run_dir,
        config={},
        algo=algo,
        env=task.env,
        seed=task.seed,
        total_steps=task.total_steps,
        progress=False,
    )
    get_algorithm(algo.split("/")[0]).train(task, cfg, run)


def _peak_memory_mib(algo: str, task: Task, cfg, run_dir: Path, iterations: int) -> float:
    """CPU: peak tensor MiB of a separate profiled run of ``iterations`` iterations (`TensorPeakBytes`)."""
    short = dataclasses.replace(task, total_steps=iterations * task.num_envs * cfg.num_steps)
    with TensorPeakBytes() as memory:
        _train(algo, short, cfg, run_dir)
    return memory.peak_bytes / 2**20


def _run(algo: str, task: Task, cfg, root: Path, memory_iterations: int = 2) -> dict:
    """Time one run (``task.total_steps``), and measure its peak memory (see the module docstring)."""
    run_dir = root / algo.replace("/", "-").replace("=", "")
    device = torch.device(task.device)
    t0 = time.perf_counter()
    if device.type == "cuda":
        with CudaPeakMemory(device) as cuda_memory:
            _train(algo, task, cfg, run_dir)
        wall = time.perf_counter() - t0
        peak_mib = cuda_memory.peak_bytes / 2**20
    else:
        _train(algo, task, cfg, run_dir)
        wall = time.perf_counter() - t0
        peak_mib = _peak_memory_mib(
            algo, task, cfg, run_dir.with_name(run_dir.name + "-memory"), memory_iterations
        )
    rows = read_metrics(run_dir / "metrics.jsonl")
    steady = rows[1:] or rows
    split = {}
    for k in sorted({k for r in steady for k in r if k.startswith("time_")}):
        split[k] = sum(r.get(k, 0.0) for r in steady) / len(steady)
    per_iter = [r["wall_s"] - p["wall_s"] - r.get("eval_s", 0.0) for p, r in zip(rows, rows[1:])]
    batch = task.num_envs * cfg.num_steps
    s_iter = sum(per_iter) / len(per_iter) if per_iter else wall
    return {
        "s_per_iteration": s_iter,
        "env_steps_per_s": batch / s_iter,
        "split_s": split,
        "wall_s": wall,
        "peak_memory_mib": peak_mib,
        "n_inner": getattr(cfg, "n_inner", None),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="hrl_nested/FourRooms-v0")
    p.add_argument("--num-envs", type=int, default=128)
    p.add_argument("--num-steps", type=int, default=64)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--n-inner",
        type=int,
        nargs="+",
        default=None,
        help="run every method at each of these n_inner (e.g. 1 2 4 8) and print peak memory per n_inner "
        "(default: the config's n_inner only)",
    )
    p.add_argument("--truncate", type=int, default=None, help="truncated's T (default: the config's)")
    p.add_argument(
        "--memory-iterations", type=int, default=2, help="CPU: iterations of the profiled memory run"
    )
    p.add_argument(
        "--out", default=None, help="JSON output (default: experiments/results/bench_nested_<dev>.json)"
    )
    args = p.parse_args(argv)
    bad = [n for n in args.n_inner or [] if n < 1]
    if bad:
        p.error(f"--n-inner: expected integers >= 1, got {bad}")
    if args.truncate is not None and args.truncate < 1:
        p.error(f"--truncate: expected an integer >= 1, got {args.truncate}")
    if args.memory_iterations < 1:
        p.error(f"--memory-iterations: expected an integer >= 1, got {args.memory_iterations}")
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
        results["ppo"] = _run("ppo", task, ppo_cfg, root, args.memory_iterations)
        for m in args.methods:
            for n in args.n_inner or [None]:
                cfg = _nested_config(args, m, n)
                name = f"nested-hrl/{m}" if n is None else f"nested-hrl/{m}/n_inner={n}"
                results[name] = _run(name, task, cfg, root, args.memory_iterations)
    base = results["ppo"]["s_per_iteration"]
    print(
        f"{args.env}, {args.num_envs} envs x {args.num_steps} steps, {args.device} ({platform.processor()})"
    )
    print(f"{'run':<32} {'s/iter':>8} {'env steps/s':>12} {'x ppo':>6} {'peak MiB':>9}  split (s)")
    for name, r in results.items():
        r["cost_vs_ppo"] = r["s_per_iteration"] / base
        split = ", ".join(f"{k[5:-2]} {v:.3f}" for k, v in r["split_s"].items())
        print(
            f"{name:<32} {r['s_per_iteration']:>8.3f} {r['env_steps_per_s']:>12.0f} "
            f"{r['cost_vs_ppo']:>6.2f} {r['peak_memory_mib']:>9.2f}  {split}"
        )
    report = {"settings": vars(args), "results": results}
    if args.n_inner:
        report["peak_memory_mib_by_n_inner"] = _memory_table(results, args.methods, args.n_inner)
    out = Path(
        args.out or Path(__file__).parent / "results" / f"bench_nested_{args.device.split(':')[0]}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    return results


def _nested_config(args, method: str, n_inner: int | None):
    """nested-hrl's config at the benchmark's batch shape; the live unrolled check stays off."""
    extra = {} if n_inner is None else {"n_inner": n_inner}
    if args.truncate is not None:
        extra["truncate"] = args.truncate
    return get_algorithm("nested-hrl").Config(
        num_steps=args.num_steps, hypergrad=method, eval_every=0, check_every=0, **extra
    )


def _memory_table(results: dict, methods: list[str], n_inners: list[int]) -> dict[str, dict[str, float]]:
    """Print peak memory (MiB) per method and n_inner; return it as ``{method: {n_inner: MiB}}``."""
    table = {
        m: {str(n): results[f"nested-hrl/{m}/n_inner={n}"]["peak_memory_mib"] for n in n_inners}
        for m in methods
    }
    print("\npeak memory (MiB) by n_inner")
    print(f"{'method':<12}" + "".join(f"{n:>10}" for n in n_inners))
    for m, row in table.items():
        print(f"{m:<12}" + "".join(f"{v:>10.2f}" for v in row.values()))
    return table


if __name__ == "__main__":
    main()
