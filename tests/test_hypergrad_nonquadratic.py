"""Hypergradients on non-quadratic problems against central finite differences (float64).

The references are computed independently of the code under test: the inner problem is
solved by Newton's method with a dense Hessian (fine for 4 parameters), and the Adam
inner loop is re-run with ``torch.optim.Adam``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as nnf

from hrl_nested import optim
from hrl_nested.hypergrad import hypergrad

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

DT = torch.float64
D = 4


def logistic_data():
    g = torch.Generator().manual_seed(3)
    w_true = torch.tensor([1.5, -2.0, 0.5, 0.0], dtype=DT)
    X = torch.randn(60, D, generator=g, dtype=DT)
    y = (torch.rand(60, generator=g, dtype=DT) < torch.sigmoid(X @ w_true)).to(DT)
    return X[:40], y[:40], X[40:], y[40:]


XT, YT, XV, YV = logistic_data()
LOG_REG = torch.log(torch.tensor([0.3, 0.5, 0.8, 0.2], dtype=DT))  # per-feature L2, in log space


def bce(logits, y):
    return nnf.binary_cross_entropy_with_logits(logits, y)


def inner(p, h):
    """Training BCE + ½ Σ_j exp(λ_j) w_j²: strongly convex, solved to machine precision below."""
    logits = XT @ p["w"] + p["b"]
    return bce(logits, YT) + 0.5 * (h["log_reg"].exp() * p["w"] ** 2).sum()


def outer(p, h):
    return bce(XV @ p["w"] + p["b"], YV)


def start():
    return {"w": torch.zeros(D, dtype=DT), "b": torch.zeros((), dtype=DT)}


def at_log_reg(**kwargs):
    """``hypergrad`` of the regularized logistic regression from `start` at ``LOG_REG``."""
    return hypergrad(inner, outer, start(), {"log_reg": LOG_REG.clone()}, **kwargs)


def solved_outer(log_reg: torch.Tensor) -> float:
    """F(w*(λ)) with w* from Newton's method (dense Hessian; test-only reference)."""
    theta = torch.zeros(D + 1, dtype=DT)
    unpack = lambda th: {"w": th[:D], "b": th[D]}
    loss = lambda th: inner(unpack(th), {"log_reg": log_reg})
    for _ in range(30):
        g = torch.func.grad(loss)(theta)
        if g.abs().max() < 1e-14:
            break
        theta = theta - torch.linalg.solve(torch.func.hessian(loss)(theta), g)
    assert torch.func.grad(loss)(theta).abs().max() < 1e-14
    return outer(unpack(theta), None).item()


def central_differences(f, x: torch.Tensor, step: float = 1e-5) -> torch.Tensor:
    out = torch.zeros_like(x)
    for i in range(x.numel()):
        e = torch.zeros_like(x)
        e.view(-1)[i] = step
        out.view(-1)[i] = (f(x + e) - f(x - e)) / (2 * step)
    return out


@pytest.fixture(scope="module")
def fd_solved():
    return central_differences(solved_outer, LOG_REG)


# Converged: lr 0.8, strong convexity >= 0.2, so 250 steps contract by 0.84^250 ~ 1e-19.
CASES = [
    ("cg", dict(iters=D + 1, tol=1e-14)),
    ("cg", dict(iters=D + 1, tol=1e-14, hvp="jvp")),
    ("neumann", dict(terms=250)),
    ("unrolled", {}),
    ("truncated", dict(truncate=200)),
]


@pytest.mark.parametrize("method,opts", CASES, ids=[f"{m}-{o.get('hvp', '')}" for m, o in CASES])
def test_logistic_regression_matches_finite_differences(fd_solved, method, opts):
    res = at_log_reg(method=method, inner_steps=250, inner_lr=0.8, **opts)
    assert fd_solved.abs().min() > 5e-4  # every coordinate carries signal (vs atol 1e-9)
    torch.testing.assert_close(res.grads["log_reg"], fd_solved, rtol=1e-6, atol=1e-9)


def test_es_on_logistic_regression_points_the_right_way(fd_solved):
    # Not quadratic: ES estimates the gradient of the Gaussian-smoothed loss (O(σ²) away), with
    # variance; a smoke check of direction and size, the exact checks are on the quadratic.
    res = at_log_reg(method="es", inner_steps=30, inner_lr=0.8, samples=100, sigma=0.1, seed=0)
    g = res.grads["log_reg"]
    assert torch.nn.functional.cosine_similarity(g, fd_solved, dim=0) > 0.95
    assert 0.7 < g.norm() / fd_solved.norm() < 1.3


# --- Adam as the inner optimizer, against a torch.optim.Adam loop --------------------------------


