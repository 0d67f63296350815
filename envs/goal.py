"""The goal-env API in one place: reading goals from observations (`GoalAccess`, every vector env) and
Gymnasium-Robotics' batched ``compute_reward`` / ``compute_terminated`` / ``compute_truncated``
(`GoalRewardMixin`, the goal tasks). Drawing subgoals is rendering: `envs.render.GoalRenderMixin`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch

__all__ = ["GoalAccess", "GoalRewardMixin"]


class GoalAccess:
    """``goal_space`` / ``achieved_goal`` from a vector env's ``single_observation_space``.

    Shared by `TorchVectorEnv` and the Gymnasium adapter: goal envs (a ``Dict`` observation with
    ``achieved_goal``, Gymnasium-Robotics style) expose that entry; any other env gets the identity.
    """

    single_observation_space: gym.Space

    @property
    def goal_space(self) -> gym.Space:
        """The single-env goal space: ``achieved_goal`` for goal envs, else the observation (identity)."""
        space = self.single_observation_space
        if isinstance(space, gym.spaces.Dict) and "achieved_goal" in space.spaces:
            return space["achieved_goal"]
        return space

    def achieved_goal(self, obs: Any) -> torch.Tensor:
        """``(num_envs, *goal_space.shape)``: ``obs["achieved_goal"]`` for goal envs, else ``obs``."""
        if isinstance(obs, Mapping):
            if "achieved_goal" not in obs:
                raise ValueError(f"achieved_goal: expected a goal observation, got keys {sorted(obs)}")
            return obs["achieved_goal"]
        return obs


class GoalRewardMixin:
    """Gymnasium-Robotics' goal-env methods, batched, from a task's distance-to-goal rule.

    A task defines ``_reward_from_distance(dist)`` and ``_success_from_distance(dist)`` on tensors of
    Euclidean distances between achieved and desired goals; the step reward uses the same functions,
    so ``compute_reward(obs["achieved_goal"], obs["desired_goal"], info)`` reproduces it (the property
    hindsight relabelling, Andrychowicz et al. 2017, relies on). Inputs may have any leading shape and
    be torch tensors (the result is a tensor on their device) or numpy arrays (the result is numpy).
    """

    def _reward_from_distance(self, dist: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _success_from_distance(self, dist: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def compute_reward(self, achieved_goal: Any, desired_goal: Any, info: Any = None) -> Any:
        """Rewards ``(...)`` for goals ``(..., G)``: the step reward had ``achieved_goal`` been reached."""
        return self._apply(self._reward_from_distance, achieved_goal, desired_goal)

    def compute_terminated(self, achieved_goal: Any, desired_goal: Any, info: Any = None) -> Any:
        """Bools ``(...)``: True where the goal counts as reached (the episode then terminates)."""
        return self._apply(self._success_from_distance, achieved_goal, desired_goal)

    def compute_truncated(self, achieved_goal: Any, desired_goal: Any, info: Any = None) -> Any:
        """Bools ``(...)``, all False: truncation comes only from the time limit, never from goals."""
        return self._apply(lambda d: torch.zeros_like(d, dtype=torch.bool), achieved_goal, desired_goal)

    def _apply(self, fn: Any, achieved_goal: Any, desired_goal: Any) -> Any:
        as_numpy = not isinstance(achieved_goal, torch.Tensor)
        ag = torch.as_tensor(np.asarray(achieved_goal)) if as_numpy else achieved_goal
        dg = torch.as_tensor(np.asarray(desired_goal), device=ag.device) if as_numpy else desired_goal
        if ag.shape[-1:] != dg.shape[-1:]:
            raise ValueError(
                f"compute_reward: achieved_goal {tuple(ag.shape)} and desired_goal {tuple(dg.shape)} "
                f"must end in the same goal size"
            )
        dtype = ag.dtype if ag.is_floating_point() else torch.float64
        dist = torch.linalg.vector_norm(ag.to(dtype) - dg.to(dtype), dim=-1)
        out = fn(dist)
        return out.numpy() if as_numpy else out
