"""Acrobot-v1 as a `TorchVectorEnv`: Gymnasium's ``AcrobotEnv`` dynamics, batched.

Sutton (1996), "Generalization in Reinforcement Learning: Successful Examples Using Sparse Coarse
Coding", with the equations of motion of Sutton & Barto (2018, "book", the default) or of the NIPS
paper ("nips"), integrated by one classical Runge-Kutta (RK4) step of ``dt = 0.2`` s exactly as
Gymnasium's ``rk4``:

    y' = y + dt/6 * (k1 + 2 k2 + 2 k3 + k4),   k1 = f(y), k2 = f(y + dt/2 k1), ...

then the angles are wrapped into ``[-pi, pi]`` and the velocities bounded by ``4 pi`` and ``9 pi``.
The state row is ``(theta1, theta2, dtheta1, dtheta2)``; the observation is
``(cos theta1, sin theta1, cos theta2, sin theta2, dtheta1, dtheta2)``. Terminated when
``-cos(theta1) - cos(theta2 + theta1) > 1``; reward -1 per step, 0 on the terminating step.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from envs.core import Draw, TorchVectorEnv
from envs.options import EnvOptions, Unpack, numpy_dtype
from envs.render import Canvas, rotate


def wrap(x: torch.Tensor, m: float, big_m: float) -> torch.Tensor:
    """Gymnasium's ``wrap``: shift ``x`` by whole periods ``big_m - m`` until ``m <= x <= big_m``.

    Gymnasium subtracts the period in a loop; here the number of periods is computed at once, so the
    result equals Gymnasium's to rounding (and values already inside are returned untouched).
    """
    diff = big_m - m
    above = x - diff * torch.ceil((x - big_m) / diff)
    below = x + diff * torch.ceil((m - x) / diff)
    return torch.where(x > big_m, above, torch.where(x < m, below, x))


class AcrobotEnv(TorchVectorEnv):
    """Batched Acrobot-v1 (``hrl_nested/Acrobot-v1``).

    Actions ``{0, 1, 2}`` apply torque ``{-1, 0, +1}`` at the joint between the links; ``neutral_action``
    is 1 (no torque). Out-of-range actions are invalid (Gymnasium's ``AVAIL_TORQUE[a]`` fails on them);
    with ``validate=False`` they are clamped into ``{0, 1, 2}`` (see `envs.actions`). Reset:
    every state entry ``~ U(-0.1, 0.1)``, rounded to float32 as Gymnasium does. Truncated at
    ``max_episode_steps`` (500).

    Args:
        num_envs: batch size.
        book_or_nips: ``"book"`` (default, Gymnasium's) or ``"nips"`` equations of motion.
        torque_noise_max: uniform torque noise ``U(-n, n)`` added to each action (0 by default, as
            in Gymnasium; drawn from the env's counter-based stream, not NumPy's).
        **options: the options every env takes (time limit, device, dtype, ...): `envs.options.EnvOptions`.

    >>> env = AcrobotEnv(num_envs=4)
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape
    torch.Size([4, 6])
    """

    metadata: dict[str, Any] = {**TorchVectorEnv.metadata, "render_modes": ["rgb_array"], "render_fps": 15}
    default_max_episode_steps = 500
    dt = 0.2
    LINK_LENGTH_1 = 1.0
    LINK_LENGTH_2 = 1.0
    LINK_MASS_1 = 1.0
    LINK_MASS_2 = 1.0
    LINK_COM_POS_1 = 0.5
    LINK_COM_POS_2 = 0.5
    LINK_MOI = 1.0
    MAX_VEL_1 = 4 * math.pi
    MAX_VEL_2 = 9 * math.pi
    neutral_action = 1  # zero torque

    def __init__(
        self,
        num_envs: int = 1,
        *,
        book_or_nips: str = "book",
        torque_noise_max: float = 0.0,
        **options: Unpack[EnvOptions],
    ):
        opts = self.resolve_options(options)
        if book_or_nips not in ("book", "nips"):
            raise ValueError(f"book_or_nips: expected 'book' or 'nips', got {book_or_nips!r}")
        if not torque_noise_max >= 0:
            raise ValueError(f"torque_noise_max: expected a non-negative float, got {torque_noise_max!r}")
        self.book_or_nips = book_or_nips
        self.torque_noise_max = float(torque_noise_max)
        np_dtype = numpy_dtype(opts["dtype"])
        high = np.array([1.0, 1.0, 1.0, 1.0, self.MAX_VEL_1, self.MAX_VEL_2], dtype=np_dtype)
        super().__init__(
            num_envs,
            single_observation_space=gym.spaces.Box(-high, high, dtype=np_dtype),
            single_action_space=gym.spaces.Discrete(3),
            **opts,
        )

    def _sample_reset(self, draw: Draw) -> dict[str, torch.Tensor]:
        # Gymnasium draws in float64 and stores ``.astype(np.float32)``.
        return {"state": draw.uniform(4, -0.1, 0.1).to(torch.float32).to(self.dtype)}

    def _dsdt(self, theta1, theta2, dtheta1, dtheta2, a):
        """Time derivative of the state under torque ``a`` (Gymnasium's ``_dsdt``)."""
        m1, m2 = self.LINK_MASS_1, self.LINK_MASS_2
        l1, lc1, lc2 = self.LINK_LENGTH_1, self.LINK_COM_POS_1, self.LINK_COM_POS_2
        i1 = i2 = self.LINK_MOI
        g = 9.8
        cos2, sin2 = torch.cos(theta2), torch.sin(theta2)
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * cos2) + i1 + i2
        d2 = m2 * (lc2**2 + l1 * lc2 * cos2) + i2
        phi2 = m2 * lc2 * g * torch.cos(theta1 + theta2 - math.pi / 2.0)
        phi1 = (
            -m2 * l1 * lc2 * dtheta2**2 * sin2
            - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * sin2
            + (m1 * lc1 + m2 * l1) * g * torch.cos(theta1 - math.pi / 2)
            + phi2
        )
        if self.book_or_nips == "nips":
            ddtheta2 = (a + d2 / d1 * phi1 - phi2) / (m2 * lc2**2 + i2 - d2**2 / d1)
        else:
            ddtheta2 = (a + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * sin2 - phi2) / (
                m2 * lc2**2 + i2 - d2**2 / d1
            )
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return dtheta1, dtheta2, ddtheta1, ddtheta2

    def _transition(self, vars, action, draw):
        y0 = vars["state"].unbind(-1)
        torque = (action - 1).to(y0[0].dtype)
        if self.torque_noise_max > 0:
            torque = torque + draw.uniform(1, -self.torque_noise_max, self.torque_noise_max)[:, 0]
        dt, dt2 = self.dt, self.dt / 2.0
        k1 = self._dsdt(*y0, torque)
        k2 = self._dsdt(*(y + dt2 * k for y, k in zip(y0, k1)), torque)
        k3 = self._dsdt(*(y + dt2 * k for y, k in zip(y0, k2)), torque)
        k4 = self._dsdt(*(y + dt * k for y, k in zip(y0, k3)), torque)
        ns = [y + dt / 6.0 * (a + 2 * b + 2 * c + d) for y, a, b, c, d in zip(y0, k1, k2, k3, k4)]
        theta1 = wrap(ns[0], -math.pi, math.pi)
        theta2 = wrap(ns[1], -math.pi, math.pi)
        dtheta1 = ns[2].clamp(-self.MAX_VEL_1, self.MAX_VEL_1)
        dtheta2 = ns[3].clamp(-self.MAX_VEL_2, self.MAX_VEL_2)
        terminated = -torch.cos(theta1) - torch.cos(theta2 + theta1) > 1.0
        reward = torch.where(terminated, 0.0, -1.0).to(theta1.dtype)
        return {"state": torch.stack((theta1, theta2, dtheta1, dtheta2), -1)}, reward, terminated

    def _observe(self, vars):
        theta1, theta2, dtheta1, dtheta2 = vars["state"].unbind(-1)
        return torch.stack(
            (torch.cos(theta1), torch.sin(theta1), torch.cos(theta2), torch.sin(theta2), dtheta1, dtheta2), -1
        )

    def _render_frame(self, env_index: int, v: dict[str, np.ndarray]) -> np.ndarray:
        """Gymnasium's Acrobot picture (500 x 500): both links from ``theta1``, ``theta2``."""
        s = v["state"]
        dim = 500
        bound = self.LINK_LENGTH_1 + self.LINK_LENGTH_2 + 0.2
        scale, offset = dim / (bound * 2), dim / 2
        canvas = Canvas(dim, dim, y_up=True)
        p1 = (self.LINK_LENGTH_1 * math.sin(s[0]) * scale, -self.LINK_LENGTH_1 * math.cos(s[0]) * scale)
        thetas = (s[0] - math.pi / 2, s[0] + s[1] - math.pi / 2)
        lengths = (self.LINK_LENGTH_1 * scale, self.LINK_LENGTH_2 * scale)
        ground = 1 * scale + offset
        canvas.line((-2.2 * scale + offset, ground), (2.2 * scale + offset, ground), (0, 0, 0))
        for (x, y), th, llen in zip(((0.0, 0.0), p1), thetas, lengths, strict=True):
            x, y = x + offset, y + offset
            l, r, t, b = 0, llen, 0.1 * scale, -0.1 * scale
            canvas.polygon(rotate([(l, b), (l, t), (r, t), (r, b)], th, x, y), (0, 204, 204))
            canvas.circle(int(x), int(y), int(0.1 * scale), (204, 204, 0))
        return canvas.image

    def _vars_from_obs(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        """``theta1``, ``theta2`` from their cosines and sines (the velocities are observed)."""
        return {"state": np.array([math.atan2(obs[1], obs[0]), math.atan2(obs[3], obs[2]), obs[4], obs[5]])}
