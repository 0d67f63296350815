"""Small nested-HRL hierarchies and configs for the tests: each test names only the settings it depends on."""

from __future__ import annotations

import gymnasium as gym
import torch

from hrl_nested.algos.nested_hrl import NestedHRLConfig
from hrl_nested.hierarchy import GoalBounds, Hierarchy

CPU = torch.device("cpu")


def small_hierarchy(
    obs_space: gym.Space,
    action_space: gym.Space,
    goal: GoalBounds | None,
    *,
    num_subpolicies: int = 2,
    hidden: tuple[int, ...] = (8,),
    relative_goals: bool = False,
    horizon: int = 3,
    tolerance: float = 0.05,
    norm_obs: bool = False,
) -> Hierarchy:
    """A `Hierarchy` on the CPU with small defaults (K = 2, one hidden layer of 8, absolute goals,
    segments of at most 3 steps, tolerance 0.05, no observation normalization)."""
    return Hierarchy(
        obs_space, action_space, goal, num_subpolicies=num_subpolicies, hidden=hidden,
        relative_goals=relative_goals, horizon=horizon, tolerance=tolerance, norm_obs=norm_obs, device=CPU,
    )  # fmt: skip


def small_nested_config(**fields) -> NestedHRLConfig:
    """The smallest `NestedHRLConfig` a test runs the nested loop with: rollouts of 8 steps, two inner
    epochs of two minibatches, one hidden layer of 8; ``fields`` override these and set the rest."""
    return NestedHRLConfig(**{"num_steps": 8, "n_inner": 2, "num_minibatches": 2, "hidden": (8,), **fields})
