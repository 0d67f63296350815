"""The batched pieces of a K-seed PPO run (`hrl_nested.algos.ppo_multiseed`): one tensor op for all K seeds
wherever the per-seed results allow it, so that the Python work of an iteration does not grow with K.

- `FlatParams`: the K stacked parameter dicts as one ``(K, P)`` buffer (named views into it), so the
  gradient, its per-seed clipping and the Adam step are one op each, not one per parameter tensor;
- `clip_grad_norm_rows`: ``torch.nn.utils.clip_grad_norm_`` of each row of a ``(K, P)`` gradient;
- `adam_step_rows`: ``torch.optim.Adam``'s own (fused) update on those rows, as a single run's optimizer;
- `StackedObsNormalizer`: K `hrl_nested.obs_norm.ObsNormalizer` as ``(K, ...)`` tensors;
- `rollout_noise` / `seed_permutations`: the sampling noise of a whole rollout and each epoch's minibatch
  permutation, drawn from each seed's own generator in the order a single-seed run draws them;
  `counter_noise` / `counter_permutations`: the same from a counter-based Philox stream keyed on the seed,
  for all seeds in one op;
- `CapturedStep`: the whole update captured once as a CUDA graph and replayed;
- `RowWriter` / `for_each_run`: the K metrics rows of an iteration written in a background thread, and a
  `Run` method for every seed's run with the file writes (``fsync``) in parallel threads.

Only the draws from K generators remain one call per seed (a ``torch.Generator`` cannot be driven for
several seeds in one op): ``1 + update_epochs`` calls per seed and iteration, none from the counter stream.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gymnasium as gym
import torch
from torch.optim.adam import adam as torch_adam

from envs.rng import bits_to_uniform, philox4x32
from hrl_nested.moments import Moments, merge_moments
from hrl_nested.pytree import Obs, tree_leaves, tree_map
from hrl_nested.rollout import no_garbage_collection

__all__ = [
    "CapturedStep",
    "RowWriter",
    "FlatParams",
    "StackedObsNormalizer",
    "adam_step_rows",
    "clip_grad_norm_rows",
    "counter_noise",
    "counter_permutations",
    "for_each_run",
    "rollout_noise",
    "seed_permutations",
]


class FlatParams:
    """The layout of K stacked parameter dicts ``{name: (K, *shape)}`` as one ``(K, P)`` buffer.

    Args:
        stacked: ``{name: (K, *shape)}``, e.g. from ``torch.func.stack_module_state``.

    >>> layout = FlatParams({"w": torch.ones(2, 3, 4), "b": torch.zeros(2, 3)})
    >>> layout.flat.shape, layout.views(layout.flat)["w"].shape
    (torch.Size([2, 15]), torch.Size([2, 3, 4]))
    """

    def __init__(self, stacked: Mapping[str, torch.Tensor]):
        if not stacked:
            raise ValueError("stacked: expected at least one parameter, got an empty dict")
        first = next(iter(stacked.values()))
        self.num_seeds = first.shape[0]
        self.names = list(stacked)
        self.shapes = [tuple(v.shape[1:]) for v in stacked.values()]
        self.sizes = [v[0].numel() for v in stacked.values()]
        for name, v in stacked.items():
            if v.shape[0] != self.num_seeds:
                raise ValueError(
                    f"stacked[{name!r}]: expected a leading dim of {self.num_seeds}, got {v.shape}"
                )
        self.flat = self.cat(list(stacked.values()))

    def cat(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(K', *shape)`` tensors in the layout's order -> one ``(K', P)`` tensor."""
        return torch.cat([t.reshape(t.shape[0], -1) for t in tensors], 1)

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: (K', *shape)}`` views into a ``(K', P)`` buffer (they see its in-place updates)."""
        parts = flat.split(self.sizes, 1)
        return {n: p.view(p.shape[0], *s) for n, p, s in zip(self.names, parts, self.shapes)}

    def dense(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: (K', *shape)}`` contiguous copies (the layout a stacked module state has)."""
        return {n: v.contiguous() for n, v in self.views(flat).items()}


