"""The per-method options objects of ``hypergrad``: checks, the ``method=XOptions(...)`` form, introspection.

The numbers come from the quadratic inner problem ``L(w, λ) = ½ wᵀAw − wᵀBλ`` (A SPD) and the outer
``F = ½‖w − w̄‖²`` in float64: K SGD steps of size α from ``w_0`` give ``w_K = w* + (I − αA)^K (w_0 − w*)``
with ``w* = A⁻¹Bλ``, so the estimators have closed forms ``Bᵀ P A⁻¹ (w_K − w̄)`` with
``P = I − (I − αA)^T`` (unrolled T = K, truncated T, neumann T = M terms at α) or ``P = I`` (cg), and
antithetic ES on the quadratic ``f(λ) = F(w_K(λ))`` is exactly ``(1/S) Σ ε_i ε_iᵀ ∇f``.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from hrl_nested.hypergrad import METHOD_OPTIONS, METHODS, TruncatedOptions, UnrolledOptions, hypergrad
from hrl_nested.hypergrad.es import es_noise
from hrl_nested.hypergrad.options import CGOptions, ESOptions, HypergradOptions, NeumannOptions, options_for
from hrl_nested.hypergrad.unrolled import InnerProblem
from hrl_nested.optim import sgd

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

DT = torch.float64
N, M, K, LR = 4, 2, 6, 0.15

_g = torch.Generator().manual_seed(11)
_Q, _ = torch.linalg.qr(torch.randn(N, N, generator=_g, dtype=DT))
A = _Q @ torch.diag(torch.linspace(0.6, 2.5, N, dtype=DT)) @ _Q.T
B = torch.randn(N, M, generator=_g, dtype=DT)
W0 = torch.randn(N, generator=_g, dtype=DT)
WBAR = torch.randn(N, generator=_g, dtype=DT)
LAM = torch.randn(M, generator=_g, dtype=DT)


def inner(p, h):
    return 0.5 * p["w"] @ A @ p["w"] - p["w"] @ (B @ h["lam"])


def outer(p, h):
    return 0.5 * ((p["w"] - WBAR) ** 2).sum()


def call(method, **kw):
    return hypergrad(
        inner, outer, {"w": W0.clone()}, {"lam": LAM.clone()}, method=method, inner_steps=K, inner_lr=LR, **kw
    )


def contraction(T):
    return torch.linalg.matrix_power(torch.eye(N, dtype=DT) - LR * A, T)


def w_K():
    ws = torch.linalg.solve(A, B @ LAM)
    return ws + contraction(K) @ (W0 - ws)


def closed_form(T):
    """``Bᵀ P A⁻¹ (w_K − w̄)``, ``P = I − (I − αA)^T`` (``T=None``: ``P = I``)."""
    P = torch.eye(N, dtype=DT) if T is None else torch.eye(N, dtype=DT) - contraction(T)
    return B.T @ P @ torch.linalg.solve(A, w_K() - WBAR)


# (options object, the same as a method name and keywords, the closed form of the hypergradient)
CASES = [
    (UnrolledOptions(), ("unrolled", {}), lambda: closed_form(K)),
    (TruncatedOptions(truncate=2), ("truncated", {"truncate": 2}), lambda: closed_form(2)),
    (
        CGOptions(iters=N, tol=0.0, hvp="jvp"),
        ("cg", {"iters": N, "tol": 0.0, "hvp": "jvp"}),
        lambda: closed_form(None),
    ),
    (NeumannOptions(terms=3), ("neumann", {"terms": 3}), lambda: closed_form(3)),
    (
        ESOptions(samples=5, sigma=0.3, seed=4),
        ("es", {"samples": 5, "sigma": 0.3, "seed": 4}),
        lambda: es_closed_form(samples=5, seed=4),
    ),
]


def es_closed_form(samples, seed):
    eps = es_noise({"lam": LAM}, samples, seed=seed)["lam"]
    return eps.T @ (eps @ closed_form(K)) / samples


@pytest.mark.parametrize("obj,named,expected", CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_options_object_is_bit_identical_to_the_keyword_form(obj, named, expected):
    name, kw = named
    by_object, by_name = call(obj), call(name, **kw)
    for a, b in [(by_object.grads, by_name.grads), (by_object.params, by_name.params)]:
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(by_object.outer_loss, by_name.outer_loss)
    assert by_object.info == by_name.info
    assert by_object.options == by_name.options == obj
    want = expected()
    assert want.abs().max() > 1e-2  # the comparison is not vacuous
    torch.testing.assert_close(by_object.grads["lam"], want, rtol=0, atol=1e-10)


def test_the_options_used_are_in_the_result_with_defaults_filled_in():
    res = call("cg", iters=7)
    assert res.options == CGOptions(iters=7) and res.options.tol == 1e-10 and res.options.damping == 0.0
    assert call("es", seed=1, samples=2).options == ESOptions(samples=2, seed=1)


def test_keywords_given_with_an_object_replace_its_fields():
    res = call(CGOptions(iters=2, tol=0.0), on_nonfinite="zero", iters=N)
    assert res.options == CGOptions(iters=N, tol=0.0, on_nonfinite="zero")
    assert res.info["cg_iters"] == N
    torch.testing.assert_close(res.grads["lam"], closed_form(None), rtol=0, atol=1e-10)
    # A replaced value is checked like any other.
    with pytest.raises(
        ValueError, match=r"hypergrad\(method='cg'\): option iters must be an int >= 1, got 0"
    ):
        call(CGOptions(), iters=0)


@pytest.mark.parametrize(
    "method,kw,pattern",
    [
        (
            CGOptions(),
            {"terms": 3},
            r"hypergrad\(method='cg'\): unknown option\(s\) \['terms'\]; expected .*'iters'",
        ),
        (UnrolledOptions(), {"truncate": 1}, r"unknown option\(s\) \['truncate'\]"),
        (CGOptions, {}, r"method must be one of .*'cg'.* or an options object .*got <class"),
        ("CG", {}, r"method must be one of .*got 'CG'"),
    ],
)
def test_unknown_options_and_methods_are_rejected(method, kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        call(method, **kw)


BAD = [
    (TruncatedOptions, {"truncate": -1}, "truncated", "truncate", "an int >= 0", "-1"),
    (TruncatedOptions, {"truncate": 2.0}, "truncated", "truncate", "an int >= 0", "2.0"),
    (TruncatedOptions, {"truncate": True}, "truncated", "truncate", "an int >= 0", "True"),
    (CGOptions, {"iters": 0}, "cg", "iters", "an int >= 1", "0"),
    (CGOptions, {"tol": -1e-3}, "cg", "tol", "a float >= 0", "-0.001"),
    (CGOptions, {"damping": "0.1"}, "cg", "damping", "a float >= 0", "'0.1'"),
    (CGOptions, {"hvp": "fwd"}, "cg", "hvp", "'jvp' or 'vjp'", "'fwd'"),
    (CGOptions, {"stationary_loss": 3}, "cg", "stationary_loss", "None or a callable (params, hparams)", "3"),
    (NeumannOptions, {"terms": 0}, "neumann", "terms", "an int >= 1", "0"),
    (NeumannOptions, {"alpha": 0.0}, "neumann", "alpha", "None or a float > 0", "0.0"),
    (NeumannOptions, {"hvp": None}, "neumann", "hvp", "'jvp' or 'vjp'", "None"),
    (ESOptions, {"samples": 0}, "es", "samples", "an int >= 1", "0"),
    (ESOptions, {"sigma": -0.1}, "es", "sigma", "a float > 0", "-0.1"),
    (ESOptions, {"seed": 1.5}, "es", "seed", "None or an int", "1.5"),
    (ESOptions, {"generator": 7}, "es", "generator", "None or a torch.Generator", "7"),
    (ESOptions, {"chunk_size": 0}, "es", "chunk_size", "None or an int >= 1", "0"),
    (ESOptions, {"vectorize": 1}, "es", "vectorize", "a bool", "1"),
    (
        UnrolledOptions,
        {"on_nonfinite": "ignore"},
        "unrolled",
        "on_nonfinite",
        "'raise' or 'zero'",
        "'ignore'",
    ),
    (UnrolledOptions, {"max_norm": -1.0}, "unrolled", "max_norm", "None or a float > 0", "-1.0"),
    (ESOptions, {"max_norm": 0}, "es", "max_norm", "None or a float > 0", "0"),
]


@pytest.mark.parametrize("cls,kw,method,name,expected,got", BAD, ids=[f"{b[0].__name__}-{b[3]}" for b in BAD])
def test_each_options_class_rejects_bad_values_naming_option_method_expected_and_got(
    cls, kw, method, name, expected, got
):
    message = f"hypergrad(method={method!r}): option {name} must be {expected}, got {got}"
    with pytest.raises(ValueError, match=re.escape(message)):
        cls(**kw)
    # The keyword form says the same.
    with pytest.raises(ValueError, match=re.escape(message)):
        options_for(method, **kw, **({"truncate": 1} if method == "truncated" and name != "truncate" else {}))


def test_es_seed_and_generator_together_and_a_missing_truncate():
    with pytest.raises(ValueError, match="pass seed or generator, not both"):
        ESOptions(seed=1, generator=torch.Generator())
    with pytest.raises(
        ValueError, match=r"hypergrad\(method='truncated'\): missing required option\(s\) \['truncate'\]"
    ):
        options_for("truncated")
    with pytest.raises(TypeError, match="truncate"):
        TruncatedOptions()


def test_options_are_frozen_own_options_positional_and_the_base_is_no_method():
    opts = CGOptions(iters=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.iters = 4  # type: ignore[misc]
    # A method's own options may be positional, in the documented order; the shared ones are keywords.
    assert CGOptions(5, 0.0, 0.1) == CGOptions(iters=5, tol=0.0, damping=0.1)
    assert NeumannOptions(3, 0.5) == NeumannOptions(terms=3, alpha=0.5)
    assert ESOptions(4, 0.2, 1) == ESOptions(samples=4, sigma=0.2, seed=1)
    assert TruncatedOptions(2) == TruncatedOptions(truncate=2)
    with pytest.raises(TypeError):
        CGOptions(5, 0.0, 0.1, None)  # type: ignore[misc]  # stationary_loss is keyword-only
    with pytest.raises(TypeError):
        UnrolledOptions("zero")  # type: ignore[misc]
    with pytest.raises(TypeError, match="base of the per-method options"):
        HypergradOptions()


def test_a_cli_can_list_every_method_and_its_documented_options():
    assert tuple(METHOD_OPTIONS) == METHODS == ("unrolled", "truncated", "cg", "neumann", "es")
    names = {m: [f.name for f in dataclasses.fields(cls)] for m, cls in METHOD_OPTIONS.items()}
    common = ["on_nonfinite", "max_norm"]
    assert names == {
        "unrolled": common,
        "truncated": [*common, "truncate"],
        "cg": [*common, "stationary_loss", "hvp", "iters", "tol", "damping"],
        "neumann": [*common, "stationary_loss", "hvp", "terms", "alpha"],
        "es": [*common, "samples", "sigma", "seed", "generator", "chunk_size", "vectorize"],
    }
    for method, cls in METHOD_OPTIONS.items():
        assert cls.method == method
        # Every option is documented in its class (or the common base), for --help.
        doc = (cls.__doc__ or "") + (HypergradOptions.__doc__ or "")
        for name in names[method]:
            assert re.search(rf"^\s+{name}:", doc, re.M), f"{cls.__name__}.{name} undocumented"
        defaults = {
            f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
        }
        if method != "truncated":  # truncate alone has no default
            assert cls() == cls(**defaults)


def test_problem_run_is_the_one_inner_loop():
    """``InnerProblem.run``: all K steps by default (the closed form ``w_K``), resumable from ``start``."""
    prob = InnerProblem.with_optimizer(
        lambda p, h, t: inner(p, h), outer, {"w": W0.clone()}, sgd(LR), inner_steps=K
    )
    hp = {"lam": LAM.clone()}
    w, state = prob.run(hp)
    torch.testing.assert_close(w["w"], w_K(), rtol=0, atol=1e-12)
    w2, s2 = prob.run(hp, range(2))
    w2, s2 = prob.run(hp, range(2, K), start=(w2, s2))
    assert torch.equal(w2["w"], w["w"]) and int(s2.count) == int(state.count) == K
    assert torch.equal(call("unrolled").params["w"], w["w"])


def test_docstring_examples_of_the_options_module():
    import doctest

    from hrl_nested.hypergrad import options

    result = doctest.testmod(options, globs={"torch": torch, **vars(options)})
    assert result.failed == 0 and result.attempted > 0
