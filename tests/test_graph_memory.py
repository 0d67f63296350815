"""`hrl_nested.graph_memory.graph_bytes`: the bytes an autograd graph keeps for backward, counted by hand.

The reference counts come from what each op is documented to save: ``mul`` saves both factors, ``exp``
its result, ``tanh`` its result; ``sum`` and ``add`` save no tensor. One float32 of 1000 entries is 4000 B.
"""

from __future__ import annotations

import torch

from hrl_nested.graph_memory import graph_bytes

N = 1000
ONE = 4 * N  # bytes of one float32 tensor of N entries


def test_saved_storages_are_counted_once():
    x = torch.ones(N, requires_grad=True)
    assert graph_bytes([(x * x).sum()]) == ONE  # both factors are x: one storage
    assert graph_bytes([x.exp().sum()]) == ONE  # exp's result
    assert graph_bytes([(x.exp() * x).sum()]) == 2 * ONE  # exp's result (shared with mul) and x
    assert graph_bytes([(x + x).sum()]) == 0  # add saves nothing


def test_leaves_detached_tensors_and_non_tensors_hold_nothing():
    x = torch.ones(N, requires_grad=True)
    assert graph_bytes([x, x.detach(), torch.ones(3), "not a tensor", None]) == 0


def test_grows_with_an_unrolled_loop_and_sums_over_several_roots():
    w = torch.full((N,), 0.5, requires_grad=True)
    for steps in (1, 3, 6):
        y = torch.ones(N, requires_grad=True)
        for _ in range(steps):
            y = torch.tanh(y * w)  # mul saves y and w, tanh its result
        # step 1 saves the first y, w and its tanh output; each later step adds its tanh output only
        assert graph_bytes([y]) == (3 + (steps - 1)) * ONE
    a, b = (torch.ones(N, requires_grad=True) for _ in range(2))
    assert graph_bytes([a.exp(), b.exp()]) == 2 * ONE
