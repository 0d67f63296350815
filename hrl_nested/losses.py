"""PPO losses and diagnostics (Schulman et al. 2017, "Proximal policy optimization algorithms").

Pure functions of same-shaped tensors (any shape: ``(B,)`` minibatches or ``(T, N)`` batches),
differentiable in every input that requires grad; each returns a scalar mean.
"""

from __future__ import annotations

import torch


def _check_same(**tensors: torch.Tensor) -> None:
    items = list(tensors.items())
    name0, t0 = items[0]
    for name, t in items[1:]:
        if tuple(t.shape) != tuple(t0.shape):
            raise ValueError(f"{name}: expected shape {tuple(t0.shape)} like {name0}, got {tuple(t.shape)}")


def ppo_clip_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, clip_coef: float | torch.Tensor
) -> torch.Tensor:
    """The PPO clipped surrogate, to be minimized (eq. 7 of Schulman et al. 2017, negated).

    .. math::

        L = -\\operatorname{mean} \\min(\\rho A, \\operatorname{clip}(\\rho, 1 - \\epsilon, 1 + \\epsilon) A),
        \\qquad \\rho = \\exp(\\log\\pi - \\log\\pi_\\text{old})

    Args:
        logp: log-probs under the current policy.
        old_logp: log-probs under the behaviour policy (treated as data: detach it).
        adv: advantages (normalize them beforehand if you want to).
        clip_coef: ``epsilon``.

    >>> z = torch.zeros(3)
    >>> ppo_clip_loss(z, z, torch.tensor([1.0, -2.0, 4.0]), 0.2).item()  # ratio 1: -mean(A)
    -1.0
    """
    _check_same(logp=logp, old_logp=old_logp, adv=adv)
    ratio = (logp - old_logp).exp()
    surr = ratio * adv
    surr_clipped = ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef) * adv
    return -torch.minimum(surr, surr_clipped).mean()


def value_loss(
    v: torch.Tensor, v_old: torch.Tensor, ret: torch.Tensor, clip_coef: float | torch.Tensor | None = None
) -> torch.Tensor:
    """``0.5 * mean((v - ret)^2)``; with ``clip_coef``, PPO2's pessimistic clipped version.

    .. math::

        L = 0.5 \\operatorname{mean} \\max((v - R)^2, (v_\\text{old} + \\operatorname{clip}(v - v_\\text{old},
        -\\epsilon, \\epsilon) - R)^2)

    Args:
        v: values under the current critic.
        v_old: values under the behaviour critic (used only when clipping).
        ret: value targets (e.g. GAE returns).
        clip_coef: ``epsilon`` or None for no clipping.

    >>> value_loss(torch.tensor([1.0, 3.0]), torch.zeros(2), torch.tensor([0.0, 1.0])).item()
    1.25
    """
    _check_same(v=v, v_old=v_old, ret=ret)
    if clip_coef is None:
        return 0.5 * (v - ret).square().mean()
    v_clipped = v_old + (v - v_old).clamp(-clip_coef, clip_coef)
    return 0.5 * torch.maximum((v - ret).square(), (v_clipped - ret).square()).mean()


def approx_kl(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """The low-variance estimator ``mean((rho - 1) - log rho)`` of ``KL(pi_old || pi)`` (J. Schulman,
    "Approximating KL divergence", 2020).

    >>> round(approx_kl(torch.tensor([0.0]), torch.tensor([-1.0])).item(), 4)  # e - 1 - 1
    0.7183
    """
    _check_same(logp=logp, old_logp=old_logp)
    log_ratio = logp - old_logp
    return (log_ratio.exp() - 1.0 - log_ratio).mean()


def clip_fraction(
    logp: torch.Tensor, old_logp: torch.Tensor, clip_coef: float | torch.Tensor
) -> torch.Tensor:
    """Fraction of samples whose ratio left ``[1 - eps, 1 + eps]``: ``mean(|rho - 1| > eps)``.

    >>> clip_fraction(torch.tensor([0.0, 0.5]), torch.zeros(2), 0.2).item()
    0.5
    """
    _check_same(logp=logp, old_logp=old_logp)
    return ((logp - old_logp).exp().sub(1.0).abs() > clip_coef).to(logp.dtype).mean()


def entropy_loss(entropy: torch.Tensor) -> torch.Tensor:
    """``-mean(entropy)``: add ``ent_coef * entropy_loss(...)`` to the loss for an entropy bonus.

    >>> entropy_loss(torch.tensor([1.0, 3.0])).item()
    -2.0
    """
    return -entropy.mean()
