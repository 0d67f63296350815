"""LIRPG (``--algo lirpg``): one flat policy with a learned intrinsic reward, no manager.

Zheng, Oh & Singh 2018, "On learning intrinsic rewards for policy gradient methods": the policy
learns from ``r = β r_ext + R_φ(s, a, s')``, and φ (an MLP whose last layer starts at zero, so that
training starts as plain PPO, and β) ascends the extrinsic objective of the *updated* policy,
``J_ext(θ'(φ))``, through the same engine and inner loop as `nested_hrl`
(`hrl_nested.hypergrad.hypergrad`, any of its five estimators). In a goal env the policy is
conditioned on the env's desired goal.

A known limitation on sparse-reward goal tasks: from φ's first outer step on, R_φ is nonzero at every step
and outweighs the rare goal reward in the policy gradient (0 of 10 results-table seeds solve PointMaze-U or
FourRooms). With R_φ held at 0 the same loop solves PointMaze-U about as often as flat PPO (4 of 8 tuning
seeds against 5 of 8). Evidence and candidate remedies: ``experiments/results/nested/lirpg_findings.md``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from hrl_nested.algos import Task
from hrl_nested.algos.nested_hrl import CommonConfig, MetaFields, run_nested
from hrl_nested.tracking import Run


@dataclasses.dataclass(frozen=True)
class LIRPGConfig(MetaFields, CommonConfig):
    """A flat policy with a learned intrinsic reward R_φ(s, a, s') (no manager, no goal segments)."""

    state_shaping_fields: ClassVar[tuple[str, ...]] = (
        *CommonConfig.state_shaping_fields,
        *MetaFields.meta_shaping_fields,
    )
    """Fields a resumed run may not change (they shape the checkpointed tensors)."""
    section: ClassVar[str] = "lirpg"


Config = LIRPGConfig


def train(task: Task, cfg: LIRPGConfig, run: Run | None = None) -> dict[str, Any]:
    """Train LIRPG on ``task``; the summary as `nested_hrl.run_nested` gives it."""
    return run_nested(task, cfg, run, algo="lirpg", manager=False, shaping="free")
