"""`GymEnv`: one env of a `TorchVectorEnv` as a plain ``gymnasium.Env`` (numpy in, numpy out).

Every ``hrl_nested/`` id is registered with an ``entry_point`` here as well as its
``vector_entry_point``, so the roads Gymnasium users take through a single env work:
``gymnasium.make(id)``, ``make_vec(id, vectorization_mode="sync" | "async")``,
``gymnasium.utils.env_checker.check_env``, ``gymnasium.utils.play``. ``make_vec(id)`` with the default
mode still builds the batched torch env from the vector entry point.

The time limit is applied once: ``gymnasium.make`` wraps the env in its ``TimeLimit`` with the spec's
``max_episode_steps`` (or the ``max_episode_steps=`` given to ``make``), so the inner env runs
without a limit of its own. The inner env has autoreset DISABLED: a step after ``terminated`` raises
until ``reset()`` is called (Gymnasium leaves that step undefined; here it is an error, not a silent
reset).

The entry point of id ``hrl_nested/CartPole-v1`` is ``envs.gym_env:CartPole_v1``, a `GymEnv`
subclass made on first access (module ``__getattr__``) from the id's vector entry point, so that the
spec stays a plain, JSON-serializable string and the class pickles by name.

>>> import gymnasium as gym, envs
>>> env = gym.make("hrl_nested/CartPole-v1")
>>> obs, info = env.reset(seed=0)
>>> obs.shape, obs.dtype.name
((4,), 'float32')
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from envs.core import TorchVectorEnv

__all__ = ["GymEnv", "single_entry_point"]


_in_forked_child = False


def _mark_forked_child() -> None:
    global _in_forked_child
    _in_forked_child = True


# ``make_vec(..., vectorization_mode="async")`` forks its workers (Linux default). After the parent ran
# multi-threaded torch work, a forked child's first parallel op can hang in the OpenMP runtime; a
# worker that builds a GymEnv therefore runs torch single-threaded (one env needs no threads).
os.register_at_fork(after_in_child=_mark_forked_child)


def _to_numpy(x: Any) -> Any:
    """Row 0 of a batched tensor (or dict of them) as numpy; other values unchanged."""
    if isinstance(x, Mapping):
        return {k: _to_numpy(v) for k, v in x.items()}
    if isinstance(x, torch.Tensor):
        return x[0].detach().cpu().numpy()
    return x


class GymEnv(gym.Env):
    """One env of a `TorchVectorEnv` behind Gymnasium's single-env API (unbatched numpy arrays).

    Args:
        vector_env: the `TorchVectorEnv` subclass (or its ``"module:Class"`` entry point); the
            per-id subclasses that ``gymnasium.make`` uses set it as a class attribute.
        render_mode: Gymnasium's ``render_mode``, passed to the inner env when given.
        device: torch device of the inner env (observations come back as numpy all the same).
        max_episode_steps: the inner env's own time limit; None (default) because
            ``gymnasium.make`` adds its ``TimeLimit`` from the spec: a second limit would be redundant.
        **kwargs: the inner env's options (``dtype``, ``validate``, task options).

    Attributes:
        vector_env: the one-env `TorchVectorEnv` (autoreset DISABLED).
    """

    vector_entry_point: ClassVar[str | type[TorchVectorEnv] | None] = None
    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        vector_env: str | type[TorchVectorEnv] | None = None,
        *,
        render_mode: str | None = None,
        device: torch.device | str = "cpu",
        max_episode_steps: int | None = None,
        **kwargs: Any,
    ):
        if _in_forked_child and torch.get_num_threads() > 1:
            torch.set_num_threads(1)
        entry = vector_env if vector_env is not None else type(self).vector_entry_point
        cls = gym.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
        if not (isinstance(cls, type) and issubclass(cls, TorchVectorEnv)):
            raise ValueError(
                f"vector_env: expected a TorchVectorEnv subclass or its 'module:Class', got {entry!r}"
            )
        if render_mode is not None:
            kwargs["render_mode"] = render_mode
        self.vector_env = cls(
            num_envs=1,
            device=device,
            max_episode_steps=max_episode_steps,
            autoreset_mode=AutoresetMode.DISABLED,
            **kwargs,
        )
        self.render_mode = render_mode
        self.observation_space = self.vector_env.single_observation_space
        self.action_space = self.vector_env.single_action_space
        meta = {k: v for k, v in self.vector_env.metadata.items() if k not in ("autoreset_mode", "torch")}
        self.metadata = {**type(self).metadata, **meta}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        """Reset; ``seed`` seeds ``np_random`` (as in Gymnasium) and the inner env's stream ``(seed, 0)``."""
        super().reset(seed=seed)
        obs, info = self.vector_env.reset(seed=seed, options=options)
        return _to_numpy(obs), _to_numpy(info)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        """One step; ``action`` is an element of ``action_space`` (``Box`` values are cast to its dtype).

        Raises `envs.core.EndedEnvError` after ``terminated`` until ``reset()`` is called.
        """
        obs, reward, terminated, truncated, info = self.vector_env.step(self._batch_action(action))
        return _to_numpy(obs), float(reward[0]), bool(terminated[0]), bool(truncated[0]), _to_numpy(info)

    def render(self) -> Any:
        """The inner env's frame of this env; None without a ``render_mode`` (Gymnasium's convention)."""
        if self.render_mode is None:
            return None
        return self.vector_env.render(env_index=0)  # a TorchVectorEnv draws one env per call

    def close(self) -> None:
        self.vector_env.close()

    @property
    def state(self) -> np.ndarray:
        """The physics in the layout of the Gymnasium original's ``env.unwrapped.state`` (a copy)."""
        return self.vector_env.state[0].detach().cpu().numpy()

    def _batch_action(self, action: Any) -> torch.Tensor:
        space = self.action_space
        arr = np.asarray(action)
        if isinstance(space, gym.spaces.Box):
            if arr.dtype.kind not in "biuf":
                raise ValueError(f"action: expected a real array for {space}, got {arr.dtype} {action!r}")
            arr = arr.astype(space.dtype, copy=False)
        elif arr.dtype.kind in "iu":
            arr = arr.astype(np.int64, copy=False)
        if arr.shape != space.shape:
            raise ValueError(f"action: expected shape {space.shape} for {space}, got {arr.shape}: {action!r}")
        return torch.as_tensor(arr).unsqueeze(0).to(self.vector_env.device)

    def __repr__(self) -> str:
        return f"GymEnv({type(self.vector_env).__name__}, device={self.vector_env.device})"


def single_entry_point(name: str) -> str:
    """The ``entry_point`` of ``hrl_nested/<name>``: ``"CartPole-v1"`` -> ``"envs.gym_env:CartPole_v1"``."""
    return f"{__name__}:{name.replace('-', '_')}"


def __getattr__(attr: str) -> type[GymEnv]:
    """The `GymEnv` subclass of a registered id, made once (``envs.gym_env.CartPole_v1``)."""
    if attr.startswith("__"):  # the import system probes dunders (``__path__``) while loading
        raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
    from envs.registration import _IDS

    names = {name.replace("-", "_"): entry for name, (entry, *_rest) in _IDS.items()}
    if attr not in names:
        raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
    vec_cls = gym.envs.registration.load_env_creator(names[attr])
    meta = {k: v for k, v in vec_cls.metadata.items() if k not in ("autoreset_mode", "torch")}
    cls = type(
        attr,
        (GymEnv,),
        {
            "vector_entry_point": names[attr],
            "metadata": {**GymEnv.metadata, **meta},
            "__module__": __name__,
            "__qualname__": attr,
            "__doc__": f"One {vec_cls.__name__} as a ``gymnasium.Env`` (see `GymEnv`).",
        },
    )
    globals()[attr] = cls
    return cls