def adam_reference_outer(log_reg: torch.Tensor, K: int, lr: float) -> float:
    p = {k: v.clone().requires_grad_() for k, v in start().items()}
    opt = torch.optim.Adam(list(p.values()), lr=lr)
    for _ in range(K):
        opt.zero_grad()
        inner(p, {"log_reg": log_reg}).backward()
        opt.step()
    return outer({k: v.detach() for k, v in p.items()}, None).item()


def test_adam_inner_optimizer_matches_finite_differences():
    K, lr = 15, 0.05
    res = at_log_reg(method="unrolled", inner_steps=K, inner_lr=lr, inner_optimizer="adam")
    fd = central_differences(lambda x: adam_reference_outer(x, K, lr), LOG_REG, step=1e-6)
    assert res.outer_loss.item() == pytest.approx(adam_reference_outer(LOG_REG, K, lr), abs=1e-12)
    assert fd.abs().min() > 1e-4
    torch.testing.assert_close(res.grads["log_reg"], fd, rtol=1e-5, atol=1e-9)
    # The same optimizer passed as an (init, update) pair gives the same hypergradient.
    pair = optim.adam(lr, eps_root=1e-16)
    res2 = at_log_reg(method="unrolled", inner_steps=K, inner_lr=lr, inner_optimizer=pair)
    torch.testing.assert_close(res2.grads["log_reg"], res.grads["log_reg"], rtol=0, atol=0)


def test_adam_learning_rate_hypergradient_matches_finite_differences():
    K = 15
    hp = {"log_reg": LOG_REG.clone(), "log_lr": torch.tensor(0.05, dtype=DT).log()}
    res = hypergrad(
        inner,
        outer,
        start(),
        hp,
        method="unrolled",
        inner_steps=K,
        inner_lr=lambda h: h["log_lr"].exp(),
        inner_optimizer="adam",
    )
    fd = central_differences(lambda x: adam_reference_outer(LOG_REG, K, x.exp().item()), hp["log_lr"], 1e-6)
    assert abs(fd.item()) > 1e-3
    assert res.grads["log_lr"].item() == pytest.approx(fd.item(), rel=1e-5)


def test_adam_through_an_idle_parameter_stays_finite():
    """A parameter whose gradient is exactly zero (an idle subpolicy) does not poison the hypergradient."""

    def inner_idle(p, h):
        return inner(p, h) + h["log_reg"].exp().sum() * (p["idle"] ** 2).sum()  # grad 0 at idle = 0

    def outer_all(p, h):  # the outer objective sees every subpolicy, idle ones included
        return outer(p, h) + p["idle"].sum()

    params = {**start(), "idle": torch.zeros(3, dtype=DT)}

    def run(inner_optimizer):
        hp = {"log_reg": LOG_REG.clone()}
        kw = dict(method="unrolled", inner_steps=5, inner_lr=0.05, inner_optimizer=inner_optimizer)
        return hypergrad(inner_idle, outer_all, params, hp, **kw)

    res = run("adam")
    assert not res.nonfinite and torch.isfinite(res.grads["log_reg"]).all()
    # With eps_root = 0 the same run is NaN: why hypergrad's "adam" sets it.
    with pytest.raises(FloatingPointError, match="eps_root"):
        run(optim.adam(0.05))


def test_sgd_momentum_pair_matches_finite_differences():
    K = 10
    pair = optim.sgd(0.3, momentum=0.9, nesterov=True)

    def ref(log_reg):
        p = {k: v.clone().requires_grad_() for k, v in start().items()}
        opt = torch.optim.SGD(list(p.values()), lr=0.3, momentum=0.9, nesterov=True)
        for _ in range(K):
            opt.zero_grad()
            inner(p, {"log_reg": log_reg}).backward()
            opt.step()
        return outer({k: v.detach() for k, v in p.items()}, None).item()

    res = at_log_reg(method="unrolled", inner_steps=K, inner_lr=0.3, inner_optimizer=pair)
    fd = central_differences(ref, LOG_REG, step=1e-6)
    torch.testing.assert_close(res.grads["log_reg"], fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method,opts", [("cg", {"iters": 10}), ("unrolled", {})])
def test_an_outer_loop_lowers_the_validation_loss(method, opts):
    """The contract in use: warm-started inner params and state carried across outer steps."""
    hp = {"log_reg": torch.zeros(D, dtype=DT)}
    params, state, first = start(), None, None
    for _ in range(15):
        res = hypergrad(
            inner, outer, params, hp, method=method, inner_steps=30, inner_lr=0.8, opt_state=state, **opts
        )
        first = res.outer_loss if first is None else first
        params, state = res.params, res.opt_state
        hp = {"log_reg": hp["log_reg"] - 2.0 * res.grads["log_reg"]}
    assert res.outer_loss < first - 0.05  # 0.59 -> 0.46 here
