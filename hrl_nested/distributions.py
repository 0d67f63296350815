"""Batched, functional action distributions: categorical and diagonal Gaussian (optionally bounded).

Plain objects over tensors (no ``torch.distributions`` validation, no host syncs), so they run inside
``torch.compile``, ``vmap`` and captured CUDA graphs, and stay differentiable in their parameters.
Sampling draws from torch's generator (or the one passed in), which CUDA graphs replay correctly.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

_LOG_2PI = math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)
_SQUASHES = (None, "tanh", "clip")


class Categorical:
    """Categorical distribution over the last dim of ``logits``.

    Args:
        logits: ``(..., n)`` unnormalized log-probabilities (``-inf`` allowed for masked actions).

    >>> d = Categorical(torch.log(torch.tensor([[0.25, 0.75]])))
    >>> round(d.log_prob(torch.tensor([1])).exp().item(), 4)
    0.75
    """

    def __init__(self, logits: torch.Tensor):
        if logits.dim() < 1 or not logits.is_floating_point():
            raise ValueError(
                f"logits: expected a float tensor of shape (..., n), got {logits.dtype} {tuple(logits.shape)}"
            )
        self.logits = torch.log_softmax(logits, -1)  # one op; ``logits - logsumexp`` to rounding

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.exp()

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """int64 ``(...)`` samples by the Gumbel-max trick: ``argmax(logits - log(-log u))``."""
        u = torch.rand(
            self.logits.shape, dtype=self.logits.dtype, device=self.logits.device, generator=generator
        )
        g = u.clamp_min_(torch.finfo(u.dtype).tiny).log_().neg_().log_()  # in place on a fresh tensor
        return (self.logits.detach() - g).argmax(-1)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        """``log p(action)``, shape ``(...)`` (``action`` holds integer indices)."""
        if tuple(action.shape) != tuple(self.logits.shape[:-1]):
            raise ValueError(
                f"action: expected shape {tuple(self.logits.shape[:-1])}, got {tuple(action.shape)}"
            )
        return self.logits.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> torch.Tensor:
        """``-sum_a p(a) log p(a)``, shape ``(...)``; masked (``-inf``) actions contribute 0."""
        logp = self.logits.clamp_min(torch.finfo(self.logits.dtype).min)
        return -(logp.exp() * logp).sum(-1)

    def mode(self) -> torch.Tensor:
        """The most likely action, int64 ``(...)``."""
        return self.logits.argmax(-1)


class DiagGaussian:
    """Diagonal Gaussian over the last dim, optionally bounded to ``[low, high]``.

    One rule for every ``squash``: the distribution's *action* is the Gaussian draw
    ``u ~ N(mean, exp(log_std)^2)``. ``sample()``, ``sample_and_log_prob()`` and ``mode()`` return it,
    a rollout stores it, ``log_prob`` scores it, and the env receives ``env_action(u)``. So the
    rollout's log-prob and the learner's recomputed one are the same function of the same stored
    tensor: at zero policy change the PPO ratio is 1 to rounding, however saturated the squash (Brax's
    PPO does the same: it stores the raw action and post-processes it for the env).

    - ``None``: ``env_action(u) = u``; ``log_prob(u) = log N(u)``.
    - ``"tanh"``: ``env_action(u) = loc + scale * tanh(u)`` with ``loc = (high + low) / 2``,
      ``scale = (high - low) / 2`` (``[-1, 1]`` when no bounds are given). ``log_prob(u)`` is the log
      density of the env action ``a = env_action(u)``, by the change of variables
      ``log p(a) = log N(u) - sum log(scale * (1 - tanh(u)^2))`` (Haarnoja et al. 2018, SAC,
      appendix C), computed from ``u`` itself: no ``atanh`` of a rounded, saturated ``a`` (in float32
      ``tanh(u)`` is 1 for ``u > 9``, so ``a`` does not determine ``u``). `unsquash` is that
      inverse, for an ``a`` from elsewhere. ``entropy()`` is the entropy of the pre-squash Gaussian
      (the squashed one has no closed form).
    - ``"clip"``: as SB3 and CleanRL do, ``env_action(u)`` clips ``u`` to ``[low, high]``;
      ``log_prob(u) = log N(u)`` (the clipped action has no density).

    Args:
        mean: ``(..., d)`` means.
        log_std: log standard deviations, broadcastable to ``mean``.
        squash: ``None``, ``"tanh"`` or ``"clip"``.
        low, high: bounds (broadcastable to ``mean``); required for ``"clip"``, optional for ``"tanh"``.

    >>> d = DiagGaussian(torch.zeros(1, 2), torch.zeros(2))
    >>> round(d.log_prob(torch.zeros(1, 2)).item(), 4)  # -log(2 pi)
    -1.8379
    >>> t = DiagGaussian(torch.full((1, 1), 5.0), torch.zeros(1), squash="tanh", low=-2.0, high=2.0)
    >>> u, logp = t.sample_and_log_prob()
    >>> bool(torch.equal(t.log_prob(u), logp)), bool(t.env_action(u).abs().max() <= 2.0)
    (True, True)
    """

    def __init__(
        self,
        mean: torch.Tensor,
        log_std: torch.Tensor,
        squash: str | None = None,
        low: torch.Tensor | np.ndarray | float | None = None,
        high: torch.Tensor | np.ndarray | float | None = None,
    ):
        if squash not in _SQUASHES:
            raise ValueError(f"squash: expected one of {_SQUASHES}, got {squash!r}")
        if mean.dim() < 1 or not mean.is_floating_point():
            raise ValueError(
                f"mean: expected a float tensor of shape (..., d), got {mean.dtype} {tuple(mean.shape)}"
            )
        if (low is None) != (high is None):
            raise ValueError("low, high: give both or neither")
        if squash == "clip" and low is None:
            raise ValueError("squash='clip' needs low and high")
        self.mean, self.squash = mean, squash
        self.log_std = torch.broadcast_to(log_std, mean.shape)
        # Pass tensors already on the device inside captured graphs (a host copy cannot be captured).
        self.low = None if low is None else torch.as_tensor(low, dtype=mean.dtype, device=mean.device)
        self.high = None if high is None else torch.as_tensor(high, dtype=mean.dtype, device=mean.device)

    @property
    def std(self) -> torch.Tensor:
        return self.log_std.exp()

    def _bounds(self) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        if self.low is None:
            return 0.0, 1.0
        return (self.high + self.low) / 2, (self.high - self.low) / 2

    def _squash(self, u: torch.Tensor) -> torch.Tensor:
        if self.squash != "tanh":
            return u
        loc, scale = self._bounds()
        return loc + scale * torch.tanh(u)

    def _gaussian_log_prob(self, u: torch.Tensor) -> torch.Tensor:
        z = (u - self.mean) / self.std
        return (-0.5 * z.square() - self.log_std - 0.5 * _LOG_2PI).sum(-1)

    def _log_det(self, u: torch.Tensor) -> torch.Tensor:
        """``sum log |da/du|`` for tanh; ``log(1 - tanh^2 u) = 2 (log 2 - u - softplus(-2u))``, stable."""
        _, scale = self._bounds()
        log_scale = scale.log() if isinstance(scale, torch.Tensor) else math.log(scale)
        return (2.0 * (_LOG_2 - u - F.softplus(-2.0 * u)) + log_scale).sum(-1)

    def sample_and_log_prob(
        self, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterized draw ``u = mean + std * eps`` and ``log_prob(u)`` (the same function)."""
        eps = torch.randn(
            self.mean.shape, dtype=self.mean.dtype, device=self.mean.device, generator=generator
        )
        u = self.mean + self.std * eps
        return u, self.log_prob(u)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A reparameterized draw ``u``, ``(..., d)``: the pre-squash / unclipped action (see the class)."""
        return self.sample_and_log_prob(generator)[0]

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        """``log p(action)``, shape ``(...)``, for an action ``u`` as `sample` returns it.

        For ``"tanh"`` this is the log density of the env action ``env_action(u)``:
        ``log N(u) - sum log(scale * (1 - tanh(u)^2))``, exact for any ``u``.
        """
        if tuple(action.shape) != tuple(self.mean.shape):
            raise ValueError(f"action: expected shape {tuple(self.mean.shape)}, got {tuple(action.shape)}")
        logp = self._gaussian_log_prob(action)
        if self.squash == "tanh":
            logp = logp - self._log_det(action)
        return logp

    def entropy(self) -> torch.Tensor:
        """Entropy of the (pre-squash) Gaussian, ``sum(log_std + 0.5 log(2 pi e))``, shape ``(...)``."""
        return (self.log_std + 0.5 * (_LOG_2PI + 1.0)).sum(-1)

    def mode(self) -> torch.Tensor:
        """The most likely draw, ``mean`` (pass it through `env_action` for the env)."""
        return self.mean

    def env_action(self, action: torch.Tensor) -> torch.Tensor:
        """The action the env receives for ``action`` (a draw ``u``): ``loc + scale * tanh(u)`` for
        ``"tanh"``, ``u`` clipped to ``[low, high]`` for ``"clip"``, ``u`` itself otherwise."""
        if self.squash == "clip":
            return torch.maximum(torch.minimum(action, self.high), self.low)
        return self._squash(action)

    def unsquash(self, env_action: torch.Tensor) -> torch.Tensor:
        """The draw ``u`` with ``env_action(u) = env_action``: ``atanh((a - loc) / scale)`` for ``"tanh"``.

        Only for an env action that comes from elsewhere (a demonstration, a replay buffer): the
        rounding of ``a`` near the bounds is amplified by ``atanh``, and ``a`` on a bound maps to
        ``+-inf``. Rollouts keep ``u`` and never need this. Identity for ``None``; for ``"clip"``
        there is no inverse and this raises.
        """
        if self.squash == "clip":
            raise ValueError("unsquash: squash='clip' has no inverse (clipping loses the draw)")
        if self.squash != "tanh":
            return env_action
        loc, scale = self._bounds()
        return torch.atanh((env_action - loc) / scale)


Distribution = Categorical | DiagGaussian


def make_distribution(
    action_space: gym.Space, head_output: torch.Tensor, squash: str | None = "auto"
) -> Distribution:
    """The distribution for ``action_space`` from a policy head's output.

    Args:
        action_space: a single-env ``Discrete`` (head output: ``(..., n)`` logits) or a 1-D ``Box``
            (head output: ``(..., 2 d)``, the means then the log standard deviations).
        head_output: the policy head's output tensor.
        squash: for Box spaces: ``None``, ``"tanh"``, ``"clip"`` or ``"auto"`` (``"clip"`` when the Box is
            bounded, else ``None``).

    >>> make_distribution(gym.spaces.Discrete(3), torch.zeros(5, 3)).sample().shape
    torch.Size([5])
    """
    if isinstance(action_space, gym.spaces.Discrete):
        if head_output.shape[-1] != int(action_space.n):
            raise ValueError(
                f"head_output: expected last dim {int(action_space.n)} for {action_space}, "
                f"got {tuple(head_output.shape)}"
            )
        return Categorical(head_output)
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        d = action_space.shape[0]
        if head_output.shape[-1] != 2 * d:
            raise ValueError(
                f"head_output: expected last dim 2*{d} (mean, log_std) for {action_space}, "
                f"got {tuple(head_output.shape)}"
            )
        bounded = bool(np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high)))
        if squash == "auto":
            squash = "clip" if bounded else None
        if squash is not None and not bounded:
            raise ValueError(f"squash={squash!r} needs a bounded Box, got {action_space}")
        low, high = (action_space.low, action_space.high) if bounded else (None, None)
        mean, log_std = head_output.split(d, dim=-1)
        return DiagGaussian(mean, log_std, squash=squash, low=low, high=high)
    raise ValueError(
        f"action_space: expected Discrete or a 1-D Box, got {action_space}; "
        "flatten other spaces with a Gymnasium wrapper first"
    )
