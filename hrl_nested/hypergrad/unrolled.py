"""The inner loop, and hypergradients by differentiating through it (unrolled and truncated).

Every estimator runs the same inner loop, :meth:`InnerProblem.run`: K steps of a differentiable
optimizer from :mod:`hrl_nested.optim` on ``inner_loss(params, hparams, step)``. Here it is either kept
on the autograd tape (reverse-mode through the whole or the last ``T`` steps), or run
detached under ``torch.no_grad`` so that memory does not grow with K.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from hrl_nested.optim import Optimizer, Params
from hrl_nested.pytree import detach_tree

__all__ = [
    "InnerProblem",
    "MethodOutput",
    "check_scalar",
    "detach_tree",
    "run_inner",
    "unrolled_hypergrad",
    "zeros_for_none",
]

StepLoss = Callable[[Params, Params, int], Tensor]
OuterLoss = Callable[[Params, Params], Tensor]


class InnerProblem(NamedTuple):
    """An inner optimization problem, normalized by :func:`hrl_nested.hypergrad.hypergrad`.

    Attributes:
        loss_t: the inner loss with an explicit step index, ``loss_t(params, hparams, t)``.
        outer_loss: ``outer_loss(params, hparams)``, to be minimized.
        make_opt: builds the inner optimizer from the hparams (the step size may depend on them).
        params: the inner starting point ``w_0`` (detached).
        opt_state: the optimizer state at ``w_0`` (detached), or None for ``init(w_0)``.
        inner_steps: the number K of inner steps.
    """

    loss_t: StepLoss
    outer_loss: OuterLoss
    make_opt: Callable[[Params], Optimizer]
    params: Params
    opt_state: Any
    inner_steps: int

    @classmethod
    def with_optimizer(
        cls, loss_t: StepLoss, outer_loss: OuterLoss, params: Params, opt: Optimizer, *, inner_steps: int
    ) -> InnerProblem:
        """A problem whose inner optimizer does not depend on the hparams, started from ``opt.init``."""
        return cls(loss_t, outer_loss, lambda h: opt, params, None, inner_steps)

    def run(
        self, hparams: Params, steps: Iterable[int] | None = None, start: tuple[Params, Any] | None = None
    ) -> tuple[Params, Any]:
        """The inner loop at ``hparams`` (:func:`run_inner` with the optimizer built there).

        Args:
            hparams: ``λ``.
            steps: the step indices to run; None: all of them, ``range(inner_steps)``.
            start: ``(params, opt_state)`` to start from; None: ``(self.params, self.opt_state)``.

        Returns:
            The params and optimizer state after the steps.
        """
        params, state = (self.params, self.opt_state) if start is None else start
        steps = range(self.inner_steps) if steps is None else steps
        return run_inner(self.loss_t, self.make_opt(hparams), params, state, hparams, steps)


class MethodOutput(NamedTuple):
    """What one estimator returns: ``w_K``, the state after K steps, ``F(w_K, λ)``, ``dF/dλ``, diagnostics."""

    params: Params
    opt_state: Any
    outer_loss: Tensor
    grads: Params
    info: dict[str, Any]


def zeros_for_none(grads: Iterable[Tensor | None], like: Iterable[Tensor]) -> list[Tensor]:
    """Replace the ``None`` that ``torch.autograd.grad(..., allow_unused=True)`` gives by zeros."""
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, like)]


def check_scalar(value: Tensor, what: str) -> Tensor:
    """The losses must be scalar tensors; say which one is not."""
    if not isinstance(value, Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{what} must return a scalar Tensor, got {shape}")
    return value.reshape(())


def run_inner(
    loss_t: StepLoss,
    opt: Optimizer,
    params: Params,
    state: Any,
    hparams: Params,
    steps: Iterable[int],
) -> tuple[Params, Any]:
    r"""Run inner optimizer steps ``w_{t+1}, s_{t+1} = update(\nabla_w L(w_t, λ, t), s_t, w_t)``.

    The gradient comes from ``torch.func.grad``, so the loop composes with an outer autograd
    tape (unrolled differentiation), with ``torch.func.vmap`` (batched ES runs), and with
    ``torch.no_grad`` (detached runs: ``torch.func.grad`` still differentiates inside).

    Args:
        loss_t: inner loss ``loss_t(params, hparams, t) -> scalar``.
        opt: the differentiable optimizer.
        params: ``w_{t_0}``.
        state: the optimizer state at ``w_{t_0}``.
        hparams: ``λ``.
        steps: the step indices ``t`` to run, e.g. ``range(K)``.

    Returns:
        The params and optimizer state after the steps.

    Example:
        >>> from hrl_nested.optim import sgd
        >>> loss = lambda w, h, t: ((w["x"] - h["c"]) ** 2).sum()
        >>> w, s = run_inner(loss, sgd(0.25), {"x": torch.zeros(1)}, None, {"c": torch.ones(1)}, range(2))
        >>> w["x"]
        tensor([0.7500])
    """
    if state is None:
        state = opt.init(params)
    grad_fn = torch.func.grad(loss_t)
    for t in steps:
        params, state = opt.update(grad_fn(params, hparams, t), state, params)
    return params, state


def unrolled_hypergrad(
    problem: InnerProblem, hparams: Params, *, truncate: int | None = None
) -> MethodOutput:
    r"""Reverse-mode hypergradient through the last ``T`` of the K inner steps.

    With ``w_{t+1} = Φ_t(w_t, λ)`` the inner optimizer step and ``F`` the outer loss,

    .. math::
        \frac{dF}{dλ} \approx \frac{\partial F}{\partial λ}(w_K, λ)
        + \sum_{t=K-T}^{K-1} \Big(\frac{\partial F}{\partial w_K}\Big)^{\!\top}
          \Big(\prod_{s=t+1}^{K-1} \frac{\partial Φ_s}{\partial w_s}\Big) \frac{\partial Φ_t}{\partial λ},

    exact for ``T = K`` (``truncate=None``: unrolled, Maclaurin et al. 2015; Franceschi et
    al. 2017) and the truncated back-propagation of Shaban et al. (2019) for ``T < K``, where
    ``w_{K-T}`` (and the optimizer state there) is treated as a constant. The first ``K - T``
    steps run under ``torch.no_grad``, so memory grows with ``T``, not with K. For SGD on
    ``½wᵀAw − wᵀ(Bλ + c)`` this is ``Bᵀ[I − (I − αA)^T]A⁻¹ ∂F/∂w_K``.

    Args:
        problem: the inner problem (see :class:`InnerProblem`).
        hparams: ``λ``.
        truncate: ``T``; None (or ``T >= K``) back-propagates through all K steps.

    Returns:
        A :class:`MethodOutput`; ``info["truncate"]`` holds the T used.

    Example:
        >>> from hrl_nested.optim import sgd
        >>> loss = lambda w, h, t: ((w["x"] - h["c"]) ** 2).sum()
        >>> outer = lambda w, h: w["x"].sum()
        >>> prob = InnerProblem.with_optimizer(loss, outer, {"x": torch.zeros(1)}, sgd(0.25), inner_steps=2)
        >>> unrolled_hypergrad(prob, {"c": torch.ones(1)}).grads["c"]  # 1 - (1 - 2 * 0.25) ** 2
        tensor([0.7500])
    """
    K = problem.inner_steps
    T = K if truncate is None else min(truncate, K)
    hp = {k: v.detach().requires_grad_() for k, v in hparams.items()}
    with torch.no_grad():
        w, state = problem.run(hp, range(K - T))
    # The optimizer is rebuilt with the tape on: a step size that depends on λ enters the graph here.
    w, state = problem.run(hp, range(K - T, K), start=(detach_tree(w), detach_tree(state)))
    outer = check_scalar(problem.outer_loss(w, hp), "outer_loss")
    if outer.requires_grad:
        raw = torch.autograd.grad(outer, list(hp.values()), allow_unused=True)
    else:  # λ reaches neither the inner steps kept on the tape nor F
        raw = [None] * len(hp)
    grads = dict(zip(hp, zeros_for_none(raw, hp.values())))
    return MethodOutput(detach_tree(w), detach_tree(state), outer.detach(), grads, {"truncate": T})
