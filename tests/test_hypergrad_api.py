"""The hypergrad contract: argument checks, errors, non-finite handling, clipping, ES vectorization."""

from __future__ import annotations

import doctest

import pytest
import torch

import hrl_nested.hypergrad as hg_pkg
from hrl_nested import optim
from hrl_nested.hypergrad import (
    HypergradResult,
    NonFiniteHypergradError,
    NonFiniteHypergradWarning,
    core,
    es,
    hypergrad,
    implicit,
    unrolled,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

DT = torch.float64


def inner(p, h):
    return 0.5 * ((p["w"] - h["c"]) ** 2).sum() + 0.1 * (p["w"] ** 4).sum()


def outer(p, h):
    return ((p["w"] - 1.0) ** 2).sum()


def P():
    return {"w": torch.tensor([0.5, -0.3, 0.2], dtype=DT)}


def H():
    return {"c": torch.tensor([0.4, 0.1, -0.6], dtype=DT)}


def call(method="unrolled", inner_loss=inner, outer_loss=outer, params=None, hparams=None, **kw):
    kw.setdefault("inner_steps", 4)
    kw.setdefault("inner_lr", 0.1)
    params = P() if params is None else params
    hparams = H() if hparams is None else hparams
    return hypergrad(inner_loss, outer_loss, params, hparams, method=method, **kw)


def test_result_type_and_fields():
    res = call()
    assert isinstance(res, HypergradResult)
    assert set(res.grads) == {"c"} and res.grads["c"].shape == (3,) and res.grads["c"].dtype == DT
    assert res.outer_loss.shape == () and not res.outer_loss.requires_grad
    assert res.opt_state.count.item() == 4
    assert res.grad_norm.item() == pytest.approx(res.grads["c"].norm().item())
    assert res.clipped is False and res.nonfinite is False


def test_inputs_are_not_modified_and_may_require_grad():
    params = {"w": P()["w"].requires_grad_()}
    hparams = {"c": H()["c"].requires_grad_()}
    before = (params["w"].detach().clone(), hparams["c"].detach().clone())
    for method, opts in [("unrolled", {}), ("cg", {}), ("es", {"samples": 2, "seed": 0})]:
        res = call(method, params=params, hparams=hparams, **opts)
        assert res.grads["c"].grad_fn is None and hparams["c"].grad is None
    assert torch.equal(params["w"].detach(), before[0]) and torch.equal(hparams["c"].detach(), before[1])


# --- argument errors -------------------------------------------------------------------------


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError, match=r"method must be one of .*'unrolled'.*got 'implicit'"):
        call("implicit")


@pytest.mark.parametrize(
    "method,opts,pattern",
    [
        ("unrolled", {"iters": 3}, r"unknown option\(s\) \['iters'\]; expected .*on_nonfinite"),
        ("cg", {"iter": 3}, r"unknown option\(s\) \['iter'\]; expected .*'iters'"),
        ("neumann", {"truncate": 3}, r"unknown option\(s\) \['truncate'\].*'terms'"),
        ("es", {"stationary_loss": inner}, r"unknown option\(s\) \['stationary_loss'\].*'samples'"),
        ("truncated", {}, r"missing required option\(s\) \['truncate'\]"),
        ("truncated", {"truncate": -1}, r"truncate must be an int >= 0, got -1"),
        ("truncated", {"truncate": 2.0}, r"truncate must be an int >= 0, got 2.0"),
        ("cg", {"iters": 0}, r"iters must be an int >= 1, got 0"),
        ("cg", {"tol": -1.0}, r"tol must be a float >= 0"),
        ("cg", {"damping": -0.1}, r"damping must be a float >= 0"),
        ("cg", {"hvp": "fwd"}, r"hvp must be 'jvp' or 'vjp', got 'fwd'"),
        ("cg", {"stationary_loss": 3}, r"stationary_loss must be None or a callable"),
        ("neumann", {"terms": 0}, r"terms must be an int >= 1"),
        ("neumann", {"alpha": 0.0}, r"alpha must be None or a float > 0"),
        ("es", {"samples": 0}, r"samples must be an int >= 1"),
        ("es", {"sigma": 0.0}, r"sigma must be a float > 0"),
        ("es", {"seed": 1, "generator": torch.Generator()}, r"seed or generator, not both"),
        ("es", {"vectorize": 1}, r"vectorize must be a bool"),
        ("es", {"chunk_size": 0}, r"chunk_size must be None or an int >= 1"),
        ("unrolled", {"on_nonfinite": "ignore"}, r"on_nonfinite must be 'raise' or 'zero', got 'ignore'"),
        ("unrolled", {"max_norm": -1.0}, r"max_norm must be None or a float > 0"),
    ],
)
def test_invalid_options_say_what_was_expected(method, opts, pattern):
    with pytest.raises(ValueError, match=pattern):
        call(method, **opts)


