"""Action distributions against torch.distributions and closed forms."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import distributions as td

from hrl_nested.distributions import Categorical, DiagGaussian, make_distribution


def test_categorical_matches_torch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g)
    ours, ref = Categorical(logits), td.Categorical(logits=logits)
    a = torch.randint(0, 4, (6,), generator=g)
    torch.testing.assert_close(ours.log_prob(a), ref.log_prob(a))
    torch.testing.assert_close(ours.entropy(), ref.entropy())
    torch.testing.assert_close(ours.probs, ref.probs)
    assert torch.equal(ours.mode(), logits.argmax(-1))


def test_categorical_hand_computed():
    d = Categorical(torch.log(torch.tensor([0.5, 0.25, 0.25])))
    assert d.entropy().item() == pytest.approx(1.5 * math.log(2))
    assert d.log_prob(torch.tensor(0)).item() == pytest.approx(math.log(0.5))


def test_categorical_sample_frequencies_and_masking():
    probs = torch.tensor([0.1, 0.6, 0.3, 0.0])
    d = Categorical(torch.log(probs).expand(20000, 4))
    a = d.sample(torch.Generator().manual_seed(1))
    assert a.dtype == torch.int64 and a.shape == (20000,)
    freq = torch.bincount(a, minlength=4).float() / 20000
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)
    assert freq[3] == 0  # a -inf logit is never drawn
    assert torch.isfinite(d.entropy()).all()
    torch.testing.assert_close(d.entropy()[0], td.Categorical(probs=probs).entropy())


def test_categorical_differentiable_and_seeded():
    logits = torch.randn(5, 3, requires_grad=True)
    d = Categorical(logits)
    (d.log_prob(torch.tensor([0, 1, 2, 0, 1])).sum() + d.entropy().sum()).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    s1 = d.sample(torch.Generator().manual_seed(3))
    s2 = d.sample(torch.Generator().manual_seed(3))
    assert torch.equal(s1, s2)


def test_gaussian_matches_torch_normal():
    g = torch.Generator().manual_seed(0)
    mean, log_std = torch.randn(5, 3, generator=g), torch.randn(3, generator=g) * 0.3
    ours = DiagGaussian(mean, log_std)
    ref = td.Independent(td.Normal(mean, log_std.exp()), 1)
    a = torch.randn(5, 3, generator=g)
    torch.testing.assert_close(ours.log_prob(a), ref.log_prob(a))
    torch.testing.assert_close(ours.entropy(), ref.entropy())
    torch.testing.assert_close(ours.mode(), mean)
    s, lp = ours.sample_and_log_prob(torch.Generator().manual_seed(2))
    torch.testing.assert_close(lp, ref.log_prob(s))


def test_gaussian_hand_computed():
    d = DiagGaussian(torch.zeros(2), torch.zeros(2))
    assert d.log_prob(torch.zeros(2)).item() == pytest.approx(-math.log(2 * math.pi))
    assert d.entropy().item() == pytest.approx(1.0 + math.log(2 * math.pi))


@pytest.mark.parametrize(
    "bounds",
    [
        None,
        (np.array([-2.0, 0.0]), np.array([2.0, 1.0])),  # scales 2 and 0.5: their logs cancel in the sum
        (np.array([-1.0, 0.0]), np.array([3.0, 0.5])),  # scales 2 and 0.25, off-centre: the log(scale)
        (np.array([0.0, -5.0]), np.array([6.0, 5.0])),  # term counts (issue 15 item 1); scales 3 and 5
    ],
    ids=["unit", "scales-cancel", "asymmetric", "wide"],
)
def test_tanh_log_prob_change_of_variables(bounds):
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(7, 2, generator=g, dtype=torch.float64)
    log_std = torch.randn(7, 2, generator=g, dtype=torch.float64) * 0.3
    low, high = bounds if bounds else (None, None)
    d = DiagGaussian(mean, log_std, squash="tanh", low=low, high=high)
    loc = 0.0 if bounds is None else torch.tensor((high + low) / 2)
    scale = 1.0 if bounds is None else torch.tensor((high - low) / 2)
    ref = td.TransformedDistribution(
        td.Independent(td.Normal(mean, log_std.exp()), 1),
        [td.TanhTransform(), td.AffineTransform(loc, scale, event_dim=1)],
    )
    u, lp = d.sample_and_log_prob(torch.Generator().manual_seed(1))
    a = d.env_action(u)  # the draw u is stored and scored; the env gets the squashed action
    torch.testing.assert_close(lp, ref.log_prob(a))
    torch.testing.assert_close(d.log_prob(u), lp)
    torch.testing.assert_close(d.unsquash(a), u)
    # explicit formula: log N(u) - sum log(scale * (1 - tanh(u)^2))
    manual = td.Normal(mean, log_std.exp()).log_prob(u).sum(-1) - torch.log(
        scale * (1 - torch.tanh(u) ** 2)
    ).sum(-1)
    torch.testing.assert_close(lp, manual)
    lo = -1.0 if bounds is None else torch.tensor(low)
    hi = 1.0 if bounds is None else torch.tensor(high)
    assert ((a >= lo) & (a <= hi)).all()
    torch.testing.assert_close(d.env_action(d.mode()), loc + scale * torch.tanh(mean))
    torch.testing.assert_close(d.entropy(), td.Independent(td.Normal(mean, log_std.exp()), 1).entropy())


def test_tanh_log_prob_finite_at_saturation():
    d = DiagGaussian(torch.full((3, 1), 30.0), torch.zeros(1), squash="tanh")
    a, lp = d.sample_and_log_prob()
    assert torch.isfinite(lp).all()
    assert torch.isfinite(d.log_prob(torch.ones(3, 1))).all()


def test_clip_stores_unclipped_action_env_gets_clipped():
    mean = torch.tensor([[5.0, -5.0]])
    d = DiagGaussian(
        mean, torch.zeros(2), squash="clip", low=np.array([-1.0, -1.0]), high=np.array([1.0, 1.0])
    )
    a = d.sample(torch.Generator().manual_seed(0))
    assert (a.abs() > 1).all()  # the sample is the unclipped Gaussian draw
    torch.testing.assert_close(d.log_prob(a), td.Independent(td.Normal(mean, torch.ones(2)), 1).log_prob(a))
    assert d.env_action(a).tolist() == [[1.0, -1.0]]
    torch.testing.assert_close(d.mode(), mean)


def test_gaussian_reparameterized_gradient():
    mean = torch.zeros(4, 2, requires_grad=True)
    log_std = torch.zeros(2, requires_grad=True)
    a = DiagGaussian(mean, log_std, squash="tanh").sample(torch.Generator().manual_seed(0))
    a.sum().backward()
    assert mean.grad.abs().sum() > 0 and log_std.grad.abs().sum() > 0


def test_make_distribution():
    d = make_distribution(gym.spaces.Discrete(3), torch.zeros(5, 3))
    assert isinstance(d, Categorical) and d.sample().shape == (5,)
    box = gym.spaces.Box(-1.0, 1.0, (2,))
    d = make_distribution(box, torch.zeros(5, 4))
    assert isinstance(d, DiagGaussian) and d.squash == "clip" and d.sample().shape == (5, 2)
    assert make_distribution(box, torch.zeros(5, 4), squash="tanh").squash == "tanh"
    d = make_distribution(gym.spaces.Box(-np.inf, np.inf, (2,)), torch.zeros(5, 4))
    assert d.squash is None
    head = torch.cat([torch.ones(5, 2), torch.full((5, 2), -1.0)], -1)
    d = make_distribution(box, head)
    torch.testing.assert_close(d.mean, torch.ones(5, 2))
    torch.testing.assert_close(d.std, torch.full((5, 2), math.exp(-1.0)))


def test_errors():
    with pytest.raises(ValueError, match="last dim 3"):
        make_distribution(gym.spaces.Discrete(3), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="Discrete or a 1-D Box"):
        make_distribution(gym.spaces.MultiBinary(3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="bounded Box"):
        make_distribution(gym.spaces.Box(-np.inf, np.inf, (1,)), torch.zeros(5, 2), squash="clip")
    with pytest.raises(ValueError, match="squash"):
        DiagGaussian(torch.zeros(1), torch.zeros(1), squash="sigmoid")
    with pytest.raises(ValueError, match="action: expected shape"):
        Categorical(torch.zeros(5, 2)).log_prob(torch.zeros(4, dtype=torch.long))


def test_under_vmap_and_compile():
    logits = torch.randn(3, 5, 4)
    acts = torch.randint(0, 4, (3, 5))
    lp = torch.func.vmap(lambda l, a: Categorical(l).log_prob(a))(logits, acts)
    torch.testing.assert_close(lp, Categorical(logits).log_prob(acts))
    mean, log_std = torch.randn(5, 2), torch.zeros(2)
    a = torch.randn(5, 2) * 0.3

    def tanh_lp(m, s, a):
        return DiagGaussian(m, s, squash="tanh").log_prob(a.tanh())

    compiled = torch.compile(tanh_lp, dynamic=False)
    torch.testing.assert_close(compiled(mean, log_std, a), tanh_lp(mean, log_std, a), rtol=1e-4, atol=1e-4)
