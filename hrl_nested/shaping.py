"""Learned reward shaping ``R_φ``: the outer parameters of nested HRL, a plain dict of tensors.

For goal-conditioned subpolicies (`goal_shaping`), with ``ag`` the achieved goal and ``g`` the
manager's subgoal:

.. math::

    R_φ(s, a, s', g) = -w_d \\lVert ag(s') - g \\rVert + w_b \\, [\\text{reached}(s', g)]
        + γ (1 - \\text{terminal}') Φ_φ(ag(s'), g) - Φ_φ(ag(s), g)

and the subpolicies' reward ``r_w = β r_ext + R_φ``. The potential term (Ng, Harada & Russell 1999,
"Policy invariance under reward transformations") changes no optimal policy and telescopes along a
segment: ``Σ_{t<L} γ^t F_t = γ^L Φ(s_L, g) - Φ(s_0, g)``, with ``Φ`` of a terminal state 0.
At initialization ``Φ``'s last layer is zero, ``w_d = 1``, ``w_b = 0`` and ``β = 1``, so ``R_φ`` is
exactly the fixed shaping of ``--algo hrl`` (`fixed_shaping`, the negative distance of HIRO: Nachum
et al. 2018, "Data-efficient hierarchical reinforcement learning"): any difference between the two
algorithms is due to learning φ.

The one-scalar control (`scalar_shaping`, ``--nested-hrl.shaping scalar``) learns only the weight of
the fixed shaping, ``R_φ = -w_d ||ag(s') - g||`` with ``β = 1`` fixed (φ = ``{w_dist}``), by the same
hypergradient: it sits between ``hrl`` (nothing learned) and the full `goal_shaping` (potential MLP
plus feature weights), and tests whether one learned number captures the gain of a learned shaping
function (as reviewers of BiPaRS, Hu et al. 2020, suspected). With per-minibatch advantage
normalization only the ratio ``w_d / β`` matters, so fixing ``β`` loses nothing.

For a flat policy (LIRPG: Zheng et al. 2018, "On learning intrinsic rewards for policy gradient
methods"), `free_shaping` is an MLP ``R_φ(s, a, s')`` whose last layer starts at zero (so training
starts as plain PPO on ``β r_ext``).

Everything is a pure function of ``(phi, tensors)``: differentiable in φ, usable inside
``torch.func.grad`` / ``vmap`` (the hypergradient engine), no module state.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import TypedDict

import torch
from torch import nn

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover (Python 3.10, which the project supports: typing_extensions comes with torch)
    from typing_extensions import Unpack

Params = dict[str, torch.Tensor]


__all__ = [
    "fixed_shaping",
    "extrinsic_weight",
    "free_shaping",
    "goal_shaping",
    "init_free_shaping",
    "init_goal_shaping",
    "init_scalar_shaping",
    "mlp_apply",
    "mlp_init",
    "phi_summary",
    "potential",
    "scalar_shaping",
    "TensorOptions",
]


class TensorOptions(TypedDict, total=False):
    """Where the initializers of φ put their tensors (torch's factory keywords): ``dtype`` (default
    ``torch.float32``) and ``device`` (default ``"cpu"``)."""

    dtype: torch.dtype
    device: torch.device | str


def _tensor_kwargs(caller: str, options: Mapping[str, object]) -> dict[str, object]:
    """``options`` over the defaults of `TensorOptions`; an unknown keyword is an error naming ``caller``."""
    unknown = sorted(set(options) - set(TensorOptions.__annotations__))
    if unknown:
        raise TypeError(f"{caller}: expected keyword options dtype, device; got {', '.join(unknown)}")
    return {"dtype": torch.float32, "device": "cpu", **options}


def mlp_init(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    prefix: str,
    *,
    zero_last: bool = True,
    **options: Unpack[TensorOptions],
) -> Params:
    """Parameters ``{prefix}.{i}.weight`` / ``.bias`` of a tanh MLP, orthogonal init (gain sqrt 2), zero
    biases; with ``zero_last`` the output layer is all zeros (the MLP starts as the constant 0). ``options``:
    `TensorOptions` (``dtype``, ``device``).

    >>> sorted(mlp_init(2, (4,), 1, "phi"))
    ['phi.0.bias', 'phi.0.weight', 'phi.1.bias', 'phi.1.weight']
    """
    kw = _tensor_kwargs("mlp_init", options)
    dims = [int(in_dim), *(int(h) for h in hidden), int(out_dim)]
    out: Params = {}
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        w = torch.empty(b, a, **kw)
        last = i == len(dims) - 2
        if last and zero_last:
            nn.init.zeros_(w)
        else:
            nn.init.orthogonal_(w, math.sqrt(2.0) if not last else 1.0)
        out[f"{prefix}.{i}.weight"] = w
        out[f"{prefix}.{i}.bias"] = torch.zeros(b, **kw)
    return out


def mlp_apply(params: Mapping[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    """Run the tanh MLP ``{prefix}.*`` of `mlp_init` on ``x`` (``(..., in_dim)`` -> ``(..., out_dim)``)."""
    n = sum(1 for k in params if k.startswith(prefix + ".") and k.endswith(".weight"))
    if n == 0:
        raise ValueError(f"params: no layers '{prefix}.<i>.weight' in {sorted(params)}")
    for i in range(n):
        x = nn.functional.linear(x, params[f"{prefix}.{i}.weight"], params[f"{prefix}.{i}.bias"])
        if i < n - 1:
            x = torch.tanh(x)
    return x


def init_goal_shaping(
    goal_dim: int, hidden: Sequence[int] = (32,), **options: Unpack[TensorOptions]
) -> Params:
    """φ for `goal_shaping`: ``beta = 1``, ``w_dist = 1``, ``w_bonus = 0`` and the potential MLP
    ``phi.*`` on ``[ag, g]`` (``2 goal_dim`` inputs) with a zero last layer. ``options``: `TensorOptions`.

    >>> phi = init_goal_shaping(2)
    >>> float(phi["beta"]), float(phi["w_dist"]), float(phi["w_bonus"])
    (1.0, 1.0, 0.0)
    """
    kw = _tensor_kwargs("init_goal_shaping", options)
    return {
        "beta": torch.ones((), **kw),
        "w_dist": torch.ones((), **kw),
        "w_bonus": torch.zeros((), **kw),
        **mlp_init(2 * goal_dim, hidden, 1, "phi", **kw),
    }


def potential(
    phi: Mapping[str, torch.Tensor], ag: torch.Tensor, g: torch.Tensor, scale: torch.Tensor | float = 1.0
) -> torch.Tensor:
    """``Φ_φ(ag, g)``: the potential MLP on ``[ag / scale, g / scale]``, shape ``ag.shape[:-1]``.

    ``scale`` (a goal-space half-range, broadcastable to ``ag``) keeps the MLP's inputs near unit size.
    """
    if ag.shape != g.shape:
        raise ValueError(f"g: expected shape {tuple(ag.shape)} like ag, got {tuple(g.shape)}")
    x = torch.cat([ag / scale, g / scale], -1)
    return mlp_apply(phi, "phi", x).squeeze(-1)


def fixed_shaping(ag_next: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """HIRO's intrinsic reward ``-||ag(s') - g||`` (Nachum et al. 2018), shape ``ag_next.shape[:-1]``.

    >>> fixed_shaping(torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2)).tolist()
    [-5.0]
    """
    return -torch.linalg.vector_norm(ag_next - g, dim=-1)


def goal_shaping(
    phi: Mapping[str, torch.Tensor],
    ag: torch.Tensor,
    ag_next: torch.Tensor,
    g: torch.Tensor,
    reached: torch.Tensor,
    terminal: torch.Tensor,
    gamma: float,
    scale: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """``R_φ(s, a, s', g)`` for goal-conditioned subpolicies (formula in the module docstring).

    Args:
        phi: from `init_goal_shaping` (``w_dist``, ``w_bonus``, ``phi.*``; ``beta`` is used by the caller).
        ag: ``(..., d)`` achieved goal of ``s``.
        ag_next: ``(..., d)`` achieved goal of the true next state ``s'``.
        g: ``(..., d)`` the subgoal.
        reached: ``(...)`` bool, ``s'`` is within the goal tolerance of ``g``.
        terminal: ``(...)`` bool, ``s'`` is terminal for the subpolicy (subgoal reached or the episode
            terminated): its potential is 0.
        gamma: the subpolicies' discount.
        scale: goal-space half-range for the potential's inputs.

    Returns:
        ``(...)`` shaped rewards, differentiable in φ.
    """
    for name, t in (("ag_next", ag_next), ("g", g)):
        if t.shape != ag.shape:
            raise ValueError(f"{name}: expected shape {tuple(ag.shape)} like ag, got {tuple(t.shape)}")
    dist = torch.linalg.vector_norm(ag_next - g, dim=-1)
    live = (~terminal).to(dist.dtype)
    pot = gamma * live * potential(phi, ag_next, g, scale) - potential(phi, ag, g, scale)
    return -phi["w_dist"] * dist + phi["w_bonus"] * reached.to(dist.dtype) + pot


def init_scalar_shaping(**options: Unpack[TensorOptions]) -> Params:
    """φ for `scalar_shaping`: the one weight ``w_dist = 1`` (no ``beta``: `extrinsic_weight` is then 1),
    so training starts exactly at the fixed shaping of ``--algo hrl``. ``options``: `TensorOptions`.

    >>> {k: float(v) for k, v in init_scalar_shaping().items()}
    {'w_dist': 1.0}
    """
    return {"w_dist": torch.ones((), **_tensor_kwargs("init_scalar_shaping", options))}


def scalar_shaping(phi: Mapping[str, torch.Tensor], ag_next: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``R_φ(s, a, s', g) = w_d · (-||ag(s') - g||)``: one learned weight on `fixed_shaping`, shape
    ``ag_next.shape[:-1]``, differentiable in ``phi["w_dist"]``.

    >>> scalar_shaping({"w_dist": torch.tensor(0.5)}, torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2)).tolist()
    [-2.5]
    """
    if ag_next.shape != g.shape:
        raise ValueError(f"g: expected shape {tuple(ag_next.shape)} like ag_next, got {tuple(g.shape)}")
    return phi["w_dist"] * fixed_shaping(ag_next, g)


