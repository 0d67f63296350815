"""The inner and outer problems of nested HRL, in the form `hrl_nested.hypergrad.hypergrad` takes.

Inner (fast, the subpolicies' parameters θ): ``n_inner`` PPO steps on minibatches of one rollout,
with advantages computed from the φ-shaped rewards ``r_w = β r_ext + R_φ`` (GAE is differentiable in
the rewards; the critic's values are constants), plus a proximal term:

.. math::

    L_\\text{in}(θ, φ, t) = L_\\text{clip}\\big(θ; \\hat A^w_φ[\\text{mb}_t]\\big) - c_H H(θ)
        + \\tfrac{λ}{2} \\lVert θ - θ_\\text{start} \\rVert^2

Outer (slow, φ): the importance-weighted extrinsic advantage of the updated subpolicies θ'(φ), as in
LIRPG (Zheng et al. 2018) and meta-gradient RL (Xu et al. 2018, "Meta-gradient reinforcement
learning"), minimized:

.. math::

    L_\\text{out}(θ', φ) = -\\operatorname{mean} \\frac{π_{θ'}(a|s,g)}{π_{θ_\\text{old}}(a|s,g)} A^\\text{ext}

The outer loss may come from another batch than the inner loss: with ``--nested-hrl.outer-batch next``
(online cross-validation, Xu et al. 2018) the loop pairs iteration k's ``inner_loss`` with the
``outer_loss`` of batch k+1, which the updated θ' collected (its behaviour log-probs are those of θ',
so the ratio is 1 at θ' and its gradient is not zero).

The minibatch indices are drawn *outside* the losses (a list fixed before the inner loop), so the
inner loss is a deterministic function of ``(θ, φ, t)``: every estimator, finite differences and a
replay see the same problem.

Under ``torchrun`` (``world.size > 1``) each rank holds a shard of the batch (its envs' columns) and the
losses are the *union* batch's, the same scalar on every rank: replicated values (θ, φ, the union
minibatch's advantage mean and std) enter the rank's rows through `hrl_nested.distributed.replicate`, and
the rows' partial sums leave through `hrl_nested.distributed.reduce_sum` (Megatron-LM's conjugate pair).
Every derivative the hypergradient engine takes (inner gradients with ``create_graph``, Hessian-vector
products, the backward through the unrolled steps) is then the one-process derivative on the union batch,
all-reduced where it must be, without any change to the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from hrl_nested import distributed
from hrl_nested.optim import Optimizer, Params
from hrl_nested.ppo_objective import UnionMinibatch, ppo_objective, ppo_objective_shard
from hrl_nested.returns import gae
from hrl_nested.shaping import extrinsic_weight

__all__ = [
    "InnerOuter",
    "PolicyBatch",
    "ShapingBatch",
    "clip_by_global_norm",
    "grad_cosine",
    "make_inner_outer",
    "shaped_advantages",
]


class ShapingBatch(NamedTuple):
    """What the shaped advantages need, time-major ``(T, N)`` (constants: no gradient flows into them).

    Attributes:
        r_ext: extrinsic rewards.
        values: ``V_w(s_t, g_t)`` of the subpolicies' critic.
        next_values: ``V_w(s_{t+1}, g_t)`` (same goal: never bootstrap across a goal change).
        terminated: terminal for the subpolicy (subgoal reached, or the episode terminated).
        truncated: bootstrapped ends (horizon, a truncated episode), not terminal.
        features: whatever ``reward_fn`` reads (achieved goals, goals, reached flags...).
    """

    r_ext: torch.Tensor
    values: torch.Tensor
    next_values: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    features: Any


class PolicyBatch(NamedTuple):
    """The flattened ``B = T N`` rows the PPO losses see.

    Attributes:
        obs: the policy's input rows (any pytree ``dist_fn`` reads, e.g. ``(x, member index)``).
        actions: ``(B, ...)`` actions taken.
        logprobs: ``(B,)`` their log-probs under the behaviour policy.
        adv_ext: ``(B,)`` extrinsic advantages (for the outer loss).
    """

    obs: Any
    actions: torch.Tensor
    logprobs: torch.Tensor
    adv_ext: torch.Tensor


class InnerOuter(NamedTuple):
    """``inner_loss(θ, φ, t)``, ``outer_loss(θ, φ)`` and ``stationary_loss(θ, φ)`` (the full-batch inner
    loss, for the implicit estimators)."""

    inner_loss: Callable[[Params, Params, int], torch.Tensor]
    outer_loss: Callable[[Params, Params], torch.Tensor]
    stationary_loss: Callable[[Params, Params], torch.Tensor]


RewardFn = Callable[[Mapping[str, torch.Tensor], Any], torch.Tensor]


def shaped_advantages(
    phi: Mapping[str, torch.Tensor], sb: ShapingBatch, reward_fn: RewardFn, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``gae(β r_ext + R_φ, V_w, V_w', terminated, truncated)``: ``(adv, returns)``, ``(T, N)``, carrying
    φ's gradient through the rewards (the values are constants); ``β = 1`` when φ has no ``beta``
    (`hrl_nested.shaping.extrinsic_weight`)."""
    r_w = extrinsic_weight(phi) * sb.r_ext + reward_fn(phi, sb.features)
    return gae(r_w, sb.values, sb.next_values, sb.terminated, sb.truncated, gamma, lam)


