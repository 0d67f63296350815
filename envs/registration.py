"""Gymnasium registration of the `hrl_nested/` ids and `envs.make`."""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym
import torch

from envs.core import TorchVectorEnv
from envs.gym_env import single_entry_point

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
    """Register every `hrl_nested/` id (idempotent).

    Each id has a ``vector_entry_point`` (the batched torch env: ``gymnasium.make_vec(id, num_envs=N)``
    and `make`) and an ``entry_point`` (one env as a plain numpy ``gymnasium.Env``, `envs.gym_env`:
    ``gymnasium.make(id)`` and ``make_vec(..., vectorization_mode="sync" | "async")``). The spec's
    ``max_episode_steps`` is applied once on either road: passed to the vector env by ``make_vec``, and
    as ``gymnasium.make``'s ``TimeLimit`` around a single env that has no limit of its own.
    """
    for name, (entry, max_steps, threshold) in _IDS.items():
        env_id = f"{NAMESPACE}/{name}"
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point=single_entry_point(name),
            vector_entry_point=entry,
            max_episode_steps=max_steps,
            reward_threshold=threshold,
        )


def resolve_version(id: str) -> str:
    """The registered id that ``gymnasium.make(id)`` makes: ``id`` itself, or for an id without a
    version (``"CartPole"``, ``"hrl_nested/CartPole"``) its highest registered version, with
    Gymnasium's warning. An id that matches nothing is returned unchanged (the caller reports it).

    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     resolve_version("CartPole")
    'CartPole-v1'
    """
    try:
        ns, name, version = gym.envs.registration.parse_env_id(id)
    except gym.error.Error:
        return id
    latest = gym.envs.registration.find_highest_version(ns, name)
    if version is not None or latest is None:
        return id
    versioned = gym.envs.registration.get_env_id(ns, name, latest)
    gym.logger.warn(  # Gymnasium's own words (gymnasium.make warns the same way)
        f"Using the latest versioned environment `{versioned}` instead of the unversioned environment `{id}`."
    )
    return versioned


def resolve_colon_id(id: str) -> tuple[str | None, Any]:
    """Read ``"module:name"`` the way it resolves: ``(env_id, None)`` or ``(None, creator)``.

    ``module`` is imported first (importing it may register ids, as Gymnasium-Robotics' does). Then
    ``name`` is a registered Gymnasium id -> ``(name, None)`` (Gymnasium's ``module:EnvId`` form), else an
    attribute of the module -> ``(None, that class or callable)`` (an entry point). Neither: a
    ``ValueError`` naming both readings.

    >>> resolve_colon_id("envs.classic.cartpole:CartPoleEnv")[1].__name__
    'CartPoleEnv'
    """
    module_name, name = id.split(":", 1)
    if not module_name or not name:
        raise ValueError(f"id: expected 'module:EnvId' or 'package.module:Class', got {id!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"id {id!r}: cannot import module {module_name!r} ({e})") from None
    env_id = resolve_version(name)
    if env_id in gym.registry:
        return env_id, None
    creator: Any = module
    try:
        for part in name.split("."):
            creator = getattr(creator, part)
    except AttributeError:
        raise ValueError(
            f"id {id!r}: importing {module_name!r} registered no Gymnasium id {name!r} (the 'module:EnvId' "
            f"form), and {module_name!r} has no attribute {name!r} (the 'package.module:Class' form)"
        ) from None
    if not callable(creator):
        raise ValueError(f"id {id!r}: {name!r} in {module_name!r} is a {type(creator).__name__}, not a class")
    return None, creator


def make(id: str, num_envs: int = 1, *, device: torch.device | str = "cpu", **kwargs: Any) -> TorchVectorEnv:
    """Make a batched torch environment.

    Args:
        id: an `hrl_nested/...` id, any registered Gymnasium id (wrapped into the torch interface;
            without a version, its highest registered version, as ``gymnasium.make`` resolves it),
            Gymnasium's ``"module:EnvId"`` (imports ``module``, which registers ``EnvId``, as
            ``gymnasium.make`` does), or an entry point ``"package.module:ClassName"`` naming a
            `TorchVectorEnv` subclass (or a ``gym.Env`` subclass or factory, wrapped); see
            `resolve_colon_id` for how the two colon forms are told apart.
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
        env_id, creator = resolve_colon_id(id)
        if env_id is not None:
            return make(env_id, num_envs, device=device, **kwargs)
        if isinstance(creator, type) and issubclass(creator, TorchVectorEnv):
            return creator(num_envs=num_envs, device=device, **kwargs)
        from envs.adapter import GymnasiumVectorAdapter

        return GymnasiumVectorAdapter.from_creator(creator, num_envs=num_envs, device=device, **kwargs)
    id = resolve_version(id)  # "CartPole" -> "CartPole-v1", as gymnasium.make does
    try:
        spec = gym.spec(id)
    except gym.error.Error as e:
        raise ValueError(f"id: {id!r} is not a registered Gymnasium id ({e})") from None
    if (
        spec.vector_entry_point is not None
        and isinstance(spec.vector_entry_point, str)
        and (spec.vector_entry_point.startswith("envs.") or id.startswith(f"{NAMESPACE}/"))
    ):
        env = gym.make_vec(id, num_envs=num_envs, device=device, **kwargs)
        if not isinstance(env, TorchVectorEnv):
            raise ValueError(
                f"{id!r}: expected a TorchVectorEnv from its vector_entry_point, got {type(env)}"
            )
        return env
    from envs.adapter import GymnasiumVectorAdapter

    return GymnasiumVectorAdapter.from_id(id, num_envs=num_envs, device=device, **kwargs)
