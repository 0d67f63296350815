"""MountainCar-v0 as a `TorchVectorEnv`: Gymnasium's ``MountainCarEnv`` dynamics, batched.

Moore (1990), "Efficient Memory-based Learning for Robot Control" (PhD thesis), as Gymnasium
implements it. The state row is ``(position, velocity)``; one step with action ``a in {0, 1, 2}``:

    v' = clip(v + (a - 1) * 0.001 - 0.0025 * cos(3 p), -0.07, 0.07)
    p' = clip(p + v', -1.2, 0.6);   v' = 0 if p' == -1.2 and v' < 0

terminated when ``p' >= 0.5 and v' >= goal_velocity``; reward -1 every step.
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


class MountainCarBase(TorchVectorEnv):
    """The hill both MountainCar tasks share: state, reset, observation and picture.

    The state row is ``(position, velocity)``; reset draws ``position ~ U(-0.6, -0.4)`` with velocity 0;
    the observation is the state. A subclass sets ``goal_position``, ``default_max_episode_steps``, its
    action space (`_action_space`) and its `_transition`.

    Args:
        num_envs: batch size.
        goal_velocity: the velocity the car must also reach at the goal (Gymnasium's option).
        **options: the options every env takes (time limit, device, dtype, ...): `envs.options.EnvOptions`.
    """

    metadata: dict[str, Any] = {**TorchVectorEnv.metadata, "render_modes": ["rgb_array"], "render_fps": 30}
    min_position = -1.2
    max_position = 0.6
    max_speed = 0.07
    goal_position: float

    def __init__(self, num_envs: int = 1, *, goal_velocity: float = 0.0, **options: Unpack[EnvOptions]):
        opts = self.resolve_options(options)
        self.goal_velocity = float(goal_velocity)
        np_dtype = numpy_dtype(opts["dtype"])
        low = np.array([self.min_position, -self.max_speed], dtype=np_dtype)
        high = np.array([self.max_position, self.max_speed], dtype=np_dtype)
        super().__init__(
            num_envs,
            single_observation_space=gym.spaces.Box(low, high, dtype=np_dtype),
            single_action_space=self._action_space(np_dtype),
            **opts,
        )

    def _action_space(self, np_dtype: np.dtype) -> gym.Space:
        raise NotImplementedError

    def _sample_reset(self, draw: Draw) -> dict[str, torch.Tensor]:
        position = draw.uniform(1, -0.6, -0.4)
        return {"state": torch.cat((position, torch.zeros_like(position)), -1)}

    def _observe(self, vars):
        return vars["state"].clone()

    def _render_frame(self, env_index: int, v: dict[str, np.ndarray]) -> np.ndarray:
        """Gymnasium's MountainCar picture (600 x 400): hill, car at ``position``, flag at the goal."""
        pos = float(v["state"][0])
        return draw_mountain_car(pos, self.min_position, self.max_position, self.goal_position)

    def _vars_from_obs(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        return {"state": obs}


class MountainCarEnv(MountainCarBase):
    """Batched MountainCar-v0 (``hrl_nested/MountainCar-v0``).

    Actions: 0 push left, 1 no push (``neutral_action``), 2 push right. Gymnasium asserts an action in
    ``{0, 1, 2}``; with ``validate=False`` an out-of-range one is clamped into it (see `envs.actions`).
    Reset: position ``~ U(-0.6, -0.4)``, velocity 0. Truncated at ``max_episode_steps`` (200).

    Args:
        num_envs: batch size.
        goal_velocity: the velocity the car must also reach at the goal (Gymnasium's option).
        **options: the options every env takes (time limit, device, dtype, ...): `envs.options.EnvOptions`.

    >>> env = MountainCarEnv(num_envs=4)
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape
    torch.Size([4, 2])
    """

    default_max_episode_steps = 200
    goal_position = 0.5
    force = 0.001
    gravity = 0.0025
    neutral_action = 1  # no push

    def _action_space(self, np_dtype: np.dtype) -> gym.Space:
        return gym.spaces.Discrete(3)

    def _transition(self, vars, action, draw):
        position, velocity = vars["state"].unbind(-1)
        # Gymnasium: ``velocity += (action - 1) * force + cos(3 p) * (-gravity)``, same association.
        push = (action - 1).to(position.dtype) * self.force
        velocity = velocity + (push + torch.cos(3 * position) * (-self.gravity))
        velocity = velocity.clamp(-self.max_speed, self.max_speed)
        position = (position + velocity).clamp(self.min_position, self.max_position)
        # After the clamp, ``position <= min`` is Gymnasium's ``position == min_position`` test.
        velocity = torch.where((position <= self.min_position) & (velocity < 0), 0.0, velocity)
        terminated = (position >= self.goal_position) & (velocity >= self.goal_velocity)
        reward = torch.full_like(position, -1.0)
        return {"state": torch.stack((position, velocity), -1)}, reward, terminated


def _height(xs: np.ndarray | float) -> np.ndarray | float:
    return np.sin(3 * np.asarray(xs)) * 0.45 + 0.55


def draw_mountain_car(
    pos: float, min_position: float, max_position: float, goal_position: float
) -> np.ndarray:
    """Gymnasium's MountainCar drawing (shared with MountainCarContinuous), without pygame."""
    width, height = 600, 400
    scale = width / (max_position - min_position)
    carwidth, carheight, clearance = 40, 20, 10
    canvas = Canvas(width, height, y_up=True)
    xs = np.linspace(min_position, max_position, 100)
    canvas.polyline(np.stack([(xs - min_position) * scale, _height(xs) * scale], -1), (0, 0, 0))
    l, r, t, b = -carwidth / 2, carwidth / 2, carheight, 0
    angle, cx, cy = math.cos(3 * pos), (pos - min_position) * scale, clearance + _height(pos) * scale
    canvas.polygon(rotate([(l, b), (l, t), (r, t), (r, b)], angle, cx, cy), (0, 0, 0))
    for wheel in rotate([(carwidth / 4, 0), (-carwidth / 4, 0)], angle, cx, cy):
        canvas.circle(int(wheel[0]), int(wheel[1]), int(carheight / 2.5), (128, 128, 128))
    flagx, flagy1 = int((goal_position - min_position) * scale), int(_height(goal_position) * scale)
    flagy2 = flagy1 + 50
    canvas.line((flagx + 0.5, flagy1 + 0.5), (flagx + 0.5, flagy2 + 0.5), (0, 0, 0))
    canvas.polygon([(flagx, flagy2), (flagx, flagy2 - 10), (flagx + 25, flagy2 - 5)], (204, 204, 0))
    return canvas.image
