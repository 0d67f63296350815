"""MountainCarContinuous-v0 as a `TorchVectorEnv`: Gymnasium's ``Continuous_MountainCarEnv``, batched.

Moore (1990), continuous-action variant (Arnaud de Broissia's version) as Gymnasium implements it.
The state row is ``(position, velocity)``; one step with force ``f = clip(a, -1, 1)``:

    v' = clip(v + f * 0.0015 - 0.0025 * cos(3 p), -0.07, 0.07)
    p' = clip(p + v', -1.2, 0.6);   v' = 0 if p' == -1.2 and v' < 0

terminated when ``p' >= 0.45 and v' >= goal_velocity``; reward ``100 * terminated - 0.1 * a**2``
(the *unclipped* action, as in Gymnasium).

Gymnasium stores this state as float32. Here the state has the env's dtype: float32 mode matches
Gymnasium's storage, float64 mode keeps the extra precision (no rounding to float32 between steps).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from envs.classic.mountain_car import MountainCarBase


class MountainCarContinuousEnv(MountainCarBase):
    """Batched MountainCarContinuous-v0 (``hrl_nested/MountainCarContinuous-v0``).

    Actions outside ``[-1, 1]`` are valid (``clip_actions``): clipped for the force (as Gymnasium
    does), while the action cost uses the action as given. A NaN action is invalid, and with
    ``validate=False`` it becomes ``neutral_action`` = 0 (no force), +-inf the bound (so the cost stays
    finite; see `envs.actions`). Reset: position ``~ U(-0.6, -0.4)``, velocity 0. Truncated at
    ``max_episode_steps`` (999).

    Args:
        num_envs: batch size.
        goal_velocity: the velocity the car must also reach at the goal (Gymnasium's option).
        **options: the options every env takes (time limit, device, dtype, ...): `envs.options.EnvOptions`.

    >>> env = MountainCarContinuousEnv(num_envs=4)
    >>> obs, info = env.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = env.step(torch.zeros(4, 1))
    >>> reward.shape
    torch.Size([4])
    """

    default_max_episode_steps = 999
    min_action = -1.0
    max_action = 1.0
    goal_position = 0.45  # 0.5 in the discrete task
    power = 0.0015
    clip_actions = True
    neutral_action = 0.0  # no force

    def _action_space(self, np_dtype: np.dtype) -> gym.Space:
        return gym.spaces.Box(self.min_action, self.max_action, (1,), dtype=np_dtype)

    def _transition(self, vars, action, draw):
        position, velocity = vars["state"].unbind(-1)
        a = action[:, 0]
        force = a.clamp(self.min_action, self.max_action)
        velocity = velocity + (force * self.power - 0.0025 * torch.cos(3 * position))
        velocity = velocity.clamp(-self.max_speed, self.max_speed)
        position = (position + velocity).clamp(self.min_position, self.max_position)
        velocity = torch.where((position <= self.min_position) & (velocity < 0), 0.0, velocity)
        terminated = (position >= self.goal_position) & (velocity >= self.goal_velocity)
        reward = torch.where(terminated, 100.0, 0.0).to(position.dtype) - a.square() * 0.1
        return {"state": torch.stack((position, velocity), -1)}, reward, terminated
