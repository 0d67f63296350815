"""Goal segments and the manager's SMDP transitions over a time-major ``(T, N)`` batch.

A manager picks a subgoal ``g`` at a segment's start; the segment ends

- after ``horizon`` steps (``step_t + 1 >= horizon``, with ``step_t`` the step's index in its segment),
- when the subgoal is reached (``||ag(s_{t+1}) - g|| <= tolerance``, in goal space), or
- when the episode ends (terminated or truncated).

That end is a *third* signal, kept apart from ``terminated`` and ``truncated`` (`SegmentEnds`): a
segment end is no episode end, and only a termination stops bootstrapping. For the manager each
segment is one semi-Markov transition (Sutton, Precup & Singh 1999, "Between MDPs and semi-MDPs"):

.. math::

    R = \\sum_{i < L} γ^i r^\\text{ext}_{t_0 + i}, \\qquad \\text{discount} = γ^L, \\qquad
    \\text{terminated} = \\text{the episode terminated inside the segment},

bootstrapped with ``V(s_{t_0 + L})`` on truncation and at a plain segment end. Segments cross rollout
boundaries: the running return of the segment still open at a batch's end is returned, to be carried
into the next batch (the rollout carry holds the segment's start, goal, and ``step``).

Everything is masks over ``(T, N)`` tensors (no host sync, static shapes), so it runs on a GPU as is.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "SMDPTransitions",
    "SegmentEnds",
    "segment_ends",
    "smdp_gae",
    "smdp_transitions",
    "subgoal_reached",
]


class SegmentEnds(NamedTuple):
    """Why a goal segment ended at step ``t`` (``(T, N)`` bool each); the three may overlap.

    Attributes:
        horizon: the segment reached ``goal_horizon`` steps.
        reached: ``s_{t+1}`` is within ``goal_tolerance`` of the subgoal.
        episode: the episode ended at ``t`` (``terminated | truncated``).
    """

    horizon: torch.Tensor
    reached: torch.Tensor
    episode: torch.Tensor

    @property
    def any(self) -> torch.Tensor:
        """The segment-end signal: any of the three."""
        return self.horizon | self.reached | self.episode


def subgoal_reached(ag: torch.Tensor, g: torch.Tensor, tolerance: float) -> torch.Tensor:
    """``||ag - g||_2 <= tolerance`` over the last dim (the goal dims).

    >>> subgoal_reached(torch.tensor([[0.0, 0.1]]), torch.zeros(1, 2), 0.1).tolist()
    [True]
    """
    if ag.shape != g.shape:
        raise ValueError(f"g: expected shape {tuple(ag.shape)} like ag, got {tuple(g.shape)}")
    return torch.linalg.vector_norm(ag - g, dim=-1) <= tolerance


def segment_ends(
    step_t: torch.Tensor,
    goal_t: torch.Tensor,
    ag_tp1: torch.Tensor,
    terminated_t: torch.Tensor,
    truncated_t: torch.Tensor,
    *,
    horizon: int,
    tolerance: float,
) -> SegmentEnds:
    """Where segments end in a ``(T, N)`` batch, and why.

    Args:
        step_t: ``(T, N)`` int, the index of step ``t`` in its segment (0 at a segment's first step).
        goal_t: ``(T, N, d)`` the subgoal step ``t`` was taken for.
        ag_tp1: ``(T, N, d)`` achieved goal of the true next observation (``next_obs``).
        terminated_t, truncated_t: ``(T, N)`` bool episode ends.
        horizon: ``goal_horizon``, the longest segment.
        tolerance: ``goal_tolerance``, in goal-space units.

    Returns:
        `SegmentEnds`.

    >>> z = torch.zeros(2, 1, dtype=torch.bool)
    >>> ends = segment_ends(torch.tensor([[0], [1]]), torch.zeros(2, 1, 1), torch.ones(2, 1, 1), z, z,
    ...                     horizon=2, tolerance=0.5)
    >>> ends.horizon.squeeze(-1).tolist(), ends.reached.any().item()
    ([False, True], False)
    """
    if step_t.dim() != 2:
        raise ValueError(f"step_t: expected shape (T, N), got {tuple(step_t.shape)}")
    for name, t in (("terminated_t", terminated_t), ("truncated_t", truncated_t)):
        if t.shape != step_t.shape or t.dtype != torch.bool:
            raise ValueError(
                f"{name}: expected a bool {tuple(step_t.shape)} tensor, got {t.dtype} {tuple(t.shape)}"
            )
    if goal_t.shape[:2] != step_t.shape:
        raise ValueError(f"goal_t: expected leading dims {tuple(step_t.shape)}, got {tuple(goal_t.shape)}")
    return SegmentEnds(
        horizon=step_t + 1 >= horizon,
        reached=subgoal_reached(ag_tp1, goal_t, tolerance),
        episode=terminated_t | truncated_t,
    )


class SMDPTransitions(NamedTuple):
    """The manager's transitions, one per segment that ended, laid out on the ``(T, N)`` grid.

    Attributes:
        mask: ``(T, N)`` bool, a segment ended at ``t`` (its transition sits there).
        reward: ``(T, N)`` ``Σ_{i<L} γ^i r_ext`` of the segment ending at ``t`` (0 where no end).
        discount: ``(T, N)`` ``γ^L``.
        length: ``(T, N)`` int64 ``L``.
        terminated: ``(T, N)`` bool, the episode terminated at the segment's end (no bootstrap).
    """

    mask: torch.Tensor
    reward: torch.Tensor
    discount: torch.Tensor
    length: torch.Tensor
    terminated: torch.Tensor


def smdp_transitions(
    r_t: torch.Tensor,
    step_t: torch.Tensor,
    seg_end_t: torch.Tensor,
    terminated_t: torch.Tensor,
    gamma: float,
    open_return: torch.Tensor,
) -> tuple[SMDPTransitions, torch.Tensor]:
    """The SMDP transitions of the segments that ended in this batch, and the open segments' returns.

    A forward scan: ``acc_t = [step_t > 0] acc_{t-1} + γ^{step_t} r_t`` with ``acc_{-1} = open_return``
    (the running return carried from the previous batch for a segment still open at its end).

    Args:
        r_t: ``(T, N)`` extrinsic rewards.
        step_t: ``(T, N)`` int, index of step ``t`` in its segment.
        seg_end_t: ``(T, N)`` bool, `SegmentEnds.any`.
        terminated_t: ``(T, N)`` bool.
        gamma: the manager's discount.
        open_return: ``(N,)`` running ``Σ γ^i r_ext`` of the segment open before ``t = 0``.

    Returns:
        ``(transitions, open_return_T)``: `SMDPTransitions` and the ``(N,)`` running return to carry
        (0 where the last step ended its segment).
    """
    if r_t.dim() != 2 or step_t.shape != r_t.shape or seg_end_t.shape != r_t.shape:
        raise ValueError(
            f"r_t, step_t, seg_end_t: expected one (T, N) shape, got {tuple(r_t.shape)}, "
            f"{tuple(step_t.shape)}, {tuple(seg_end_t.shape)}"
        )
    if open_return.shape != r_t.shape[1:]:
        raise ValueError(
            f"open_return: expected shape {tuple(r_t.shape[1:])}, got {tuple(open_return.shape)}"
        )
    acc = open_return.to(r_t.dtype)
    rets = []
    for t in range(r_t.shape[0]):  # T is static: no data-dependent branch
        acc = (
            torch.where(step_t[t] > 0, acc, torch.zeros_like(acc)) + gamma ** step_t[t].to(r_t.dtype) * r_t[t]
        )
        rets.append(acc)
    acc_t = torch.stack(rets)
    length = step_t.to(torch.int64) + 1
    zero = torch.zeros_like(acc_t)
    out = SMDPTransitions(
        mask=seg_end_t,
        reward=torch.where(seg_end_t, acc_t, zero),
        discount=torch.where(seg_end_t, gamma ** length.to(r_t.dtype), zero),
        length=torch.where(seg_end_t, length, torch.zeros_like(length)),
        terminated=seg_end_t & terminated_t,
    )
    return out, torch.where(seg_end_t[-1], zero[-1], acc_t[-1])


def smdp_gae(
    tr: SMDPTransitions,
    episode_end_t: torch.Tensor,
    v_start: torch.Tensor,
    v_next: torch.Tensor,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over each env's chain of segments (Schulman et al. 2016, in SMDP time).

    .. math::

        δ = R + γ^L (1 - \\text{terminated}) V(s') - V(s_0), \\qquad
        A = δ + γ^L λ (1 - \\text{episode end}) A_\\text{next segment}

    where the next segment is the next one that ends in the same env within this batch (0 after the
    batch's last one: the trace is cut there, its bootstrap is ``V(s')``).

    Args:
        tr: from `smdp_transitions`.
        episode_end_t: ``(T, N)`` bool, the episode ended at ``t`` (cuts the trace).
        v_start: ``(T, N)`` ``V_m`` of the segment's start observation (constant along a segment).
        v_next: ``(T, N)`` ``V_m(next_obs_t)``.
        lam: the manager's GAE lambda.

    Returns:
        ``(adv, ret)``, ``(T, N)``, zero where ``tr.mask`` is False.
    """
    not_term = (~tr.terminated).to(v_next.dtype)
    delta = tr.reward + tr.discount * not_term * v_next - v_start
    trace = tr.discount * lam * (~episode_end_t).to(v_next.dtype)
    a_next = torch.zeros_like(delta[0])
    advs = []
    for t in range(delta.shape[0] - 1, -1, -1):
        a = delta[t] + trace[t] * a_next
        a_next = torch.where(tr.mask[t], a, a_next)
        advs.append(torch.where(tr.mask[t], a, torch.zeros_like(a)))
    adv = torch.stack(advs[::-1])
    ret = torch.where(tr.mask, adv + v_start, torch.zeros_like(adv))
    return adv, ret
