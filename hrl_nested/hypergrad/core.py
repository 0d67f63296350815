"""The one entry point, :func:`hypergrad`: argument checks, dispatch, non-finite handling, clipping."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from hrl_nested import optim
from hrl_nested.hypergrad import options as opts
from hrl_nested.hypergrad.es import es_hypergrad
from hrl_nested.hypergrad.implicit import implicit_hypergrad, with_weight_decay
from hrl_nested.hypergrad.unrolled import InnerProblem, MethodOutput, unrolled_hypergrad
from hrl_nested.optim import Optimizer, Params
from hrl_nested.pytree import detach_tree

__all__ = ["METHODS", "HypergradResult", "NonFiniteHypergradError", "NonFiniteHypergradWarning", "hypergrad"]

METHODS = opts.METHODS

InnerLR = float | Callable[[Params], Tensor]

# Adam's eps_root when hypergrad builds it: differentiating through an update whose gradient
# entry is exactly zero (an idle subpolicy) is NaN without it; eps**2 moves no step more than eps does.
ADAM_EPS_ROOT = 1e-16


class NonFiniteHypergradError(FloatingPointError, RuntimeError):
    """The hypergradient has NaN or infinite entries (``on_nonfinite="raise"``)."""


class NonFiniteHypergradWarning(RuntimeWarning, UserWarning):
    """A non-finite hypergradient was zeroed (``on_nonfinite="zero"``); filter it by this class."""


@dataclass(frozen=True)
class HypergradResult:
    """What :func:`hypergrad` returns.

    Attributes:
        params: the inner params ``w_K`` after ``inner_steps`` (detached).
        opt_state: the inner optimizer's state after them (detached): pass it back as ``opt_state``.
        outer_loss: ``F(w_K, λ)``, a detached scalar tensor.
        grads: ``dF/dλ`` (after zeroing or clipping, if any), a dict shaped like the hparams.
        grad_norm: the global L2 norm of the hypergradient before clipping or zeroing.
        clipped: whether ``max_norm`` scaled the hypergradient down.
        nonfinite: whether the hypergradient was non-finite (and, with ``on_nonfinite="zero"``, zeroed).
        info: method diagnostics (``cg_iters``, ``cg_residual``, ``truncate``, ``es_vectorized``, ...).
        options: the method's options as used, defaults filled in (e.g. :class:`CGOptions`).
    """

    params: Params
    opt_state: Any
    outer_loss: Tensor
    grads: Params
    grad_norm: Tensor
    clipped: bool = False
    nonfinite: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    options: opts.HypergradOptions | None = None


def _tensor_dict(x: Any, name: str, *, nonempty: bool = False) -> Params:
    if not isinstance(x, Mapping) or not all(isinstance(v, Tensor) for v in x.values()):
        raise TypeError(f"hypergrad: {name} must be a dict[str, Tensor], got {type(x).__name__}")
    bad = [k for k, v in x.items() if not v.is_floating_point()]
    if bad:
        raise TypeError(f"hypergrad: {name} must hold floating-point tensors; {bad} are not")
    if nonempty and not x:
        raise ValueError(f"hypergrad: {name} is empty; there is nothing to differentiate with respect to")
    return {k: v.detach() for k, v in x.items()}


def _positional_arity(fn: Callable[..., Any], name: str) -> tuple[int, bool]:
    """How many positional args to pass ``fn`` (2 or 3), and whether the third one is required.

    ``*args`` counts as taking the step. A module is read through ``forward``: its ``__call__``
    is ``(*args, **kwargs)`` and says nothing.
    """
    try:
        sig = inspect.signature(fn.forward if isinstance(fn, torch.nn.Module) else fn)
    except (TypeError, ValueError):  # some builtins and C callables: assume the plain form
        return 2, False
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    pos = [p for p in sig.parameters.values() if p.kind in kinds]
    required = sum(p.default is inspect.Parameter.empty for p in pos)
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in sig.parameters.values())
    if required > 3 or (len(pos) < 2 and not varargs):
        raise ValueError(
            f"hypergrad: {name} must take (params, hparams) or (params, hparams, step); got signature {sig}"
        )
    if len(pos) >= 3 or varargs:
        return 3, required >= 3
    return 2, False


def _make_opt_factory(inner_optimizer: Any, inner_lr: Any) -> Callable[[Params], Optimizer]:
    if callable(inner_lr):

        def lr_of(h: Params) -> Tensor:
            lr = inner_lr(h)
            if isinstance(lr, Tensor) and lr.numel() != 1:
                raise ValueError(
                    f"hypergrad: inner_lr(hparams) must be a scalar, got shape {tuple(lr.shape)}"
                )
            return lr.reshape(()) if isinstance(lr, Tensor) else lr

    elif opts._is_real(inner_lr) and inner_lr > 0:
        lr_of = lambda h: float(inner_lr)
    else:
        raise ValueError(
            f"hypergrad: inner_lr must be a float > 0 or a callable hparams -> Tensor, got {inner_lr!r}"
        )

    if inner_optimizer == "sgd":
        return lambda h: optim.sgd(lr_of(h))
    if inner_optimizer == "adam":
        return lambda h: optim.adam(lr_of(h), eps_root=ADAM_EPS_ROOT)
    if (
        isinstance(inner_optimizer, tuple)
        and len(inner_optimizer) == 2
        and all(map(callable, inner_optimizer))
    ):
        if callable(inner_lr):
            raise ValueError(
                "hypergrad: a callable inner_lr needs inner_optimizer='sgd' or 'adam' (hypergrad builds the "
                "optimizer with that step size); an (init, update) pair carries its own step size"
            )
        # Keep the pair's weight decay (the implicit methods' stationary loss needs it); a plain
        # (init, update) tuple says nothing and counts as none.
        pair = Optimizer(*inner_optimizer, weight_decay=getattr(inner_optimizer, "weight_decay", 0.0))
        return lambda h: pair
    raise ValueError(
        "hypergrad: inner_optimizer must be 'sgd', 'adam' or an (init, update) pair from hrl_nested.optim, "
        f"got {inner_optimizer!r}"
    )


def _lr_users(inner_lr: Any, hparams: Params) -> set[str]:
    """The hparams a callable inner_lr depends on (for the implicit methods' error message)."""
    if not callable(inner_lr):
        return set()
    hp = {k: v.clone().requires_grad_() for k, v in hparams.items()}
    with torch.enable_grad():
        lr = inner_lr(hp)
    if not isinstance(lr, Tensor) or not lr.requires_grad:
        return set()
    used = torch.autograd.grad(lr.sum(), list(hp.values()), allow_unused=True)
    return {k for k, g in zip(hp, used) if g is not None}


def _global_norm(grads: Params) -> Tensor:
    norms = [torch.linalg.vector_norm(g) for g in grads.values()]
    dtype = norms[0].dtype
    for n in norms[1:]:
        dtype = torch.promote_types(dtype, n.dtype)
    return torch.linalg.vector_norm(torch.stack([n.to(dtype) for n in norms]))


def _finalize(out: MethodOutput, options: opts.HypergradOptions) -> HypergradResult:
    method, max_norm = options.method, options.max_norm
    grads = out.grads
    norm = _global_norm(grads)
    nonfinite, clipped = False, False
    if not bool(torch.isfinite(norm)):  # one host sync; a NaN or inf anywhere makes the norm non-finite
        nonfinite = True
        bad = [k for k, g in grads.items() if not bool(torch.isfinite(g).all())]
        msg = (
            f"hypergrad(method={method!r}): non-finite hypergradient for {bad} (outer loss "
            f"{out.outer_loss.item():.6g}). Usual causes: a diverging inner loop (inner_lr too large), "
            "Adam through zero-gradient entries without eps_root > 0, or an ill-conditioned Hessian "
            "(cg: raise damping; neumann: lower alpha)."
        )
        if options.on_nonfinite == "raise":
            raise NonFiniteHypergradError(msg + " Pass on_nonfinite='zero' to report and zero it instead.")
        warnings.warn(
            msg + " The hypergradient was zeroed (result.nonfinite=True).",
            NonFiniteHypergradWarning,
            stacklevel=3,
        )
        grads = {k: torch.zeros_like(g) for k, g in grads.items()}
    elif max_norm is not None:
        clipped = bool(norm > max_norm)
        if clipped:
            grads = {k: g * (max_norm / norm).to(g.dtype) for k, g in grads.items()}
    return HypergradResult(
        params=out.params,
        opt_state=out.opt_state,
        outer_loss=out.outer_loss,
        grads=grads,
        grad_norm=norm.detach(),
        clipped=clipped,
        nonfinite=nonfinite,
        info=out.info,
        options=options,
    )


def hypergrad(
    inner_loss: Callable[..., Tensor],
    outer_loss: Callable[[Params, Params], Tensor],
    params: Params,
    hparams: Params,
    *,
    method: str | opts.HypergradOptions,
    inner_steps: int,
    inner_lr: InnerLR,
    inner_optimizer: str | tuple[Callable[..., Any], Callable[..., Any]] = "sgd",
    opt_state: Any = None,
    **method_options: Any,
) -> HypergradResult:
    r"""Gradient of an outer loss after K inner optimization steps with respect to hyperparameters.

    Runs ``w_{t+1}, s_{t+1} = update(∇_w L(w_t, λ[, t]), s_t, w_t)`` for ``t < K`` from
    ``w_0 = params``, ``s_0 = opt_state``, and estimates ``dF(w_K(λ), λ)/dλ`` by ``method``:

    - ``"unrolled"``: exact reverse-mode through all K steps (memory grows with K).
    - ``"truncated"``: through the last ``truncate`` = T steps only (memory grows with T).
    - ``"cg"`` / ``"neumann"``: implicit function theorem at ``w_K``,
      ``∂F/∂λ − (∂²L/∂λ∂w) H⁻¹ ∂F/∂w`` with ``H = ∇²_w L``, ``H⁻¹`` by conjugate gradient
      (``iters``, ``tol``, ``damping``) or ``α Σ_{j<M} (I − αH)^j`` (``terms`` = M, ``alpha``,
      default the inner step size); HVPs by ``torch.func`` (``hvp="vjp"``, or ``"jvp"``);
      ``stationary_loss(params, hparams)`` is the loss ``w_K`` is stationary for (default:
      ``inner_loss`` without a step plus the inner optimizer's L2 term ``wd/2·‖w‖²``,
      ``wd = inner_optimizer.weight_decay``, since an update with coupled weight decay stops
      where ``∇L + wd·w = 0``; a ``stationary_loss`` you pass is used as given, so include the
      L2 term in it yourself). Memory and cost do not grow with K.
    - ``"es"``: antithetic evolution strategies over ``λ`` (``samples``, ``sigma``, ``seed`` or
      ``generator``, ``chunk_size``, ``vectorize``); the ``2·samples`` inner runs are vmapped.

    Common options: ``on_nonfinite="raise"`` (default; :class:`NonFiniteHypergradError`) or
    ``"zero"`` (a :class:`NonFiniteHypergradWarning`, ``result.nonfinite`` and a zero hypergradient);
    ``max_norm`` clips the global L2 norm (``result.grad_norm`` is the norm before).

    Each method's options are a frozen dataclass (:class:`UnrolledOptions`,
    :class:`TruncatedOptions`, :class:`CGOptions`, :class:`NeumannOptions`, :class:`ESOptions`,
    in :mod:`hrl_nested.hypergrad.options`), checked when built. ``method`` is a method name with
    its options as keywords, or such an object: ``method=CGOptions(iters=10)`` is the same call as
    ``method="cg", iters=10``; keywords given with an object replace its fields. ``result.options``
    holds the options used.

    Args:
        inner_loss: ``inner_loss(params, hparams)`` or ``inner_loss(params, hparams, step)``
            (the step index ``t``, e.g. to pick a minibatch; detected from the signature).
        outer_loss: ``outer_loss(params, hparams) -> scalar``, minimized (pass ``-J`` for a return J).
        params: the inner starting point ``w_0``, a dict of tensors.
        hparams: ``λ``, a dict of tensors; ``result.grads`` has the same keys and shapes.
        method: ``"unrolled" | "truncated" | "cg" | "neumann" | "es"``, or an options object of
            one of them (e.g. ``CGOptions(iters=10)``).
        inner_steps: ``K >= 0``.
        inner_lr: the inner step size: a float, or ``inner_lr(hparams) -> Tensor`` to
            meta-learn it (e.g. ``lambda h: h["log_lr"].exp()``). cg and neumann raise for a
            hyperparameter that enters only here (its implicit gradient is identically zero).
        inner_optimizer: ``"sgd"``, ``"adam"`` (built from :mod:`hrl_nested.optim` with
            ``inner_lr``; Adam with ``eps_root=1e-16``; no weight decay), or an ``(init, update)``
            pair such as ``optim.sgd(0.1, weight_decay=1e-3)`` (the way to get weight decay). The
            pair's ``weight_decay`` attribute (coupled L2, see :class:`~hrl_nested.optim.Optimizer`)
            enters the implicit methods' default stationary loss; a pair without one counts as 0.
        opt_state: the inner optimizer's state at ``w_0`` (e.g. Adam's moments from the
            previous outer step); None initializes it.
        **method_options: the options of ``method`` listed above (the fields of its options class).

    Returns:
        A :class:`HypergradResult` (``params``, ``opt_state``, ``outer_loss``, ``grads``, ...).

    Raises:
        ValueError: unknown method or option, an invalid value, or (cg / neumann) a
            hyperparameter with no implicit gradient, such as one used only by ``inner_lr``.
        TypeError: params or hparams not dicts of floating-point tensors.
        NonFiniteHypergradError: a NaN / inf hypergradient with ``on_nonfinite="raise"``.

    Example:
        >>> inner = lambda w, h: ((w["x"] - h["c"]) ** 2).sum()  # w* = c
        >>> outer = lambda w, h: ((w["x"] - 3.0) ** 2).sum()
        >>> res = hypergrad(inner, outer, {"x": torch.zeros(1)}, {"c": torch.ones(1)},
        ...                 method="cg", inner_steps=50, inner_lr=0.25)
        >>> res.grads["c"]  # dF/dc = 2 (w* - 3)
        tensor([-4.])
        >>> from hrl_nested.hypergrad import CGOptions
        >>> same = hypergrad(inner, outer, {"x": torch.zeros(1)}, {"c": torch.ones(1)},
        ...                  method=CGOptions(), inner_steps=50, inner_lr=0.25)
        >>> torch.equal(same.grads["c"], res.grads["c"]), res.options == same.options
        (True, True)
    """
    options = opts.options_for(method, **method_options)
    if not opts._is_int(inner_steps) or inner_steps < 0:
        raise ValueError(f"hypergrad: inner_steps must be an int >= 0, got {inner_steps!r}")
    params = _tensor_dict(params, "params")
    hparams = _tensor_dict(hparams, "hparams", nonempty=True)
    arity, step_required = _positional_arity(inner_loss, "inner_loss")
    loss_t = inner_loss if arity == 3 else (lambda p, h, t: inner_loss(p, h))
    problem = InnerProblem(
        loss_t=loss_t,
        outer_loss=outer_loss,
        make_opt=_make_opt_factory(inner_optimizer, inner_lr),
        params=params,
        opt_state=None if opt_state is None else detach_tree(opt_state),
        inner_steps=int(inner_steps),
    )

    with torch.enable_grad():  # the estimators need autograd even when called under no_grad
        out = _estimate(options, problem, hparams, inner_loss, inner_lr, step_required)
    return _finalize(out, options)


def _estimate(
    options: opts.HypergradOptions,
    problem: InnerProblem,
    hparams: Params,
    inner_loss: Callable[..., Tensor],
    inner_lr: InnerLR,
    step_required: bool,
) -> MethodOutput:
    """Run the estimator that ``options`` belong to."""
    match options:
        case opts.UnrolledOptions():
            return unrolled_hypergrad(problem, hparams)
        case opts.TruncatedOptions():
            return unrolled_hypergrad(problem, hparams, truncate=options.truncate)
        case opts.CGOptions() | opts.NeumannOptions():
            stationary = options.stationary_loss
            if stationary is None:
                if step_required:
                    raise ValueError(
                        f"hypergrad(method={options.method!r}): inner_loss takes a step index; pass "
                        "stationary_loss(params, hparams), the loss params_K is stationary for"
                    )
                # A fixed point of an update with coupled L2 weight decay wd solves ∇L + wd·w = 0.
                stationary = with_weight_decay(inner_loss, problem.make_opt(hparams).weight_decay)
            return implicit_hypergrad(
                problem,
                hparams,
                stationary_loss=stationary,
                solver=options.method,
                hvp=options.hvp,
                lr_users=_lr_users(inner_lr, hparams),
                **_solver_options(options, inner_lr, hparams),
            )
        case opts.ESOptions():
            return es_hypergrad(
                problem,
                hparams,
                samples=options.samples,
                sigma=float(options.sigma),
                seed=options.seed,
                generator=options.generator,
                chunk_size=options.chunk_size,
                vectorize=options.vectorize,
            )
    raise TypeError(f"hypergrad: no estimator for {type(options).__name__}")


def _solver_options(
    options: opts.CGOptions | opts.NeumannOptions, inner_lr: InnerLR, hparams: Params
) -> dict[str, Any]:
    """The linear solver's options; neumann's ``alpha`` defaults to the inner step size (at ``hparams``)."""
    if isinstance(options, opts.CGOptions):
        return {"iters": options.iters, "tol": options.tol, "damping": options.damping}
    alpha = options.alpha
    if alpha is None:
        alpha = inner_lr(hparams) if callable(inner_lr) else inner_lr
    return {"terms": options.terms, "alpha": float(alpha)}
