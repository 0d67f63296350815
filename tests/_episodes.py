"""Episode loops shared by the goal-task tests (FourRooms, PointMaze)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def first_episode_success_rate(env, policy: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """Fraction of first episodes (one per env, reset with seed 0) that terminate, i.e. reach the goal,
    before the step limit; ``policy(obs) -> actions``. Asserts that every first episode ended."""
    obs, _ = env.reset(seed=0)
    ended = torch.zeros(env.num_envs, dtype=torch.bool)
    success = torch.zeros(env.num_envs, dtype=torch.bool)
    for _ in range(env.max_episode_steps):
        obs, _, terminated, truncated, _ = env.step(policy(obs))
        success |= terminated & ~ended
        ended |= terminated | truncated
    assert ended.all()
    return success.float().mean().item()
