"""Gymnasium registration of the `hrl_nested/` ids and `envs.make`."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch

from envs.core import TorchVectorEnv

NAMESPACE = "hrl_nested"

# id -> (vector entry point, max_episode_steps, reward_threshold)
_IDS: dict[str, tuple[str, int | None, float | None]] = {
    "CartPole-v1": ("envs.classic.cartpole:CartPoleEnv", 500, 475.0),
    "MountainCar-v0": ("envs.classic.mountain_car:MountainCarEnv", 200, -110.0),
    "MountainCarContinuous-v0": ("envs.classic.continuous_mountain_car:MountainCarContinuousEnv", 999, 90.0),
    "Acrobot-v1": ("envs.classic.acrobot:AcrobotEnv", 500, -100.0),
    "Pendulum-v1": ("envs.classic.pendulum:PendulumEnv", 200, None),
    "FourRooms-v0": ("envs.tasks.four_rooms:FourRoomsEnv", 100, None),
    "PointMaze-U-v0": ("envs.tasks.point_maze:PointMazeEnv", 60, None),
    "PointMaze-Medium-v0": ("envs.tasks.point_maze:PointMazeMediumEnv", 120, None),
    "PointMaze-Large-v0": ("envs.tasks.point_maze:PointMazeLargeEnv", 160, None),
}


def register_envs() -> None:
    """Register every `hrl_nested/` id with a ``vector_entry_point`` (idempotent)."""
    for name, (entry, max_steps, threshold) in _IDS.items():
        env_id = f"{NAMESPACE}/{name}"
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            vector_entry_point=entry,
            max_episode_steps=max_steps,
            reward_threshold=threshold,
        )


def make(
    id: str, num_envs: int = 1, *, device: torch.device | str = "cpu", **kwargs: Any
) -> TorchVectorEnv:
    """Make a batched torch environment.

    Args:
        id: an `hrl_nested/...` id, any registered Gymnasium id (wrapped into the torch interface),
            or an entry point ``"package.module:ClassName"`` naming a `TorchVectorEnv` subclass
            (or a ``gym.Env`` subclass, wrapped).
        num_envs: batch size.
        device: torch device of every tensor in and out.
        **kwargs: passed to the environment's constructor (``max_episode_steps``, ``dtype``,
            ``autoreset_mode``, ``validate``, task options).

    >>> import envs
    >>> env = envs.make("hrl_nested/CartPole-v1", num_envs=16)
    >>> env.num_envs
    16
    """
    if not isinstance(id, str):
        raise ValueError(f"id: expected a string (env id or 'package.module:ClassName'), got {id!r}")
    if ":" in id and "/" not in id.split(":")[0]:
        creator = gym.envs.registration.load_env_creator(id)
        if isinstance(creator, type) and issubclass(creator, TorchVectorEnv):
            return creator(num_envs=num_envs, device=device, **kwargs)
        from envs.adapter import GymnasiumVectorAdapter

        return GymnasiumVectorAdapter.from_creator(creator, num_envs=num_envs, device=device, **kwargs)
    try:
        spec = gym.spec(id)
    except gym.error.Error as e:
        raise ValueError(f"id: {id!r} is not a registered Gymnasium id ({e})") from None
    if spec.vector_entry_point is not None and isinstance(spec.vector_entry_point, str) and (
        spec.vector_entry_point.startswith("envs.") or id.startswith(f"{NAMESPACE}/")
    ):
        env = gym.make_vec(id, num_envs=num_envs, device=device, **kwargs)
        if not isinstance(env, TorchVectorEnv):
            raise ValueError(
                f"{id!r}: expected a TorchVectorEnv from its vector_entry_point, got {type(env)}"
            )
        return env
    from envs.adapter import GymnasiumVectorAdapter

    return GymnasiumVectorAdapter.from_id(id, num_envs=num_envs, device=device, **kwargs)