def extrinsic_weight(phi: Mapping[str, torch.Tensor]) -> torch.Tensor | float:
    """``β``, the weight of ``r_ext`` in the subpolicies' reward ``β r_ext + R_φ``: ``phi["beta"]`` (learned
    with φ) when φ has it, else the constant 1 (`init_scalar_shaping` learns ``w_dist`` alone)."""
    return phi["beta"] if "beta" in phi else 1.0


def init_free_shaping(in_dim: int, hidden: Sequence[int] = (32,), **options: Unpack[TensorOptions]) -> Params:
    """φ for `free_shaping`: ``beta = 1`` and an MLP ``rin.*`` on ``in_dim`` inputs, zero last layer.
    ``options``: `TensorOptions`.

    >>> float(free_shaping(init_free_shaping(3), torch.ones(5, 3)).abs().sum())
    0.0
    """
    kw = _tensor_kwargs("init_free_shaping", options)
    return {"beta": torch.ones((), **kw), **mlp_init(in_dim, hidden, 1, "rin", **kw)}


def free_shaping(phi: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """LIRPG's intrinsic reward ``R_φ(s, a, s') = MLP_φ([s, a, s'])`` (Zheng et al. 2018); ``x`` is the
    ``(..., in_dim)`` concatenated input, the result ``(...)``."""
    return mlp_apply(phi, "rin", x).squeeze(-1)


def phi_summary(
    phi: Mapping[str, torch.Tensor], potential_out: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Scalars to log (device tensors, no host copy): ``beta``, ``w_dist``, ``w_bonus`` (when present)
    and the range of the potential's (or intrinsic MLP's) output over a batch."""
    out = {f"phi_{k}": phi[k].detach() for k in ("beta", "w_dist", "w_bonus") if k in phi}
    if potential_out is not None and potential_out.numel() > 0:
        out["phi_out_min"] = potential_out.detach().min()
        out["phi_out_max"] = potential_out.detach().max()
    return out
