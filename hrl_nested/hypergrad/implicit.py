"""Implicit hypergradients: the implicit function theorem at ``w_K``, solved by CG or a Neumann series.

Treating ``w_K`` as a stationary point of the stationary loss ``L`` (``∇_w L(w*, λ) = 0``),

    dF/dλ = ∂F/∂λ − (∂²L/∂λ∂w) H⁻¹ ∂F/∂w,        H = ∇²_w L(w_K, λ),

(Bengio 2000; Pedregosa 2016; Lorraine et al. 2020). ``H⁻¹v`` comes from Hessian-vector
products through ``torch.func`` (never a dense Hessian), and the inner loop runs under
``torch.no_grad``: memory and cost do not depend on the number of inner steps K.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from hrl_nested.hypergrad.unrolled import (
    InnerProblem,
    MethodOutput,
    check_scalar,
    zeros_for_none,
)
from hrl_nested.optim import Params
from hrl_nested.pytree import detach_tree

__all__ = ["conjugate_gradient", "implicit_hypergrad", "make_hvp", "neumann_series", "with_weight_decay"]

HVP = Callable[[Params], Params]


def _dot(a: Params, b: Params) -> Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def _axpy(alpha: Tensor | float, x: Params, y: Params) -> Params:
    """``alpha * x + y`` on dicts."""
    return {k: alpha * x[k] + y[k] for k in y}


def make_hvp(
    loss: Callable[[Params, Params], Tensor], params: Params, hparams: Params, mode: str = "vjp"
) -> HVP:
    r"""Hessian-vector products ``v ↦ ∇²_w L(w, λ) v`` at fixed ``(w, λ)``, without forming the Hessian.

    ``mode="vjp"`` (default): reverse-over-reverse, ``torch.func.vjp(torch.func.grad(L), w)``
    built once; each product is one backward pass through the kept graph of one gradient
    (``H`` is symmetric, so ``vᵀH = (Hv)ᵀ``). ``mode="jvp"``: forward-over-reverse,
    ``torch.func.jvp(torch.func.grad(L), (w,), (v,))``, which recomputes the gradient for
    every product and keeps nothing between products. Both hold memory for about one
    gradient; on the 99k-parameter MLP of ``experiments/bench_hypergrad.py`` (CPU) a
    ``vjp`` product took ~9 ms and a ``jvp`` product ~25 ms, hence the default.

    Args:
        loss: ``L(params, hparams) -> scalar``.
        params: ``w`` (detached is fine; no outer graph is built).
        hparams: ``λ``.
        mode: ``"vjp"`` or ``"jvp"``.

    Returns:
        A function from a dict shaped like ``params`` to ``H v`` of the same shape.

    Example:
        >>> L = lambda w, h: (h["a"] * w["x"] ** 2).sum() / 2
        >>> hvp = make_hvp(L, {"x": torch.ones(2)}, {"a": torch.tensor([1.0, 3.0])})
        >>> hvp({"x": torch.ones(2)})["x"]
        tensor([1., 3.])
    """
    w = detach_tree(params)
    lam = detach_tree(hparams)
    grad_w = torch.func.grad(lambda p: loss(p, lam))
    if mode == "jvp":
        return lambda v: torch.func.jvp(grad_w, (w,), (v,))[1]
    if mode == "vjp":
        _, vjp_fn = torch.func.vjp(grad_w, w)
        return lambda v: vjp_fn(v)[0]
    raise ValueError(f"hvp mode must be 'jvp' or 'vjp', got {mode!r}")


def conjugate_gradient(
    hvp: HVP, b: Params, *, iters: int, tol: float = 0.0, damping: float = 0.0
) -> tuple[Params, dict[str, Any]]:
    r"""Solve ``(H + δI) x = b`` by conjugate gradient (Hestenes & Stiefel, 1952) from ``x_0 = 0``.

    .. math::
        α_i = \frac{r_iᵀ r_i}{p_iᵀ (H + δI) p_i}, \quad x_{i+1} = x_i + α_i p_i, \quad
        r_{i+1} = r_i − α_i (H + δI) p_i, \quad p_{i+1} = r_{i+1} + \frac{r_{i+1}ᵀ r_{i+1}}{r_iᵀ r_i} p_i.

    For symmetric positive definite ``H`` in ``n`` dimensions it is exact after ``n``
    iterations (in exact arithmetic). It stops early when ``‖r‖ ≤ tol·‖b‖``, or on
    non-positive curvature ``pᵀ(H + δI)p ≤ 0`` (H not positive definite: raise ``damping``),
    returning the last iterate.

    Args:
        hvp: ``v ↦ H v`` on dicts.
        b: the right-hand side.
        iters: the maximum number of iterations (Hessian-vector products).
        tol: relative residual tolerance; 0 runs all ``iters``.
        damping: ``δ ≥ 0``, added to the diagonal.

    Returns:
        ``x`` and ``{"cg_iters", "cg_residual" (‖r‖/‖b‖), "cg_negative_curvature"}``.

    Example:
        >>> hvp = lambda v: {"x": torch.tensor([[2.0, 1.0], [1.0, 3.0]]) @ v["x"]}
        >>> x, _ = conjugate_gradient(hvp, {"x": torch.tensor([3.0, 4.0])}, iters=2)
        >>> torch.allclose(x["x"], torch.tensor([1.0, 1.0]))
        True
    """
    x = {k: torch.zeros_like(v) for k, v in b.items()}
    r = dict(b)
    p = dict(b)
    rs = _dot(r, r)
    b_norm = math.sqrt(rs.item())
    info: dict[str, Any] = {"cg_iters": 0, "cg_residual": 0.0, "cg_negative_curvature": False}
    if b_norm == 0.0:
        return x, info
    for i in range(iters):
        Hp = hvp(p)
        if damping:
            Hp = _axpy(damping, p, Hp)
        pHp = _dot(p, Hp)
        if pHp.item() <= 0.0:
            info["cg_negative_curvature"] = True
            break
        step = rs / pHp
        x = _axpy(step, p, x)
        r = _axpy(-step, Hp, r)
        rs_new = _dot(r, r)
        info["cg_iters"] = i + 1
        if tol > 0 and math.sqrt(rs_new.item()) <= tol * b_norm:
            rs = rs_new
            break
        p = _axpy(rs_new / rs, p, r)
        rs = rs_new
    info["cg_residual"] = math.sqrt(max(rs.item(), 0.0)) / b_norm
    return x, info


def neumann_series(hvp: HVP, b: Params, *, terms: int, alpha: float) -> Params:
    r"""Approximate ``H⁻¹ b`` by the truncated Neumann series (Lorraine et al., 2020).

    .. math::
        H^{-1} b \approx α \sum_{j=0}^{M-1} (I − αH)^j b = [I − (I − αH)^M] H^{-1} b,

    which converges for ``0 < α < 2/λ_max(H)``. With ``α`` the inner SGD step size it equals
    back-propagating through the last ``M`` inner steps at a stationary point. Costs ``M − 1``
    Hessian-vector products.

    Args:
        hvp: ``v ↦ H v`` on dicts.
        b: the vector ``b``.
        terms: ``M ≥ 1``.
        alpha: ``α > 0``.

    Returns:
        The approximation of ``H⁻¹ b``, shaped like ``b``.

    Example:
        >>> hvp = lambda v: {"x": 2.0 * v["x"]}
        >>> neumann_series(hvp, {"x": torch.tensor([1.0])}, terms=3, alpha=0.25)["x"]  # 0.25(1 + 0.5 + 0.25)
        tensor([0.4375])
    """
    term = dict(b)
    total = dict(b)
    for _ in range(terms - 1):
        term = _axpy(-alpha, hvp(term), term)
        total = {k: total[k] + term[k] for k in total}
    return {k: alpha * v for k, v in total.items()}


def with_weight_decay(
    loss: Callable[[Params, Params], Tensor], weight_decay: float | Tensor
) -> Callable[[Params, Params], Tensor]:
    r"""The loss whose stationary points are the fixed points of an update with coupled L2 weight decay.

    An update that follows ``g = \nabla_w L(w, λ) + wd\,w`` (SGD with or without momentum, Adam
    with ``torch.optim.Adam``'s coupled ``weight_decay``) stops where ``g = 0``, i.e. at a
    stationary point of

    .. math::
        L_{wd}(w, λ) = L(w, λ) + \frac{wd}{2} \sum_k \|w_k\|^2,

    whose Hessian is ``H + wd·I``; so the implicit function theorem gives
    ``dw*/dλ = −(H + wd·I)^{-1} ∂²L/∂w∂λ``. Decoupled (AdamW) decay has a different fixed point
    and does not fit this form. ``wd`` is a constant of the inner problem: a tensor is detached.

    Args:
        loss: ``L(params, hparams) -> scalar``.
        weight_decay: ``wd`` (a Python 0 returns ``loss`` itself).

    Returns:
        ``L_wd(params, hparams)``.

    Example:
        >>> L = lambda w, h: (w["x"] * h["a"]).sum()
        >>> with_weight_decay(L, 0.5)({"x": torch.tensor([2.0])}, {"a": torch.tensor([1.0])})
        tensor(3.)
    """
    if not isinstance(weight_decay, Tensor) and weight_decay == 0:
        return loss
    wd = weight_decay.detach() if isinstance(weight_decay, Tensor) else weight_decay

    def regularized(params: Params, hparams: Params) -> Tensor:
        return loss(params, hparams) + 0.5 * wd * sum((p * p).sum() for p in params.values())

    return regularized


def _no_path_error(name: str, lr_users: set[str], method: str) -> ValueError:
    if name in lr_users:
        why = (
            "it enters only through inner_lr, and the stationary point the implicit function theorem "
            "differentiates does not depend on the step size, so its implicit gradient is identically zero"
        )
    else:
        why = "it reaches neither the gradient of the stationary loss in params nor outer_loss directly"
    return ValueError(
        f"hypergrad(method={method!r}): hyperparameter {name!r} has no implicit gradient: {why}. "
        f"Use method='unrolled', 'truncated' or 'es' for it, or leave it out of hparams."
    )


def _outer_partials(
    outer_loss: Callable[[Params, Params], Tensor], w: Params, lam: Params
) -> tuple[Tensor, Params, dict[str, Tensor | None]]:
    """``F``, ``∂F/∂w`` (zeros where F ignores w) and ``∂F/∂λ`` (None where F ignores λ), one backward."""
    outer = check_scalar(outer_loss(w, lam), "outer_loss")
    n = len(w)
    if outer.requires_grad:
        raw = torch.autograd.grad(outer, [*w.values(), *lam.values()], allow_unused=True)
    else:
        raw = (None,) * (n + len(lam))
    return outer, dict(zip(w, zeros_for_none(raw[:n], w.values()))), dict(zip(lam, raw[n:]))


def _mixed_term(
    stationary_loss: Callable[[Params, Params], Tensor], w: Params, lam: Params, x: Params
) -> dict[str, Tensor | None]:
    """``∇_λ[(∇_w L(w, λ))ᵀ x]`` with ``x`` fixed; None for a λ that ``∇_w L`` does not depend on."""
    g = torch.autograd.grad(
        check_scalar(stationary_loss(w, lam), "stationary_loss"),
        list(w.values()),
        create_graph=True,
        allow_unused=True,
    )
    # Gradient entries that depend on neither w nor λ carry no second derivative.
    live = [(gi, x[k]) for gi, k in zip(g, w) if gi is not None and gi.requires_grad]
    if not live:
        return dict.fromkeys(lam)
    outputs, cotangents = [gi for gi, _ in live], [xi for _, xi in live]
    raw = torch.autograd.grad(outputs, list(lam.values()), cotangents, allow_unused=True)
    return dict(zip(lam, raw))


def implicit_hypergrad(
    problem: InnerProblem,
    hparams: Params,
    *,
    stationary_loss: Callable[[Params, Params], Tensor],
    solver: str,
    iters: int = 20,
    tol: float = 1e-10,
    damping: float = 0.0,
    terms: int = 20,
    alpha: float = 0.01,
    hvp: str = "vjp",
    lr_users: set[str] | frozenset[str] = frozenset(),
) -> MethodOutput:
    r"""Implicit-function-theorem hypergradient at ``w_K`` (``solver="cg"`` or ``"neumann"``).

    .. math::
        \frac{dF}{dλ} = \frac{\partial F}{\partial λ}
        − \frac{\partial^2 L}{\partial λ \partial w} H^{-1} \frac{\partial F}{\partial w},
        \qquad H = \nabla^2_w L(w_K, λ).

    The K inner steps run detached; then ``v = ∂F/∂w`` and the direct term ``∂F/∂λ`` by one
    backward pass, ``x ≈ H⁻¹v`` by :func:`conjugate_gradient` or :func:`neumann_series`, and
    the mixed term ``∇_λ[(∇_w L)ᵀ x]`` by one double-backward with ``x`` held fixed. For the
    quadratic ``L = ½wᵀAw − wᵀ(Bλ + c)`` this is ``∂F/∂λ + BᵀA⁻¹ ∂F/∂w``.

    Args:
        problem: the inner problem (see :class:`~hrl_nested.hypergrad.unrolled.InnerProblem`).
        hparams: ``λ``.
        stationary_loss: ``L(params, hparams)``, the loss ``w_K`` is taken to be stationary for
            (used as given: for an inner optimizer with weight decay, wrap the loss in
            :func:`with_weight_decay`, as :func:`~hrl_nested.hypergrad.hypergrad` does by default).
        solver: ``"cg"`` or ``"neumann"``.
        iters, tol, damping: :func:`conjugate_gradient` options.
        terms, alpha: :func:`neumann_series` options.
        hvp: :func:`make_hvp` mode.
        lr_users: names of hparams the inner step size depends on (for a precise error).

    Returns:
        A :class:`~hrl_nested.hypergrad.unrolled.MethodOutput`.

    Raises:
        ValueError: a hyperparameter reaches neither ``∇_w L`` nor ``F`` (e.g. one that enters
            only through the inner learning rate): its implicit gradient would be a silent zero.

    Example:
        >>> from hrl_nested.optim import sgd
        >>> L = lambda w, h: ((w["x"] - h["c"]) ** 2).sum()  # w* = c
        >>> loss, outer = (lambda w, h, t: L(w, h)), (lambda w, h: w["x"].sum())
        >>> prob = InnerProblem.with_optimizer(loss, outer, {"x": torch.zeros(1)}, sgd(0.25), inner_steps=2)
        >>> implicit_hypergrad(prob, {"c": torch.ones(1)}, stationary_loss=L, solver="cg").grads["c"]
        tensor([1.])
    """
    hp0 = detach_tree(hparams)
    with torch.no_grad():
        w_K, state = problem.run(hp0)
    w_K, state = detach_tree(w_K), detach_tree(state)
    w = {k: v.clone().requires_grad_() for k, v in w_K.items()}
    lam = {k: v.clone().requires_grad_() for k, v in hp0.items()}
    outer, v, direct = _outer_partials(problem.outer_loss, w, lam)

    op = make_hvp(stationary_loss, w_K, hp0, mode=hvp)
    if solver == "cg":
        x, info = conjugate_gradient(op, v, iters=iters, tol=tol, damping=damping)
        if info["cg_negative_curvature"]:
            warnings.warn(
                f"hypergrad(method='cg'): non-positive curvature after {info['cg_iters']} CG iterations; "
                "the Hessian of the stationary loss is not positive definite at params_K (raise damping)",
                RuntimeWarning,
                stacklevel=3,
            )
    elif solver == "neumann":
        x = neumann_series(op, v, terms=terms, alpha=alpha)
        info = {"neumann_terms": terms, "alpha": alpha}
    else:
        raise ValueError(f"solver must be 'cg' or 'neumann', got {solver!r}")

    mixed = _mixed_term(stationary_loss, w, lam, x)
    grads = {}
    for k, lam_k in lam.items():
        if direct[k] is None and mixed[k] is None:
            raise _no_path_error(k, set(lr_users), solver)
        d = torch.zeros_like(lam_k) if direct[k] is None else direct[k]
        grads[k] = d if mixed[k] is None else d - mixed[k]
    return MethodOutput(w_K, state, outer.detach(), detach_tree(grads), info)
