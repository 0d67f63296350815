"""Running mean / variance of observations, for observation normalization.

The statistics are plain tensors (``mean``, ``var``, ``count``) so that a learner can pass them into a
captured rollout as part of its parameter dict and save them in a checkpoint. The update is the
parallel-variance formula of Chan, Golub & LeVeque (1979), "Updating formulae and a pairwise algorithm
for computing sample variances" (`hrl_nested.moments.merge_moments`), the same one Gymnasium's
``NormalizeObservation`` and SB3's ``VecNormalize`` use, applied once per batch (never per step, so no
host sync in a rollout).

One entry point per job:

- `normalize` (function): the formula ``clip((x - mean) / sqrt(var + 1e-8))`` on one tensor with the
  statistics passed in; pure, so it vmaps and runs inside a captured rollout.
- `ObsNormalizer.normalize`: an observation of any supported space (a Box, or a goal ``Dict`` with Box
  leaves), with the current statistics or, given ``stats``, with those (then a pure function of its
  inputs, for a captured rollout that receives the statistics as parameters).
- `RunningMeanStd`: the statistics of one Box leaf (update, save, load), as in SB3 and Gymnasium.

``ObsNormalizer.apply`` and ``RunningMeanStd.normalize`` are deprecated aliases of the above.
"""

from __future__ import annotations

from collections.abc import Mapping

import gymnasium as gym
import torch

from hrl_nested.deprecation import warn_renamed
from hrl_nested.moments import Moments, merge_moments
from hrl_nested.pytree import Obs


class RunningMeanStd:
    """Running mean and variance over the leading dims of batches of ``shape``-shaped samples.

    Args:
        shape: the shape of one sample (e.g. ``(obs_dim,)``).
        device: where the statistics live (the learner's device).
        eps: initial pseudo-count, so the first normalization does not divide by zero.
        clip: normalized values are clipped to ``[-clip, clip]`` (outliers early in training).

    >>> rms = RunningMeanStd((2,))
    >>> rms.update(torch.tensor([[0.0, 10.0], [2.0, 30.0]]))
    >>> [round(m, 2) for m in rms.mean.tolist()]
    [1.0, 20.0]
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        *,
        device: torch.device | str = "cpu",
        eps: float = 1e-4,
        clip: float = 10.0,
    ):
        # float64: the count grows into the millions and float32 would lose the update's precision.
        self.mean = torch.zeros(shape, dtype=torch.float64, device=device)
        self.var = torch.ones(shape, dtype=torch.float64, device=device)
        self.count = torch.full((), eps, dtype=torch.float64, device=device)
        self.clip = float(clip)

    def update(self, x: torch.Tensor, reduce=None) -> None:
        """Merge the samples in ``x`` (shape ``(..., *shape)``) into the statistics, in place. ``reduce``:
        optional ``rows -> (mean, var, count)`` giving the batch's moments in place of the local ones (under
        torchrun, those of the union over ranks: `hrl_nested.distributed.moments_reducer`)."""
        if tuple(x.shape[x.dim() - self.mean.dim() :]) != tuple(self.mean.shape):
            raise ValueError(f"x: expected trailing shape {tuple(self.mean.shape)}, got {tuple(x.shape)}")
        x = x.detach().reshape(-1, *self.mean.shape).to(torch.float64)
        if reduce is None:
            b_mean, b_var, b_count = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        else:
            b_mean, b_var, b_count = reduce(x)
        merged = merge_moments(
            Moments(self.count, self.mean, self.var * self.count), Moments(b_count, b_mean, b_var * b_count)
        )
        # copy_ keeps tensor addresses stable for a rollout that captured them.
        self.mean.copy_(merged.mean)
        self.var.copy_(merged.m2 / merged.count)
        self.count.copy_(merged.count)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Deprecated: ``clip((x - mean) / sqrt(var + 1e-8))`` in ``x``'s dtype. Use `ObsNormalizer.normalize`
        for observations, or the function `normalize` with these statistics."""
        warn_renamed(
            "RunningMeanStd.normalize(x)",
            "ObsNormalizer.normalize(obs), or normalize(x, mean, var, clip) with this object's statistics",
        )
        return normalize(x, self.mean.to(x.dtype), self.var.to(x.dtype), self.clip)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.clone(), "var": self.var.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in ("mean", "var", "count"):
            src = state[name]
            dst = getattr(self, name)
            if tuple(src.shape) != tuple(dst.shape):
                raise ValueError(
                    f"obs-norm {name}: expected shape {tuple(dst.shape)}, got {tuple(src.shape)}"
                )
            dst.copy_(src)


