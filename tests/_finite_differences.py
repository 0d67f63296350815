"""Central finite differences over a dict of tensors: the independent reference of the nested tests."""

from __future__ import annotations

from collections.abc import Callable

import torch


def central_differences(
    f: Callable[[dict[str, torch.Tensor]], float], params: dict[str, torch.Tensor], eps: float = 1e-6
) -> dict[str, torch.Tensor]:
    """``(f(p + eps e_i) - f(p - eps e_i)) / (2 eps)`` for every entry ``i`` of every tensor of ``params``,
    one entry moved at a time; ``f`` returns a float."""
    out = {}
    for name, v in params.items():
        grad = torch.zeros_like(v)
        for i in range(v.numel()):
            plus, minus = v.clone(), v.clone()
            plus.view(-1)[i] += eps
            minus.view(-1)[i] -= eps
            grad.view(-1)[i] = (f({**params, name: plus}) - f({**params, name: minus})) / (2 * eps)
        out[name] = grad
    return out
