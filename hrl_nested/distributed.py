"""One run across processes (``torchrun``): world info, process-group setup, collectives that cost nothing
in a single process, env sharding, the parallel-variance merge and the gathering of per-rank state.

What a PPO run under ``torchrun --nproc-per-node G experiments/train.py --algo ppo --num-envs N ...`` is
(`hrl_nested.algos.ppo`, `hrl_nested.algos.ppo_distributed`):

- **Processes.** ``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; `session` opens the process
  group (NCCL on CUDA, gloo on CPU). ``--device cuda`` (or ``auto`` on a GPU machine) means
  ``cuda:LOCAL_RANK``; a fixed index (``cuda:1``) is refused, since every rank would share that GPU.
- **Envs.** ``--num-envs N`` is the run's total; rank ``r`` steps the ``N / G`` envs with global indices
  ``r * N/G ... (r+1) * N/G - 1`` (`ConfigError` when G does not divide N) and resets them with
  ``options={"env_index": <those indices>}``, so env ``i`` draws exactly the random stream it draws in a
  one-process run with ``N`` envs (a wrapped Gymnasium env gets Gymnasium's per-env seeds ``seed + i``
  instead). Action sampling draws from each rank's own torch generator (rank 0 keeps the run's seed,
  rank ``r`` is reseeded with ``seed + RANK_SEED_STRIDE * r`` after the network is built), so the
  trajectories themselves differ from a one-process run, as they do for any other ``num_envs``.
- **The batch** is the union of the ranks' shards, ``T x N`` transitions, laid out as one process lays it
  out (row ``t * N + i``). Every rank draws the same permutation of the union rows from a generator
  seeded identically (and checkpointed); minibatch ``k`` is its ``k``-th slice, and each rank takes the
  members that live in its shard (possibly none). The loss on a shard is the *sum* of the per-sample
  terms (`hrl_nested.ppo_objective.ppo_objective_shard`); the gradient is ``all_reduce(sum) / M`` for the
  union minibatch size ``M``: exactly the gradient of the one-process minibatch mean. Advantage
  normalization uses the union minibatch's all-reduced mean and Bessel-corrected std; the global
  gradient-norm clip sees the all-reduced gradient, so every rank clips and steps identically, and the
  parameters (broadcast from rank 0 at the start) stay equal without further communication.
- **Observation statistics** are merged over ranks before use: each rank's batch count, mean and sum of
  squared deviations (M2) are gathered and combined in rank order with Chan et al.'s parallel formula
  (`merge_moments`), then merged into the running statistics as one union batch.
- **Logging.** Update statistics (losses, ``approx_kl``, ``clip_fraction``, ``grad_norm``) are union
  minibatch values; episode counts, return and length sums are all-reduced; rank 0 alone writes the run
  directory, metrics, W&B and progress, and evaluates (the other ranks wait at the next collective).
  Rank 0 decides when to checkpoint and whether the run is solved, and broadcasts that decision.
- **Checkpoints.** Rank 0's ``checkpoint.pt`` holds the shared state (networks, optimizer, obs
  statistics, counters, the minibatch generator), ``world_size`` and ``ranks``: every rank's env state,
  observation, rollout accumulators, exploration carry and RNG states (`gather_to_main`). ``--resume``
  under ``torchrun`` with the same ``G`` restores each rank's own part (every rank reads the file, so a
  multi-node run needs the run directory on a shared filesystem); another world size is a
  `hrl_nested.tracking.CheckpointError` (`check_checkpoint_world`).

Nested HRL (``--algo nested-hrl``, ``hrl``, ``lirpg``, `hrl_nested.algos.nested_distributed`) differentiates
through its inner PPO steps, so its losses are built from two differentiable collectives, `replicate` and
`reduce_sum` (Megatron-LM's conjugate pair): every rank computes the union batch's loss, and every
derivative of it, to any order, is the one-process derivative on the union batch.

With one process every helper here is a no-op (no process group, nothing communicated), and the
one-process code path is unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from hrl_nested.algos import ConfigError
from hrl_nested.moments import Moments, merge_moments, moments
from hrl_nested.tracking import CheckpointError

RANK_SEED_STRIDE = 1_000_003
"""Rank ``r``'s sampling generator is seeded with ``seed + RANK_SEED_STRIDE * r`` (rank 0: ``seed``)."""


