"""Implicit hypergradients (cg, neumann) with an inner optimizer that has L2 weight decay (issue 8, item 5).

Inner ``L(w, φ) = ½ wᵀAw − wᵀ(Bφ + c)``, outer ``F(w, φ) = ½‖w − w̄‖² + ρ/2‖φ‖²``, in float64.
An update ``g = ∇L + wd·w`` (SGD, SGD with momentum, Adam with coupled decay) converges to the
w* with ``(A + wd·I) w* = Bφ + c``; the implicit function theorem gives
``dw*/dφ = −(H + wd·I)⁻¹ ∂²L/∂w∂φ = (A + wd·I)⁻¹ B`` and so
``dF/dφ = ρφ + Bᵀ (A + wd·I)⁻¹ (w* − w̄)``: the closed form every estimator is checked against,
together with differentiating through the inner loop run to convergence ("unrolled").
"""

from __future__ import annotations

import copy

import pytest
import torch

from hrl_nested import optim
from hrl_nested.hypergrad import hypergrad

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

DT = torch.float64
A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=DT)
B = torch.tensor([[1.0, 0.3], [-0.2, 0.8]], dtype=DT)
C = torch.tensor([0.5, -1.0], dtype=DT)
WBAR = torch.tensor([1.0, 2.0], dtype=DT)
PHI = torch.tensor([0.7, -0.4], dtype=DT)
RHO = 0.3
WD = 0.5
# Inner steps that converge each optimizer below to float64 precision (checked in the tests).
STEPS = {"sgd": 150, "adam": 800}


def inner(p, h):
    w = p["w"]
    return 0.5 * w @ A @ w - w @ (B @ h["phi"] + C)


def outer(p, h):
    return 0.5 * ((p["w"] - WBAR) ** 2).sum() + 0.5 * RHO * (h["phi"] ** 2).sum()


