"""Training algorithms, one readable module each, and the registry `experiments/train.py` dispatches on.

Every algorithm module defines

- ``Config``: a dataclass of its hyperparameters (a docstring under each field; tyro shows them as
  ``--<algo>.<field>`` in ``experiments/train.py --help``), and
- ``train(task: Task, cfg: Config, run: Run | None = None) -> dict``: the whole loop, written out top
  to bottom; it logs through ``run`` and returns the final summary (``eval_return_mean``, ...).

Adding an algorithm is one line in `ALGORITHMS` (its modules are imported only when chosen).
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType

import torch

# name on the command line -> module
ALGORITHMS: dict[str, str] = {
    "ppo": "hrl_nested.algos.ppo",
}


@dataclasses.dataclass(frozen=True)
class Task:
    """What to train on, and for how long: the part of a run's config every algorithm shares."""

    env: str = "hrl_nested/CartPole-v1"
    """Env id (``hrl_nested/CartPole-v1``, any Gymnasium id) or ``package.module:ClassName``."""
    total_steps: int = 100_000
    """Environment steps to train for (rounded up to whole iterations)."""
    num_envs: int = 128
    """Parallel environments."""
    seed: int = 0
    """Seeds the envs, the network init, the sampling and the evaluations."""
    device: str = "auto"
    """``cpu``, ``cuda``, ``cuda:1``, ... or ``auto`` (CUDA when available)."""
    eval_episodes: int = 20
    """Episodes per evaluation (deterministic policy, run in parallel, one per eval env)."""


def get_algorithm(name: str) -> ModuleType:
    """The module registered under ``name`` (with its ``Config`` and ``train``).

    >>> get_algorithm("ppo").Config.__name__
    'PPOConfig'
    """
    if name not in ALGORITHMS:
        raise ValueError(f"algo: expected one of {sorted(ALGORITHMS)}, got {name!r}")
    return importlib.import_module(ALGORITHMS[name])


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; anything else as given (checked)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available here; use --device cpu")
    return dev


__all__ = ["ALGORITHMS", "Task", "get_algorithm", "resolve_device"]
