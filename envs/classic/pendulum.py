"""Pendulum-v1 as a `TorchVectorEnv`: Gymnasium's ``PendulumEnv`` dynamics, batched.

The inverted-pendulum swing-up problem as Gymnasium implements it (semi-implicit Euler,
``dt = 0.05``). The state row is ``(theta, theta_dot)``; with torque ``u = clip(a, -2, 2)``:

    cost  = normalize(theta)**2 + 0.1 * theta_dot**2 + 0.001 * u**2,   reward = -cost
    theta_dot' = clip(theta_dot + (3 g / (2 l) sin(theta) + 3 / (m l**2) u) dt, -8, 8)
    theta' = theta + theta_dot' dt

``normalize`` maps an angle into ``[-pi, pi)``. The observation is ``(cos theta, sin theta,
theta_dot)``. The task never terminates; it is truncated at ``max_episode_steps`` (200).
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


def angle_normalize(x: torch.Tensor) -> torch.Tensor:
    """Gymnasium's ``angle_normalize``: ``((x + pi) mod 2 pi) - pi`` with a floored modulo."""
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


class PendulumEnv(TorchVectorEnv):
    """Batched Pendulum-v1 (``hrl_nested/Pendulum-v1``).

    Torques outside ``[-2, 2]`` are valid and clipped, as in Gymnasium (``clip_actions``); a NaN torque
    is invalid, and with ``validate=False`` it becomes ``neutral_action`` = 0 (no torque), +-inf the
    bound (see `envs.actions`). Reset: ``theta ~ U(-pi, pi)``, ``theta_dot ~ U(-1, 1)``.

    Args:
        num_envs: batch size.
        g: gravitational acceleration (Gymnasium's option, default 10.0).
        **options: the options every env takes (time limit, device, dtype, ...): `envs.options.EnvOptions`.

    >>> env = PendulumEnv(num_envs=4, g=9.81)
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape
    torch.Size([4, 3])
    """

    metadata: dict[str, Any] = {**TorchVectorEnv.metadata, "render_modes": ["rgb_array"], "render_fps": 30}
    default_max_episode_steps = 200
    max_speed = 8.0
    max_torque = 2.0
    dt = 0.05
    m = 1.0
    l = 1.0
    clip_actions = True
    neutral_action = 0.0  # no torque

    def __init__(self, num_envs: int = 1, *, g: float = 10.0, **options: Unpack[EnvOptions]):
        opts = self.resolve_options(options)
        self.g = float(g)
        np_dtype = numpy_dtype(opts["dtype"])
        high = np.array([1.0, 1.0, self.max_speed], dtype=np_dtype)
        super().__init__(
            num_envs,
            single_observation_space=gym.spaces.Box(-high, high, dtype=np_dtype),
            single_action_space=gym.spaces.Box(-self.max_torque, self.max_torque, (1,), dtype=np_dtype),
            **opts,
        )

    def _sample_reset(self, draw: Draw) -> dict[str, torch.Tensor]:
        # NumPy's ``uniform(low, high)`` is ``low + (high - low) * u``.
        u = draw.uniform(2)
        th = -math.pi + (2 * math.pi) * u[:, 0]
        thdot = -1.0 + 2.0 * u[:, 1]
        return {"state": torch.stack((th, thdot), -1)}

    def _transition(self, vars, action, draw):
        th, thdot = vars["state"].unbind(-1)
        g, m, l, dt = self.g, self.m, self.l, self.dt
        u = action[:, 0].clamp(-self.max_torque, self.max_torque)
        costs = angle_normalize(th) ** 2 + 0.1 * thdot**2 + 0.001 * (u**2)
        newthdot = thdot + (3 * g / (2 * l) * torch.sin(th) + 3.0 / (m * l**2) * u) * dt
        newthdot = newthdot.clamp(-self.max_speed, self.max_speed)
        newth = th + newthdot * dt
        terminated = torch.zeros_like(th, dtype=torch.bool)
        return {"state": torch.stack((newth, newthdot), -1)}, -costs, terminated

    def _observe(self, vars):
        th, thdot = vars["state"].unbind(-1)
        return torch.stack((torch.cos(th), torch.sin(th), thdot), -1)

    def _render_frame(self, env_index: int, v: dict[str, np.ndarray]) -> np.ndarray:
        """Gymnasium's Pendulum picture (500 x 500) without its torque arrow: the rod at ``theta``
        (0 = upright)."""
        theta = float(v["state"][0])
        dim = 500
        scale, offset = dim / (2.2 * 2), dim // 2
        rod_length, rod_width = 1 * scale, 0.2 * scale
        canvas = Canvas(dim, dim, y_up=True)
        l, r, t, b = 0, rod_length, rod_width / 2, -rod_width / 2
        rod = rotate([(l, b), (l, t), (r, t), (r, b)], theta + math.pi / 2, offset, offset)
        canvas.polygon(rod, (204, 77, 77))
        canvas.circle(offset, offset, int(rod_width / 2), (204, 77, 77))
        end = rotate([(rod_length, 0)], theta + math.pi / 2, offset, offset)[0]
        canvas.circle(int(end[0]), int(end[1]), int(rod_width / 2), (204, 77, 77))
        canvas.circle(offset, offset, int(0.05 * scale), (0, 0, 0))
        return canvas.image

    def _vars_from_obs(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        """``theta`` from its cosine and sine."""
        return {"state": np.array([math.atan2(obs[1], obs[0]), obs[2]])}
