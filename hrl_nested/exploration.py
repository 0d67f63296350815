"""Temporally extended exploration for a flat policy: εz-greedy and action repeat.

εz-greedy (Dabney, Ostrovski & Barreto 2021, "Temporally-extended ε-greedy exploration"): an env that
is not in an exploratory run starts one with probability ``ε``; a run draws a duration ``n`` from the
zeta law and a uniformly random action, and takes that action for ``n`` steps. Action repeat
(``"repeat"``) is the same with the policy's own action in place of the random one: the run's first step
is the policy's draw, repeated ``n - 1`` more times. Nachum et al. 2019 ("Why does hierarchy (sometimes)
work so well in reinforcement learning?") found such exploration recovers much of a hierarchy's gain, so
it is the control for a flat PPO baseline.

The zeta law here is truncated to ``1 <= n <= max_duration`` (sampling is then a lookup in a table
of its CDF: one ``searchsorted``, no host sync):

.. math::

    P(n) = \\frac{n^{-\\mu}}{\\sum_{k=1}^{M} k^{-\\mu}}, \\qquad 1 \\le n \\le M

With Dabney et al.'s ``μ = 2`` and ``M = 10000`` the cut tail of the untruncated law is ``6e-5`` of
its mass and the mean duration is about 6.

**How the PPO loss stays correct.** Exploratory steps are marked off-policy (``carry["off_policy"]``)
and masked out of the policy loss; their rewards still enter the returns and GAE, and their states
the value loss. A step's action depends on the policy parameters θ only when it is the policy's own
draw: a random or repeated action, and the decision to start a run, do not depend on θ. So the
log-likelihood of a trajectory is ``Σ_{on-policy t} log π_θ(a_t | s_t)`` plus terms free of θ, and the
masked surrogate is exactly the policy gradient of the exploring agent's return (the returns that
follow an on-policy step are those of the behaviour actually run, exploration included, as ε-greedy
Q-learning learns the value of the ε-greedy policy). Storing instead the behaviour mixture's
log-prob, ``log((1 - ε) π(a|s) + ε / |A|)``, would need the exploration state at learning time, has
no density for a continuous run, and weights the random steps by a ratio that carries no
gradient. Masking is simple and exact for the on-policy steps. The stored ``logprob`` of an
exploratory step is ``log π_old`` of the action actually taken (finite, never used by the loss).

Everything is a pure tensor function: masks and ``torch.where``, no Python branch on data, no host
sync, so the rollout that uses it is still captured as one CUDA graph. Random numbers come from
torch's generator (seeded runs reproduce; CUDA graphs replay them correctly).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch

EXPLORE_MODES = ("none", "ez-greedy", "repeat")

__all__ = [
    "EXPLORE_MODES",
    "Exploration",
    "end_runs",
    "explore_step",
    "initial_explore_carry",
    "sample_zeta",
    "uniform_action",
    "zeta_cdf",
    "zeta_pmf",
]


def zeta_pmf(
    mu: float, max_duration: int, *, dtype: torch.dtype = torch.float64, device: Any = "cpu"
) -> torch.Tensor:
    """The truncated zeta law ``P(n) = n^-mu / Σ_{k=1}^{M} k^-mu`` for ``n = 1..M``, shape ``(M,)``.

    >>> [round(p, 4) for p in zeta_pmf(2.0, 3).tolist()]  # 1, 1/4, 1/9 over 49/36
    [0.7347, 0.1837, 0.0816]
    """
    if not (isinstance(mu, int | float) and math.isfinite(mu) and mu > 1):
        raise ValueError(f"mu: expected a finite number > 1 (the zeta law P(n) ∝ n^-mu), got {mu!r}")
    if not (isinstance(max_duration, int | np.integer) and max_duration >= 1):
        raise ValueError(f"max_duration: expected a positive int, got {max_duration!r}")
    n = torch.arange(1, int(max_duration) + 1, dtype=torch.float64)
    w = n.pow(-float(mu))
    return (w / w.sum()).to(dtype=dtype, device=device)


def zeta_cdf(
    mu: float, max_duration: int, *, dtype: torch.dtype = torch.float64, device: Any = "cpu"
) -> torch.Tensor:
    """``F(n) = Σ_{k<=n} P(k)`` of `zeta_pmf`, shape ``(M,)``, with ``F(M) = 1`` exactly (so a uniform
    draw below 1 always finds its duration).

    >>> zeta_cdf(2.0, 3)[-1].item()
    1.0
    """
    cdf = zeta_pmf(mu, max_duration).cumsum(0)
    cdf[-1] = 1.0
    return cdf.to(dtype=dtype, device=device)


def sample_zeta(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Durations by inverse CDF: ``n = min{k : F(k) > u}`` for ``u ~ U[0, 1)``, int64, shape of ``u``.

    ``P(n = k) = F(k) - F(k - 1)``, the law whose CDF is ``cdf`` (e.g. `zeta_cdf`). Pass ``u`` in the
    CDF's dtype: float64 resolves the zeta tail (``P(10^4) ≈ 6e-9``, below float32's ``2^-24``).

    >>> cdf = zeta_cdf(2.0, 3)
    >>> sample_zeta(cdf, torch.tensor([0.0, 0.7, 0.8, 0.99], dtype=torch.float64)).tolist()
    [1, 1, 2, 3]
    """
    if u.dtype != cdf.dtype:
        raise ValueError(f"u: expected the CDF's dtype {cdf.dtype}, got {u.dtype}")
    idx = torch.searchsorted(cdf, u.contiguous(), right=True)
    return idx.clamp_max(cdf.shape[0] - 1) + 1


