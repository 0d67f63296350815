"""Time and memory of each hypergradient method against one plain inner gradient step.

    python experiments/bench_hypergrad.py --device cpu          # about 80 s on 2 CPU cores
    python experiments/bench_hypergrad.py --device cuda --repeats 5

Inner problem: a tanh MLP 64-256-256-64 (98,880 parameters) fit by SGD (lr 0.05) to a regression
batch of 128 examples with per-example weights sigmoid(λ_i) and weight decay exp(λ_wd), λ_wd = -2
(129 hyperparameters); outer loss: MSE on a validation batch. Methods: unrolled, truncated (T = 5),
cg (10 iterations), neumann (10 terms), es (8 antithetic pairs, σ = 0.05), and one plain inner
gradient step as the unit. For K in {1, 5, 20, 100} inner steps, each method is timed (median of
``--repeats`` runs after a warm-up) and its memory measured in a separate run:

- ``graph_MB``: bytes of the tensors saved in the autograd graph behind params_K when the outer
  loss is evaluated (storages counted once) -- the memory that back-propagation through the inner
  loop holds, on any device.
- ``peak_MB``: on CUDA, ``torch.cuda.max_memory_allocated`` above the memory allocated before the
  call. On CPU, the peak resident set size above the RSS before the call (Linux: free memory is
  handed back with ``malloc_trim`` and the high-water mark reset through ``/proc/self/clear_refs``).
  It includes allocator slack and Python objects, so small values are noisy; ``n/a`` elsewhere.
- ``cos(w)``: cosine between the method's hypergradient for the 128 example weights and the
  unrolled one at the same K (the exact hypergradient of the K-step objective). The implicit
  methods assume params_K is stationary, which it is not for small K; ES is a noisy estimate.

Prints a table and writes ``experiments/results/bench_hypergrad_<device>.json``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import tyro
from bench_machine import load_average, machine_meta  # a sibling: experiments/ is on sys.path when run

from hrl_nested import optim
from hrl_nested.graph_memory import graph_bytes
from hrl_nested.hypergrad import hypergrad

Params = dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Config:
    """Benchmark of the hypergradient methods on an MLP inner problem."""

    device: str = "cpu"
    """Torch device, e.g. ``cpu`` or ``cuda``."""
    ks: tuple[int, ...] = (1, 5, 20, 100)
    """Numbers of inner steps K."""
    repeats: int = 3
    """Timed runs per (method, K); the median is reported."""
    hidden: int = 256
    """Width of the two hidden layers (256: 98,880 parameters)."""
    batch: int = 128
    """Training and validation batch size."""
    inner_lr: float = 0.05
    """Inner SGD step size."""
    truncate: int = 5
    """Steps back-propagated by ``truncated``."""
    cg_iters: int = 10
    """Conjugate-gradient iterations (tol 0: all of them run)."""
    neumann_terms: int = 10
    """Neumann-series terms."""
    es_samples: int = 8
    """Antithetic pairs for ``es`` (2x that many vmapped inner runs)."""
    threads: int = 1
    """torch CPU threads; 1 keeps CPU timings steady on a shared machine, 0 keeps torch's default."""
    seed: int = 0
    """Seed of the data and the initial parameters."""
    out_dir: str = "experiments/results"
    """Where the JSON goes."""


def mlp_params(cfg: Config, gen: torch.Generator, device: torch.device) -> Params:
    sizes = [64, cfg.hidden, cfg.hidden, 64]
    params = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"W{i}"] = torch.randn(n_in, n_out, generator=gen) / n_in**0.5
        params[f"b{i}"] = torch.zeros(n_out)
    return {k: v.to(device) for k, v in params.items()}


def mlp(params: Params, x: torch.Tensor) -> torch.Tensor:
    h = torch.tanh(x @ params["W0"] + params["b0"])
    h = torch.tanh(h @ params["W1"] + params["b1"])
    return h @ params["W2"] + params["b2"]


