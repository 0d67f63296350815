"""Returns and advantages over a time-major ``(T, N)`` batch.

Termination and truncation are kept apart: ``terminated_t`` means ``o_{t+1}`` is terminal (its value
is zero, no bootstrap); ``truncated_t`` means the episode was cut by a time limit, so the target
bootstraps with ``v_tp1 = V(o_{t+1})``, the value of the true final observation. Either one cuts the
eligibility trace, so nothing leaks across an episode boundary.

Everything is a plain differentiable function of tensors: gradients flow to the rewards (shaped
rewards carry the meta-gradient), to ``gamma`` / ``lam`` when they are tensors, and to the values
unless the caller detaches them.
"""

from __future__ import annotations

import torch

Scalar = float | torch.Tensor


def _check(r_t: torch.Tensor, terminated_t: torch.Tensor, truncated_t: torch.Tensor, **vals) -> None:
    if r_t.dim() != 2:
        raise ValueError(f"r_t: expected shape (T, N), got {tuple(r_t.shape)}")
    if not r_t.is_floating_point():
        raise ValueError(f"r_t: expected a floating-point tensor, got {r_t.dtype}")
    for name, t in {"terminated_t": terminated_t, "truncated_t": truncated_t, **vals}.items():
        if tuple(t.shape) != tuple(r_t.shape):
            raise ValueError(f"{name}: expected shape {tuple(r_t.shape)} like r_t, got {tuple(t.shape)}")
    for name, t in (("terminated_t", terminated_t), ("truncated_t", truncated_t)):
        if t.dtype != torch.bool:
            raise ValueError(f"{name}: expected a bool tensor, got {t.dtype}")


def gae(
    r_t: torch.Tensor,
    v_t: torch.Tensor,
    v_tp1: torch.Tensor,
    terminated_t: torch.Tensor,
    truncated_t: torch.Tensor,
    gamma: Scalar,
    lam: Scalar,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, "High-dimensional continuous control
    using generalized advantage estimation"), with termination and truncation kept apart.

    .. math::

        \\delta_t = r_t + \\gamma (1 - \\text{terminated}_t) v_{t+1} - v_t, \\qquad
        A_t = \\delta_t + \\gamma \\lambda (1 - \\text{done}_t) A_{t+1}, \\qquad
        R_t = A_t + v_t

    with ``done_t = terminated_t | truncated_t`` and ``A_T = 0``. ``v_tp1[t]`` is ``V(o_{t+1})`` of the
    *true* next observation (at a truncation, the final observation, not the reset one), so a time
    limit bootstraps and a termination does not.

    Args:
        r_t: ``(T, N)`` rewards.
        v_t: ``(T, N)`` ``V(o_t)``.
        v_tp1: ``(T, N)`` ``V(o_{t+1})`` of the true next observation.
        terminated_t: ``(T, N)`` bool.
        truncated_t: ``(T, N)`` bool.
        gamma: discount, a float or a tensor (differentiable).
        lam: GAE lambda, a float or a tensor (differentiable).

    Returns:
        ``(adv_t, ret_t)``, both ``(T, N)``: advantages and the value targets ``adv_t + v_t``.

    >>> r = torch.tensor([[1.0], [1.0]]); v = torch.zeros(2, 1); f = torch.zeros(2, 1, dtype=torch.bool)
    >>> adv, ret = gae(r, v, torch.ones(2, 1), f, f, gamma=0.5, lam=1.0)
    >>> adv.squeeze(-1).tolist()  # delta_t = 1 + 0.5 * 1 - 0; A_1 = delta_1; A_0 = delta_0 + 0.5 * A_1
    [2.25, 1.5]
    """
    _check(r_t, terminated_t, truncated_t, v_t=v_t, v_tp1=v_tp1)
    not_term = (~terminated_t).to(r_t.dtype)
    not_done = (~(terminated_t | truncated_t)).to(r_t.dtype)
    delta_t = r_t + gamma * not_term * v_tp1 - v_t
    trace_t = gamma * lam * not_done
    adv_tp1 = torch.zeros_like(delta_t[0])
    advs: list[torch.Tensor] = []
    for t in range(r_t.shape[0] - 1, -1, -1):  # T is static: unrolls under torch.compile
        adv_tp1 = delta_t[t] + trace_t[t] * adv_tp1
        advs.append(adv_tp1)
    adv_t = torch.stack(advs[::-1])
    return adv_t, adv_t + v_t


def discounted_returns(
    r_t: torch.Tensor,
    terminated_t: torch.Tensor,
    truncated_t: torch.Tensor,
    v_tp1: torch.Tensor,
    gamma: Scalar,
) -> torch.Tensor:
    """Bootstrapped discounted returns, the ``lam = 1`` case of `gae`.

    .. math::

        G_t = r_t + \\gamma \\begin{cases} 0 & \\text{terminated}_t \\\\ v_{t+1} & \\text{truncated}_t
        \\text{ or } t = T - 1 \\\\ G_{t+1} & \\text{otherwise} \\end{cases}

    Equals ``gae(..., lam=1)[1]`` whenever ``v_tp1[t] == v_t[t + 1]`` inside episodes.

    Args:
        r_t: ``(T, N)`` rewards.
        terminated_t: ``(T, N)`` bool.
        truncated_t: ``(T, N)`` bool.
        v_tp1: ``(T, N)`` ``V(o_{t+1})``; used at truncations and at the last step only.
        gamma: discount, a float or a tensor.

    Returns:
        ``(T, N)`` returns ``G_t``.

    >>> r = torch.ones(3, 1); f = torch.zeros(3, 1, dtype=torch.bool)
    >>> discounted_returns(r, f, f, torch.zeros(3, 1), gamma=0.5).squeeze(-1).tolist()
    [1.75, 1.5, 1.0]
    """
    _check(r_t, terminated_t, truncated_t, v_tp1=v_tp1)
    zero = torch.zeros_like(v_tp1[0])
    g_tp1 = v_tp1[-1]
    rets: list[torch.Tensor] = []
    for t in range(r_t.shape[0] - 1, -1, -1):
        boot = torch.where(truncated_t[t], v_tp1[t], g_tp1)
        boot = torch.where(terminated_t[t], zero, boot)
        g_tp1 = r_t[t] + gamma * boot
        rets.append(g_tp1)
    return torch.stack(rets[::-1])
