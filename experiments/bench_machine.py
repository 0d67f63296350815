"""The machine a benchmark ran on, for the ``meta`` of its JSON: one place for what every benchmark records.

Device and its name (the CPU's model name from ``/proc/cpuinfo``, or the CUDA device's), torch threads,
the versions of torch, Gymnasium and NumPy, and the 1-minute load average before and after the
measurements: other processes on a shared machine slow every row, so compare runs on an idle machine.
The benchmark scripts import it as a sibling (``experiments/`` is on ``sys.path`` when one runs).
"""

from __future__ import annotations

import os
import platform
from typing import Any

import gymnasium as gym
import numpy as np
import torch


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what `platform` knows of it."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS has none (``os.getloadavg``: Unix only)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine_meta(device: torch.device | str, load_before: float | None, **fields: Any) -> dict[str, Any]:
    """``meta`` for a benchmark's JSON: the machine (``device``, ``device_name``, ``threads``), the library
    versions, the script's own ``fields`` and ``load_average_1min = {before, after}`` (``after`` read now;
    both None where the OS has no load average).

    >>> meta = machine_meta("cpu", None, seed=0)
    >>> meta["device"], meta["seed"], meta["load_average_1min"]
    ('cpu', 0, {'before': None, 'after': None})
    """
    device = torch.device(device)
    return dict(
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        gymnasium=gym.__version__,
        numpy=np.__version__,
        **fields,
        load_average_1min=dict(before=load_before, after=load_average() if load_before is not None else None),
    )