def uniform_action(
    dist: Any,
    space: gym.Space,
    r: torch.Tensor,
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
    num_actions: int | None = None,
) -> torch.Tensor:
    """A uniformly random action in the policy's *stored* parametrization, from uniforms ``r``.

    Args:
        dist: the policy's distribution (`hrl_nested.distributions.Categorical` or ``DiagGaussian``).
        space: the single-env action space (``Discrete`` or a bounded 1-D ``Box``).
        r: ``U[0, 1)`` draws: shape ``(N,)`` for ``Discrete``, ``(N, d)`` for ``Box``.
        bounds: the Box's ``(low, high)`` as tensors on ``r``'s device and dtype; None makes them from
            ``space`` (a host copy: inside a captured CUDA graph pass them, as `Exploration` does).
        num_actions: ``Discrete``: ``space.n`` as a Python int (pass it inside ``torch.compile``, as
            `Exploration` does: reading gymnasium's ``np.int64`` there breaks the graph); None reads it.

    Returns:
        ``Discrete(n)``: ``floor(r n)``, uniform over the ``n`` actions. ``Box``: the draw ``u`` whose
        env action is uniform in the box: ``low + (high - low) r`` (a clipped or unsquashed Gaussian's
        env action is ``u`` itself inside the box), or ``atanh(2 r - 1)`` for a tanh-squashed one
        (``loc + scale tanh(u)`` is then uniform; ``2 r - 1`` is kept off ``±1`` so ``u`` is finite).
    """
    if isinstance(space, gym.spaces.Discrete):
        # num_actions: a Python int made outside any compiled region; int(space.n) of gymnasium's
        # np.int64 inside torch.compile is a .item() on a traced scalar, a graph break
        n = int(space.n) if num_actions is None else num_actions
        return (r * n).floor().long().clamp_max(n - 1)  # an index, as the Categorical policy's own
    if getattr(dist, "squash", None) == "tanh":
        edge = 1.0 - torch.finfo(r.dtype).eps
        return torch.atanh((2.0 * r - 1.0).clamp(-edge, edge))
    if bounds is None:
        bounds = (
            torch.as_tensor(space.low, dtype=r.dtype, device=r.device),
            torch.as_tensor(space.high, dtype=r.dtype, device=r.device),
        )
    low, high = bounds
    return low + (high - low) * r


def initial_explore_carry(num_envs: int, action: torch.Tensor) -> dict[str, torch.Tensor]:
    """The carry of envs with no exploratory run open: ``explore_left`` (int64 ``(N,)``, steps still to
    repeat after this one), ``explore_action`` (the held action, like ``action[:num_envs]``) and
    ``off_policy`` (bool ``(N,)``, this step's action was exploratory)."""
    dev = action.device
    return {
        "explore_left": torch.zeros(num_envs, dtype=torch.int64, device=dev),
        "explore_action": torch.zeros((num_envs, *action.shape[1:]), dtype=action.dtype, device=dev),
        "off_policy": torch.zeros(num_envs, dtype=torch.bool, device=dev),
    }