def clip_grad_norm_rows(grad: torch.Tensor, max_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.nn.utils.clip_grad_norm_`` of each row of a ``(K, P)`` gradient (each seed's parameters
    flattened into one row): with ``n_k = ||g_k||_2``, row k is scaled by ``min(1, max_norm / (n_k + 1e-6))``.

    Returns:
        ``(clipped, n)``: a new ``(K, P)`` tensor and the ``(K,)`` norms before clipping.

    >>> g = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    >>> clipped, n = clip_grad_norm_rows(g, 1.0)
    >>> n.tolist(), [round(x, 3) for x in clipped[0].tolist()]
    ([5.0, 0.5], [0.6, 0.8])
    """
    if grad.dim() != 2:
        raise ValueError(f"grad: expected a (K, P) tensor, got shape {tuple(grad.shape)}")
    norms = torch.linalg.vector_norm(grad, dim=1)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    return grad * coef.unsqueeze(1), norms


def adam_step_rows(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: torch.Tensor,
    *,
    lr: float | torch.Tensor,
    eps: float = 1e-5,
    betas: tuple[float, float] = (0.9, 0.999),
) -> None:
    """One ``torch.optim.Adam`` step on ``(K, P)`` stacked parameters, in place (``param``, the moments and
    the float32 ``step`` count): torch's functional Adam (``torch.optim.adam.adam``), fused on CPU and CUDA
    as flat PPO's optimizer is. Adam is elementwise, so row k gets exactly seed k's own update; one fused
    kernel for all K seeds instead of a dozen elementwise passes per parameter tensor."""
    fused = param.device.type in ("cuda", "cpu") and param.dtype in (torch.float32, torch.float64)
    torch_adam(
        [param], [grad], [exp_avg], [exp_avg_sq], [], [step], fused=fused, foreach=False,
        amsgrad=False, beta1=betas[0], beta2=betas[1], lr=lr, weight_decay=0.0, eps=eps, maximize=False,
    )  # fmt: skip


class StackedObsNormalizer:
    """K `hrl_nested.obs_norm.ObsNormalizer` (one per seed) as ``(K, ...)`` float64 tensors, updated for
    all seeds at once with the same parallel-variance formula (Chan et al. 1979) per seed.

    Args:
        space: the single-env observation space (a Box or a goal ``Dict``; non-Box leaves pass through).
        num_seeds: K.
        device: where the statistics live.

    >>> norm = StackedObsNormalizer(gym.spaces.Box(-1.0, 1.0, (2,)), 2)
    >>> norm.update(torch.tensor([[[0.0, 10.0], [2.0, 30.0]], [[1.0, 1.0], [1.0, 1.0]]]))
    >>> [round(v, 2) for v in norm.mean["obs"][0].tolist()]
    [1.0, 20.0]
    """

    def __init__(self, space: gym.Space, num_seeds: int, *, device: torch.device | str = "cpu"):
        self.is_dict = isinstance(space, gym.spaces.Dict)
        leaves = dict(space.spaces) if self.is_dict else {"obs": space}
        shapes = {k: tuple(s.shape) for k, s in leaves.items() if isinstance(s, gym.spaces.Box)}
        f64 = dict(dtype=torch.float64, device=device)
        self.mean = {k: torch.zeros(num_seeds, *s, **f64) for k, s in shapes.items()}
        self.var = {k: torch.ones(num_seeds, *s, **f64) for k, s in shapes.items()}
        self.count = {k: torch.full((num_seeds,), 1e-4, **f64) for k in shapes}  # RunningMeanStd's eps

    def update(self, obs: Obs) -> None:
        """Merge seed-major samples ``(K, ..., *shape)`` into each seed's statistics."""
        leaves = dict(obs) if self.is_dict else {"obs": obs}
        for k, mean in self.mean.items():
            x = leaves[k]
            if (
                tuple(x.shape[x.dim() - mean.dim() + 1 :]) != tuple(mean.shape[1:])
                or x.shape[0] != mean.shape[0]
            ):
                raise ValueError(
                    f"obs[{k!r}]: expected ({mean.shape[0]}, ..., {', '.join(map(str, mean.shape[1:]))}), "
                    f"got {tuple(x.shape)}"
                )
            x = x.detach().reshape(x.shape[0], -1, *mean.shape[1:]).to(torch.float64)
            b_mean, b_var, b_count = x.mean(1), x.var(1, unbiased=False), x.shape[1]
            var, count = self.var[k], self.count[k]
            c = count.reshape(-1, *([1] * (mean.dim() - 1)))  # (K, 1, ...): one count per seed
            merged = merge_moments(Moments(c, mean, var * c), Moments(b_count, b_mean, b_var * b_count))
            mean.copy_(merged.mean)
            var.copy_(merged.m2 / merged.count)
            count.copy_(count + b_count)

    def stats(self) -> dict[str, torch.Tensor]:
        """``{"<key>.mean": (K, ...), "<key>.var": (K, ...)}`` float32: `ObsNormalizer.stats`, stacked."""
        out = {}
        for k in self.mean:
            out[f"{k}.mean"], out[f"{k}.var"] = self.mean[k].float(), self.var[k].float()
        return out

    def host_state_dicts(self) -> list[dict[str, dict[str, torch.Tensor]]]:
        """Each seed's `ObsNormalizer.state_dict` (``{key: {"mean", "var", "count"}}``, on the CPU), from one
        host copy of all seeds' statistics."""
        host = {k: (self.mean[k].cpu(), self.var[k].cpu(), self.count[k].cpu()) for k in self.mean}
        return [
            {
                k: {"mean": m[i].clone(), "var": v[i].clone(), "count": c[i].clone()}
                for k, (m, v, c) in host.items()
            }
            for i in range(next(iter(host.values()))[0].shape[0])
        ]


def rollout_noise(
    gens: Sequence[torch.Generator], num_steps: int, shape: tuple[int, ...], *, gaussian: bool, dtype, device
) -> torch.Tensor:
    """The sampling noise of a T-step rollout for K seeds, ``(T, K, *shape)``: seed k's from its generator
    ``gens[k]``, exactly the draws a single-seed run makes for its T policy steps.

    A Categorical draws ``torch.rand(shape)`` per step (Gumbel-max, `hrl_nested.distributions`); on the
    CPU ``T`` such draws are the one draw ``torch.rand((T, *shape))`` (the uniform kernel consumes the
    generator element by element), so that is one call per seed. A Gaussian draws ``torch.randn(shape)``
    per step, and a larger ``randn`` is not the concatenation of smaller ones (its vectorized Box-Muller
    pairs elements 8 apart): one call per seed and step. On CUDA the one ``(T, *shape)`` draw uses the
    generator's Philox stream in another layout than T draws would, so a K-seed run's rollouts there are
    seed s's own random stream but not the single-seed CUDA run's bits (on the CPU they are).
    """
    if gaussian:
        steps = [
            torch.stack([torch.randn(shape, dtype=dtype, device=device, generator=g) for g in gens])
            for _ in range(num_steps)
        ]
        return torch.stack(steps)
    draws = [torch.rand((num_steps, *shape), dtype=dtype, device=device, generator=g) for g in gens]
    return torch.stack(draws, 1)


def seed_permutations(
    gens: Sequence[torch.Generator], epochs: int, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Each epoch's minibatch permutation for each seed, ``(epochs, K, batch_size)``: seed k's from its
    generator in a single-seed run's order (``torch.randperm(batch_size)`` once per epoch)."""
    per_seed = [
        torch.stack([torch.randperm(batch_size, device=device, generator=g) for _ in range(epochs)])
        for g in gens
    ]
    return torch.stack(per_seed, 1)


_NOISE, _PERMUTATION = 1, 2  # Philox counter word 3: what the numbers are for


def counter_words(seed_keys: torch.Tensor, iteration: int, tag: int, rows: int, words: int) -> torch.Tensor:
    """``words`` random 32-bit words (int64) for each of ``rows`` rows of each seed, ``(rows, K, words)``:
    Philox-4x32-10 (`envs.rng.philox4x32`) keyed on the seed, with the counter ``(block, row, iteration,
    tag)``, so every number is a pure function of (seed, iteration, purpose, row, position): the same for
    any K and on any device, with no generator state and no call per seed."""
    if not 0 <= iteration < 2**32:
        raise ValueError(f"iteration: expected an int in [0, 2**32), got {iteration}")
    device = seed_keys.device
    blocks = -(-words // 4)
    counter = torch.empty(rows, 1, blocks, 4, dtype=torch.int64, device=device)
    counter[..., 0] = torch.arange(blocks, device=device)
    counter[..., 1] = torch.arange(rows, device=device).view(rows, 1, 1)
    counter[..., 2] = iteration
    counter[..., 3] = tag
    out = philox4x32(counter, seed_keys.view(1, -1, 1, 2))  # (rows, K, blocks, 4)
    return out.reshape(rows, seed_keys.shape[0], 4 * blocks)[..., :words]


def counter_noise(
    seed_keys: torch.Tensor, iteration: int, num_steps: int, shape: tuple[int, ...], *, gaussian: bool, dtype
) -> torch.Tensor:
    """`rollout_noise` from a counter-based stream (`counter_words`) instead of K generators: ``(T, K,
    *shape)`` uniforms in ``[0, 1)`` (24 bits, as `envs.rng.bits_to_uniform`), or standard normals by
    Box-Muller, ``sqrt(-2 log(1 - u1)) cos(2 pi u2)``."""
    lanes = math.prod(shape)
    # float64 uniforms take two words each (`envs.rng.bits_to_uniform`); Box-Muller takes two uniforms
    words = counter_words(seed_keys, iteration, _NOISE, num_steps, 4 * lanes if gaussian else lanes)
    u = bits_to_uniform(words.reshape(-1, words.shape[-1]), torch.float64 if gaussian else dtype)
    if gaussian:
        u1, u2 = u[:, :lanes], u[:, lanes:]  # 53-bit uniforms: 1 - u1 > 0, so the log is finite
        u = (torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2.0 * math.pi * u2)).to(dtype)
    return u.reshape(num_steps, seed_keys.shape[0], *shape)


def counter_permutations(
    seed_keys: torch.Tensor, iteration: int, epochs: int, batch_size: int
) -> torch.Tensor:
    """`seed_permutations` from a counter-based stream: each (seed, epoch)'s permutation is the argsort of
    ``batch_size`` random 32-bit keys (`counter_words`), ``(epochs, K, batch_size)``, one sort for all."""
    keys = counter_words(seed_keys, iteration, _PERMUTATION, epochs, batch_size)
    return torch.argsort(keys, dim=-1, stable=True)


def seed_key_words(seeds: Sequence[int], device: torch.device) -> torch.Tensor:
    """The Philox keys of `counter_words`, ``(K, 2)`` int64 words ``(lo, hi)``: each seed's 64 bits with the
    top bit flipped. The envs' streams (`envs.rng`) are keyed on the seed itself, below ``2**63``: a
    different key, so no action noise or permutation ever reuses an env's random numbers."""
    lo = torch.tensor([int(x) & 0xFFFFFFFF for x in seeds], dtype=torch.int64)
    hi = torch.tensor([((int(x) >> 32) & 0xFFFFFFFF) ^ 0x80000000 for x in seeds], dtype=torch.int64)
    return torch.stack((lo, hi), 1).to(device)


class CapturedStep:
    """``fn(*inputs) -> out`` that updates the tensors ``state`` in place (the whole PPO update: epochs x
    minibatches of forward, backward, clip and fused Adam), captured once as a CUDA graph and replayed.

    Every call copies ``inputs`` (same shapes and dtypes each time) into static buffers and returns a copy
    of the output. Before the capture, ``fn`` runs eagerly (twice, on a side stream on CUDA: allocations
    and lazy initialisation happen outside the graph) and ``state`` is restored afterwards, so the first call
    gives what an eager call would. ``graph=False`` runs the same static-buffer path without a graph (the
    warm-up-and-restore logic, testable on a CPU), as `hrl_nested.rollout`'s ``"static"`` mode does.
    """

    def __init__(self, fn, state: Sequence[torch.Tensor], *, graph: bool):
        self.fn, self.state, self.graph = fn, list(state), graph
        self._static: Any = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._out: Any = None

    def __call__(self, *inputs: Any) -> Any:
        if self._static is None:
            self._static = tree_map(lambda t: t.detach().clone(), list(inputs))
            self._prepare()
        for dst, src in zip(tree_leaves(self._static), tree_leaves(list(inputs)), strict=True):
            if dst.shape != src.shape or dst.dtype != src.dtype:
                raise ValueError(f"inputs: expected {dst.dtype} {tuple(dst.shape)} as in the first call, got "
                                 f"{src.dtype} {tuple(src.shape)}")  # fmt: skip
            dst.copy_(src)
        if self._graph is None:
            return self.fn(*self._static)
        self._graph.replay()
        return tree_map(lambda t: t.clone(), self._out)

    def _prepare(self) -> None:
        snapshot = [t.clone() for t in self.state]
        if self.graph:
            device = self.state[0].device
            with torch.cuda.device(device):
                stream = torch.cuda.Stream(device=device)
                stream.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(stream):
                    for _ in range(2):  # as torch's whole-network capture example warms up (autograd, cuBLAS)
                        self.fn(*self._static)
                torch.cuda.current_stream(device).wait_stream(stream)
        else:
            self.fn(*self._static)
        for t, saved in zip(self.state, snapshot):
            t.copy_(saved)
        if not self.graph:
            return
        try:
            with torch.cuda.device(device):
                graph = torch.cuda.CUDAGraph()
                with (
                    no_garbage_collection(),
                    torch.cuda.graph(graph, stream=torch.cuda.Stream(device=device)),
                ):
                    self._out = self.fn(*self._static)
        except RuntimeError as e:  # a capture records and runs nothing: the state is as before; go eager
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"CapturedStep: CUDA graph capture failed ({first}); running eagerly", flush=True)
            self._out = None
            return
        self._graph = graph


class RowWriter:
    """Each seed's metrics row through its `Run.log`; for runs that only write files (no W&B), in one
    background thread, so that writing the K rows of iteration i overlaps the device work of iteration
    i + 1 (the main thread waits at its one host sync per iteration with the GIL released).

    At most one batch of rows is pending: `log` first waits for the previous one, so each seed's rows
    stay in order. ``log(rows, wait=True)`` (an evaluation, a checkpoint, the end of a run: whatever reads
    the logged rows or writes after them) writes in the calling thread and returns the logged rows.
    """

    def __init__(self, runs: Sequence[Any]):
        self.runs = runs
        background = len(runs) > 1 and all(_files_only(r) for r in runs)
        self._pool = ThreadPoolExecutor(max_workers=1) if background else None
        self._pending: Any = None

    def log(self, rows: Mapping[int, dict[str, Any]], *, wait: bool) -> dict[int, dict[str, Any]] | None:
        """Log ``rows`` (``{seed row index: row}``); returns the logged rows, or None in the background."""
        self.flush()
        if wait or self._pool is None:
            return {k: self.runs[k].log(r) for k, r in rows.items()}
        self._pending = self._pool.submit(lambda: [self.runs[k].log(r) for k, r in rows.items()])
        return None

    def flush(self) -> None:
        """Wait for the pending rows (re-raising what their writing raised)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self, *, quiet: bool = False) -> None:
        """Wait for the pending rows and stop the thread; ``quiet``: drop what their writing raised (when
        an error of the training loop is already on its way up)."""
        try:
            self.flush()
        except Exception:
            if not quiet:
                raise
        finally:
            if self._pool is not None:
                self._pool.shutdown()


def _files_only(run: Any) -> bool:
    """A `Run` that logs to no W&B run (its files, if any, only): safe to drive from another thread."""
    return getattr(run, "_wandb_args", ("online",))[0] == "disabled"


def for_each_run(runs: Sequence[Any], method: str, args: Sequence[Any] | None = None, *, threads: int = 16):
    """``[run.<method>(arg) for run, arg in zip(runs, args)]`` (no argument when ``args`` is None), in
    parallel threads when no run logs to W&B (its files only): each file a run writes is ``fsync``-ed (a
    few ms each, with the GIL released), so thousands of seeds' run directories are written in parallel.
    With W&B, one run after the other (``wandb.init`` and its artifacts are not made for concurrent runs of
    one process). Returns the results in order."""
    calls = [
        (getattr(r, method), () if args is None else (a,)) for r, a in zip(runs, args or [None] * len(runs))
    ]
    if not all(_files_only(r) for r in runs) or len(calls) < 2:
        return [fn(*a) for fn, a in calls]
    with ThreadPoolExecutor(max_workers=min(threads, len(calls))) as pool:
        return list(pool.map(lambda call: call[0](*call[1]), calls))
