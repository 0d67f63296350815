"""HRL with a fixed shaping (``--algo hrl``): the manager and subpolicies of `nested_hrl`, with the
subpolicies' reward ``r_ext + (-||ag(s') - g||)``, the negative distance to the subgoal of HIRO
(Nachum et al. 2018, "Data-efficient hierarchical reinforcement learning"), never learned.

It is the baseline that isolates what learning φ adds: `nested_hrl`'s shaping starts exactly here.
Its ``train`` runs the nested loop (`hrl_nested.algos.nested_hrl.run_nested`) with φ fixed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from hrl_nested.algos import Task
from hrl_nested.algos.nested_hrl import ManagerConfig, run_nested
from hrl_nested.tracking import Run


@dataclasses.dataclass(frozen=True)
class HRLConfig(ManagerConfig):
    """Manager + subpolicies with HIRO's fixed negative-distance shaping (no outer loop)."""

    section: ClassVar[str] = "hrl"


Config = HRLConfig


def train(task: Task, cfg: HRLConfig, run: Run | None = None) -> dict[str, Any]:
    """Train the fixed-shaping hierarchy on ``task``; the summary as `nested_hrl.run_nested` gives it."""
    return run_nested(task, cfg, run, algo="hrl", manager=True, shaping="fixed")
