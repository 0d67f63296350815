"""The typed rollout batch that every learner consumes."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

# Obs and tree_map live in hrl_nested.pytree; importable from here as before.
from hrl_nested.pytree import Obs, tree_leaves, tree_map


@dataclasses.dataclass
class Batch:
    """T steps x N envs of experience, time-major; terminated and truncated kept apart.

    Built from a SAME_STEP-autoreset env, so no dummy reset transition is ever in it: at an
    episode's end ``next_obs[t]`` is the true final observation (``info["final_obs"]``), while the
    next row's ``obs[t + 1]`` is the first observation of the new episode.

    Attributes:
        obs: ``(T, N, ...)`` observations ``o_t`` (tensor or dict of tensors).
        actions: ``(T, N, ...)`` actions ``a_t``.
        logprobs: ``(T, N)`` ``log pi(a_t | o_t)`` under the behaviour policy.
        values: ``(T, N)`` ``V(o_t)`` under the behaviour critic.
        rewards: ``(T, N)`` rewards ``r_t`` (may carry gradient for the meta-level).
        next_obs: ``(T, N, ...)`` the true ``o_{t+1}`` of the transition.
        terminated: ``(T, N)`` bool: ``o_{t+1}`` is terminal (no bootstrap).
        truncated: ``(T, N)`` bool: cut by a time limit (bootstrap with ``V(next_obs)``).
        next_values: ``(T, N)`` ``V(next_obs)``, or None until a learner fills it in.
        carry: the policy's per-env carry at each step (for a manager: goal, chosen subpolicy,
            steps left in the segment, ...), a pytree of ``(T, N, ...)`` tensors, or None.
    """

    obs: Obs
    actions: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    next_obs: Obs
    terminated: torch.Tensor
    truncated: torch.Tensor
    next_values: torch.Tensor | None = None
    carry: Any = None

    def __post_init__(self) -> None:
        if self.rewards.dim() != 2:
            raise ValueError(f"Batch.rewards: expected shape (T, N), got {tuple(self.rewards.shape)}")
        tn = tuple(self.rewards.shape)
        for name in ("logprobs", "values", "terminated", "truncated", "next_values"):
            t = getattr(self, name)
            if t is not None and tuple(t.shape) != tn:
                raise ValueError(f"Batch.{name}: expected shape {tn} like rewards, got {tuple(t.shape)}")
        for name in ("terminated", "truncated"):
            if getattr(self, name).dtype != torch.bool:
                raise ValueError(f"Batch.{name}: expected a bool tensor, got {getattr(self, name).dtype}")
        for name in ("obs", "actions", "next_obs"):
            for t in tree_leaves(getattr(self, name)):
                if tuple(t.shape[:2]) != tn:
                    raise ValueError(f"Batch.{name}: expected leading dims {tn}, got {tuple(t.shape)}")

    @property
    def num_steps(self) -> int:
        return self.rewards.shape[0]

    @property
    def num_envs(self) -> int:
        return self.rewards.shape[1]

    @property
    def dones(self) -> torch.Tensor:
        """``terminated | truncated``: where an episode ended (for GAE's trace cut, not for bootstrapping)."""
        return self.terminated | self.truncated

    def map(self, fn) -> Batch:
        """A new batch with ``fn`` applied to every tensor (e.g. ``lambda t: t.detach()``)."""
        return tree_map(fn, self)

    def flatten(self) -> Batch:
        """Merge T and N into one leading dim of size T*N (shape checks skipped)."""
        out = object.__new__(Batch)
        for f in dataclasses.fields(self):
            setattr(out, f.name, tree_map(lambda t: t.reshape(-1, *t.shape[2:]), getattr(self, f.name)))
        return out