def closed_form(wd: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``w*`` and ``dF/dφ`` at it for weight decay ``wd`` (implicit function theorem)."""
    Hwd = A + wd * torch.eye(2, dtype=DT)
    wstar = torch.linalg.solve(Hwd, B @ PHI + C)
    return wstar, RHO * PHI + B.T @ torch.linalg.solve(Hwd, wstar - WBAR)


def run(method: str, opt, steps: int = STEPS["sgd"], **opts):
    return hypergrad(
        inner,
        outer,
        {"w": torch.zeros(2, dtype=DT)},
        {"phi": PHI.clone()},
        method=method,
        inner_steps=steps,
        inner_lr=0.2,  # the step size of "sgd"/"adam" and neumann's default alpha; a pair keeps its own
        inner_optimizer=opt,
        **opts,
    )


IMPLICIT = {
    "cg": dict(iters=20, tol=1e-14),
    # alpha = the SGD step size; (1 − 0.2·λ_min(A + wd·I))^300 is below 1e-30.
    "neumann": dict(terms=300, alpha=0.2),
}

OPTIMIZERS = {
    # The issue's case.
    "sgd": lambda wd: optim.sgd(0.2, weight_decay=wd),
    "sgd-nesterov": lambda wd: optim.sgd(0.1, momentum=0.5, nesterov=True, weight_decay=wd),
    "adam": lambda wd: optim.adam(0.05, weight_decay=wd, eps_root=1e-16),
    "sgd-tensor-wd": lambda wd: optim.sgd(0.2, weight_decay=torch.tensor(wd, dtype=DT)),
}


@pytest.mark.parametrize("method", sorted(IMPLICIT))
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_implicit_with_weight_decay_matches_closed_form(name, method):
    wstar, expected = closed_form(WD)
    steps = STEPS["adam" if name == "adam" else "sgd"]
    res = run(method, OPTIMIZERS[name](WD), steps, **IMPLICIT[method])
    torch.testing.assert_close(res.params["w"], wstar, rtol=0, atol=1e-10)
    # Without the L2 term the estimate would be this; make sure the case tells them apart.
    assert (closed_form(0.0)[1] - expected).abs().max() > 0.1
    torch.testing.assert_close(res.grads["phi"], expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("method", sorted(IMPLICIT))
def test_issue_case_agrees_with_unrolled_to_convergence(method):
    opt = optim.sgd(0.2, weight_decay=WD)
    unrolled = run("unrolled", opt)
    torch.testing.assert_close(unrolled.grads["phi"], closed_form(WD)[1], rtol=0, atol=1e-10)
    torch.testing.assert_close(
        run(method, opt, **IMPLICIT[method]).grads["phi"], unrolled.grads["phi"], rtol=0, atol=1e-9
    )


def test_adam_with_weight_decay_agrees_with_unrolled_to_convergence():
    opt = optim.adam(0.05, weight_decay=WD, eps_root=1e-16)
    unrolled = run("unrolled", opt, STEPS["adam"])
    torch.testing.assert_close(unrolled.grads["phi"], closed_form(WD)[1], rtol=0, atol=1e-10)
    torch.testing.assert_close(
        run("cg", opt, STEPS["adam"], **IMPLICIT["cg"]).grads["phi"], unrolled.grads["phi"], rtol=0, atol=1e-9
    )


@pytest.mark.parametrize("method", sorted(IMPLICIT))
def test_zero_weight_decay_is_unchanged(method):
    # The string optimizer has no weight decay; the pair with weight_decay=0 gives the same numbers.
    _, expected = closed_form(0.0)
    by_name = run(method, "sgd", **IMPLICIT[method])
    by_pair = run(method, optim.sgd(0.2, weight_decay=0.0), **IMPLICIT[method])
    torch.testing.assert_close(by_name.grads["phi"], expected, rtol=0, atol=1e-9)
    assert torch.equal(by_pair.grads["phi"], by_name.grads["phi"])


@pytest.mark.parametrize("method", sorted(IMPLICIT))
def test_a_plain_pair_counts_as_no_weight_decay_and_stationary_loss_is_used_as_given(method):
    opt = optim.sgd(0.2, weight_decay=WD)
    plain = (opt.init, opt.update)  # a user's own pair: no weight_decay attribute
    assert not hasattr(plain, "weight_decay")
    res = run(method, plain, **IMPLICIT[method])
    wstar, _ = closed_form(WD)
    # Treated as 0: the Hessian is A alone, at the (weight-decayed) w_K the inner loop reached.
    torch.testing.assert_close(res.params["w"], wstar, rtol=0, atol=1e-10)
    without = RHO * PHI + B.T @ torch.linalg.solve(A, wstar - WBAR)
    torch.testing.assert_close(res.grads["phi"], without, rtol=0, atol=1e-9)
    # A stationary_loss the user passes is taken as is: with the L2 term in it, the result is right.
    from hrl_nested.hypergrad import with_weight_decay  # new API, imported here to keep the module importable

    given = run(method, plain, stationary_loss=with_weight_decay(inner, WD), **IMPLICIT[method])
    torch.testing.assert_close(given.grads["phi"], closed_form(WD)[1], rtol=0, atol=1e-9)


@pytest.mark.parametrize("make", [optim.sgd, optim.adam])
def test_optimizer_exposes_weight_decay_and_still_unpacks(make):
    opt = make(0.1, weight_decay=0.25)
    assert opt.weight_decay == 0.25
    assert make(0.1).weight_decay == 0
    init, update = opt  # existing callers unpack a 2-tuple
    assert len(opt) == 2 and isinstance(opt, tuple)
    assert (init, update) == (opt.init, opt.update)
    assert opt._replace(init=init).weight_decay == 0.25
    assert copy.deepcopy(opt).weight_decay == 0.25
    assert "weight_decay=0.25" in repr(opt)
    assert optim.Optimizer(init, update).weight_decay == 0
    assert optim.Optimizer(init, update, 0.5).weight_decay == 0.5
    # The pair still runs.
    params = {"x": torch.tensor([1.0, -2.0], dtype=DT)}
    new, _ = update({"x": torch.zeros(2, dtype=DT)}, init(params), params)
    assert (new["x"].abs() < params["x"].abs()).all()  # the decay alone shrinks the params


@pytest.mark.parametrize("bad", [-0.1, "0.1", True, torch.ones(2), torch.tensor(1)])
def test_invalid_weight_decay_is_a_clear_error(bad):
    with pytest.raises(
        ValueError, match=r"weight_decay must be a float >= 0 or a floating-point scalar tensor"
    ):
        optim.sgd(0.1, weight_decay=bad)
