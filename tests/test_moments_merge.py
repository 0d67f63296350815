"""The one parallel-variance merge (`hrl_nested.moments.merge_moments`, Chan, Golub & LeVeque 1979) against
the float64 closed form of the concatenated data, and its users: `RunningMeanStd`, the K-seed normalizer
and `hrl_nested.distributed` all run this one function."""

import gymnasium as gym
import pytest
import torch

from hrl_nested import distributed
from hrl_nested import moments as moments_module
from hrl_nested.algos.ppo_multiseed_parts import StackedObsNormalizer
from hrl_nested.moments import Moments, merge_moments, moments
from hrl_nested.obs_norm import RunningMeanStd

D = torch.float64


def _data(n: int = 41, d: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # a large mean and a small spread: the case where a naive sum of squares loses its digits
    return 1e4 + 0.5 * torch.randn(n, d, generator=g, dtype=D)


@pytest.mark.parametrize("cuts", [[1], [20], [40], [3, 4, 30], [1, 2, 3, 4, 5, 6]])
def test_merging_the_parts_gives_the_moments_of_the_concatenated_data(cuts):
    x = _data()
    bounds = [0, *cuts, len(x)]
    parts = [moments(x[lo:hi]) for lo, hi in zip(bounds, bounds[1:])]
    out = parts[0]
    for m in parts[1:]:
        out = merge_moments(out, m)
    mean = x.sum(0) / len(x)
    assert out.count.item() == len(x)
    torch.testing.assert_close(out.mean, mean, rtol=1e-15, atol=0)
    torch.testing.assert_close(out.m2, ((x - mean) ** 2).sum(0), rtol=1e-9, atol=0)
    torch.testing.assert_close(out.var, ((x - mean) ** 2).mean(0), rtol=1e-9, atol=0)


def test_the_merge_is_symmetric_up_to_rounding_and_an_empty_side_changes_nothing():
    x = _data(seed=1)
    a, b = moments(x[:7]), moments(x[7:])
    ab, ba = merge_moments(a, b), merge_moments(b, a)
    torch.testing.assert_close(ab.mean, ba.mean, rtol=1e-15, atol=0)
    torch.testing.assert_close(ab.m2, ba.m2, rtol=1e-9, atol=0)
    zero = torch.zeros(3, dtype=D)
    empty = Moments(torch.zeros((), dtype=D), zero, zero)
    for merged in (merge_moments(empty, a), merge_moments(a, empty)):
        assert torch.equal(merged.mean, a.mean) and torch.equal(merged.m2, a.m2)
        assert merged.count.item() == 7
    both_empty = merge_moments(empty, empty)
    assert torch.equal(both_empty.mean, zero) and torch.equal(both_empty.m2, zero)  # not NaN
    int_empty = Moments(torch.zeros((), dtype=torch.int64), zero, zero)
    assert torch.equal(merge_moments(int_empty, int_empty).mean, zero)  # integer counts too


def test_counts_broadcast_to_merge_k_sets_at_once_and_may_be_python_numbers():
    """A ``(K, 1)`` count with ``(K, d)`` means merges K independent pairs: row k is the merge of pair k."""
    xs = [_data(n=12 + k, seed=k) for k in range(4)]
    a = [moments(x[:5]) for x in xs]
    b = [moments(x[5:]) for x in xs]
    stacked = merge_moments(
        Moments(torch.stack([m.count for m in a])[:, None], torch.stack([m.mean for m in a]),
                torch.stack([m.m2 for m in a])),
        Moments(torch.stack([m.count for m in b])[:, None], torch.stack([m.mean for m in b]),
                torch.stack([m.m2 for m in b])),
    )  # fmt: skip
    for k, x in enumerate(xs):
        mean = x.sum(0) / len(x)
        torch.testing.assert_close(stacked.mean[k], mean, rtol=1e-15, atol=0)
        torch.testing.assert_close(stacked.m2[k], ((x - mean) ** 2).sum(0), rtol=1e-9, atol=0)
    python_count = merge_moments(a[0], Moments(float(b[0].count), b[0].mean, b[0].m2))
    torch.testing.assert_close(python_count.mean, merge_moments(a[0], b[0]).mean, rtol=0, atol=0)


def test_running_mean_std_is_the_merge_seeded_with_its_pseudo_count():
    """Three batches folded into `RunningMeanStd` equal the closed form of the data plus the initial
    pseudo-count ``eps`` at mean 0, variance 1 (SB3's and Gymnasium's convention)."""
    x = _data(n=30, d=2, seed=2).float()
    rms = RunningMeanStd((2,), eps=1e-4)
    for part in (x[:4], x[4:11], x[11:]):
        rms.update(part)
    data = x.to(D)
    n, eps = len(data), 1e-4
    mean = data.sum(0) / (n + eps)  # the pseudo-count sits at 0
    m2 = eps * (1.0 + mean**2) + ((data - mean) ** 2).sum(0)
    torch.testing.assert_close(rms.count, torch.tensor(n + eps, dtype=D), rtol=1e-15, atol=0)
    torch.testing.assert_close(rms.mean, mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(rms.var, m2 / (n + eps), rtol=1e-9, atol=0)


def test_every_user_runs_the_one_merge(monkeypatch):
    """`RunningMeanStd`, the K-seed `StackedObsNormalizer` and `distributed.all_moments` call
    `hrl_nested.moments.merge_moments`: no second copy of the formula is left to drift."""
    assert distributed.merge_moments is moments_module.merge_moments and distributed.Moments is Moments
    calls = []
    real = moments_module.merge_moments

    def spy(a, b):
        calls.append(1)
        return real(a, b)

    for module in ("hrl_nested.obs_norm", "hrl_nested.algos.ppo_multiseed_parts", "hrl_nested.distributed"):
        monkeypatch.setattr(f"{module}.merge_moments", spy)
    RunningMeanStd((2,)).update(torch.ones(3, 2))
    assert len(calls) == 1
    StackedObsNormalizer(gym.spaces.Box(-1, 1, (2,)), 3).update(torch.ones(3, 4, 2))
    assert len(calls) == 2
