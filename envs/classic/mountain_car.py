"""MountainCar-v0 as a `TorchVectorEnv`: Gymnasium's ``MountainCarEnv`` dynamics, batched.

Moore (1990), "Efficient Memory-based Learning for Robot Control" (PhD thesis), as Gymnasium
implements it. The state row is ``(position, velocity)``; one step with action ``a in {0, 1, 2}``:

    v' = clip(v + (a - 1) * 0.001 - 0.0025 * cos(3 p), -0.07, 0.07)
    p' = clip(p + v', -1.2, 0.6);   v' = 0 if p' == -1.2 and v' < 0

terminated when ``p' >= 0.5 and v' >= goal_velocity``; reward -1 every step.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from envs.core import Draw, TorchVectorEnv


class MountainCarEnv(TorchVectorEnv):
    """Batched MountainCar-v0 (``hrl_nested/MountainCar-v0``).

    Actions: 0 push left, 1 no push (``neutral_action``), 2 push right. Gymnasium asserts an action in
    ``{0, 1, 2}``; with ``validate=False`` an out-of-range one is clamped into it (see `envs.actions`).
    Reset: position ``~ U(-0.6, -0.4)``, velocity 0. Truncated at ``max_episode_steps`` (200).

    Args:
        num_envs: batch size.
        goal_velocity: the velocity the car must also reach at the goal (Gymnasium's option).
        max_episode_steps, device, dtype, autoreset_mode, validate, compile: see `TorchVectorEnv`.

    >>> env = MountainCarEnv(num_envs=4)
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape
    torch.Size([4, 2])
    """

    min_position = -1.2
    max_position = 0.6
    max_speed = 0.07
    goal_position = 0.5
    force = 0.001
    gravity = 0.0025
    neutral_action = 1  # no push

    def __init__(
        self,
        num_envs: int = 1,
        *,
        max_episode_steps: int | None = 200,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        autoreset_mode: str | object = "next_step",
        validate: bool = True,
        compile: bool = False,
        goal_velocity: float = 0.0,
    ):
        self.goal_velocity = float(goal_velocity)
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        low = np.array([self.min_position, -self.max_speed], dtype=np_dtype)
        high = np.array([self.max_position, self.max_speed], dtype=np_dtype)
        super().__init__(
            num_envs,
            single_observation_space=gym.spaces.Box(low, high, dtype=np_dtype),
            single_action_space=gym.spaces.Discrete(3),
            max_episode_steps=max_episode_steps,
            device=device,
            dtype=dtype,
            autoreset_mode=autoreset_mode,
            validate=validate,
            compile=compile,
        )

    def _sample_reset(self, draw: Draw) -> dict[str, torch.Tensor]:
        position = draw.uniform(1, -0.6, -0.4)
        return {"state": torch.cat((position, torch.zeros_like(position)), -1)}

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

    def _observe(self, vars):
        return vars["state"].clone()