def _take(x: Any, idx: torch.Tensor) -> Any:
    if isinstance(x, tuple):
        return tuple(_take(v, idx) for v in x)
    if isinstance(x, Mapping):
        return {k: _take(v, idx) for k, v in x.items()}
    return x[idx]


def _sq_dist(a: Params, b: Params) -> torch.Tensor:
    return sum((a[k] - b[k]).square().sum() for k in a)


def make_inner_outer(
    dist_fn: Callable[[Params, Any], tuple[Any, torch.Tensor | None]],
    sb: ShapingBatch,
    pb: PolicyBatch,
    minibatches: Sequence[torch.Tensor],
    reward_fn: RewardFn,
    *,
    theta_start: Params,
    gamma: float,
    gae_lambda: float,
    clip_coef: float,
    ent_coef: float = 0.0,
    norm_adv: bool = True,
    prox: float = 0.0,
    world: distributed.World | None = None,
) -> InnerOuter:
    """Build the nested problem of one iteration (formulas in the module docstring).

    Args:
        dist_fn: ``dist_fn(θ, obs_rows) -> (distribution, None)``, the subpolicies' actor.
        sb: the `ShapingBatch` of the rollout.
        pb: the `PolicyBatch` of the rollout (rows ordered as ``sb``'s ``(T, N)`` flattened).
        minibatches: the row indices of inner step ``t``: ``minibatches[t % len(minibatches)]``.
        reward_fn: ``reward_fn(φ, sb.features) -> (T, N)`` the intrinsic reward ``R_φ``.
        theta_start: ``θ`` at the start of the inner loop (the proximal term's centre).
        gamma, gae_lambda: the subpolicies' GAE.
        clip_coef: PPO's epsilon.
        ent_coef: entropy bonus; replaced by ``exp(φ["log_ent_coef"])`` when φ has that entry
            (a meta-learned entropy coefficient).
        norm_adv: normalize the shaped advantages per minibatch, as flat PPO does.
        prox: ``λ >= 0`` of the proximal term ``λ/2 ||θ - θ_start||²``.
        world: under ``torchrun``, this rank's `hrl_nested.distributed.World`: ``sb`` and ``pb`` are its
            shard, ``minibatches`` its local rows of each union minibatch (possibly none), and the losses
            are the union batch's (`_sharded_inner_outer`). None or one process: the batch is whole.

    Returns:
        `InnerOuter`.
    """
    if not minibatches:
        raise ValueError("minibatches: expected at least one index tensor, got none")
    start = {k: v.detach() for k, v in theta_start.items()}
    if world is not None and world.size > 1:
        settings = (gamma, gae_lambda, clip_coef, ent_coef, norm_adv, prox)
        return _sharded_inner_outer(dist_fn, sb, pb, minibatches, reward_fn, start, settings)
    adv_ext = pb.adv_ext / (pb.adv_ext.std() + 1e-8)  # a constant scale: the outer step's size is unit-free

    def loss_on(theta: Params, phi: Params, idx: torch.Tensor | None) -> torch.Tensor:
        adv = shaped_advantages(phi, sb, reward_fn, gamma, gae_lambda)[0].reshape(-1)
        rows = {"obs": pb.obs, "actions": pb.actions, "logprobs": pb.logprobs, "advantages": adv}
        mb = rows if idx is None else {k: _take(v, idx) for k, v in rows.items()}
        c_ent = phi["log_ent_coef"].exp() if "log_ent_coef" in phi else ent_coef
        loss, _ = ppo_objective(dist_fn, theta, mb, clip_coef=clip_coef, ent_coef=c_ent, norm_adv=norm_adv)
        if prox > 0:
            loss = loss + 0.5 * prox * _sq_dist(theta, start)
        return loss

    def inner_loss(theta: Params, phi: Params, step: int) -> torch.Tensor:
        return loss_on(theta, phi, minibatches[step % len(minibatches)])

    def stationary_loss(theta: Params, phi: Params) -> torch.Tensor:
        return loss_on(theta, phi, None)

    def outer_loss(theta: Params, phi: Params) -> torch.Tensor:
        dist, _ = dist_fn(theta, pb.obs)
        ratio = (dist.log_prob(pb.actions) - pb.logprobs).exp()
        return -(ratio * adv_ext).mean()

    return InnerOuter(inner_loss, outer_loss, stationary_loss)


