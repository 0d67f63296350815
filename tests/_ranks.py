"""Run one computation on several gloo processes (CPU) for the distributed tests; each rank's result comes
back to the test process, which compares it with a one-process reference."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

Compute = Callable[[int, int], dict]
"""``compute(rank, world_size) -> dict`` of what the rank computed (tensors, numbers, lists)."""


def run_on_ranks(compute: Compute, tmp_path: Path, world_size: int = 2) -> list[dict]:
    """Spawn ``world_size`` processes (one torch thread each) in one gloo process group, call ``compute``
    on every rank between ``init_process_group`` and ``destroy_process_group``, and return the ranks'
    results in rank order. ``compute`` must be a module-level function (the processes are spawned, so it
    travels by name); ``tmp_path`` holds the group's rendezvous file and the results.

    One spawn serves a whole test module: starting the processes costs seconds, so a module computes
    everything it checks in one ``compute`` (a module-scoped fixture) and its tests read the results.
    """
    mp.spawn(_rank_main, args=(compute, world_size, str(tmp_path)), nprocs=world_size, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def _rank_main(rank: int, compute: Compute, world_size: int, tmp_path: str) -> None:
    torch.set_num_threads(1)
    init = f"file://{Path(tmp_path) / 'init'}"
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    try:
        torch.save(compute(rank, world_size), Path(tmp_path) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
