"""The PPO update of one run across ranks (``torchrun``): minibatches of the union batch, gradients of the
union minibatch's loss, and the checkpoint parts each rank owns.

The semantics are spelled out in `hrl_nested.distributed`; in short, every rank draws the same
permutation of the union batch (``T x N`` rows, laid out as one process lays them out, row ``t * N + i``)
from a generator seeded identically, takes the members of each minibatch that live in its shard,
computes the sum of the per-sample loss terms over them (`hrl_nested.ppo_objective.ppo_objective_shard`,
with the advantage mean and std of the union minibatch), and steps with ``all_reduce(grad) / M``, after
the global gradient-norm clip. The result equals one process's update on the union batch (float64: to
rounding), and the ranks' parameters stay identical.

`hrl_nested.algos.ppo` uses this only when the world has more than one rank; its one-process path is
untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from hrl_nested.distributed import (
    World,
    all_reduce_flat,
    all_reduce_sum,
    check_checkpoint_world,
    gather_to_main,
)
from hrl_nested.networks import ActorCritic, actor_critic_apply
from hrl_nested.ppo_objective import UnionMinibatch, advantage_sums, ppo_objective_shard, shard_stats
from hrl_nested.pytree import tree_map
from hrl_nested.tracking import require_keys
from hrl_nested.tracking.rng_state import rng_state

RANK_KEYS = ("env", "obs", "rollout", "explore_carry", "rng")
"""The checkpoint entries each rank owns (its envs, their observation, its episode accumulators,
exploration carry and RNG states); the rest of a checkpoint is shared."""

MINIBATCH_SEED_OFFSET = 7_777_777
"""The minibatch generator is seeded with ``seed + MINIBATCH_SEED_OFFSET`` on every rank."""


def minibatch_rows(
    perm: torch.Tensor, num_minibatches: int, num_envs: int, world: World
) -> list[torch.Tensor]:
    """This rank's local rows of each minibatch of a permutation of the union batch.

    Union row ``u = t * num_envs + i`` (step ``t``, global env ``i``) lives on rank ``i // n`` (``n`` envs per
    rank) at local row ``t * n + (i - rank * n)``. Minibatch ``k`` is ``perm[k * M : (k + 1) * M]``.

    Returns:
        One int64 tensor of local rows per minibatch (possibly empty), on ``perm``'s device.

    >>> perm = torch.tensor([5, 0, 2, 7, 1, 4, 6, 3])  # T = 2 steps of 4 envs, 2 ranks of 2 envs
    >>> [r.tolist() for r in minibatch_rows(perm, 2, 4, World(rank=1, size=2))]  # envs 2, 3 live here
    [[0, 3], [2, 1]]
    >>> [r.tolist() for r in minibatch_rows(torch.arange(8), 2, 4, World(rank=1, size=2))]
    [[0, 1], [2, 3]]
    """
    n = num_envs // world.size
    size = perm.numel() // num_minibatches
    out = []
    for k in range(num_minibatches):
        union = perm[k * size : (k + 1) * size]
        env, step = union % num_envs, union // num_envs
        mine = env // n == world.rank
        out.append(step[mine] * n + env[mine] - world.rank * n)
    return out


def union_minibatch(mb: Mapping[str, Any], world: World) -> UnionMinibatch:
    """The union minibatch's row counts and advantage mean and Bessel-corrected std (two all-reduces:
    the sums, then the squared deviations from the union mean, as a two-pass variance)."""
    first = all_reduce_sum(advantage_sums(mb), world)
    count, policy_count = first[0], first[1]
    mean = first[2] / policy_count.clamp_min(1.0)
    squares = all_reduce_sum(advantage_sums(mb, mean), world)[0]
    std = (squares / (policy_count - 1.0).clamp_min(1.0)).sqrt()
    return UnionMinibatch(count, policy_count, mean, std)


def shard_gradients(
    agent: ActorCritic, mb: Mapping[str, Any], cfg: Any, world: World, loss_fn: Callable = ppo_objective_shard
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The gradient of the union minibatch's PPO loss (`hrl_nested.algos.ppo.ppo_loss` on the union) from
    this rank's shard ``mb``, and the union's statistics ``[policy_loss, value_loss, entropy, approx_kl,
    clip_fraction]``; identical on every rank.

    ``grad = all_reduce(d S_rank / d theta) / M`` with ``S_rank`` the shard's sum of per-sample terms; the
    gradients and the statistics' sums travel in one all-reduce.
    """
    union = union_minibatch(mb, world)
    names, params = zip(*agent.named_parameters(), strict=True)

    def dist_fn(p: Mapping[str, torch.Tensor], obs: Any):
        dist_params, v = actor_critic_apply(agent, p, obs)
        return agent.distribution(dist_params), v

    if mb["advantages"].shape[0] == 0:  # none of this minibatch lives here: the rank adds zeros
        grads = [torch.zeros_like(p) for p in params]
        sums = torch.zeros(5, dtype=params[0].dtype, device=params[0].device)
    else:
        loss_sum, sums = loss_fn(
            dist_fn,
            dict(zip(names, params, strict=True)),
            mb,
            union,
            **cfg.objective_kwargs(),
        )
        grads = torch.autograd.grad(loss_sum, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    *grad_sums, sums = all_reduce_flat([*grads, sums.to(grads[0].dtype)], world)
    count = union.count.to(sums.dtype)
    return [g / count for g in grad_sums], torch.stack(list(shard_stats(sums, union)))


class ShardedUpdate:
    """Epochs x minibatches of the PPO update over the union batch, from this rank's shard.

    Args:
        agent, optimizer, cfg: as in `hrl_nested.algos.ppo` (``cfg``: a `PPOConfig`).
        world: this rank's `hrl_nested.distributed.World`.
        num_envs: the run's total number of envs ``N``.
        seed: the run's seed; the minibatch generator (CPU, the same on every rank) starts from
            ``seed + MINIBATCH_SEED_OFFSET``.
    """

    def __init__(
        self,
        agent: ActorCritic,
        optimizer: torch.optim.Optimizer,
        cfg: Any,
        world: World,
        num_envs: int,
        seed: int,
    ):
        self.agent, self.optimizer, self.cfg, self.world = agent, optimizer, cfg, world
        self.num_envs = num_envs
        self.batch_size = num_envs * cfg.num_steps
        self.generator = torch.Generator().manual_seed(seed + MINIBATCH_SEED_OFFSET)
        self._params = list(agent.parameters())
        self._loss_fn = (
            torch.compile(ppo_objective_shard, dynamic=True) if cfg.compile else ppo_objective_shard
        )

    def step(self, mb: Mapping[str, Any]) -> torch.Tensor:
        """One gradient step on a minibatch shard; returns ``[*union stats, grad_norm]`` (6 values)."""
        grads, stats = shard_gradients(self.agent, mb, self.cfg, self.world, self._loss_fn)
        for p, g in zip(self._params, grads, strict=True):
            p.grad = g
        grad_norm = torch.nn.utils.clip_grad_norm_(self._params, self.cfg.max_grad_norm, foreach=True)
        self.optimizer.step()
        return torch.cat([stats, grad_norm.detach().reshape(1).to(stats.dtype)])

    def update(
        self, flat: Mapping[str, Any], step: Callable[[Mapping[str, Any]], torch.Tensor] | None = None
    ) -> torch.Tensor:
        """All epochs on this rank's flat shard (``T * N / G`` rows, row ``t * n + j``); returns the mean
        statistics over the minibatches, as the one-process loop does. ``step`` (default `step`) lets the
        caller time the first one."""
        step = self.step if step is None else step
        device = flat["advantages"].device  # not the first column: "obs" is a dict for goal envs
        total = None
        for _epoch in range(self.cfg.update_epochs):
            perm = torch.randperm(self.batch_size, generator=self.generator)
            for rows in minibatch_rows(perm, self.cfg.num_minibatches, self.num_envs, self.world):
                rows = rows.to(device)
                out = step(tree_map(lambda t, rows=rows: t[rows], dict(flat)))
                total = out if total is None else total + out
        return total / (self.cfg.update_epochs * self.cfg.num_minibatches)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The minibatch generator's state (the same on every rank)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


def gather_checkpoint(state: dict[str, Any], world: World, sharded: ShardedUpdate) -> dict[str, Any] | None:
    """Rank 0's checkpoint of the whole run: the shared ``state`` plus ``world_size``, the minibatch
    generator and ``ranks``, every rank's `RANK_KEYS` entries (gathered, on CPU); None on other ranks."""
    part = {k: state.get(k) for k in RANK_KEYS if k != "rng"}
    part["rng"] = rng_state()
    parts = gather_to_main(part, world)
    if parts is None:
        return None
    return {**state, "world_size": world.size, "ranks": parts, "minibatch": sharded.state_dict()}


def rank_view(state: dict[str, Any], world: World, path: str | Path | None) -> dict[str, Any]:
    """The checkpoint as this rank resumes it: its own `RANK_KEYS` entries in place of rank 0's; with one
    process the checkpoint itself.

    Raises:
        CheckpointError: the checkpoint was written by another world size, or lacks the per-rank parts.
    """
    check_checkpoint_world(state, world, path)
    if world.size == 1:
        return state
    require_keys(state, ("ranks", "minibatch"), path)
    return {**state, **state["ranks"][world.rank]}