def normalize(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, clip: float = 10.0) -> torch.Tensor:
    """``clip((x - mean) / sqrt(var + 1e-8), -clip, clip)``: the pure form, for use inside a policy."""
    return ((x - mean) / torch.sqrt(var + 1e-8)).clamp(-clip, clip)


def _normalizable(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Box)


class ObsNormalizer:
    """Observation normalization for a flat Box or a goal ``Dict`` observation space.

    One `RunningMeanStd` per Box leaf (the whole observation, or each key of a ``Dict``); other leaves
    (``Discrete`` ones, which a network one-hot encodes) pass through unchanged. ``stats()`` gives the
    statistics as a flat dict of tensors (``"<key>.mean"``, ``"<key>.var"``), so a captured rollout can
    take them as inputs and normalize with ``normalize(obs, stats)``.

    Args:
        space: the single-env observation space.
        device: where the statistics live.
        clip: normalized values are clipped to ``[-clip, clip]``.

    >>> norm = ObsNormalizer(gym.spaces.Box(-1.0, 1.0, (2,)))
    >>> norm.update(torch.tensor([[0.0, 10.0], [2.0, 30.0]]))
    >>> [round(v, 2) for v in norm.normalize(torch.tensor([[1.0, 20.0]]))[0].tolist()]
    [0.0, 0.0]
    """

    def __init__(self, space: gym.Space, *, device: torch.device | str = "cpu", clip: float = 10.0):
        self.is_dict = isinstance(space, gym.spaces.Dict)
        leaves = dict(space.spaces) if self.is_dict else {"obs": space}
        self.rms = {
            k: RunningMeanStd(tuple(s.shape), device=device, clip=clip)
            for k, s in leaves.items()
            if _normalizable(s)
        }
        self.clip = float(clip)

    def _leaves(self, obs: Obs) -> dict[str, torch.Tensor]:
        return dict(obs) if self.is_dict else {"obs": obs}

    def _pack(self, leaves: dict[str, torch.Tensor]) -> Obs:
        return leaves if self.is_dict else leaves["obs"]

    def update(self, obs: Obs, reduce=None) -> None:
        """Merge a batch (any leading dims) into the statistics (``reduce``: see `RunningMeanStd.update`)."""
        leaves = self._leaves(obs)
        for k, rms in self.rms.items():
            rms.update(leaves[k], reduce)

    def stats(self) -> dict[str, torch.Tensor]:
        """``{"<key>.mean", "<key>.var"}`` as float32 tensors (the ``stats`` input of `normalize`)."""
        out = {}
        for k, rms in self.rms.items():
            out[f"{k}.mean"], out[f"{k}.var"] = rms.mean.float(), rms.var.float()
        return out

    def normalize(self, obs: Obs, stats: Mapping[str, torch.Tensor] | None = None) -> Obs:
        """``clip((x - mean) / sqrt(var + 1e-8))`` on each Box leaf of ``obs``; other leaves unchanged.

        Args:
            obs: a batch of observations (any leading dims).
            stats: the statistics to use, as `stats` gives them; then a pure function of ``obs`` and
                ``stats`` (what a captured rollout calls with its parameter inputs). None: the current
                statistics.
        """
        stats = self.stats() if stats is None else stats
        leaves = self._leaves(obs)
        for k in self.rms:
            x = leaves[k].to(stats[f"{k}.mean"].dtype) if not leaves[k].is_floating_point() else leaves[k]
            mean, var = stats[f"{k}.mean"].to(x.dtype), stats[f"{k}.var"].to(x.dtype)
            leaves[k] = normalize(x, mean, var, self.clip)
        return self._pack(leaves)

    def apply(self, obs: Obs, stats: Mapping[str, torch.Tensor]) -> Obs:
        """Deprecated alias of ``normalize(obs, stats)``."""
        warn_renamed("ObsNormalizer.apply(obs, stats)", "ObsNormalizer.normalize(obs, stats)")
        return self.normalize(obs, stats)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {k: rms.state_dict() for k, rms in self.rms.items()}

    def load_state_dict(self, state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        if set(state) != set(self.rms):
            raise ValueError(f"obs-norm state: expected keys {sorted(self.rms)}, got {sorted(state)}")
        for k, rms in self.rms.items():
            rms.load_state_dict(dict(state[k]))
