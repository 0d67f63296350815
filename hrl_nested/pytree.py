"""Tree helpers of the library: map over, list and select in nested containers of tensors.

A *tree* here is a ``torch.Tensor`` (a leaf), or a ``dict``, ``list``, ``tuple``, ``NamedTuple`` or
dataclass of trees, with ``None`` allowed anywhere as an empty subtree: an observation (a tensor or a
goal ``dict``), a policy's recurrent carry, a `Batch`, a rollout record. Leaves are visited depth first,
in dict insertion order and field order.

`tree_map` and `tree_leaves` are written out rather than taken from ``torch.utils._pytree``: they run in
the rollout's step loop, where a plain recursion is cheaper, they treat dataclasses (`Batch`) as nodes
and ``None`` as an empty subtree (torch's makes both leaves), and they reject a non-tensor leaf instead of
passing it through. `detach_tree` is the lenient one, for optimizer states that also hold Python
scalars. Observation trees and `where_rows` come from :mod:`envs.pytree` (envs never imports the
library, so the library builds on it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_map_only

from envs.pytree import Obs, where_rows

__all__ = ["Obs", "detach_tree", "tree_leaves", "tree_map", "where_rows"]


def tree_map(fn: Callable[[torch.Tensor], Any], x: Any) -> Any:
    """A tree of the same structure with ``fn(leaf)`` at every tensor leaf (``fn`` runs in leaf order).

    Dicts, lists, tuples and NamedTuples are rebuilt with their own type, dataclasses with
    ``dataclasses.replace``; ``None`` passes through. Any other leaf is a ``TypeError``.

    >>> tree_map(lambda t: t * 2, {"a": torch.ones(1), "b": (torch.ones(2), None)})
    {'a': tensor([2.]), 'b': (tensor([2., 2.]), None)}
    """
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, dict):
        return {k: tree_map(fn, v) for k, v in x.items()}
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(tree_map(fn, v) for v in x))
    if isinstance(x, list | tuple):
        return type(x)(tree_map(fn, v) for v in x)
    if dataclasses.is_dataclass(x):
        fields = dataclasses.fields(x)
        return dataclasses.replace(x, **{f.name: tree_map(fn, getattr(x, f.name)) for f in fields})
    raise TypeError(f"expected a pytree of tensors, dicts, tuples or dataclasses, got {type(x).__name__}")


def tree_leaves(x: Any) -> list[torch.Tensor]:
    """The tensor leaves of a tree, in `tree_map`'s order (``None`` contributes none).

    >>> [t.tolist() for t in tree_leaves({"a": torch.zeros(1), "b": (None, torch.ones(1))})]
    [[0.0], [1.0]]
    """
    out: list[torch.Tensor] = []
    tree_map(lambda t: out.append(t) or t, x)
    return out


def detach_tree(tree: Any) -> Any:
    """Detach every tensor of a pytree (dicts, tuples, NamedTuples): the boundary of a graph.

    Non-tensor leaves (a step count as a Python int, ``None``) are kept as they are.
    """
    return tree_map_only(torch.Tensor, lambda t: t.detach(), tree)
