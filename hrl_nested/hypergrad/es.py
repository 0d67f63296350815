"""Evolution-strategies hypergradients: antithetic Gaussian smoothing of ``λ ↦ F(w_K(λ), λ)``.

No derivative of the inner loop is taken, so it applies where the inner loop is not
differentiable or too long to unroll, at the price of variance. The ``2S`` perturbed inner
runs are one ``torch.func.vmap`` over stacked hyperparameters; a plain loop is the fallback
only when the losses cannot be vmapped (``.item()``, data-dependent control flow, ...).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from hrl_nested.hypergrad.unrolled import InnerProblem, MethodOutput, check_scalar
from hrl_nested.optim import Params
from hrl_nested.pytree import detach_tree

__all__ = ["es_hypergrad", "es_noise"]


def es_noise(
    hparams: Params, samples: int, *, seed: int | None = None, generator: torch.Generator | None = None
) -> Params:
    """Standard normal directions ``ε_i``, ``i < samples``, one stacked tensor per hyperparameter.

    With ``seed``, the draws come from a fresh CPU generator in float64 and are cast to the
    hparams' device and dtype, so a seed gives the same directions on every device and in
    every precision. With ``generator``, they are drawn on that generator's device. With
    neither, from torch's global generator.

    Example:
        >>> es_noise({"a": torch.zeros(3)}, samples=4, seed=0)["a"].shape
        torch.Size([4, 3])
    """
    if seed is not None and generator is not None:
        raise ValueError("es: pass seed or generator, not both")
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    noise = {}
    for k, v in hparams.items():
        device = generator.device if generator is not None else v.device
        dtype = torch.float64 if seed is not None else v.dtype
        eps = torch.randn((samples, *v.shape), generator=generator, dtype=dtype, device=device)
        noise[k] = eps.to(device=v.device, dtype=v.dtype)
    return noise


def es_hypergrad(
    problem: InnerProblem,
    hparams: Params,
    *,
    samples: int = 16,
    sigma: float = 0.01,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    vectorize: bool = True,
) -> MethodOutput:
    r"""Antithetic evolution-strategies estimate of ``dF/dλ`` (Salimans et al., 2017).

    With ``f(λ) = F(w_K(λ), λ)`` (K inner steps run from ``w_0`` with hyperparameters ``λ``):

    .. math::
        \hat g = \frac{1}{2σS} \sum_{i=1}^{S} \big[f(λ + σε_i) − f(λ − σε_i)\big] ε_i,
        \qquad ε_i \sim \mathcal N(0, I),

    an unbiased estimate of the gradient of the Gaussian smoothing ``E_ε f(λ + σε)``; for ``f``
    quadratic in ``λ`` (a quadratic inner problem under SGD) it is unbiased for ``∇f`` itself,
    at any ``σ``. The direct dependence of ``F`` on ``λ`` is included by construction.

    Args:
        problem: the inner problem (see :class:`~hrl_nested.hypergrad.unrolled.InnerProblem`).
        hparams: ``λ``.
        samples: ``S``, the number of antithetic pairs (``2S`` perturbed inner runs).
        sigma: ``σ > 0``, the perturbation scale, in the units of the hparams.
        seed: seed of the directions (see :func:`es_noise`).
        generator: a ``torch.Generator`` for the directions, instead of ``seed``.
        chunk_size: ``torch.func.vmap``'s ``chunk_size`` (runs at once; None: all ``2S``).
        vectorize: False forces the sequential loop.

    Returns:
        A :class:`~hrl_nested.hypergrad.unrolled.MethodOutput` whose params, state and outer
        loss come from the unperturbed run; ``info["es_vectorized"]`` says whether vmap ran.

    Example:
        >>> from hrl_nested.optim import sgd
        >>> loss = lambda w, h, t: ((w["x"] - h["c"]) ** 2).sum()  # one step of 0.5 lands on w = c
        >>> outer = lambda w, h: w["x"].sum()
        >>> prob = InnerProblem.with_optimizer(loss, outer, {"x": torch.zeros(1)}, sgd(0.5), inner_steps=1)
        >>> res = es_hypergrad(prob, {"c": torch.ones(1)}, samples=2000, sigma=0.1, seed=0)
        >>> round(res.grads["c"].item(), 1)  # f(c) = c: the estimate is mean(ε²), unbiased for 1
        1.0
    """
    hp = detach_tree(hparams)

    def objective(h: Params) -> Tensor:
        return check_scalar(problem.outer_loss(problem.run(h)[0], h), "outer_loss")

    with torch.no_grad():
        w_K, state = problem.run(hp)
        outer = check_scalar(problem.outer_loss(w_K, hp), "outer_loss")

        eps = es_noise(hp, samples, seed=seed, generator=generator)
        stacked = {k: torch.cat([v + sigma * eps[k], v - sigma * eps[k]]) for k, v in hp.items()}
        values, vectorized = None, False
        if vectorize:
            try:
                values = torch.func.vmap(objective, chunk_size=chunk_size)(stacked)
                vectorized = True
            except Exception as err:  # the loop below re-raises anything that is not vmap's
                warnings.warn(
                    f"hypergrad(method='es'): the losses could not be vmapped ({type(err).__name__}: "
                    f"{str(err).splitlines()[0] if str(err) else ''}); running the {2 * samples} "
                    "perturbed inner runs in a loop",
                    RuntimeWarning,
                    stacklevel=3,
                )
        if values is None:
            values = torch.stack(
                [objective({k: v[i] for k, v in stacked.items()}) for i in range(2 * samples)]
            )

        diff = values[:samples] - values[samples:]
        grads = {}
        for k, e in eps.items():
            weights = diff.to(e.dtype).reshape(samples, *([1] * (e.dim() - 1)))
            grads[k] = (weights * e).sum(0) / (2 * sigma * samples)
    info = {"es_vectorized": vectorized, "es_samples": samples, "sigma": sigma}
    return MethodOutput(detach_tree(w_K), detach_tree(state), outer.detach(), grads, info)
