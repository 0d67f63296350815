"""The one entry point, :func:`hypergrad`: argument checks, dispatch, non-finite handling, clipping."""

from __future__ import annotations

import inspect
import numbers
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from hrl_nested import optim
from hrl_nested.hypergrad.es import es_hypergrad
from hrl_nested.hypergrad.implicit import implicit_hypergrad, with_weight_decay
from hrl_nested.hypergrad.unrolled import InnerProblem, MethodOutput, unrolled_hypergrad
from hrl_nested.optim import Optimizer, Params
from hrl_nested.pytree import detach_tree

__all__ = ["METHODS", "HypergradResult", "NonFiniteHypergradError", "NonFiniteHypergradWarning", "hypergrad"]

InnerLR = float | Callable[[Params], Tensor]

# Adam's eps_root when hypergrad builds it: differentiating through an update whose gradient
# entry is exactly zero (an idle subpolicy) is NaN without it; eps**2 moves no step more than eps does.
ADAM_EPS_ROOT = 1e-16

_REQUIRED = object()
_COMMON = {"on_nonfinite": "raise", "max_norm": None}
_IMPLICIT = {"stationary_loss": None, "hvp": "vjp"}
_OPTIONS: dict[str, dict[str, Any]] = {
    "unrolled": {},
    "truncated": {"truncate": _REQUIRED},
    "cg": {"iters": 20, "tol": 1e-10, "damping": 0.0, **_IMPLICIT},
    "neumann": {"terms": 20, "alpha": None, **_IMPLICIT},
    "es": {
        "samples": 16,
        "sigma": 0.01,
        "seed": None,
        "generator": None,
        "chunk_size": None,
        "vectorize": True,
    },
}
METHODS = tuple(_OPTIONS)


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
    """

    params: Params
    opt_state: Any
    outer_loss: Tensor
    grads: Params
    grad_norm: Tensor
    clipped: bool = False
    nonfinite: bool = False
    info: dict[str, Any] = field(default_factory=dict)


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _options(method: Any, given: dict[str, Any]) -> dict[str, Any]:
    """Merge defaults, reject unknown options, check every value; ValueError says expected vs got."""
    if not isinstance(method, str) or method not in _OPTIONS:
        raise ValueError(f"hypergrad: method must be one of {list(METHODS)}, got {method!r}")
    allowed = {**_OPTIONS[method], **_COMMON}
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(
            f"hypergrad(method={method!r}): unknown option(s) {unknown}; "
            f"expected a subset of {sorted(allowed)}"
        )
    opts = {**allowed, **given}
    missing = [k for k, v in opts.items() if v is _REQUIRED]
    if missing:
        raise ValueError(f"hypergrad(method={method!r}): missing required option(s) {missing}")

    checks: dict[str, tuple[Callable[[Any], bool], str]] = {
        "truncate": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
        "iters": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
        "tol": (lambda v: _is_real(v) and v >= 0, "a float >= 0"),
        "damping": (lambda v: _is_real(v) and v >= 0, "a float >= 0"),
        "terms": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
        "alpha": (lambda v: v is None or (_is_real(v) and v > 0), "None or a float > 0"),
        "stationary_loss": (lambda v: v is None or callable(v), "None or a callable (params, hparams)"),
        "hvp": (lambda v: v in ("jvp", "vjp"), "'jvp' or 'vjp'"),
        "samples": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
        "sigma": (lambda v: _is_real(v) and v > 0, "a float > 0"),
        "seed": (lambda v: v is None or _is_int(v), "None or an int"),
        "generator": (lambda v: v is None or isinstance(v, torch.Generator), "None or a torch.Generator"),
        "chunk_size": (lambda v: v is None or (_is_int(v) and v >= 1), "None or an int >= 1"),
        "vectorize": (lambda v: isinstance(v, bool), "a bool"),
        "on_nonfinite": (lambda v: v in ("raise", "zero"), "'raise' or 'zero'"),
        "max_norm": (lambda v: v is None or (_is_real(v) and v > 0), "None or a float > 0"),
    }
    for name, value in opts.items():
        ok, expected = checks[name]
        if not ok(value):
            raise ValueError(f"hypergrad(method={method!r}): option {name} must be {expected}, got {value!r}")
    if method == "es" and opts["seed"] is not None and opts["generator"] is not None:
        raise ValueError("hypergrad(method='es'): pass seed or generator, not both")
    return opts


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

    elif _is_real(inner_lr) and inner_lr > 0:
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


def _finalize(out: MethodOutput, method: str, on_nonfinite: str, max_norm: float | None) -> HypergradResult:
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
        if on_nonfinite == "raise":
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
    )


def hypergrad(
    inner_loss: Callable[..., Tensor],
    outer_loss: Callable[[Params, Params], Tensor],
    params: Params,
    hparams: Params,
    *,
    method: str,
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

    Args:
        inner_loss: ``inner_loss(params, hparams)`` or ``inner_loss(params, hparams, step)``
            (the step index ``t``, e.g. to pick a minibatch; detected from the signature).
        outer_loss: ``outer_loss(params, hparams) -> scalar``, minimized (pass ``-J`` for a return J).
        params: the inner starting point ``w_0``, a dict of tensors.
        hparams: ``λ``, a dict of tensors; ``result.grads`` has the same keys and shapes.
        method: ``"unrolled" | "truncated" | "cg" | "neumann" | "es"``.
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
        **method_options: the options of ``method`` listed above.

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
    """
    opts = _options(method, method_options)
    if not _is_int(inner_steps) or inner_steps < 0:
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
        out = _dispatch(method, opts, problem, hparams, inner_loss, inner_lr, step_required)
    return _finalize(out, method, opts["on_nonfinite"], opts["max_norm"])


def _dispatch(
    method: str,
    opts: dict[str, Any],
    problem: InnerProblem,
    hparams: Params,
    inner_loss: Callable[..., Tensor],
    inner_lr: InnerLR,
    step_required: bool,
) -> MethodOutput:
    """Run the estimator of ``method`` with its checked options."""
    if method in ("unrolled", "truncated"):
        return unrolled_hypergrad(problem, hparams, truncate=opts.get("truncate"))
    if method in ("cg", "neumann"):
        stationary = opts["stationary_loss"]
        if stationary is None:
            if step_required:
                raise ValueError(
                    f"hypergrad(method={method!r}): inner_loss takes a step index; pass "
                    "stationary_loss(params, hparams), the loss params_K is stationary for"
                )
            # A fixed point of an update with coupled L2 weight decay wd solves ∇L + wd·w = 0.
            stationary = with_weight_decay(inner_loss, problem.make_opt(hparams).weight_decay)
        solver_opts = {k: opts[k] for k in ("iters", "tol", "damping", "terms", "hvp") if k in opts}
        if method == "neumann":  # alpha defaults to the inner step size (a callable one at these hparams)
            default_alpha = inner_lr(hparams) if callable(inner_lr) else inner_lr
            solver_opts["alpha"] = float(default_alpha if opts["alpha"] is None else opts["alpha"])
        return implicit_hypergrad(
            problem,
            hparams,
            stationary_loss=stationary,
            solver=method,
            lr_users=_lr_users(inner_lr, hparams),
            **solver_opts,
        )
    return es_hypergrad(
        problem,
        hparams,
        samples=opts["samples"],
        sigma=float(opts["sigma"]),
        seed=opts["seed"],
        generator=opts["generator"],
        chunk_size=opts["chunk_size"],
        vectorize=opts["vectorize"],
    )
