"""Tree helpers of the env package: the one place that names an observation tree and selects in it.

A *tree* here is a tensor, or a ``dict`` of tensors (a goal env's ``{"observation", "achieved_goal",
"desired_goal"}``), nested as deep as needed; the compiled step's outputs are trees of tuples and dicts.
Every leaf is a ``torch.Tensor`` whose first dimension is the env index ``N``.

Flattening is torch's own (``torch.utils._pytree``, re-exported here so that only this module names a
private torch path): dynamo traces it, and its dict order is insertion order, the order the envs write.
``hrl_nested.pytree`` builds the library's helpers on this module (envs never imports the library).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.utils._pytree import TreeSpec, tree_flatten, tree_leaves, tree_unflatten

__all__ = ["Obs", "TreeSpec", "contiguous", "tree_flatten", "tree_leaves", "tree_unflatten", "where_rows"]

Obs = torch.Tensor | dict[str, torch.Tensor]
"""An observation batch: one ``(N, ...)`` tensor, or a dict of them (goal envs)."""


def where_rows(mask: torch.Tensor, a: Obs, b: Obs) -> Obs:
    """Row-wise ``torch.where`` over two trees of the same structure: row ``i`` of every leaf from ``a``
    where ``mask[i]``, else from ``b``.

    ``mask`` is a ``(N,)`` bool tensor, broadcast over each leaf's trailing dims. Dict nodes recurse
    (result keys in ``a``'s order); any other node is a leaf. Compiles to one ``where`` per leaf.

    >>> where_rows(torch.tensor([True, False]), torch.zeros(2, 3), torch.ones(2, 3)).tolist()
    [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    """
    if isinstance(a, Mapping):
        return {k: where_rows(mask, a[k], b[k]) for k in a}
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


def contiguous(obs: Obs) -> Obs:
    """The same tree with row-major (``.contiguous()``) leaves, whatever the buffers' layout, so that
    ``.view`` and friends work on what the env returns. Dict nodes recurse; a contiguous leaf is returned
    as it is (no copy).
    """
    if isinstance(obs, Mapping):
        return {k: contiguous(v) for k, v in obs.items()}
    return obs.contiguous()