def _union_std(x: torch.Tensor) -> torch.Tensor:
    """The Bessel-corrected std of the union over ranks of ``x``'s entries (a constant: ``x`` is data)."""
    m = distributed.all_moments(x.detach().reshape(-1, 1), distributed.current_world())
    return (m.m2 / (m.count - 1.0)).sqrt().reshape(()).to(x.dtype)


def _sharded_inner_outer(dist_fn, sb, pb, minibatches, reward_fn, start, settings) -> InnerOuter:
    """`make_inner_outer` on this rank's shard, each loss the union batch's (module docstring): the
    per-row PPO terms of `hrl_nested.ppo_objective.ppo_objective_shard`, summed over ranks and divided by
    the union minibatch's size, with its advantages normalized by the union's (differentiable) mean and
    Bessel-corrected std."""
    gamma, gae_lambda, clip_coef, ent_coef, norm_adv, prox = settings
    rs, rep = distributed.reduce_sum, distributed.replicate
    adv_ext = pb.adv_ext / (_union_std(pb.adv_ext) + 1e-8)
    ref = pb.adv_ext
    # the union's row counts (of the batch and of each minibatch) are data: one all-reduce, here
    here = [ref.shape[0], *(int(m.numel()) for m in minibatches)]
    counts = rs(torch.tensor([float(c) for c in here], dtype=ref.dtype, device=ref.device))
    batch_rows = counts[0]

    def loss_on(theta: Params, phi: Params, step: int | None) -> torch.Tensor:
        idx = None if step is None else minibatches[step % len(minibatches)]
        theta_l, phi_l = distributed.replicate_tree(theta), distributed.replicate_tree(phi)
        adv = shaped_advantages(phi_l, sb, reward_fn, gamma, gae_lambda)[0].reshape(-1)
        rows = {"obs": pb.obs, "actions": pb.actions, "logprobs": pb.logprobs, "advantages": adv}
        mb = rows if idx is None else {k: _take(v, idx) for k, v in rows.items()}
        a = mb["advantages"]
        count = batch_rows if step is None else counts[1 + step % len(minibatches)]
        mean = rep(rs(a.sum()) / count)
        std = rep((rs((a - mean).square().sum()) / (count - 1.0).clamp_min(1.0)).sqrt())
        c_ent = phi_l["log_ent_coef"].exp() if "log_ent_coef" in phi_l else ent_coef
        part, _ = ppo_objective_shard(
            dist_fn,
            theta_l,
            mb,
            UnionMinibatch(count, count, mean, std),
            clip_coef=clip_coef,
            ent_coef=c_ent,
            norm_adv=norm_adv,
        )
        loss = rs(part) / count
        if prox > 0:  # θ is replicated: its own term, counted once
            loss = loss + 0.5 * prox * _sq_dist(theta, start)
        return loss

    def inner_loss(theta: Params, phi: Params, step: int) -> torch.Tensor:
        return loss_on(theta, phi, step)

    def stationary_loss(theta: Params, phi: Params) -> torch.Tensor:
        return loss_on(theta, phi, None)

    def outer_loss(theta: Params, phi: Params) -> torch.Tensor:
        dist, _ = dist_fn(distributed.replicate_tree(theta), pb.obs)
        ratio = (dist.log_prob(pb.actions) - pb.logprobs).exp()
        return -rs((ratio * adv_ext).sum()) / batch_rows

    return InnerOuter(inner_loss, outer_loss, stationary_loss)


def clip_by_global_norm(opt: Optimizer, max_norm: float) -> Optimizer:
    """``opt`` with its gradients first scaled to a global L2 norm of at most ``max_norm``, as
    ``torch.nn.utils.clip_grad_norm_`` does (``g * min(1, max_norm / (||g|| + 1e-6))``); differentiable,
    pure, and keeps ``opt.weight_decay``.

    >>> from hrl_nested.optim import sgd
    >>> o = clip_by_global_norm(sgd(1.0), 1.0)
    >>> w = {"w": torch.zeros(2)}
    >>> o.update({"w": torch.tensor([3.0, 4.0])}, o.init(w), w)[0]["w"]
    tensor([-0.6000, -0.8000])
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm: expected a float > 0, got {max_norm!r}")

    def update(grads: Params, state: Any, params: Params) -> tuple[Params, Any]:
        norm = torch.sqrt(sum(g.square().sum() for g in grads.values()))
        scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        return opt.update({k: g * scale for k, g in grads.items()}, state, params)

    return Optimizer(opt.init, update, opt.weight_decay)


def grad_cosine(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Cosine between two gradient dicts with the same keys (a device scalar; 0 when one is zero)."""
    if set(a) != set(b):
        raise ValueError(f"b: expected keys {sorted(a)}, got {sorted(b)}")
    dot = sum((a[k].double() * b[k].double()).sum() for k in a)
    na = torch.sqrt(sum(a[k].double().square().sum() for k in a))
    nb = torch.sqrt(sum(b[k].double().square().sum() for k in a))
    return dot / (na * nb).clamp_min(1e-30)