@dataclasses.dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` in ``[0, size)``, and ``local_rank`` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, evaluates and writes checkpoints."""
        return self.rank == 0


def world_from_env(environ: Mapping[str, str] | None = None) -> World:
    """The world ``torchrun`` describes in ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` (one process if unset).

    Raises:
        ValueError: a variable that is not an int, or a rank outside ``[0, WORLD_SIZE)``.

    >>> world_from_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    World(rank=1, size=2, local_rank=1)
    """
    environ = os.environ if environ is None else environ
    values = {}
    for name, default in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", None)):
        raw = environ.get(name, default if default is not None else environ.get("RANK", "0"))
        try:
            values[name] = int(raw)
        except ValueError:
            raise ValueError(f"{name}: expected an int (torchrun sets it), got {raw!r}") from None
    size, rank, local = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if size < 1 or not 0 <= rank < size or local < 0:
        raise ValueError(f"WORLD_SIZE / RANK / LOCAL_RANK: expected 0 <= RANK < WORLD_SIZE, got {values}")
    return World(rank, size, local)


def current_world() -> World:
    """The world of the initialized process group, or one process when there is none.

    Raises:
        RuntimeError: ``WORLD_SIZE > 1`` in the environment (a torchrun worker) but no process group: the
            ranks would each train alone.
    """
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return World(rank, dist.get_world_size(), local)
    env_world = world_from_env()
    if env_world.size > 1:
        raise RuntimeError(
            f"WORLD_SIZE={env_world.size} but no torch.distributed process group is initialized: run "
            "experiments/train.py under torchrun, or open one with hrl_nested.distributed.session(device)"
        )
    return World()


def backend_for(device: str | torch.device) -> str:
    """``nccl`` for a CUDA device, ``gloo`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def rank_device(device: torch.device, world: World) -> torch.device:
    """The device this rank trains on: ``cuda`` becomes ``cuda:LOCAL_RANK`` when ``world.size > 1``.

    Raises:
        ConfigError: on ``--device``: a fixed CUDA index with several ranks, or fewer GPUs than local ranks.
    """
    if world.size == 1 or device.type != "cuda":
        return device
    if device.index is not None:
        raise ConfigError(
            "device",
            "cuda or auto under torchrun (rank r trains on cuda:LOCAL_RANK)",
            str(device),
            note=f"{world.size} ranks would share one GPU",
        )
    count = torch.cuda.device_count()
    if world.local_rank >= count:
        raise ConfigError(
            "device",
            f"at least {world.local_rank + 1} GPUs for LOCAL_RANK {world.local_rank}",
            str(device),
            note=f"{count} CUDA device(s) here; lower --nproc-per-node",
        )
    return torch.device("cuda", world.local_rank)


@contextlib.contextmanager
def session(device: str = "auto", *, init_method: str | None = None) -> Iterator[World]:
    """Open the process group ``torchrun`` describes (if any) for the run's ``device``; close it at the end.

    With one process (no ``WORLD_SIZE``, or 1) nothing is opened. An already initialized group is used
    as it is and left open. NCCL on CUDA (``cuda:LOCAL_RANK`` made current first), gloo on CPU.

    >>> with session("cpu") as world:
    ...     world.size
    1
    """
    if dist.is_available() and dist.is_initialized():
        yield current_world()
        return
    world = world_from_env()
    if world.size == 1:
        yield world
        return
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else device)
    if dev.type == "cuda":
        torch.cuda.set_device(rank_device(torch.device("cuda"), world))
    kwargs = {} if init_method is None else {"init_method": init_method}
    dist.init_process_group(backend_for(dev), rank=world.rank, world_size=world.size, **kwargs)
    try:
        yield world
    finally:
        dist.destroy_process_group()


def local_num_envs(num_envs: int, world: World) -> int:
    """``num_envs / world.size``: the envs this rank steps.

    Raises:
        ConfigError: on ``--num-envs``, when the world size does not divide it.
    """
    if num_envs % world.size != 0:
        raise ConfigError(
            "num_envs",
            f"a multiple of the world size {world.size} (torchrun --nproc-per-node {world.size}: each rank "
            f"steps num_envs / {world.size} envs)",
            num_envs,
        )
    return num_envs // world.size


def env_indices(num_envs: int, world: World) -> range:
    """The global indices of this rank's envs: a contiguous block of ``num_envs / world.size``.

    >>> env_indices(8, World(rank=1, size=2))
    range(4, 8)
    """
    n = local_num_envs(num_envs, world)
    return range(world.rank * n, (world.rank + 1) * n)


def reset_shard(env: Any, seed: int, num_envs: int, world: World) -> tuple[Any, Any]:
    """``env.reset`` so that each of this rank's envs draws what it draws in a one-process run of
    ``num_envs`` envs: ``options={"env_index": ...}`` for our envs, Gymnasium's per-env seeds ``seed + i``
    for a wrapped Gymnasium env. One process: exactly ``env.reset(seed=seed)``."""
    if world.size == 1:
        return env.reset(seed=seed)
    idx = list(env_indices(num_envs, world))
    from envs.core import TorchVectorEnv  # envs is imported by the learner already; kept lazy here

    if isinstance(env, TorchVectorEnv):
        return env.reset(seed=seed, options={"env_index": idx})
    return env.reset(seed=[seed + i for i in idx])


def seed_rank(seed: int, world: World) -> None:
    """Reseed torch's generators of ranks ``r > 0`` with ``seed + RANK_SEED_STRIDE * r`` (their action
    sampling); rank 0 keeps its generators as they are."""
    if world.rank > 0:
        torch.manual_seed(seed + RANK_SEED_STRIDE * world.rank)


# ---------------------------------------------------------------------------- collectives
def all_reduce_sum(x: torch.Tensor, world: World) -> torch.Tensor:
    """``x`` summed over ranks, in place (returned); untouched with one process."""
    if world.size > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_reduce_flat(tensors: Sequence[torch.Tensor], world: World) -> list[torch.Tensor]:
    """Each of ``tensors`` summed over ranks, in one all-reduce of their concatenation (one collective for
    a whole gradient and the statistics that travel with it); returned reshaped, as views of that buffer."""
    flat = all_reduce_sum(torch.cat([t.reshape(-1) for t in tensors]), world)
    return [v.view_as(t) for v, t in zip(flat.split([t.numel() for t in tensors]), tensors, strict=True)]


def broadcast_module(module: torch.nn.Module, world: World) -> None:
    """Copy rank 0's parameters and buffers into every rank's ``module`` (a no-op with one process)."""
    if world.size == 1:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def broadcast_flags(flags: Sequence[bool], world: World, device: torch.device) -> list[bool]:
    """Rank 0's ``flags`` on every rank (decisions only rank 0 can make: checkpoint now, run solved)."""
    if world.size == 1:
        return [bool(f) for f in flags]
    t = torch.tensor([bool(f) for f in flags], dtype=torch.int32, device=device)
    dist.broadcast(t, src=0)
    return [bool(v) for v in t.tolist()]


def gather_to_main(obj: Any, world: World) -> list[Any] | None:
    """Every rank's ``obj`` (tensors moved to CPU first) as a list on rank 0, None on the others; with
    one process ``[obj]`` (tensors as they are)."""
    if world.size == 1:
        return [obj]
    obj = to_cpu(obj)
    out: list[Any] | None = [None] * world.size if world.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor inside dicts, lists and tuples moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


# ---------------------------------------------------------------------------- differentiable collectives
def _group_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _LinearCollective(torch.autograd.Function):
    """A linear map across ranks: nothing to save for backward, and its forward-mode derivative (jvp) is
    the map itself applied to the tangent."""

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        pass

    @classmethod
    def jvp(cls, ctx: Any, tangent: torch.Tensor) -> torch.Tensor:
        return cls.forward(tangent)


class _Replicate(_LinearCollective):
    """``f``: identity forward, sum over ranks backward (its backward is `_ReduceSum`, to every order)."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _ReduceSum.apply(grad)


class _ReduceSum(_LinearCollective):
    """``g``: sum over ranks forward, identity backward (its backward is `_Replicate`, to every order)."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        out = x.detach().clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _Replicate.apply(grad)


def replicate(x: torch.Tensor) -> torch.Tensor:
    """``f`` of the Megatron-LM pair (Shoeybi et al. 2019, ``_CopyToModelParallelRegion``): a value every
    rank holds identically (parameters θ, φ, or a `reduce_sum` result) entering a rank-local computation.

    Forward: ``x``. Backward: the gradient summed over ranks (``reduce_sum``), so that a replicated value
    receives the derivative of the global loss through every rank's local use of it. Its backward is
    ``reduce_sum`` and ``reduce_sum``'s is ``replicate``: derivatives of every order (``create_graph``,
    Hessian-vector products through ``torch.func``) equal the one-process ones on the union data. With
    one process (no process group) ``x`` itself.

    The rule that makes a sharded loss exact: replicated -> local through ``replicate``, local ->
    replicated through ``reduce_sum``; a loss built so is the same scalar on every rank.

    >>> replicate(torch.ones(2)).tolist()  # one process: the identity
    [1.0, 1.0]
    """
    return x if _group_size() == 1 else _Replicate.apply(x)


def reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """``g`` of the Megatron-LM pair (``_ReduceFromModelParallelRegion``): a rank-local partial sum (a loss
    sum, a count, an advantage sum) made the union's, identical on every rank.

    Forward: ``all_reduce(x, SUM)``. Backward: the identity (every rank's partial enters the global value
    with weight 1), through ``replicate`` so that second derivatives stay exact. Unlike
    ``torch.distributed.nn.functional.all_reduce``, whose backward all-reduces again (a replicated loss
    would count ``W`` times). With one process ``x`` itself.

    >>> reduce_sum(torch.tensor(3.0)).item()  # one process: the identity
    3.0
    """
    return x if _group_size() == 1 else _ReduceSum.apply(x)


def replicate_tree(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`replicate` on every tensor of a parameter dict, as one flat vector (one all-reduce in the backward
    pass, not one per tensor) when they share a dtype and device."""
    if _group_size() == 1 or not params:
        return dict(params)
    values = list(params.values())
    if len({(v.dtype, v.device) for v in values}) > 1:
        return {k: replicate(v) for k, v in params.items()}
    flat = replicate(torch.cat([v.reshape(-1) for v in values]))
    parts = flat.split([v.numel() for v in values])
    return {k: p.view_as(v) for (k, v), p in zip(params.items(), parts, strict=True)}


def broadcast_tensors(tensors: Mapping[str, torch.Tensor], world: World) -> dict[str, torch.Tensor]:
    """Rank 0's tensors (a dict) on every rank, copied into new tensors; the dict itself with one process."""
    if world.size == 1:
        return dict(tensors)
    out = {k: v.detach().clone() for k, v in tensors.items()}
    for v in out.values():
        dist.broadcast(v, src=0)
    return out


# ---------------------------------------------------------------------------- moments
# `Moments`, `moments` and `merge_moments` live in hrl_nested.moments (the one home of the Chan et al. merge,
# which RunningMeanStd uses too); imported here, so `distributed.merge_moments` still names them.


def all_moments(x: torch.Tensor, world: World) -> Moments:
    """The `Moments` of the union over ranks of the rows of ``x``: each rank's are gathered and merged in
    rank order (`merge_moments`), so every rank holds the same float64 result."""
    local = moments(x)
    if world.size == 1:
        return local
    flat = torch.cat([local.count.reshape(1), local.mean.reshape(-1), local.m2.reshape(-1)])
    parts = [torch.empty_like(flat) for _ in range(world.size)]
    dist.all_gather(parts, flat)
    shape, d = local.mean.shape, local.mean.numel()
    out = None
    for p in parts:
        m = Moments(p[0], p[1 : 1 + d].reshape(shape), p[1 + d :].reshape(shape))
        out = m if out is None else merge_moments(out, m)
    return out


def moments_reducer(world: World):
    """For `hrl_nested.obs_norm.ObsNormalizer.update`'s ``reduce``: ``x -> (mean, var, count)`` of the union
    over ranks of the rows of ``x`` (`all_moments`); None with one process (the local batch as it is)."""
    if world.size == 1:
        return None

    def reduce(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = all_moments(x, world)
        return m.mean, m.var, m.count

    return reduce


def sum_episodes(result: Any, world: World) -> Any:
    """A rollout result (`hrl_nested.rollout.RolloutResult`) whose episode return sum, length sum and count
    are summed over ranks (one all-reduce); unchanged with one process."""
    if world.size == 1:
        return result
    parts = (result.episode_return_sum, result.episode_length_sum, result.episode_count)
    total = all_reduce_sum(torch.stack([p.to(torch.float64) for p in parts]), world)
    ret, length, count = (t.to(p.dtype) for t, p in zip(total, parts, strict=True))
    return result._replace(episode_return_sum=ret, episode_length_sum=length, episode_count=count)


def broadcast_object(obj: Any, world: World) -> Any:
    """Rank 0's picklable ``obj`` on every rank (e.g. the run id that names the default run directory)."""
    if world.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def raise_any_error(error: BaseException | None, world: World) -> None:
    """Raise, on every rank, the first error any rank met (its class and message; in rank order), e.g.
    rank 0 refusing a non-empty run directory: the other ranks would otherwise run on into a collective and
    die with a connection error instead of the named one. Nothing happens when no rank has an error."""
    if world.size == 1:
        if error is not None:
            raise error
        return
    mine = None if error is None else (type(error), str(error))
    every: list[Any] = [None] * world.size
    dist.all_gather_object(every, mine)
    first = next((e for e in every if e is not None), None)
    if first is None:
        return
    if error is not None and mine == first:
        raise error
    cls, message = first
    raise cls(message)


# ---------------------------------------------------------------------------- checkpoints
def check_checkpoint_world(state: Mapping[str, Any], world: World, path: str | Path | None) -> None:
    """Raise `CheckpointError` unless ``state`` was written by a run of ``world.size`` processes (a
    checkpoint without ``world_size`` comes from one process)."""
    saved = int(state.get("world_size", 1))
    if saved != world.size:
        raise CheckpointError(
            f"checkpoint {path} was written by a run of {saved} process(es) (torchrun --nproc-per-node "
            f"{saved}), this run has {world.size}: each rank holds its own envs, so resume with "
            f"--nproc-per-node {saved}" + (" under torchrun" if saved > 1 else " without torchrun")
        )
