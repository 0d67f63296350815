"""Sample moments of sets of rows and their parallel merge: the one home of the Chan et al. update.

Chan, Golub & LeVeque (1979), "Updating formulae and a pairwise algorithm for computing sample
variances": the count, mean and sum of squared deviations of the union of two disjoint sets follow from
those of each set. `hrl_nested.obs_norm.RunningMeanStd` folds each batch into its running statistics with
`merge_moments` (as Gymnasium's ``NormalizeObservation`` and SB3's ``VecNormalize`` do), the K-seed
normalizer of `hrl_nested.algos.ppo_multiseed_parts` does it for K seeds at once (broadcasting), and
`hrl_nested.distributed` merges the ranks' moments in rank order with it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["Moments", "merge_moments", "moments"]


class Moments(NamedTuple):
    """Sample moments of a set of rows: ``count``, ``mean`` and ``m2 = sum((x - mean)^2)`` (per feature)."""

    count: torch.Tensor | float
    mean: torch.Tensor
    m2: torch.Tensor

    @property
    def var(self) -> torch.Tensor:
        """The population variance ``m2 / count`` (what `hrl_nested.obs_norm.RunningMeanStd` keeps)."""
        return self.m2 / self.count


def moments(x: torch.Tensor) -> Moments:
    """`Moments` of the rows of ``x`` (shape ``(n, *feature)``) in float64.

    >>> moments(torch.tensor([[1.0], [3.0]])).var.tolist()
    [1.0]
    """
    x = x.detach().to(torch.float64)
    mean = x.mean(0)
    return Moments(
        torch.tensor(float(x.shape[0]), dtype=torch.float64, device=x.device),
        mean,
        (x - mean).square().sum(0),
    )


def merge_moments(a: Moments, b: Moments) -> Moments:
    """The moments of the union of two disjoint sets (Chan, Golub & LeVeque 1979, parallel variance):

    .. math::

        n = n_a + n_b, \\quad \\bar x = \\bar x_a + \\delta \\frac{n_b}{n}, \\quad
        M_2 = M_{2,a} + M_{2,b} + \\delta^2 \\frac{n_a n_b}{n}, \\quad \\delta = \\bar x_b - \\bar x_a

    The counts broadcast against the means (a ``(K, 1)`` count with ``(K, d)`` means merges K sets at
    once); a count may be a Python number. Two empty sets stay empty (mean 0, not NaN). The products are
    taken left to right (``δ n_b / n``, ``δ² n_a n_b / n``) as `RunningMeanStd` has always rounded them, so
    observation statistics are bit-for-bit those of earlier runs.

    >>> x = torch.tensor([[1.0], [2.0], [4.0]], dtype=torch.float64)
    >>> m = merge_moments(moments(x[:1]), moments(x[1:]))
    >>> round(m.mean.item(), 12), round(m.m2.item(), 12)  # mean 7/3, sum of squared deviations 14/3
    (2.333333333333, 4.666666666667)
    """
    n = a.count + b.count
    delta = b.mean - a.mean
    # Two empty sets: 0 / tiny = 0, not NaN; any non-empty count is far above tiny and passes unchanged.
    if isinstance(n, torch.Tensor):
        safe_n = n.clamp_min(torch.finfo(n.dtype).tiny if n.is_floating_point() else 1)
    else:
        safe_n = n or 1
    mean = a.mean + delta * b.count / safe_n
    m2 = a.m2 + b.m2 + delta.square() * a.count * b.count / safe_n
    return Moments(n, mean, m2)
