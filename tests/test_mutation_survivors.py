"""Tests written to kill the mutants that survived `tools/mutation.py returns losses` (mutmut).

Each test names the mutation it kills. What the survivors had in common: argument checks that were
only exercised for some arguments or without looking at the message, float64 precision never
checked, a strict inequality never met at its boundary, and estimators only tested with
``old_logp = 0`` (where ``logp - old_logp`` and ``logp + old_logp`` agree).
"""

import math

import pytest
import torch

from hrl_nested.losses import approx_kl, clip_fraction, ppo_clip_loss, value_loss
from hrl_nested.returns import discounted_returns, gae

F64 = torch.float64


def _flags(bits: list[list[int]]) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.bool)


# ------------------------------------------------------------------------------ returns: checks
def test_gae_rejects_integer_rewards_with_a_message():
    """Kills ``raise ValueError(None)``: the message names what was expected."""
    f = torch.zeros(2, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"r_t: expected a floating-point tensor, got torch.int64"):
        gae(torch.ones(2, 1, dtype=torch.int64), torch.zeros(2, 1), torch.zeros(2, 1), f, f, 0.9, 0.9)


@pytest.mark.parametrize("fn", ["gae", "discounted_returns"])
def test_mask_errors_name_the_offending_mask(fn):
    """Kills renamed keys (``"XXterminated_tXX"``, ``"TRUNCATED_T"``) in the shape and dtype checks."""
    r, v = torch.zeros(3, 2), torch.zeros(3, 2)
    ok, short = torch.zeros(3, 2, dtype=torch.bool), torch.zeros(2, 2, dtype=torch.bool)

    def call(term, trunc):
        if fn == "gae":
            return gae(r, v, v, term, trunc, 0.9, 0.9)
        return discounted_returns(r, term, trunc, v, 0.9)

    with pytest.raises(ValueError, match=r"^terminated_t: expected shape \(3, 2\)"):
        call(short, ok)
    with pytest.raises(ValueError, match=r"^truncated_t: expected shape \(3, 2\)"):
        call(ok, short)
    with pytest.raises(ValueError, match=r"^terminated_t: expected a bool tensor, got torch.float32"):
        call(ok.float(), ok)
    with pytest.raises(ValueError, match=r"^truncated_t: expected a bool tensor, got torch.float32"):
        call(ok, ok.float())


def test_next_values_of_a_broadcastable_wrong_shape_are_rejected():
    """Kills dropping ``v_tp1`` from the shape check of `gae` and of `discounted_returns`: a ``(T, 1)``
    tensor would silently broadcast over the envs."""
    r, f = torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"^v_tp1: expected shape \(3, 2\)"):
        gae(r, r, torch.zeros(3, 1), f, f, 0.9, 0.9)
    with pytest.raises(ValueError, match=r"^v_tp1: expected shape \(3, 2\)"):
        discounted_returns(r, f, f, torch.zeros(3, 1), 0.9)
    with pytest.raises(ValueError, match=r"^v_t: expected shape \(3, 2\)"):
        gae(r, torch.zeros(3, 1), r, f, f, 0.9, 0.9)


# ------------------------------------------------------------------------------ returns: values
def _slow_gae(r, v, v_tp1, term, trunc, gamma, lam):
    """The GAE recursion in Python floats, one env and one step at a time."""
    num_steps, num_envs = len(r), len(r[0])
    adv = [[0.0] * num_envs for _ in range(num_steps)]
    for i in range(num_envs):
        a = 0.0
        for t in reversed(range(num_steps)):
            delta = r[t][i] + gamma * (0.0 if term[t][i] else v_tp1[t][i]) - v[t][i]
            a = delta + gamma * lam * (0.0 if term[t][i] or trunc[t][i] else a)
            adv[t][i] = a
    return adv