def _rows(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


def explore_step(
    carry: dict[str, torch.Tensor],
    policy_action: torch.Tensor,
    new_action: torch.Tensor,
    start_u: torch.Tensor,
    duration: torch.Tensor,
    *,
    eps: float,
    policy_starts: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One step of temporally extended exploration, for N envs at once (no branch on data).

    An env with ``explore_left > 0`` takes its held action and counts down. Any other env starts a run
    when ``start_u < eps``: it holds ``new_action`` for ``duration`` steps in all (this one included, so
    ``explore_left = duration - 1`` after it); else it takes ``policy_action``.

    Args:
        carry: from `initial_explore_carry` or the previous step.
        policy_action: ``(N, ...)`` the policy's draw.
        new_action: ``(N, ...)`` the action a new run holds (random for εz-greedy, ``policy_action``
            for action repeat).
        start_u: ``(N,)`` ``U[0, 1)`` draws deciding the starts.
        duration: ``(N,)`` int64 durations ``>= 1`` (`sample_zeta`).
        eps: the probability ``ε`` of starting a run.
        policy_starts: the first step of a run is the policy's own draw (action repeat): it stays
            on-policy, and only the repeats are marked off-policy.

    Returns:
        ``(action, carry)``: the action taken, and the carry after this step (``off_policy`` marks
        the steps whose action was not the policy's draw).
    """
    left, held = carry["explore_left"], carry["explore_action"]
    running = left > 0
    start = (~running) & (start_u < eps)
    held = _rows(start, new_action, held)
    action = _rows(running | start, held, policy_action)
    left = torch.where(start, duration - 1, (left - 1).clamp_min(0))
    off_policy = running if policy_starts else running | start
    return action, {"explore_left": left, "explore_action": held, "off_policy": off_policy}


def end_runs(carry: dict[str, torch.Tensor], done: torch.Tensor) -> dict[str, torch.Tensor]:
    """End the exploratory runs of the envs whose episode just ended (``done``: ``(N,)`` bool): a run
    belongs to the episode it started in (a collector's ``reset_carry``)."""
    left = torch.where(done, torch.zeros_like(carry["explore_left"]), carry["explore_left"])
    return {**carry, "explore_left": left}


@dataclasses.dataclass(frozen=True)
class Exploration:
    """Temporally extended exploration settings, and the sampling they need inside a policy step.

    Args:
        mode: ``"ez-greedy"`` (random action for a zeta duration) or ``"repeat"`` (the policy's own
            action, held for a zeta duration).
        eps: probability ``ε`` that an env not in a run starts one, per step.
        zeta_mu: ``μ > 1`` of the duration law ``P(n) ∝ n^-μ`` (Dabney et al. 2021 use 2).
        max_duration: the law's truncation ``M`` (``1 <= n <= M``).
        action_space: the single-env action space (random actions are drawn in it); ``ez-greedy``
            needs a ``Discrete`` or a bounded 1-D ``Box``.

    Raises:
        ValueError: a bad value, naming what was expected.
    """

    mode: str
    eps: float
    zeta_mu: float
    max_duration: int
    action_space: gym.Space
    _cache: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in EXPLORE_MODES[1:]:
            raise ValueError(f"mode: expected one of {EXPLORE_MODES[1:]}, got {self.mode!r}")
        if not (isinstance(self.eps, int | float) and 0.0 <= self.eps <= 1.0):
            raise ValueError(f"eps: expected a probability in [0, 1], got {self.eps!r}")
        zeta_pmf(self.zeta_mu, self.max_duration)  # validates mu and the truncation
        space = self.action_space
        if self.mode == "ez-greedy":
            bounded = (
                isinstance(space, gym.spaces.Box)
                and len(space.shape) == 1
                and bool(np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high)))
            )
            if isinstance(space, gym.spaces.Discrete):  # a Python int, read outside any compiled step
                self._cache["num_actions"] = int(space.n)
            if not (isinstance(space, gym.spaces.Discrete) or bounded):
                raise ValueError(
                    f"action_space: ez-greedy draws uniform random actions, so it expects a Discrete or a "
                    f"bounded 1-D Box action space, got {space}; use mode='repeat'"
                )

    def cdf(self, device: torch.device) -> torch.Tensor:
        """The duration CDF table on ``device`` (float64; float32 where a device has no float64), made
        once per device (outside a capture: the warm-up call makes it)."""
        device = torch.device(device)
        if device not in self._cache:
            dtype = torch.float32 if device.type == "mps" else torch.float64
            self._cache[device] = zeta_cdf(self.zeta_mu, self.max_duration, dtype=dtype, device=device)
        return self._cache[device]

    def bounds(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A Box action space's ``(low, high)`` on ``device``, cached like `cdf`; None for ``Discrete``."""
        if not isinstance(self.action_space, gym.spaces.Box):
            return None
        key = (torch.device(device), dtype)
        if key not in self._cache:
            self._cache[key] = tuple(
                torch.as_tensor(b, dtype=dtype, device=device)
                for b in (self.action_space.low, self.action_space.high)
            )
        return self._cache[key]

    def step(
        self, dist: Any, policy_action: torch.Tensor, carry: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`explore_step` with this setting's draws: start uniforms, zeta durations and (ez-greedy)
        uniform random actions (`uniform_action`), all from torch's generator on the action's device."""
        n, dev = policy_action.shape[0], policy_action.device
        cdf = self.cdf(dev)
        u = torch.rand(2, n, dtype=cdf.dtype, device=dev)
        duration = sample_zeta(cdf, u[1])
        if self.mode == "ez-greedy":
            r_dtype = policy_action.dtype if policy_action.is_floating_point() else cdf.dtype
            r = torch.rand(policy_action.shape, dtype=r_dtype, device=dev)
            bounds = self.bounds(dev, r_dtype)
            n_actions = self._cache.get("num_actions")
            new_action = uniform_action(dist, self.action_space, r, bounds, n_actions).to(policy_action.dtype)
        else:
            new_action = policy_action
        return explore_step(
            carry,
            policy_action,
            new_action,
            u[0],
            duration,
            eps=float(self.eps),
            policy_starts=self.mode == "repeat",
        )
