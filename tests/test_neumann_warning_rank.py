"""Under torchrun the Neumann step-size check runs on every rank (the same ||H|| everywhere), but only
rank 0 warns, as only rank 0 logs."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

from hrl_nested import distributed
from hrl_nested.algos import nested_steps


def _problem():
    # stationary loss 5 * ||θ||²: Hessian 10 I, so α = 0.5 >= 2 / 10 diverges
    theta = {"w": torch.ones(3)}
    phi = {"s": torch.zeros(())}
    io = SimpleNamespace(stationary_loss=lambda th, ph: 5.0 * th["w"].square().sum() + 0.0 * ph["s"])
    return io, theta, phi


@pytest.mark.parametrize(("rank", "warns"), [(0, True), (1, False)])
def test_only_rank_zero_warns(monkeypatch, rank, warns):
    monkeypatch.setattr(distributed, "current_world", lambda: distributed.World(rank=rank, size=2))
    monkeypatch.setattr(distributed, "broadcast_tensors", lambda t, world: dict(t))  # no process group here
    io, theta, phi = _problem()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nested_steps.check_neumann_alpha(io, theta, phi, alpha=0.5, prox=0.0)
    diverges = [w for w in caught if "Neumann series diverges" in str(w.message)]
    assert bool(diverges) is warns


def test_one_process_still_warns_with_the_measured_norm():
    io, theta, phi = _problem()
    with pytest.warns(RuntimeWarning, match=r"2/\(prox \+ \|\|H\|\|\) = 0\.2\b"):
        nested_steps.check_neumann_alpha(io, theta, phi, alpha=0.5, prox=0.0)
