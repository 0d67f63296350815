"""Hypergradients against closed forms on a quadratic inner problem, in float64.

Inner ``f(w, λ) = ½ wᵀAw − wᵀ(Bλ + c)`` (A SPD), outer ``F = ½‖w − w̄‖²`` or, with the direct
term, ``F = ½‖w − w̄‖² + ρ/2‖λ‖² + wᵀCλ``. Then ``w* = A⁻¹(Bλ + c)``, K SGD steps of size α give
``w_K = w* + (I − αA)^K (w_0 − w*)`` and ``∂w_K/∂λ = [I − (I − αA)^K]A⁻¹B``, so every estimator
has the form ``∂F/∂λ + Bᵀ P A⁻¹ ∂F/∂w(w_K)`` with ``P = I − (I − αA)^T`` (T = K unrolled, T
truncated, T = M Neumann terms) or ``P = I`` (exact implicit, CG).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from hrl_nested.graph_memory import graph_bytes
from hrl_nested.hypergrad import HypergradResult, hypergrad

# torch loads its forward-mode decompositions with torch.jit.script on the first jvp.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

DT = torch.float64
N, M = 6, 3  # dim w, dim λ
LR = 0.2


@dataclass
class Quadratic:
    A: torch.Tensor
    B: torch.Tensor
    c: torch.Tensor
    wbar: torch.Tensor
    w0: torch.Tensor
    lam: torch.Tensor
    C: torch.Tensor
    rho: float
    direct: bool

    # w and λ travel as dicts with two entries each, to exercise multi-tensor params/hparams.
    @staticmethod
    def w_of(p):
        return torch.cat([p["u"], p["v"]])

    @staticmethod
    def lam_of(h):
        return torch.cat([h["lam"], h["mu"]])

    def params(self, w=None):
        w = self.w0 if w is None else w
        return {"u": w[:4].clone(), "v": w[4:].clone()}

    def hparams(self):
        return {"lam": self.lam[:2].clone(), "mu": self.lam[2:].clone()}

    def inner(self, p, h):
        w, lam = self.w_of(p), self.lam_of(h)
        return 0.5 * w @ self.A @ w - w @ (self.B @ lam + self.c)

    def outer(self, p, h):
        w, lam = self.w_of(p), self.lam_of(h)
        F = 0.5 * ((w - self.wbar) ** 2).sum()
        if self.direct:
            F = F + 0.5 * self.rho * (lam**2).sum() + w @ self.C @ lam
        return F

    def wstar(self):
        return torch.linalg.solve(self.A, self.B @ self.lam + self.c)

    def contraction(self, T, lr=LR):
        return torch.linalg.matrix_power(torch.eye(N, dtype=DT) - lr * self.A, T)

    def w_K(self, K, w0=None, lr=LR):
        ws = self.wstar()
        w0 = self.w0 if w0 is None else w0
        return ws + self.contraction(K, lr) @ (w0 - ws)

    def expected(self, w, T=None):
        """∂F/∂λ + Bᵀ P A⁻¹ ∂F/∂w at w, P = I − (I − αA)^T (P = I for T=None)."""
        dF_dw = w - self.wbar + (self.C @ self.lam if self.direct else 0)
        P = torch.eye(N, dtype=DT) if T is None else torch.eye(N, dtype=DT) - self.contraction(T)
        total = self.B.T @ P @ torch.linalg.solve(self.A, dF_dw)
        if self.direct:
            total = total + self.rho * self.lam + self.C.T @ w
        return total


def make_quadratic(direct: bool, seed: int = 0) -> Quadratic:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(N, N, generator=g, dtype=DT))
    A = Q @ torch.diag(torch.linspace(0.5, 3.0, N, dtype=DT)) @ Q.T
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=DT)
    return Quadratic(A, rnd(N, M), rnd(N), rnd(N), rnd(N), rnd(M), rnd(N, M), 0.7, direct)


@pytest.fixture(params=[False, True], ids=["plain", "direct"])
def quad(request) -> Quadratic:
    return make_quadratic(direct=request.param)


def run(q: Quadratic, method: str, K: int, w0=None, **opts) -> HypergradResult:
    return hypergrad(
        q.inner, q.outer, q.params(w0), q.hparams(), method=method, inner_steps=K, inner_lr=LR, **opts
    )


def assert_grad(res: HypergradResult, expected: torch.Tensor, atol: float, vacuous_ok: bool = False):
    got = Quadratic.lam_of(res.grads)
    assert res.grads["lam"].shape == (2,) and res.grads["mu"].shape == (1,)
    err = (got - expected).abs().max().item()
    assert err <= atol, f"|got - closed form| = {err:.3g} > {atol}"
    assert vacuous_ok or expected.abs().max() > 1e-2  # the check is not vacuous


# --- unrolled and truncated -----------------------------------------------------------------


@pytest.mark.parametrize("K", [1, 12])
def test_unrolled_matches_closed_form(quad, K):
    res = run(quad, "unrolled", K)
    wK = quad.w_K(K)
    torch.testing.assert_close(Quadratic.w_of(res.params), wK, rtol=0, atol=1e-12)
    assert res.outer_loss.item() == pytest.approx(
        quad.outer(quad.params(wK), quad.hparams()).item(), abs=1e-12
    )
    assert_grad(res, quad.expected(wK, T=K), atol=1e-10)
    assert not res.params["u"].requires_grad and res.grads["lam"].grad_fn is None


@pytest.mark.parametrize("T", [0, 1, 4, 12, 30])
def test_truncated_matches_closed_form(quad, T):
    K = 12
    res = run(quad, "truncated", K, truncate=T)
    wK = quad.w_K(K)
    # The factor from min(T, K) differentiated steps; the residual still at w_K.
    assert_grad(res, quad.expected(wK, T=min(T, K)), atol=1e-10, vacuous_ok=T == 0)
    assert res.info["truncate"] == min(T, K)


# --- implicit: Neumann and CG ---------------------------------------------------------------


@pytest.mark.parametrize("terms", [1, 3, 10])
def test_neumann_at_wstar_equals_truncated(quad, terms):
    ws = quad.wstar()
    neu = run(quad, "neumann", 12, w0=ws, terms=terms)  # alpha defaults to the inner lr
    trunc = run(quad, "truncated", 12, w0=ws, truncate=terms)
    assert_grad(neu, Quadratic.lam_of(trunc.grads), atol=1e-10)
    assert_grad(neu, quad.expected(ws, T=terms), atol=1e-10)
    assert neu.info["alpha"] == LR


@pytest.mark.parametrize("hvp", ["jvp", "vjp"])
def test_neumann_short_of_wstar(quad, hvp):
    K, terms = 7, 9
    res = run(quad, "neumann", K, terms=terms, hvp=hvp)
    assert_grad(res, quad.expected(quad.w_K(K), T=terms), atol=1e-10)


def test_neumann_custom_alpha():
    q = make_quadratic(direct=True)
    res = run(q, "neumann", 4, terms=200, alpha=0.3)
    assert_grad(res, q.expected(q.w_K(4)), atol=1e-10)  # 200 terms at rate 0.85: converged


@pytest.mark.parametrize("hvp", ["jvp", "vjp"])
def test_cg_at_wstar_is_exact_within_dim_iterations(quad, hvp):
    ws = quad.wstar()
    res = run(quad, "cg", 3, w0=ws, iters=N, tol=0.0, hvp=hvp)
    assert_grad(res, quad.expected(ws), atol=1e-8)
    assert res.info["cg_iters"] == N
    # Fewer iterations than the dimension are not enough: the check above has teeth.
    short = run(quad, "cg", 3, w0=ws, iters=2, tol=0.0, hvp=hvp)
    assert (Quadratic.lam_of(short.grads) - quad.expected(ws)).abs().max() > 1e-4


def test_cg_short_of_wstar_uses_the_residual_at_wK(quad):
    K = 5
    res = run(quad, "cg", K, iters=50, tol=1e-13)
    assert_grad(res, quad.expected(quad.w_K(K)), atol=1e-9)
    assert res.info["cg_iters"] <= N + 2 and res.info["cg_residual"] <= 1e-13


def test_cg_damping_solves_the_damped_system():
    q = make_quadratic(direct=False)
    delta = 0.5
    res = run(q, "cg", 4, iters=N, tol=0.0, damping=delta)
    wK = q.w_K(4)
    expected = q.B.T @ torch.linalg.solve(q.A + delta * torch.eye(N, dtype=DT), wK - q.wbar)
    assert_grad(res, expected, atol=1e-9)


def test_cg_warns_on_negative_curvature():
    q = make_quadratic(direct=False)
    q.A = q.A - 1.0 * torch.eye(N, dtype=DT)  # eigenvalues in [-0.5, 2]: indefinite
    with pytest.warns(RuntimeWarning, match="curvature"):
        run(q, "cg", 0, iters=N, tol=0.0)


# --- evolution strategies: unbiased for a quadratic F(w_K(λ), λ) ----------------------------


def test_es_is_unbiased_z_test(quad):
    K, R = 6, 150
    exact = quad.expected(quad.w_K(K), T=K)
    estimates = torch.stack(
        [Quadratic.lam_of(run(quad, "es", K, samples=4, sigma=0.5, seed=s).grads) for s in range(R)]
    )
    mean, se = estimates.mean(0), estimates.std(0) / R**0.5
    z = (mean - exact) / se
    assert z.abs().max() < 4.0, f"z = {z}"
    # Power: the test rejects an estimate biased by 25% (and the standard errors are small).
    assert ((mean - 1.25 * exact) / se).abs().max() > 4.0
    assert (se / exact.abs().max()).max() < 0.1


def test_es_result_carries_the_unperturbed_run(quad):
    K = 6
    res = run(quad, "es", K, samples=3, seed=0)
    torch.testing.assert_close(Quadratic.w_of(res.params), quad.w_K(K), rtol=0, atol=1e-12)
    assert res.info["es_vectorized"] is True


# --- the learning rate as a hyperparameter ---------------------------------------------------


def lr_problem(q: Quadratic, alpha: float):
    hp = {**q.hparams(), "log_lr": torch.tensor(alpha, dtype=DT).log()}
    inner_lr = lambda h: h["log_lr"].exp()
    return hp, inner_lr


def dF_dlog_lr(q: Quadratic, K: int, T: int, alpha: float) -> torch.Tensor:
    """α dF/dα, where only the last T steps are differentiated: w_K − w* = (I − αA)^T (w_{K−T} − w*)."""
    ws = q.wstar()
    dwK = -T * q.A @ q.contraction(K - 1, alpha) @ (q.w0 - ws)
    wK = q.w_K(K, lr=alpha)
    dF_dw = wK - q.wbar + (q.C @ q.lam if q.direct else 0)
    return alpha * dF_dw @ dwK


def test_plain_learning_rate_hyperparameter(quad):
    """dF/dα itself, with the step size passed straight through: inner_lr = lambda h: h["lr"]."""
    K, alpha = 8, 0.15
    hp = {**quad.hparams(), "lr": torch.tensor(alpha, dtype=DT)}
    lr = lambda h: h["lr"]
    res = hypergrad(quad.inner, quad.outer, quad.params(), hp, method="unrolled", inner_steps=K, inner_lr=lr)
    expected = dF_dlog_lr(quad, K, K, alpha) / alpha
    assert res.grads["lr"].item() == pytest.approx(expected.item(), abs=1e-10)


@pytest.mark.parametrize("method,T", [("unrolled", None), ("truncated", 3)])
def test_learning_rate_hypergradient_closed_form(quad, method, T):
    K, alpha = 8, 0.15
    hp, inner_lr = lr_problem(quad, alpha)
    opts = {} if T is None else {"truncate": T}
    res = hypergrad(
        quad.inner, quad.outer, quad.params(), hp, method=method, inner_steps=K, inner_lr=inner_lr, **opts
    )
    expected = dF_dlog_lr(quad, K, K if T is None else T, alpha)
    assert res.grads["log_lr"].shape == ()
    assert res.grads["log_lr"].item() == pytest.approx(expected.item(), abs=1e-10)
    assert abs(expected.item()) > 1e-2
    # The λ part is the usual closed form, at step size α.
    P = torch.eye(N, dtype=DT) - quad.contraction(K if T is None else T, alpha)
    dF_dw = quad.w_K(K, lr=alpha) - quad.wbar + (quad.C @ quad.lam if quad.direct else 0)
    lam_expected = quad.B.T @ P @ torch.linalg.solve(quad.A, dF_dw)
    if quad.direct:
        lam_expected = lam_expected + quad.rho * quad.lam + quad.C.T @ quad.w_K(K, lr=alpha)
    assert_grad(res, lam_expected, atol=1e-10)


@pytest.mark.parametrize("method", ["cg", "neumann"])
def test_implicit_rejects_a_hyperparameter_that_only_sets_the_step_size(method):
    q = make_quadratic(direct=False)
    hp, inner_lr = lr_problem(q, 0.15)
    with pytest.raises(ValueError, match=r"'log_lr'.*inner_lr"):
        hypergrad(q.inner, q.outer, q.params(), hp, method=method, inner_steps=3, inner_lr=inner_lr)


# --- step-indexed inner losses ----------------------------------------------------------------


def test_step_indexed_inner_loss(quad):
    K = 6
    shifts = torch.randn(K, N, generator=torch.Generator().manual_seed(1), dtype=DT)
    seen: list[int] = []

    def inner_t(p, h, step):
        seen.append(step)
        w = Quadratic.w_of(p)
        return quad.inner(p, h) - w @ shifts[step]  # minibatch t shifts c by shifts[t]

    # w_K by the recursion; ∂w_K/∂λ does not depend on the shifts.
    w = quad.w0.clone()
    b = quad.B @ quad.lam + quad.c
    for t in range(K):
        w = w - LR * (quad.A @ w - b - shifts[t])
    common = dict(inner_steps=K, inner_lr=LR)
    res = hypergrad(inner_t, quad.outer, quad.params(), quad.hparams(), method="unrolled", **common)
    assert seen == list(range(K))
    torch.testing.assert_close(Quadratic.w_of(res.params), w, rtol=0, atol=1e-12)
    assert_grad(res, quad.expected(w, T=K), atol=1e-10)
    seen.clear()
    res = hypergrad(
        inner_t, quad.outer, quad.params(), quad.hparams(), method="truncated", truncate=2, **common
    )
    assert seen == list(range(K))
    assert_grad(res, quad.expected(w, T=2), atol=1e-10)
    res = hypergrad(
        inner_t, quad.outer, quad.params(), quad.hparams(), method="cg", stationary_loss=quad.inner, **common
    )
    assert_grad(res, quad.expected(w), atol=1e-9)


def test_step_with_a_default_is_the_stationary_loss():
    q = make_quadratic(direct=False)
    inner = lambda p, h, step=None: q.inner(p, h)
    res = hypergrad(inner, q.outer, q.params(), q.hparams(), method="cg", inner_steps=4, inner_lr=LR)
    assert_grad(res, q.expected(q.w_K(4)), atol=1e-9)


# --- the optimizer state travels across calls --------------------------------------------------


@pytest.mark.parametrize("method", ["unrolled", "cg", "es"])
def test_opt_state_round_trip(method):
    q = make_quadratic(direct=False)
    opts = {"samples": 2, "seed": 0} if method == "es" else {}
    common = dict(method=method, inner_lr=0.05, inner_optimizer="adam", **opts)
    once = hypergrad(q.inner, q.outer, q.params(), q.hparams(), inner_steps=7, **common)
    first = hypergrad(q.inner, q.outer, q.params(), q.hparams(), inner_steps=4, **common)
    second = hypergrad(
        q.inner, q.outer, first.params, q.hparams(), inner_steps=3, opt_state=first.opt_state, **common
    )
    assert once.opt_state.count.item() == 7 and second.opt_state.count.item() == 7
    for a, b in zip(
        torch.utils._pytree.tree_leaves(once.opt_state), torch.utils._pytree.tree_leaves(second.opt_state)
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)
    for k in once.params:
        torch.testing.assert_close(once.params[k], second.params[k], rtol=0, atol=1e-14)
    # Without the state, Adam restarts its moments and lands elsewhere.
    fresh = hypergrad(q.inner, q.outer, first.params, q.hparams(), inner_steps=3, **common)
    assert (fresh.params["u"] - once.params["u"]).abs().max() > 1e-6


# --- precision, devices, memory --------------------------------------------------------------

ALL = [
    ("unrolled", {}),
    ("truncated", {"truncate": 3}),
    ("cg", {"iters": N, "tol": 0.0}),
    ("neumann", {"terms": 5}),
    ("es", {"samples": 64, "sigma": 0.1, "seed": 0}),
]


def to(q: Quadratic, **kw) -> Quadratic:
    moved = {k: v.to(**kw) if torch.is_tensor(v) else v for k, v in vars(q).items()}
    return Quadratic(**moved)


@pytest.mark.parametrize("method,opts", ALL, ids=[m for m, _ in ALL])
def test_float32_matches_float64(method, opts):
    q64 = make_quadratic(direct=True)
    q32 = to(q64, dtype=torch.float32)
    r64, r32 = run(q64, method, 5, **opts), run(q32, method, 5, **opts)
    assert r32.grads["lam"].dtype == torch.float32 and r32.params["u"].dtype == torch.float32
    torch.testing.assert_close(
        Quadratic.lam_of(r32.grads).double(), Quadratic.lam_of(r64.grads), rtol=1e-4, atol=1e-4
    )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method,opts", ALL, ids=[m for m, _ in ALL])
def test_cuda_matches_cpu(method, opts):
    q = make_quadratic(direct=True)
    on_gpu = to(q, device="cuda")
    r_cpu, r_gpu = run(q, method, 5, **opts), run(on_gpu, method, 5, **opts)
    assert r_gpu.grads["lam"].device.type == "cuda" and r_gpu.params["u"].device.type == "cuda"
    torch.testing.assert_close(
        Quadratic.lam_of(r_gpu.grads).cpu(), Quadratic.lam_of(r_cpu.grads), rtol=1e-9, atol=1e-9
    )


@pytest.mark.parametrize("method,opts", ALL[:4], ids=[m for m, _ in ALL[:4]])
def test_graph_memory_does_not_grow_with_inner_steps(method, opts):
    """The graph alive when outer_loss runs: constant in K for truncated / cg / neumann."""
    q = make_quadratic(direct=False)
    # A quartic term, so that each differentiated step saves its iterate (a linear step saves only A).
    inner = lambda p, h: q.inner(p, h) + 0.01 * (Quadratic.w_of(p) ** 4).sum()
    sizes = {}
    for K in (5, 40):
        held = []
        outer = lambda p, h, held=held: (held.append(graph_bytes(p.values())), q.outer(p, h))[1]
        hypergrad(inner, outer, q.params(), q.hparams(), method=method, inner_steps=K, inner_lr=LR, **opts)
        sizes[K] = held[0]
    if method == "unrolled":
        assert sizes[40] > 4 * sizes[5] > 0  # grows linearly in K: 840 B at K=5, 4200 B at K=40
    else:
        assert sizes[40] == sizes[5]
