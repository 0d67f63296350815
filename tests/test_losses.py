"""PPO losses: hand-computed values, a slow per-sample reference loop, gradients."""

import math

import pytest
import torch

from hrl_nested.losses import approx_kl, clip_fraction, entropy_loss, ppo_clip_loss, value_loss


def slow_ppo(logp, old_logp, adv, eps):
    total = 0.0
    for lp, olp, a in zip(logp.tolist(), old_logp.tolist(), adv.tolist()):
        ratio = math.exp(lp - olp)
        total += -min(ratio * a, min(max(ratio, 1 - eps), 1 + eps) * a)
    return total / len(adv)


def slow_value(v, v_old, ret, eps):
    total = 0.0
    for x, xo, r in zip(v.tolist(), v_old.tolist(), ret.tolist()):
        if eps is None:
            total += 0.5 * (x - r) ** 2
        else:
            xc = xo + min(max(x - xo, -eps), eps)
            total += 0.5 * max((x - r) ** 2, (xc - r) ** 2)
    return total / len(v)


def test_ppo_clip_hand_computed():
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    # ratio 1.5, A>0: clipped to 1.2 -> -1.2; ratio 1.5, A<0: min(-1.5, -1.2) = -1.5 -> 1.5
    # ratio 0.5, A>0: min(0.5, 0.8) = 0.5 -> -0.5; ratio 0.5, A<0: min(-0.5, -0.8) -> 0.8
    expected = (-1.2 + 1.5 - 0.5 + 0.8) / 4
    assert ppo_clip_loss(logp, old, adv, 0.2).item() == pytest.approx(expected, rel=1e-6)


def test_ppo_clip_matches_slow_loop_and_gradient_is_zero_when_clipped():
    g = torch.Generator().manual_seed(0)
    logp, old, adv = (torch.randn(50, generator=g, dtype=torch.float64) for _ in range(3))
    assert ppo_clip_loss(logp, old, adv, 0.2).item() == pytest.approx(slow_ppo(logp, old, adv, 0.2))
    lp = torch.log(torch.tensor([2.0], dtype=torch.float64)).requires_grad_(True)
    ppo_clip_loss(lp, torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64), 0.2).backward()
    assert lp.grad.item() == 0.0  # ratio 2 > 1.2 with A > 0: clipped, no gradient


def test_value_loss_hand_computed_and_slow_loop():
    v, v_old, ret = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 2.5]), torch.tensor([0.0, 1.0])
    assert value_loss(v, v_old, ret).item() == pytest.approx(0.5 * (1 + 4) / 2)
    # clipped: v_c = [0.2, 2.7]; max((1-0)^2, 0.2^2) = 1, max(4, 1.7^2=2.89) = 4
    assert value_loss(v, v_old, ret, clip_coef=0.2).item() == pytest.approx(1.25)
    g = torch.Generator().manual_seed(1)
    v, v_old, ret = (torch.randn(40, generator=g, dtype=torch.float64) for _ in range(3))
    for eps in (None, 0.1):
        assert value_loss(v, v_old, ret, eps).item() == pytest.approx(slow_value(v, v_old, ret, eps))


def test_approx_kl_and_clip_fraction():
    logp, old = torch.tensor([0.0, 0.1, -0.5, 0.0]), torch.zeros(4)
    expected = sum(math.exp(x) - 1 - x for x in logp.tolist()) / 4
    assert approx_kl(logp, old).item() == pytest.approx(expected, rel=1e-6)
    assert approx_kl(old, old).item() == 0.0
    assert clip_fraction(logp, old, 0.2).item() == 0.25  # only exp(-0.5) - 1 = -0.39 is out
    assert entropy_loss(torch.tensor([1.0, 2.0])).item() == -1.5


def test_gradcheck_and_2d_inputs():
    g = torch.Generator().manual_seed(2)
    logp = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    adv = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    old = logp.detach() + 0.05 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda lp, a: ppo_clip_loss(lp, old, a, 0.2), (logp, adv))
    v = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    ret = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, r: value_loss(v, old, r, 0.3), (v, ret))


def test_shape_errors():
    with pytest.raises(ValueError, match="adv: expected shape"):
        ppo_clip_loss(torch.zeros(3), torch.zeros(3), torch.zeros(4), 0.2)
    with pytest.raises(ValueError, match="ret: expected shape"):
        value_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3, 1))