@pytest.mark.parametrize(
    "kw,pattern",
    [
        ({"inner_steps": -1}, r"inner_steps must be an int >= 0, got -1"),
        ({"inner_steps": 2.5}, r"inner_steps must be an int >= 0"),
        ({"inner_lr": 0.0}, r"inner_lr must be a float > 0 or a callable"),
        ({"inner_lr": "0.1"}, r"inner_lr must be a float > 0 or a callable"),
        (
            {"inner_optimizer": "rmsprop"},
            r"inner_optimizer must be 'sgd', 'adam' or an \(init, update\) pair",
        ),
        ({"inner_optimizer": optim.sgd(0.1), "inner_lr": lambda h: h["c"].sum()}, r"callable inner_lr needs"),
        ({"hparams": {}}, r"hparams is empty"),
    ],
)
def test_invalid_arguments(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        call(**kw)


def test_non_dict_inputs_are_type_errors():
    with pytest.raises(TypeError, match="params must be a dict"):
        call(params=[torch.zeros(3)])
    with pytest.raises(TypeError, match="floating-point"):
        call(hparams={"c": torch.tensor([1, 2, 3])})


def test_inner_loss_arity():
    with pytest.raises(ValueError, match=r"inner_loss must take \(params, hparams\)"):
        call(inner_loss=lambda p: p["w"].sum())
    with pytest.raises(ValueError, match=r"inner_loss must take"):
        call(inner_loss=lambda p, h, t, u: p["w"].sum())
    # A step index with no stationary_loss: the implicit methods cannot guess the loss.
    with pytest.raises(ValueError, match="pass stationary_loss"):
        call("cg", inner_loss=lambda p, h, t: inner(p, h))

    # A module is read through its forward.
    class Loss(torch.nn.Module):
        def forward(self, p, h):
            return inner(p, h)

    torch.testing.assert_close(call(inner_loss=Loss()).grads["c"], call().grads["c"])
    # *args receives the step too.
    steps = []
    call(inner_loss=lambda p, h, *rest: (steps.append(rest), inner(p, h))[1])
    assert steps == [(0,), (1,), (2,), (3,)]


@pytest.mark.parametrize("method", ["cg", "neumann"])
def test_implicit_rejects_a_hyperparameter_with_no_path(method):
    hp = {**H(), "unused": torch.ones(2, dtype=DT)}
    with pytest.raises(ValueError, match=r"'unused' has no implicit gradient.*neither"):
        call(method, hparams=hp)
    # The same hyperparameter with the unrolled method has an honest zero gradient.
    assert torch.equal(call("unrolled", hparams=hp).grads["unused"], torch.zeros(2, dtype=DT))


def test_implicit_accepts_a_hyperparameter_only_in_the_outer_loss():
    hp = {**H(), "scale": torch.tensor(2.0, dtype=DT)}
    res = call("cg", hparams=hp, outer_loss=lambda p, h: h["scale"] * outer(p, h))
    assert res.grads["scale"].item() == pytest.approx(res.outer_loss.item() / 2.0)


def test_losses_must_be_scalar():
    with pytest.raises(ValueError, match="outer_loss must return a scalar"):
        call(outer_loss=lambda p, h: p["w"] ** 2)


# --- non-finite hypergradients and clipping --------------------------------------------------------

DIVERGE = dict(inner_lr=50.0, inner_steps=40)  # the quartic term blows up: inf, then NaN


@pytest.mark.parametrize("method", ["unrolled", "truncated", "cg", "neumann", "es"])
def test_nonfinite_raises_by_default(method):
    opts = {"truncate": 2} if method == "truncated" else {"seed": 0, "samples": 2} if method == "es" else {}
    with pytest.raises(
        NonFiniteHypergradError, match=rf"method='{method}'.*non-finite hypergradient for \['c'\]"
    ):
        call(method, **DIVERGE, **opts)


def test_nonfinite_zero_reports_and_zeroes():
    with pytest.warns(NonFiniteHypergradWarning, match="non-finite hypergradient"):
        res = call(on_nonfinite="zero", **DIVERGE)
    assert res.nonfinite is True
    assert torch.equal(res.grads["c"], torch.zeros(3, dtype=DT))
    assert not torch.isfinite(res.grad_norm)


def test_max_norm_clips_and_reports_the_norm_before():
    free = call()
    norm = free.grads["c"].norm().item()
    clipped = call(max_norm=norm / 4)
    assert clipped.clipped is True
    assert clipped.grad_norm.item() == pytest.approx(norm)
    assert clipped.grads["c"].norm().item() == pytest.approx(norm / 4)
    torch.testing.assert_close(clipped.grads["c"] * 4, free.grads["c"])
    roomy = call(max_norm=norm * 2)
    assert roomy.clipped is False and torch.equal(roomy.grads["c"], free.grads["c"])


def test_max_norm_across_several_hparams():
    hp = {"c": H()["c"], "s": torch.tensor(1.5, dtype=DT)}
    res = call(hparams=hp, outer_loss=lambda p, h: h["s"] * outer(p, h), max_norm=0.01)
    total = torch.sqrt(sum((g**2).sum() for g in res.grads.values()))
    assert total.item() == pytest.approx(0.01) and res.clipped


# --- evolution strategies: vectorized and looped agree ---------------------------------------------


def test_es_vmap_and_loop_agree_and_chunking_is_invisible():
    base = dict(samples=5, sigma=0.2, seed=3)
    vec = call("es", **base)
    loop = call("es", vectorize=False, **base)
    chunked = call("es", chunk_size=3, **base)
    assert vec.info["es_vectorized"] and not loop.info["es_vectorized"]
    torch.testing.assert_close(vec.grads["c"], loop.grads["c"], rtol=0, atol=1e-12)
    torch.testing.assert_close(vec.grads["c"], chunked.grads["c"], rtol=0, atol=1e-12)


def test_es_falls_back_to_a_loop_when_the_losses_cannot_be_vmapped():
    def host_synced(p, h):
        if inner(p, h).item() > 1e9:  # data-dependent Python control flow: vmap refuses
            raise AssertionError
        return inner(p, h)

    with pytest.warns(RuntimeWarning, match="could not be vmapped"):
        res = call("es", inner_loss=host_synced, samples=4, seed=1)
    assert res.info["es_vectorized"] is False
    torch.testing.assert_close(res.grads["c"], call("es", samples=4, seed=1).grads["c"], rtol=0, atol=1e-12)


def test_es_seed_and_generator_are_reproducible():
    a = call("es", samples=3, seed=7)
    b = call("es", samples=3, seed=7)
    c = call("es", samples=3, seed=8)
    assert torch.equal(a.grads["c"], b.grads["c"]) and not torch.equal(a.grads["c"], c.grads["c"])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(
        call("es", samples=3, generator=g1).grads["c"], call("es", samples=3, generator=g2).grads["c"]
    )


@pytest.mark.parametrize("method", ["unrolled", "truncated", "cg", "neumann"])
def test_works_when_called_under_no_grad(method):
    opts = {"truncate": 2} if method == "truncated" else {}
    expected = call(method, **opts).grads["c"]
    with torch.no_grad():
        got = call(method, **opts).grads["c"]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_inner_steps_zero_is_the_direct_term_only():
    hp = {**H(), "s": torch.tensor(2.0, dtype=DT)}
    o = lambda p, h: h["s"] * outer(p, h) + (h["c"] ** 2).sum()
    for method in ["unrolled", "cg", "neumann"]:
        res = call(method, hparams=hp, outer_loss=o, inner_steps=0)
        torch.testing.assert_close(res.params["w"], P()["w"])
        torch.testing.assert_close(res.grads["s"], outer(P(), None))
        # c still acts through the stationarity of w_0 for the implicit methods; unrolled sees only 2c.
        if method == "unrolled":
            torch.testing.assert_close(res.grads["c"], 2 * H()["c"])


def test_docstring_examples():
    for module in [hg_pkg, core, unrolled, implicit, es]:
        result = doctest.testmod(module, globs={"torch": torch, **vars(module)})
        assert result.failed == 0 and result.attempted > 0, module.__name__
