"""Gymnasium's numpy wrappers over our torch envs, through Gymnasium's own array conversion.

Gymnasium's vector wrappers (``RecordEpisodeStatistics``, ``NormalizeObservation``, ``NormalizeReward``,
``DictInfoToList``, ``FlattenObservation``, ``RescaleObservation``, ``RescaleAction``, ...) compute with
numpy. Its bridge from an Array-API env is ``gymnasium.wrappers.vector.ArrayConversion`` (it needs the
``array-api-compat`` package, a dependency of this one); `numpy_vector_env` applies it to a torch env in
one call. Wrap Gymnasium's wrappers around the result, and ``NumpyToTorch`` around those to come back
to tensors.

As with Gymnasium's own vector envs, the observation wrappers (``NormalizeObservation``,
``FlattenObservation``, ``RescaleObservation``) need NEXT_STEP (or DISABLED) autoreset: Gymnasium
refuses them over a SAME_STEP env. Each step costs a device-to-host copy: this road is for using
Gymnasium's tools, not for the fast on-device rollout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from gymnasium.vector import VectorEnv

if TYPE_CHECKING:
    from gymnasium.wrappers.vector import ArrayConversion

__all__ = ["numpy_vector_env"]


def numpy_vector_env(env: VectorEnv) -> ArrayConversion:
    """``env`` (torch tensors in and out) seen through numpy arrays, by Gymnasium's ``ArrayConversion``.

    Observations, rewards, flags and infos come back as numpy arrays on the host; numpy actions (and
    ``reset`` options such as ``reset_mask``) go to torch on ``env.device``.

    Args:
        env: a torch vector env (`envs.TorchVectorEnv`, the Gymnasium adapter, or a wrapper of one).

    >>> import envs
    >>> from gymnasium.wrappers.vector import RecordEpisodeStatistics
    >>> env = RecordEpisodeStatistics(envs.numpy_vector_env(envs.make("hrl_nested/Pendulum-v1", 4)))
    >>> obs, info = env.reset(seed=0)
    >>> type(obs).__name__, obs.shape
    ('ndarray', (4, 3))
    """
    # Imported here: it loads array-api-compat (a tenth of a second), which `import envs` need not pay.
    from gymnasium.wrappers.vector import ArrayConversion

    device: Any = getattr(env, "device", None)
    if not isinstance(device, torch.device):
        raise ValueError(f"env: expected a torch vector env with a torch.device `device`, got {env!r}")
    return ArrayConversion(env, env_xp=torch, target_xp=np, env_device=device)
