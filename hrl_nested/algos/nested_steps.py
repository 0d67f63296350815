"""The θ and φ steps of one nested-HRL iteration (`hrl_nested.algos.nested_hrl`'s "inner + outer").

- `inner_outer`: the iteration's problem (`hrl_nested.nested_objective.make_inner_outer`), the union
  batch's under ``torchrun``;
- `plain_inner`: ``n_inner`` PPO steps of θ on the φ-shaped advantages, no hypergradient (``hrl``, and
  the iterations between φ updates);
- `outer_step`: the same inner steps and one Adam step of φ along the hypergradient

  .. math::

      \\frac{d}{dφ} L_\\text{out}\\big(θ_n(φ), φ\\big), \\qquad
      θ_{t+1} = θ_t - η\\, \\text{Adam}\\Big(\\text{clip}\\big(\\nabla_θ L_\\text{in}(θ_t, φ, t)\\big)\\Big)

  by `hrl_nested.hypergrad.hypergrad` (unrolled, truncated, cg, neumann, es); a non-finite
  hypergradient or θ skips the whole step (``ok`` False), a decision every rank makes alike because
  every value it reads is replicated;
- `next_outer_step`: φ's step with the outer loss of the *next* batch (``outer_batch="next"``);
- `live_check`: the cosine between the estimator's hypergradient and the exact unrolled one.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, NamedTuple

import torch

from hrl_nested import distributed, optim
from hrl_nested.algos import nested_parts as parts
from hrl_nested.hierarchy import Hierarchy
from hrl_nested.hypergrad import NonFiniteHypergradWarning, hypergrad, make_hvp, run_inner
from hrl_nested.nested_objective import grad_cosine, make_inner_outer


def inner_outer(h: Hierarchy, sb, pb, minibatches, reward_fn, theta_start, cfg):
    """The iteration's `make_inner_outer` problem with the config's PPO and proximal settings."""
    return make_inner_outer(
        h.sub_dist,
        sb,
        pb,
        minibatches,
        reward_fn,
        theta_start=theta_start,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
        clip_coef=cfg.clip_coef,
        ent_coef=cfg.ent_coef,
        norm_adv=cfg.norm_adv,
        prox=cfg.resolved_prox() if hasattr(cfg, "resolved_prox") else 0.0,  # hrl: no φ, no prox
        world=distributed.current_world(),  # torchrun: this rank's shard, the union batch's losses
    )


def _inner_opt_args(inner_opt, cfg) -> dict[str, Any]:
    if getattr(cfg, "meta_lr", False):  # the engine builds Adam from exp(φ["log_sub_lr"])
        return {"inner_optimizer": "adam", "inner_lr": lambda p: p["log_sub_lr"].exp()}
    return {"inner_optimizer": inner_opt, "inner_lr": cfg.sub_lr}


def _method_options(cfg, method: str, seed: int) -> dict[str, Any]:
    es = {"samples": cfg.es_samples, "sigma": cfg.es_sigma, "seed": seed}  # the same noise on every rank
    if distributed.current_world().size > 1:  # vmap cannot carry the losses' collectives: a loop
        es["vectorize"] = False
    return {
        "unrolled": {},
        "truncated": {"truncate": cfg.truncate},
        "cg": {"iters": cfg.cg_iters, "tol": cfg.cg_tol},
        "neumann": {"terms": cfg.neumann_terms, "alpha": cfg.neumann_alpha or cfg.sub_lr},
        "es": es,
    }[method]


class OuterStep(NamedTuple):
    """One hypergradient step: ``ok`` False when it was skipped (a non-finite hypergradient or new θ),
    ``learner`` after it (the one it started from when skipped), the hypergradient's norm and value."""

    ok: bool
    learner: parts.LearnerState
    norm: torch.Tensor
    grads: dict[str, torch.Tensor]


def outer_step(
    io,
    learner,
    inner_opt,
    outer_opt,
    cfg,
    seed: int,
    iteration: int,
    *,
    check_alpha: bool,
    inner_steps: int | None = None,
) -> OuterStep:
    """``n_inner`` inner steps (``inner_steps`` if given) and one outer Adam step on φ with the
    estimator's hypergradient; with ``check_alpha`` (neumann), first check that the series converges
    (`check_neumann_alpha`)."""
    method = cfg.hypergrad
    opts = _method_options(cfg, method, seed * 1_000_003 + iteration)
    if method in ("cg", "neumann"):
        opts["stationary_loss"] = io.stationary_loss
        if method == "neumann" and check_alpha:
            check_neumann_alpha(io, learner.theta, learner.phi, opts["alpha"], cfg.resolved_prox())
    steps = cfg.n_inner if inner_steps is None else inner_steps
    res = _hypergrad(io, learner, inner_opt, cfg, steps, max_norm=cfg.hypergrad_max_norm, **opts)
    finite = torch.stack([torch.isfinite(v).all() for v in res.params.values()]).all()
    if res.nonfinite or not bool(finite):  # the iteration's one decision on the host
        return OuterStep(False, learner, res.grad_norm, res.grads)
    phi, outer_state = outer_opt.update(res.grads, learner.outer_state, learner.phi)
    phi = {k: v.detach() for k, v in phi.items()}
    return OuterStep(
        True, parts.LearnerState(res.params, res.opt_state, phi, outer_state), res.grad_norm, res.grads
    )


