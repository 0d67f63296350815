"""Within one execution path, a row's network output does not depend on the batch size (issue 8, item 10).

Two things used to make it depend: `FastTanh` switched formula at 4096 elements, and MKL's CPU matrix
product picks kernels (and so rounding) by the number of rows. Checked bit for bit, not to a tolerance.
"""

import gymnasium as gym
import numpy as np
import pytest
import torch

from hrl_nested.networks import (
    MLP,
    ActorCritic,
    FastTanh,
    actor_critic_apply,
    batch_invariant_linear,
    params_of,
)

SIZES = (1, 2, 7, 20, 4095, 4096, 5000)
BOX_OBS = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)


def _rows_equal(f, x, sizes=SIZES):
    full = f(x)
    for b in sizes:
        part = f(x[:b])
        for p, q in zip(
            part if isinstance(part, tuple) else (part,), full if isinstance(full, tuple) else (full,)
        ):
            assert torch.equal(p, q[:b]), f"batch {b}: rows differ from the same rows at batch {len(x)}"
    for j in (0, 3, 19, 4094, 4999):  # a row alone equals its row in the full batch, wherever it sits
        alone = f(x[j : j + 1])
        for p, q in zip(
            alone if isinstance(alone, tuple) else (alone,), full if isinstance(full, tuple) else (full,)
        ):
            assert torch.equal(p[0], q[j]), f"row {j} alone differs from row {j} of the batch"


def test_fast_tanh_one_formula_whatever_the_size():
    fast_tanh = FastTanh()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 64, generator=g) * 3
    _rows_equal(fast_tanh, x)
    flat = x.reshape(-1)
    for n in (4095, 4096, 4097, 100_000):  # around the old 4096-element switch
        assert torch.equal(fast_tanh(flat[:n]), fast_tanh(flat)[:n])
    torch.testing.assert_close(fast_tanh(x.double()), torch.tanh(x.double()), rtol=0, atol=1e-15)


@pytest.mark.parametrize("out_dim", [1, 2, 64])
@pytest.mark.parametrize("in_dim", [3, 64])
def test_linear_rows_independent_of_batch(in_dim, out_dim):
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(out_dim, in_dim, generator=g), torch.randn(out_dim, generator=g)
    x = torch.randn(5000, in_dim, generator=g)
    _rows_equal(lambda t: batch_invariant_linear(t, w, b), x)
    # the value is x W^T + b (float64 reference)
    ref = x.double() @ w.double().T + b.double()
    torch.testing.assert_close(batch_invariant_linear(x[:20], w, b).double(), ref[:20], rtol=1e-5, atol=1e-5)
    # leading dims are rows too, gradients flow as through F.linear
    x3 = x[:60].reshape(3, 20, in_dim).clone().requires_grad_(True)
    y = batch_invariant_linear(x3, w, b)
    assert y.shape == (3, 20, out_dim) and torch.equal(
        y.reshape(60, -1), batch_invariant_linear(x, w, b)[:60]
    )
    (gx,) = torch.autograd.grad(y.sum(), x3)
    torch.testing.assert_close(gx, w.sum(0).expand(3, 20, in_dim))


@pytest.mark.parametrize(
    "action_space", [gym.spaces.Discrete(2), gym.spaces.Box(-2.0, 2.0, (1,), np.float32)]
)
def test_actor_critic_rows_independent_of_batch(action_space):
    torch.manual_seed(0)
    ac = ActorCritic(BOX_OBS, action_space)  # hidden (64, 64): 20 x 64 < 4096 <= 4096 x 64 elements
    with torch.no_grad():
        for p in ac.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # not the zero-bias init: every term counts
    x = torch.randn(5000, 4) * 2
    params = params_of(ac)
    with torch.no_grad():
        _rows_equal(ac, x)  # the module path (the learner's)
        _rows_equal(lambda t: actor_critic_apply(ac, params, t), x)  # the parameter-dict path (the rollout's)
    # and with autograd on, as in the PPO update
    full = ac(x)[0]
    assert torch.equal(ac(x[:20])[0], full[:20]) and torch.equal(ac(x[:1])[0], full[:1])


def test_mlp_time_major_input_equals_flat():
    torch.manual_seed(0)
    m = MLP(4, 3)
    x = torch.randn(7, 13, 4)  # (T, N, d): 91 rows, not a multiple of 16
    with torch.no_grad():
        assert torch.equal(m(x).reshape(91, 3), m(x.reshape(91, 4)))
        assert torch.equal(m(x[0, 0]), m(x.reshape(91, 4))[0])  # an unbatched obs too
