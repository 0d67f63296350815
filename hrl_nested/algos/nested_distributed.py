"""Nested HRL (``nested-hrl``, ``hrl``, ``lirpg``) across ranks (``torchrun``): the parts of an iteration
that see the union batch, and the checkpoint parts each rank owns.

What each part of `hrl_nested.algos.nested_hrl`'s iteration is under ``torchrun --nproc-per-node G``
(the envs, their global indices and the observation statistics as for flat PPO, `hrl_nested.distributed`):

- **Replicated state.** θ (subpolicies), φ (shaping), both critics and the manager start from rank 0's
  values (broadcast) and every update below keeps them identical on every rank.
- **Inner and outer losses** are the union batch's on every rank, built with the conjugate pair
  `hrl_nested.distributed.replicate` / `hrl_nested.distributed.reduce_sum` (`hrl_nested.nested_objective`):
  the subpolicies' gradients, the advantage normalization, the gradient clip and every hypergradient
  (unrolled, truncated, cg, neumann, es) equal one process's on the union batch. The inner minibatches
  are slices of permutations of the union rows drawn from a generator seeded identically on every rank
  (`Shards`), each rank taking the rows it holds. ES draws its noise from the same seed on every rank
  and runs its perturbed inner loops one after another (``vmap`` cannot carry a collective).
- **Critics**: minibatches of the union batch from the same generator; each rank's summed loss gradient,
  all-reduced and divided by the union minibatch's size, then the global clip and Adam (as flat PPO).
- **Manager**: the segments that ended on every rank are gathered, ordered as one process orders them
  (step, then global env index), and every rank runs the same PPO update on them, with the shared
  generator's permutations. The manager's data are few (about one row per ``goal_horizon`` env steps), so
  repeating its small update on every rank costs less than sharding it, and it is exact by construction.
- **Logs**: batch statistics are ratios of all-reduced sums; rank 0 evaluates, logs and writes.
- **Checkpoints**: rank 0 writes the shared state (networks, optimizers, φ, the manager's pending rows,
  the generator) plus ``ranks``: every rank's envs, observation, carry (its open segments), rollout
  accumulators, RNG states and pending outer batch (``outer_batch="next"``). Resume needs the same ``G``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from hrl_nested.algos.ppo_distributed import MINIBATCH_SEED_OFFSET, minibatch_rows
from hrl_nested.distributed import World, all_reduce_flat, gather_to_main, to_cpu
from hrl_nested.tracking.rng_state import rng_state

RANK_KEYS = ("env", "obs", "carry", "rollout", "outer_pending", "rng")
"""The checkpoint entries each rank owns; the rest of a nested checkpoint is shared."""


class Shards:
    """This rank's view of the union batch: the shared generator and the steps that need it.

    Args:
        world: this rank's `hrl_nested.distributed.World` (more than one rank).
        num_envs: the run's total number of envs ``N``; this rank holds ``N / G`` of them.
        num_steps: ``T``; the union batch is ``T x N`` rows, row ``t * N + i``.
        seed: the run's seed; the generator (CPU, identical on every rank) starts from
            ``seed + MINIBATCH_SEED_OFFSET``.
    """

    def __init__(self, world: World, num_envs: int, num_steps: int, seed: int):
        self.world, self.num_envs, self.num_steps = world, num_envs, num_steps
        self.generator = torch.Generator().manual_seed(seed + MINIBATCH_SEED_OFFSET)

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    def _rows(self, num_minibatches: int, device: torch.device) -> list[torch.Tensor]:
        perm = torch.randperm(self.batch_size, generator=self.generator)
        return [r.to(device) for r in minibatch_rows(perm, num_minibatches, self.num_envs, self.world)]

    def minibatches(self, cfg: Any, device: torch.device) -> list[torch.Tensor]:
        """This rank's local rows of each inner step's union minibatch (``n_inner`` of them; a fresh
        permutation every ``num_minibatches`` steps, as `hrl_nested.algos.nested_hrl._minibatches`)."""
        out: list[torch.Tensor] = []
        while len(out) < cfg.n_inner:
            out.extend(self._rows(cfg.num_minibatches, device))
        return out[: cfg.n_inner]

    def update_critics(self, h: Any, opt: torch.optim.Optimizer, prep: Any, ret_w: torch.Tensor, cfg: Any):
        """`hrl_nested.algos.nested_parts.update_critics` on the union batch; the mean union loss.

        Each step uses the union minibatch's gradient ``g = all_reduce(∇ S_rank) / M``, with ``S_rank`` the
        rank's sum of ``½ (V_w - R_w)² + ½ (V_ext - R_ext)²`` over its rows (`critic_loss_sum`) and ``M``
        the union minibatch's size: one process's ``∇`` of the minibatch mean. The norm clip then sees
        the global gradient, as one process's does."""
        from hrl_nested.algos.nested_parts import critic_loss_sum

        params = list(h.critics.parameters())
        union = self.batch_size // cfg.num_minibatches
        total = torch.zeros((), device=ret_w.device)
        for _ in range(cfg.critic_epochs):
            for idx in self._rows(cfg.num_minibatches, ret_w.device):
                loss = critic_loss_sum(h, prep, ret_w, idx)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
                *grad_sums, loss_sum = all_reduce_flat([*grads, loss.detach().reshape(1)], self.world)
                for p, g in zip(params, grad_sums):
                    p.grad = g / union
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                total += loss_sum[0] / union
        return total / (cfg.critic_epochs * cfg.num_minibatches)

    def gather_manager_rows(
        self, rows: dict[str, torch.Tensor], mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The manager rows of every rank (``rows``: this rank's, one per ended segment where ``mask``,
        ``(T, N/G)``, in ``(t, n)`` order), merged in the union batch's order: by ``t * N + global env``."""
        n = mask.shape[1]
        local = mask.reshape(-1).nonzero().squeeze(-1).cpu()
        key = (local // n) * self.num_envs + self.world.rank * n + local % n
        parts: list[Any] = [None] * self.world.size
        dist.all_gather_object(parts, (key, to_cpu(rows)))
        keys = torch.cat([p[0] for p in parts])
        order = keys.argsort()
        device = mask.device
        return {k: torch.cat([p[1][k] for p in parts])[order].to(device) for k in rows}

    def union_range(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """``[min, max]`` of ``x`` over every rank (for the logged range of φ's output); None stays None."""
        if x is None:
            return None
        lo_hi = torch.stack([x.detach().min(), -x.detach().max()]).float()
        dist.all_reduce(lo_hi, op=dist.ReduceOp.MIN)
        return torch.stack([lo_hi[0], -lo_hi[1]])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The generator's state (the same on every rank)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


def gather_checkpoint(state: dict[str, Any], shards: Shards) -> dict[str, Any] | None:
    """Rank 0's checkpoint of the whole run: the shared ``state`` plus ``world_size``, the generator and
    ``ranks`` (every rank's `RANK_KEYS` entries, on CPU); None on the other ranks."""
    part = {k: state.get(k) for k in RANK_KEYS if k != "rng"}
    part["rng"] = rng_state()
    parts = gather_to_main(part, shards.world)
    if parts is None:
        return None
    shared = {k: v for k, v in state.items() if k not in RANK_KEYS}
    world = {"world_size": shards.world.size, "ranks": parts, "minibatch": shards.state_dict()}
    return {**shared, **parts[0], **world}
