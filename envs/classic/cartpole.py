"""CartPole-v1 as a `TorchVectorEnv`: Gymnasium's ``CartPoleEnv`` dynamics, batched.

Barto, Sutton & Anderson (1983), "Neuronlike adaptive elements that can solve difficult learning
control problems", with Florian's (2007) corrected equations, exactly as Gymnasium implements them
(explicit Euler by default, ``tau = 0.02``). The state row is ``(x, x_dot, theta, theta_dot)``.
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


class CartPoleEnv(TorchVectorEnv):
    """Batched CartPole-v1 (``hrl_nested/CartPole-v1``).

    Reward 1 every step (``sutton_barto_reward``: 0 per step, -1 on the failing step), terminated
    when ``|x| > 2.4`` or ``|theta| > 12 deg``, truncated at ``max_episode_steps`` (500).

    Actions: 0 pushes left, 1 right; there is no "do nothing" (``neutral_action = None``). Gymnasium
    asserts an action in ``{0, 1}``; with ``validate=False`` an out-of-range one is clamped into it
    (see `envs.actions`).

    Args:
        num_envs: batch size.
        sutton_barto_reward: Gymnasium's option: reward 0 per step and -1 on the failing step.
        kinematics_integrator: ``"euler"`` (default) or ``"semi-implicit euler"``, as in Gymnasium.
        **options: the options every env takes (time limit, device, dtype, ...): `envs.options.EnvOptions`.

    >>> env = CartPoleEnv(num_envs=8)
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape
    torch.Size([8, 4])
    """

    metadata: dict[str, Any] = {**TorchVectorEnv.metadata, "render_modes": ["rgb_array"], "render_fps": 50}
    default_max_episode_steps = 500
    gravity = 9.8
    masscart = 1.0
    masspole = 0.1
    total_mass = masspole + masscart
    length = 0.5  # half the pole's length
    polemass_length = masspole * length
    force_mag = 10.0
    tau = 0.02
    theta_threshold_radians = 12 * 2 * math.pi / 360
    x_threshold = 2.4
    neutral_action = None  # every action pushes

    def __init__(
        self,
        num_envs: int = 1,
        *,
        sutton_barto_reward: bool = False,
        kinematics_integrator: str = "euler",
        **options: Unpack[EnvOptions],
    ):
        opts = self.resolve_options(options)
        if kinematics_integrator not in ("euler", "semi-implicit euler"):
            raise ValueError(
                "kinematics_integrator: expected 'euler' or 'semi-implicit euler', "
                f"got {kinematics_integrator!r}"
            )
        self.sutton_barto_reward = bool(sutton_barto_reward)
        self.kinematics_integrator = kinematics_integrator
        np_dtype = numpy_dtype(opts["dtype"])
        high = np.array(
            [self.x_threshold * 2, np.inf, self.theta_threshold_radians * 2, np.inf], dtype=np_dtype
        )
        super().__init__(
            num_envs,
            single_observation_space=gym.spaces.Box(-high, high, dtype=np_dtype),
            single_action_space=gym.spaces.Discrete(2),
            **opts,
        )

    def _sample_reset(self, draw: Draw) -> dict[str, torch.Tensor]:
        return {"state": draw.uniform(4, -0.05, 0.05)}

    def _transition(self, vars, action, draw):
        x, x_dot, theta, theta_dot = vars["state"].unbind(-1)
        force = torch.where(action == 1, self.force_mag, -self.force_mag).to(x.dtype)
        costheta, sintheta = torch.cos(theta), torch.sin(theta)
        temp = (force + self.polemass_length * theta_dot.square() * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * costheta.square() / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        if self.kinematics_integrator == "euler":
            x, x_dot = x + self.tau * x_dot, x_dot + self.tau * xacc
            theta, theta_dot = theta + self.tau * theta_dot, theta_dot + self.tau * thetaacc
        else:
            x_dot = x_dot + self.tau * xacc
            x = x + self.tau * x_dot
            theta_dot = theta_dot + self.tau * thetaacc
            theta = theta + self.tau * theta_dot
        terminated = (
            (x < -self.x_threshold)
            | (x > self.x_threshold)
            | (theta < -self.theta_threshold_radians)
            | (theta > self.theta_threshold_radians)
        )
        if self.sutton_barto_reward:
            reward = -terminated.to(x.dtype)
        else:
            reward = torch.ones_like(x)
        return {"state": torch.stack((x, x_dot, theta, theta_dot), -1)}, reward, terminated

    def _observe(self, vars):
        return vars["state"].clone()

    def _render_frame(self, env_index: int, v: dict[str, np.ndarray]) -> np.ndarray:
        """Gymnasium's CartPole picture (600 x 400): cart at ``x * 125 + 300`` px, pole at ``theta``."""
        x = v["state"]
        width, height = 600, 400
        scale = width / (self.x_threshold * 2)
        polewidth, polelen = 10.0, scale * (2 * self.length)
        cartwidth, cartheight = 50.0, 30.0
        canvas = Canvas(width, height, y_up=True)
        cartx, carty = x[0] * scale + width / 2.0, 100.0  # middle of the cart; top of the cart
        axleoffset = cartheight / 4.0
        half_w, half_h = cartwidth / 2, cartheight / 2
        canvas.rect(cartx - half_w, carty - half_h, cartx + half_w, carty + half_h, (0, 0, 0))
        l, r, t, b = -polewidth / 2, polewidth / 2, polelen - polewidth / 2, -polewidth / 2
        pole = rotate([(l, b), (l, t), (r, t), (r, b)], -x[2], cartx, carty + axleoffset)
        canvas.polygon(pole, (202, 152, 101))
        canvas.circle(cartx, carty + axleoffset, polewidth / 2, (129, 132, 203))
        canvas.line((0, carty + 0.5), (width, carty + 0.5), (0, 0, 0))  # the track (pygame's row 100)
        return canvas.image

    def _vars_from_obs(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        return {"state": obs}