def test_gae_keeps_float64_precision():
    """Kills ``.to(None)`` for the masks: a bool mask times a Python float is float32, so the discount
    and the trace would be rounded to float32 (a relative error near 1e-8) and the result with them."""
    g = torch.Generator().manual_seed(0)
    r, v, v_tp1 = (torch.randn(6, 3, generator=g, dtype=F64) for _ in range(3))
    term = _flags([[0, 0, 1], [0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 0]])
    trunc = _flags([[0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]])
    gamma, lam = 0.99, 0.95
    adv, ret = gae(r, v, v_tp1, term, trunc, gamma, lam)
    assert adv.dtype == F64 and ret.dtype == F64
    slow = _slow_gae(r.tolist(), v.tolist(), v_tp1.tolist(), term.tolist(), trunc.tolist(), gamma, lam)
    want = torch.tensor(slow, dtype=F64)
    torch.testing.assert_close(adv, want, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(ret, want + v, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("terminated", [False, True])
def test_discounted_returns_of_a_single_step(terminated):
    """Kills ``torch.zeros_like(v_tp1[1])``: with ``T = 1`` there is no row 1. ``G_0 = r_0 + gamma *
    (0 if terminated else v_1)``."""
    r, v_tp1 = torch.tensor([[1.0, 2.0]], dtype=F64), torch.tensor([[10.0, 20.0]], dtype=F64)
    term = torch.full((1, 2), terminated)
    out = discounted_returns(r, term, torch.zeros(1, 2, dtype=torch.bool), v_tp1, 0.5)
    want = [[1.0, 2.0]] if terminated else [[6.0, 12.0]]
    torch.testing.assert_close(out, torch.tensor(want, dtype=F64))


# ------------------------------------------------------------------------------ losses: checks
# Each argument in turn gets a shape that broadcasts against the others ((4, 1) vs (4,)), so only the
# explicit check can catch it. Kills dropping any argument from `_check_same` and the mutants of
# `_check_same` itself (``items[1]`` as the reference, ``items[2:]`` skipping the second argument).
_LOSSES = {
    "ppo_clip_loss": (lambda a, b, c: ppo_clip_loss(a, b, c, 0.2), ("logp", "old_logp", "adv")),
    "value_loss": (lambda a, b, c: value_loss(a, b, c, 0.2), ("v", "v_old", "ret")),
    "approx_kl": (approx_kl, ("logp", "old_logp")),
    "clip_fraction": (lambda a, b: clip_fraction(a, b, 0.2), ("logp", "old_logp")),
}


@pytest.mark.parametrize(
    "loss, position", [(name, k) for name, (_, args) in _LOSSES.items() for k in range(len(args))]
)
def test_losses_reject_a_broadcastable_shape_in_any_argument(loss, position):
    fn, names = _LOSSES[loss]
    args = [torch.zeros(4) for _ in names]
    args[position] = torch.zeros(4, 1)
    with pytest.raises(ValueError, match=r"expected shape") as info:
        fn(*args)
    wrong = names[position] if position else names[1]  # the first argument is the reference shape
    assert str(info.value).startswith(f"{wrong}: ")


# ------------------------------------------------------------------------------ losses: values
def test_approx_kl_with_nonzero_old_logprobs():
    """Kills ``logp + old_logp``: checked against ``mean((rho - 1) - log rho)`` with ``old_logp != 0``,
    and it is 0 when the policies agree."""
    logp = torch.tensor([-0.3, -1.2, -2.0], dtype=F64)
    old = torch.tensor([-0.5, -1.0, -2.0], dtype=F64)
    want = sum(math.exp(a - b) - 1 - (a - b) for a, b in zip(logp.tolist(), old.tolist())) / 3
    assert approx_kl(logp, old).item() == pytest.approx(want, rel=1e-12)
    assert approx_kl(old, old).item() == 0.0


def test_clip_fraction_with_nonzero_old_logprobs():
    """Kills ``logp + old_logp``: identical nonzero log-probs have ratio 1, so nothing is clipped."""
    logp = torch.tensor([-0.7, -1.5, -3.0])
    assert clip_fraction(logp, logp.clone(), 0.2).item() == 0.0
    assert clip_fraction(logp, logp - 0.5, 0.2).item() == 1.0  # ratio e^0.5 ~ 1.65, outside [0.8, 1.2]


def test_clip_fraction_counts_only_ratios_strictly_outside_the_clip_range():
    """Kills ``>=`` for ``>``: a ratio exactly at ``1 + eps`` is inside the range `ppo_clip_loss`
    clamps to (its gradient still flows), so it is not counted as clipped."""
    d = torch.tensor([0.1, 0.3], dtype=F64)
    eps = float(d[0].exp() - 1.0)  # the ratio of the first sample is exactly 1 + eps in float64
    assert clip_fraction(d, torch.zeros(2, dtype=F64), eps).item() == 0.5
    assert clip_fraction(torch.zeros(2), torch.zeros(2), 0.0).item() == 0.0
