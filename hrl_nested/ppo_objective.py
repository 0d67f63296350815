"""The PPO objective as a pure function of a parameter dict and a minibatch.

One implementation, used by flat PPO (`hrl_nested.algos.ppo`), by the subpolicies' differentiable
inner loop and by the manager of nested HRL (`hrl_nested.algos.nested_hrl`). It holds no module
state and no config object: the network enters as ``dist_fn(params, obs) -> (distribution, value)``,
the coefficients as arguments (floats, or tensors when they are meta-learned), and the statistics come
back by name (`PPOStats`), not as a positional vector.

Schulman et al. 2017, "Proximal policy optimization algorithms"; the implementation details of Huang
et al. 2022, "The 37 implementation details of PPO" (per-minibatch advantage normalization, optional
clipped value loss).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

from hrl_nested.losses import approx_kl, clip_fraction, entropy_loss, ppo_clip_loss, value_loss

Scalar = float | torch.Tensor
DistFn = Callable[[Mapping[str, torch.Tensor], Any], tuple[Any, torch.Tensor | None]]

__all__ = [
    "PPOStats",
    "UnionMinibatch",
    "advantage_sums",
    "normalize_advantages",
    "ppo_objective",
    "ppo_objective_shard",
    "shard_stats",
]

_MB_KEYS = ("obs", "actions", "logprobs", "advantages")


class PPOStats(NamedTuple):
    """Detached statistics of one evaluation of `ppo_objective` (scalar tensors, no host copy).

    Attributes:
        policy_loss: the clipped surrogate loss ``L_clip``.
        value_loss: ``L_V`` (0 when the objective has no critic).
        entropy: mean entropy of the current policy.
        approx_kl: ``mean((rho - 1) - log rho)``, an estimate of ``KL(pi_old || pi)``.
        clip_fraction: fraction of samples whose ratio left ``[1 - eps, 1 + eps]``.
    """

    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy: torch.Tensor
    approx_kl: torch.Tensor
    clip_fraction: torch.Tensor


def normalize_advantages(adv: torch.Tensor) -> torch.Tensor:
    """``(A - mean A) / (std A + 1e-8)``, exactly flat PPO's normalization (``Tensor.std``,
    Bessel-corrected: undefined for a single advantage).

    >>> normalize_advantages(torch.tensor([1.0, 3.0])).tolist()  # std of [1, 3] is sqrt(2)
    [-0.7071067..., 0.7071067...]
    """
    return (adv - adv.mean()) / (adv.std() + 1e-8)


def ppo_objective(
    dist_fn: DistFn,
    params: Mapping[str, torch.Tensor],
    mb: Mapping[str, Any],
    *,
    clip_coef: Scalar,
    vf_coef: Scalar = 0.5,
    ent_coef: Scalar = 0.0,
    norm_adv: bool = True,
    clip_vloss: bool = False,
) -> tuple[torch.Tensor, PPOStats]:
    """The PPO loss ``L = L_clip + vf_coef * L_V - ent_coef * H`` on one minibatch, and its statistics.

    .. math::

        L_\\text{clip} = -\\operatorname{mean} \\min(\\rho \\hat A, \\operatorname{clip}(\\rho, 1 - \\epsilon,
        1 + \\epsilon) \\hat A), \\quad \\rho = \\exp(\\log \\pi_\\theta(a|s) - \\log \\pi_\\text{old}(a|s)),
        \\quad \\hat A = \\frac{A - \\operatorname{mean} A}{\\operatorname{std} A + 10^{-8}}

    Differentiable in ``params`` and in ``mb["advantages"]`` (shaped advantages carry a meta-gradient)
    and in tensor coefficients (a meta-learned ``ent_coef``).

    Args:
        dist_fn: ``dist_fn(params, obs) -> (distribution, value)``: the action distribution (with
            ``log_prob`` and ``entropy``) and ``V(obs)``, or None for an actor without a critic here.
        params: the parameter dict (learnable tensors only; observation statistics belong in
            ``dist_fn``'s closure or inputs, not here).
        mb: ``obs``, ``actions``, ``logprobs`` (behaviour policy), ``advantages``; with a critic also
            ``values`` (behaviour critic) and ``returns`` (value targets). Optionally ``policy_mask``
            (bool): the rows the policy chose itself; ``L_clip``, the advantage normalization,
            ``approx_kl`` and ``clip_fraction`` are then means over those rows only (exploratory
            steps, `hrl_nested.exploration`, are off-policy), while the value loss and the entropy
            use every row.
        clip_coef: the surrogate's ``epsilon`` (and the value clip range with ``clip_vloss``).
        vf_coef: value-loss coefficient (ignored without a critic).
        ent_coef: entropy-bonus coefficient.
        norm_adv: normalize the advantages within this minibatch.
        clip_vloss: PPO2's clipped value loss around ``mb["values"]``.

    Returns:
        ``(loss, stats)``: the scalar to minimize and the detached `PPOStats`.

    >>> from hrl_nested.distributions import Categorical
    >>> fn = lambda p, obs: (Categorical(p["logits"].expand(obs.shape[0], 2)), None)
    >>> mb = {"obs": torch.zeros(2, 1), "actions": torch.tensor([0, 1]),
    ...       "logprobs": torch.full((2,), -0.6931), "advantages": torch.tensor([1.0, -1.0])}
    >>> loss, stats = ppo_objective(fn, {"logits": torch.zeros(2)}, mb, clip_coef=0.2, norm_adv=False)
    >>> round(stats.policy_loss.item(), 4)  # ratio 1: -mean(A)
    -0.0
    """
    missing = [k for k in _MB_KEYS if k not in mb]
    if missing:
        raise ValueError(f"mb: expected keys {list(_MB_KEYS)}, missing {missing} (got {sorted(mb)})")
    dist, v = dist_fn(params, mb["obs"])
    logp = dist.log_prob(mb["actions"])
    old_logp, adv = mb["logprobs"], mb["advantages"]
    mask = mb.get("policy_mask")
    if mask is not None:
        return _masked_objective(dist, v, logp, mb, mask, clip_coef, vf_coef, ent_coef, norm_adv, clip_vloss)
    if norm_adv:
        adv = normalize_advantages(adv)
    pg_loss = ppo_clip_loss(logp, old_logp, adv, clip_coef)
    loss, v_loss, ent = _total_loss(pg_loss, dist, v, mb, clip_coef, vf_coef, ent_coef, clip_vloss)
    with torch.no_grad():
        kl, clipfrac = approx_kl(logp, old_logp), clip_fraction(logp, old_logp, clip_coef)
        stats = PPOStats(pg_loss.detach(), v_loss.detach(), ent.detach(), kl, clipfrac)
    return loss, stats


def _total_loss(pg_loss, dist, v, mb, clip_coef, vf_coef, ent_coef, clip_vloss):
    """``(pg + c_v L_V - c_e H, L_V, H)``; without a critic (``v`` None) ``L_V = 0`` and no value term."""
    ent = dist.entropy().mean()
    if v is not None:
        v_loss = value_loss(v, mb["values"], mb["returns"], clip_coef if clip_vloss else None)
        # The same order of operations as flat PPO always had: its results stay bit for bit.
        return pg_loss + vf_coef * v_loss + ent_coef * entropy_loss(ent), v_loss, ent
    v_loss = torch.zeros((), dtype=pg_loss.dtype, device=pg_loss.device)
    return pg_loss + ent_coef * entropy_loss(ent), v_loss, ent


def _masked_objective(dist, v, logp, mb, mask, clip_coef, vf_coef, ent_coef, norm_adv, clip_vloss):
    """`ppo_objective` with the policy terms restricted to the rows where ``mask`` (no boolean indexing:
    masked sums, so the shapes stay static for ``torch.compile`` and ``vmap``)."""
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(logp.shape):
        raise ValueError(
            f"mb['policy_mask']: expected a bool tensor of shape {tuple(logp.shape)}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    # Masked-out rows are zeroed by torch.where, not multiplied by 0: whatever they hold (an infinite
    # stored log-prob, a NaN advantage) reaches neither the loss nor its gradient.
    old_logp = mb["logprobs"]
    adv = torch.where(mask, mb["advantages"], torch.zeros_like(mb["advantages"]))
    m = mask.to(adv.dtype)
    count = m.sum().clamp_min(1.0)
    if norm_adv:  # mean and Bessel-corrected std over the masked rows, as normalize_advantages does
        mean = adv.sum() / count
        centred = torch.where(mask, adv - mean, torch.zeros_like(adv))
        std = (centred.square().sum() / (count - 1.0).clamp_min(1.0)).sqrt()
        adv = centred / (std + 1e-8)
    log_ratio = torch.where(mask, logp - old_logp, torch.zeros_like(logp))
    ratio = log_ratio.exp()
    surr = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef) * adv)
    pg_loss = -torch.where(mask, surr, torch.zeros_like(surr)).sum() / count
    loss, v_loss, ent = _total_loss(pg_loss, dist, v, mb, clip_coef, vf_coef, ent_coef, clip_vloss)
    with torch.no_grad():
        kl = (((ratio - 1.0) - log_ratio) * m).sum() / count
        clipfrac = (((ratio - 1.0).abs() > clip_coef).to(m.dtype) * m).sum() / count
        stats = PPOStats(pg_loss.detach(), v_loss.detach(), ent.detach(), kl, clipfrac)
    return loss, stats


# ---------------------------------------------------------------------------- a shard of a minibatch
class UnionMinibatch(NamedTuple):
    """What a shard needs to know of the whole minibatch it belongs to (under ``torchrun``: all-reduced
    over ranks, see `hrl_nested.distributed`).

    Attributes:
        count: ``M``, the rows of the union minibatch.
        policy_count: the rows that enter the policy terms (``M`` without a ``policy_mask``).
        adv_mean: the mean advantage over those rows.
        adv_std: their Bessel-corrected standard deviation.
    """

    count: torch.Tensor
    policy_count: torch.Tensor
    adv_mean: torch.Tensor
    adv_std: torch.Tensor


def _policy_rows(mb: Mapping[str, Any]) -> torch.Tensor:
    mask = mb.get("policy_mask")
    return torch.ones_like(mb["advantages"], dtype=torch.bool) if mask is None else mask


def advantage_sums(mb: Mapping[str, Any], mean: torch.Tensor | None = None) -> torch.Tensor:
    """A shard's contribution to `UnionMinibatch`: ``[rows, policy rows, sum A]`` over the policy rows, or
    with ``mean`` the one value ``[sum (A - mean)^2]`` (the second pass of a two-pass variance)."""
    adv = mb["advantages"].detach()
    rows = _policy_rows(mb)
    if mean is not None:
        return torch.where(rows, adv - mean, torch.zeros_like(adv)).square().sum().reshape(1)
    policy = torch.where(rows, adv, torch.zeros_like(adv))
    n = torch.tensor(float(adv.shape[0]), dtype=adv.dtype, device=adv.device)
    return torch.stack([n, rows.to(adv.dtype).sum(), policy.sum()])


def ppo_objective_shard(
    dist_fn: DistFn,
    params: Mapping[str, torch.Tensor],
    mb: Mapping[str, Any],
    union: UnionMinibatch,
    *,
    clip_coef: Scalar,
    vf_coef: Scalar = 0.5,
    ent_coef: Scalar = 0.0,
    norm_adv: bool = True,
    clip_vloss: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`ppo_objective` on a shard of a minibatch, as a *sum* of per-sample terms: summed over the shards
    of a minibatch and divided by ``union.count``, it is `ppo_objective` on the whole minibatch (the
    same terms, the advantage normalization with the union's mean and std).

    .. math::

        S = \\sum_{i \\in \\text{shard}} \\frac{M}{M_\\pi} m_i \\ell^\\text{clip}_i + c_v \\ell^V_i - c_e H_i,
        \\qquad L_\\text{union} = \\frac{1}{M} \\sum_\\text{shards} S

    with ``m_i`` the policy mask (1 without one) and ``M_pi`` the union's policy rows. A shard may be
    empty: ``S = 0``, with a zero gradient.

    Returns:
        ``(S, sums)``: the scalar ``S`` and the detached ``(5,)`` sums of the statistics' terms, turned
        into the union's `PPOStats` by `shard_stats` once summed over the shards.
    """
    dist, v = dist_fn(params, mb["obs"])
    logp = dist.log_prob(mb["actions"])
    rows = _policy_rows(mb)
    zeros = torch.zeros_like(logp)
    adv = torch.where(rows, mb["advantages"], zeros)
    if norm_adv:
        adv = torch.where(rows, (adv - union.adv_mean) / (union.adv_std + 1e-8), zeros)
    log_ratio = torch.where(rows, logp - mb["logprobs"], zeros)
    ratio = log_ratio.exp()
    surr = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef) * adv)
    pg = torch.where(rows, -surr, zeros)
    if v is None:
        vl = zeros
    elif clip_vloss:
        v_clipped = mb["values"] + (v - mb["values"]).clamp(-clip_coef, clip_coef)
        vl = 0.5 * torch.maximum((v - mb["returns"]).square(), (v_clipped - mb["returns"]).square())
    else:
        vl = 0.5 * (v - mb["returns"]).square()
    ent = dist.entropy()
    policy_weight = union.count / union.policy_count.clamp_min(1.0)
    per_sample = policy_weight * pg + (0.0 if v is None else vf_coef * vl) - ent_coef * ent
    with torch.no_grad():
        m = rows.to(logp.dtype)
        kl = ((ratio - 1.0) - log_ratio) * m
        clipped = ((ratio - 1.0).abs() > clip_coef).to(m.dtype) * m
        sums = torch.stack([pg.sum(), vl.sum(), ent.sum(), kl.sum(), clipped.sum()])
    return per_sample.sum(), sums


def shard_stats(sums: torch.Tensor, union: UnionMinibatch) -> PPOStats:
    """The union minibatch's `PPOStats` from the sums of `ppo_objective_shard`'s statistics over shards."""
    pol, n = union.policy_count.clamp_min(1.0), union.count
    return PPOStats(sums[0] / pol, sums[1] / n, sums[2] / n, sums[3] / pol, sums[4] / pol)