class NextOuterStep(NamedTuple):
    """`next_outer_step`'s result: `OuterStep`'s fields and the live check's cosine (None unless checked)."""

    ok: bool
    learner: parts.LearnerState
    norm: torch.Tensor
    grads: dict[str, torch.Tensor]
    cosine: torch.Tensor | None


def next_outer_step(
    pending: parts.PendingOuter,
    io,
    learner: parts.LearnerState,
    pieces,
    cfg,
    seed: int,
    iteration: int,
    *,
    checked: bool,
    check_alpha: bool,
) -> NextOuterStep:
    """φ's step with the outer loss on the *next* batch (``outer_batch="next"``).

    The inner problem is the pending iteration's (its batch, minibatches, prox centre θ_start), the outer
    loss is ``io``'s: ``-mean(π_θ'/π_behaviour · A_ext)`` on the batch θ' itself collected, so the ratio
    is 1 at θ' but its gradient is not zero. unrolled, truncated and es recompute the pending inner steps
    from the saved θ_start and optimizer state (recomputation: no graph is kept across iterations);
    cg and neumann need only θ', which ``learner`` holds, and take the implicit gradient there
    (0 inner steps). ``pieces``: ``(hierarchy, reward_fn, inner_opt, outer_opt)``.
    """
    h, reward_fn, inner_opt, outer_opt = pieces
    # the pending update's own step count (a resumed run may have changed n_inner since)
    cfg = dataclasses.replace(cfg, n_inner=pending.inner_steps)
    prev = inner_outer(h, pending.sb, pending.pb, pending.minibatches, reward_fn, pending.theta_start, cfg)
    problem = prev._replace(outer_loss=io.outer_loss)
    start = learner._replace(theta=pending.theta_start, inner_state=pending.inner_state)
    implicit = cfg.hypergrad in ("cg", "neumann")
    out = outer_step(
        problem,
        learner if implicit else start,
        inner_opt,
        outer_opt,
        cfg,
        seed,
        iteration,
        check_alpha=check_alpha,
        inner_steps=0 if implicit else None,
    )
    cosine = None
    if checked:
        cosine = live_check(problem, start, out.grads, inner_opt, cfg, seed + iteration)
    return NextOuterStep(*out, cosine)


def plain_inner(io, learner, inner_opt, cfg) -> parts.LearnerState:
    """The inner steps without a hypergradient (``hrl``, or between φ updates); skipped if not finite."""
    opt = inner_opt
    if getattr(cfg, "meta_lr", False):
        opt = optim.adam(learner.phi["log_sub_lr"].exp(), eps_root=1e-16)
    with torch.no_grad():
        new, state = run_inner(
            io.inner_loss, opt, learner.theta, learner.inner_state, learner.phi, range(cfg.n_inner)
        )
    if bool(torch.stack([torch.isfinite(v).all() for v in new.values()]).all()):
        return learner._replace(theta={k: v.detach() for k, v in new.items()}, inner_state=state)
    return learner


def live_check(io, start, est, inner_opt, cfg, seed: int) -> torch.Tensor:
    """Cosine between the estimator's hypergradient ``est`` and the exact unrolled one (es for unrolled)
    from the same ``start`` (`parts.LearnerState`)."""
    method = "es" if cfg.hypergrad == "unrolled" else "unrolled"
    opts = _method_options(cfg, method, seed)
    ref = _hypergrad(io, start, inner_opt, cfg, cfg.n_inner, method=method, **opts)
    return grad_cosine(est, ref.grads)


def _hypergrad(io, start: parts.LearnerState, inner_opt, cfg, inner_steps: int, **options):
    """`hypergrad` of the iteration's problem ``io`` from ``start``'s θ, φ and inner optimizer state, with a
    non-finite result zeroed and reported (``result.nonfinite``) rather than warned about: the loop counts
    it as ``outer_skipped``. ``options``: ``method`` and its options, ``max_norm``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteHypergradWarning)
        return hypergrad(
            io.inner_loss,
            io.outer_loss,
            start.theta,
            start.phi,
            inner_steps=inner_steps,
            opt_state=start.inner_state,
            on_nonfinite="zero",
            **_inner_opt_args(inner_opt, cfg),
            **{"method": cfg.hypergrad, **options},
        )


def check_neumann_alpha(io, theta, phi, alpha: float, prox: float, iters: int = 8) -> None:
    """Power iteration for ``||H||`` of the stationary loss; warn when ``α >= 2 / (λ + ||H||)``."""
    hvp = make_hvp(io.stationary_loss, theta, phi)
    # torchrun: rank 0's start vector on every rank (their generators differ, the operator is shared)
    v = {k: torch.randn_like(t) for k, t in theta.items()}
    world = distributed.current_world()
    v = distributed.broadcast_tensors(v, world)
    norm = torch.zeros(())
    for _ in range(iters):
        n = torch.sqrt(sum(x.square().sum() for x in v.values())).clamp_min(1e-30)
        v = hvp({k: x / n for k, x in v.items()})
        norm = torch.sqrt(sum(x.square().sum() for x in v.values()))
    h_norm = float(norm)  # includes λ: the stationary loss holds the proximal term
    if alpha >= 2.0 / max(h_norm, 1e-30) and world.is_main:  # every rank has the same ||H||: warn once
        warnings.warn(
            f"neumann: alpha={alpha:g} >= 2/(prox + ||H||) = {2.0 / h_norm:.3g} "
            f"(||H|| ~ {h_norm - prox:.3g}, "
            f"prox={prox:g}): the Neumann series diverges; lower --nested-hrl.neumann-alpha",
            RuntimeWarning,
            stacklevel=2,
        )
