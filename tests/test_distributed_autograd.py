"""The differentiable collectives of `hrl_nested.distributed` (issue 12 part 5): ``replicate`` ("f") and
``reduce_sum`` ("g"), the conjugate pair of Megatron-LM's tensor parallelism. A global loss built from data
sharded over 2 gloo processes has, on every rank, the value, gradient and Hessian-vector products (autograd
double backward, ``torch.func`` reverse-over-reverse and forward-over-reverse) of one process on the union
data, in float64; with one process both functions are the identity.
"""

from __future__ import annotations

import pytest
import torch

from hrl_nested.distributed import reduce_sum, replicate
from hrl_nested.hypergrad import make_hvp
from tests._ranks import run_on_ranks

N, D = 12, 3


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.randn(N, generator=g, dtype=torch.float64)
    w = torch.randn(D, generator=g, dtype=torch.float64)
    v = torch.randn(D, generator=g, dtype=torch.float64)
    return x, y, w, v


def _global_loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A loss of the union batch from this rank's rows: a normalization by the union's mean and
    Bessel-corrected std (replicated values re-entering the local computation), a nonlinear per-row term
    and a replicated regularizer."""
    w = params["w"]
    z = x @ replicate(w)
    count = reduce_sum(torch.tensor(float(x.shape[0]), dtype=x.dtype))
    mean = replicate(reduce_sum(z.sum()) / count)
    std = replicate((reduce_sum((z - mean).square().sum()) / (count - 1)).sqrt())
    u = (z - mean) / std
    per_row = torch.tanh(u) * y + 0.05 * z.pow(3)
    return reduce_sum(per_row.sum()) / count + 0.1 * w.square().sum()


def _derivatives(
    x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, v: torch.Tensor
) -> dict[str, torch.Tensor]:
    w = w0.clone().requires_grad_()
    loss = _global_loss({"w": w}, x, y)
    (grad,) = torch.autograd.grad(loss, w, create_graph=True)
    (hvp,) = torch.autograd.grad(grad, w, v)
    loss_fn = lambda p, h: _global_loss(p, x, y)  # noqa: E731
    return {
        "loss": loss.detach(),
        "grad": grad.detach(),
        "hvp": hvp,
        "func_grad": torch.func.grad(lambda p: loss_fn(p, {}))({"w": w0})["w"],
        "hvp_vjp": make_hvp(loss_fn, {"w": w0}, {}, mode="vjp")({"w": v})["w"],
        "hvp_jvp": make_hvp(loss_fn, {"w": w0}, {}, mode="jvp")({"w": v})["w"],
    }


def _compute(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    x, y, w, v = _data()
    rows = [slice(0, 5), slice(5, N)]  # unequal shards
    return _derivatives(x[rows[rank]], y[rows[rank]], w, v)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    return run_on_ranks(_compute, tmp_path_factory.mktemp("dist_autograd"))


@pytest.mark.parametrize("what", ["loss", "grad", "hvp", "func_grad", "hvp_vjp", "hvp_jvp"])
def test_sharded_derivatives_equal_one_process_on_the_union(two_ranks, what):
    x, y, w, v = _data()
    ref = _derivatives(x, y, w, v)  # no process group here: replicate and reduce_sum are the identity
    assert ref[what].abs().max() > 1e-3
    for r in two_ranks:
        torch.testing.assert_close(r[what], ref[what], rtol=1e-10, atol=1e-12)


def test_hvp_matches_finite_differences_of_the_gradient():
    """The reference itself: the one-process Hessian-vector product against central differences."""
    x, y, w, v = _data()
    ref = _derivatives(x, y, w, v)
    h = 1e-6
    plus = _derivatives(x, y, w + h * v, v)["grad"]
    minus = _derivatives(x, y, w - h * v, v)["grad"]
    torch.testing.assert_close(ref["hvp"], (plus - minus) / (2 * h), rtol=1e-6, atol=1e-8)


def test_one_process_is_the_identity():
    t = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert replicate(t) is t and reduce_sum(t) is t
