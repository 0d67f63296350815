"""How many bytes an autograd graph keeps alive: the check behind "detach at the boundary".

A nested loop that forgets to detach keeps every inner step's graph (and the tensors its backward
needs) alive across outer iterations. `graph_bytes` walks the graph behind some tensors and sums the
storages its nodes saved for backward, each storage once, so that a test or benchmark can assert that
the graph alive at some point does not grow with the number of inner steps.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def graph_bytes(tensors: Iterable[object]) -> int:
    """Bytes of the tensors saved in the autograd graph behind ``tensors`` (storages counted once).

    Every node reachable through ``grad_fn.next_functions`` is visited once; its ``_saved_*`` attributes
    (the tensors autograd keeps for backward, e.g. both factors of a product, the result of ``exp``)
    contribute their storage's ``nbytes``. Leaves and tensors without a ``grad_fn`` hold no graph: 0.
    Non-tensor entries of ``tensors`` are skipped.

    >>> x = torch.ones(1000, requires_grad=True)
    >>> graph_bytes([(x * x).sum()])  # the product saves x twice: one storage of 1000 floats
    4000
    >>> graph_bytes([x.detach()])
    0
    """
    seen: set[int] = set()
    storages: dict[int, int] = {}
    stack = [t.grad_fn for t in tensors if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        for name in dir(node):
            if name.startswith("_saved_"):
                value = getattr(node, name)
                for t in value if isinstance(value, (tuple, list)) else [value]:
                    if isinstance(t, torch.Tensor):
                        storage = t.untyped_storage()
                        storages[storage.data_ptr()] = storage.nbytes()
        stack.extend(fn for fn, _ in node.next_functions)
    return sum(storages.values())
