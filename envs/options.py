"""`EnvOptions`: the constructor options every `TorchVectorEnv` takes, declared once.

A task's constructor names its own settings (Pendulum's ``g``, FourRooms' ``slip_prob``) as explicit
keywords and takes the shared ones as ``**options: Unpack[EnvOptions]``, passing them on to
``TorchVectorEnv.__init__`` untouched. The default time limit is the class attribute
``default_max_episode_steps`` (an explicit ``max_episode_steps=None`` still means no limit).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping
from typing import Any, Literal, TypedDict

import numpy as np
import torch
from gymnasium.vector import AutoresetMode

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover (Python 3.10; typing_extensions comes with torch and gymnasium)
    from typing_extensions import Unpack

__all__ = [
    "ENV_OPTION_DEFAULTS",
    "ENV_OPTION_NAMES",
    "EnvOptions",
    "Unpack",
    "numpy_dtype",
    "resolve_env_options",
]


class EnvOptions(TypedDict, total=False):
    """Keyword options shared by every `TorchVectorEnv` (all optional).

    Attributes:
        max_episode_steps: time limit; reaching it sets ``truncated`` (never ``terminated``). Not given:
            the class's ``default_max_episode_steps``; ``None``: no limit.
        device: any torch device; all tensors in and out live there (default ``"cpu"``).
        dtype: float dtype of physics, observations and rewards, ``torch.float32`` (default) or
            ``torch.float64``.
        autoreset_mode: ``NEXT_STEP`` (Gymnasium's default), ``SAME_STEP`` or ``DISABLED``, as an
            ``AutoresetMode`` or its name (``"next_step"``, ``"same-step"``, ...); see `TorchVectorEnv`.
        validate: ``True`` (default): an invalid action raises ``ValueError``; ``False``: it is replaced
            by the nearest valid action (see `TorchVectorEnv` and `envs.actions`).
        compile: ``"auto"`` (default: compile on CUDA, and on CPU from 4096 envs), ``True`` or
            ``False``; see `TorchVectorEnv`.
        render_mode: ``None`` (default) or one of the class's ``metadata["render_modes"]``.

    >>> from envs.classic.cartpole import CartPoleEnv
    >>> env = CartPoleEnv(num_envs=2, dtype=torch.float64, max_episode_steps=None)
    >>> env.max_episode_steps is None, CartPoleEnv(num_envs=2).max_episode_steps
    (True, 500)
    """

    max_episode_steps: int | None
    device: torch.device | str
    dtype: torch.dtype
    autoreset_mode: AutoresetMode | str
    validate: bool
    compile: bool | Literal["auto"]
    render_mode: str | None


ENV_OPTION_NAMES: tuple[str, ...] = tuple(EnvOptions.__annotations__)

# Every option's default but ``max_episode_steps``, whose default is the class's.
ENV_OPTION_DEFAULTS: EnvOptions = {
    "device": "cpu",
    "dtype": torch.float32,
    "autoreset_mode": AutoresetMode.NEXT_STEP,
    "validate": True,
    "compile": "auto",
    "render_mode": None,
}


def _own_keywords(cls: type) -> list[str]:
    """The keyword parameters the constructors in ``cls``'s MRO name themselves (a task's own settings;
    a subclass that forwards ``**kw`` to its parent, as PointMaze's medium and large mazes do, takes the
    parent's as well)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        if klass is not cls and klass.__module__ == "envs.core":
            break  # TorchVectorEnv's own keywords (the spaces) are the task's to fill, not the user's
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        names += [p.name for p in params if p.kind in kinds and p.name != "self" and p.name not in names]
    return names


def resolve_env_options(
    options: Mapping[str, Any], cls: type, default_max_episode_steps: int | None
) -> EnvOptions:
    """``options`` with every default filled in; a key that is not an `EnvOptions` name raises ``TypeError``.

    ``cls`` names the env in the error, with its own keywords: a misspelt option then reads as
    Python's own unexpected-keyword error does, with the expected names listed.
    """
    unknown = sorted(k for k in options if k not in ENV_OPTION_NAMES)
    if unknown:
        own = [k for k in _own_keywords(cls) if k not in ENV_OPTION_NAMES and k != "num_envs"]
        raise TypeError(
            f"{cls.__name__}() got unexpected keyword argument(s) {unknown}; expected the task's own "
            f"{own} or the env options {list(ENV_OPTION_NAMES)} (see envs.options.EnvOptions)"
        )
    resolved: EnvOptions = {"max_episode_steps": default_max_episode_steps, **ENV_OPTION_DEFAULTS}
    resolved.update(options)  # type: ignore[typeddict-item]
    return resolved


def numpy_dtype(dtype: torch.dtype) -> type[np.floating]:
    """The NumPy dtype of an env's ``Box`` spaces for its torch ``dtype`` (``TorchVectorEnv`` rejects any
    dtype other than float32 and float64)."""
    return np.float64 if dtype == torch.float64 else np.float32