def make_problem(cfg: Config, device: torch.device):
    gen = torch.Generator().manual_seed(cfg.seed)
    params = mlp_params(cfg, gen, device)
    teacher = mlp_params(cfg, gen, device)
    x_tr, x_val = (torch.randn(cfg.batch, 64, generator=gen).to(device) for _ in range(2))
    with torch.no_grad():
        y_tr = mlp(teacher, x_tr) + 0.3 * torch.randn(cfg.batch, 64, generator=gen).to(device)
        y_val = mlp(teacher, x_val)
    hparams = {"logit_w": torch.zeros(cfg.batch, device=device), "log_wd": torch.tensor(-2.0, device=device)}

    def inner(p: Params, h: Params) -> torch.Tensor:
        per_example = ((mlp(p, x_tr) - y_tr) ** 2).mean(-1)
        decay = sum((v**2).sum() for v in p.values())
        return (torch.sigmoid(h["logit_w"]) * per_example).mean() + 0.5 * h["log_wd"].exp() * decay

    def outer(p: Params, h: Params) -> torch.Tensor:
        return ((mlp(p, x_val) - y_val) ** 2).mean()

    return inner, outer, params, hparams


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Peak memory of ``fn()`` above what was in use before (see the module docstring)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        base = _proc_status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    fn()
    return max(_proc_status_kb("VmHWM") - base, 0) / 1024


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, Any]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench_method(cfg, problem, method: str, options: dict, K: int, base_s: float, device) -> dict[str, Any]:
    """Time one (method, K), then measure its memory in a separate run with a graph-measuring outer loss."""
    inner, outer, params, hparams = problem

    def call(outer_loss=outer):
        return hypergrad(
            inner, outer_loss, params, hparams, method=method, inner_steps=K, inner_lr=cfg.inner_lr, **options
        )

    seconds, res = timed(call, device, cfg.repeats)
    held = []

    def spy(p: Params, h: Params) -> torch.Tensor:
        if not torch._C._functorch.is_batchedtensor(next(iter(p.values()))):  # ES's vmapped runs: no graph
            held.append(graph_bytes(p.values()))
        return outer(p, h)

    peak = peak_memory_mb(lambda: call(spy), device)
    row = dict(method=method, K=K, time_ms=seconds * 1e3, x_step=seconds / base_s)
    row.update(graph_mb=(held[0] if held else 0) / 2**20, peak_mb=peak, info=res.info)
    return row, res.grads["logit_w"]


def main(cfg: Config) -> dict[str, Any]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    load_before = load_average()
    problem = make_problem(cfg, device)
    inner, _, params, hparams = problem
    methods = {
        "unrolled": {},
        "truncated": {"truncate": cfg.truncate},
        "cg": {"iters": cfg.cg_iters, "tol": 0.0},
        "neumann": {"terms": cfg.neumann_terms},
        "es": {"samples": cfg.es_samples, "sigma": 0.05, "seed": cfg.seed},
    }
    print(HEADER, flush=True)

    # Baseline: one plain inner gradient step (gradient + SGD update), nothing differentiated.
    opt = optim.sgd(cfg.inner_lr)
    state = opt.init(params)
    step = lambda: opt.update(torch.func.grad(inner)(params, hparams), state, params)
    base_s, _ = timed(step, device, max(cfg.repeats, 10))
    rows = [dict(method="plain step", K=1, time_ms=base_s * 1e3, x_step=1.0, graph_mb=0.0,
                 peak_mb=peak_memory_mb(step, device), cos_unrolled_w=None, info={})]  # fmt: skip
    print_row(rows[-1], flush=True)

    for K in cfg.ks:
        reference = None
        for method, options in methods.items():
            row, flat = bench_method(cfg, problem, method, options, K, base_s, device)
            reference = flat if reference is None else reference  # unrolled comes first
            row["cos_unrolled_w"] = torch.nn.functional.cosine_similarity(flat, reference, dim=0).item()
            rows.append(row)
            print_row(row, flush=True)

    info = machine_meta(
        device,
        load_before,
        cpu_count=os.cpu_count(),
        mlp_params=sum(v.numel() for v in params.values()),
        hparams=sum(v.numel() for v in hparams.values()),
        peak_mb_source="cuda.max_memory_allocated" if device.type == "cuda" else "RSS high-water mark",
    )
    result = {"config": dataclasses.asdict(cfg), "info": info, "rows": rows}
    print_table(rows, info)
    out = Path(cfg.out_dir) / f"bench_hypergrad_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


HEADER = (
    f"{'method':<11}{'K':>5}{'time ms':>11}{'x step':>9}{'graph MB':>10}{'peak MB':>9}{'cos(w)':>8}  notes"
)


def print_row(r: dict[str, Any], flush: bool = False) -> None:
    peak = "n/a" if r["peak_mb"] is None else f"{r['peak_mb']:.1f}"
    cos = "-" if r["cos_unrolled_w"] is None else f"{r['cos_unrolled_w']:.3f}"
    line = f"{r['method']:<11}{r['K']:>5}{r['time_ms']:>11.1f}{r['x_step']:>9.1f}{r['graph_mb']:>10.1f}"
    info = r.get("info", {})
    note = ""
    if "cg_iters" in info:
        note = f"{info['cg_iters']} CG iters, residual {info['cg_residual']:.1e}"
    elif "es_vectorized" in info:
        note = f"{2 * info['es_samples']} runs, {'vmap' if info['es_vectorized'] else 'loop'}"
    print(f"{line}{peak:>9}{cos:>8}  {note}", flush=flush)


def print_table(rows: list[dict[str, Any]], info: dict[str, Any]) -> None:
    print(
        f"\nhypergradient methods, MLP with {info['mlp_params']:,} params, {info['hparams']} hparams, "
        f"{info['device']} ({info['threads']} threads, load average {info['load_average_1min']})"
    )
    print(HEADER)
    for r in rows:
        print_row(r)


if __name__ == "__main__":
    main(tyro.cli(Config))
