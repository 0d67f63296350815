"""`SB3VecEnv`: any of our vector envs as a Stable-Baselines3 ``VecEnv`` (numpy in, numpy out).

SB3's algorithms, wrappers (``VecNormalize``, ``VecMonitor``, ``VecCheckNan``, ``VecFrameStack``) and
``HerReplayBuffer`` talk to environments through ``stable_baselines3.common.vec_env.VecEnv``. This
adapter gives them a `TorchVectorEnv` (or the `GymnasiumVectorAdapter`) with SB3's conventions, as
``DummyVecEnv`` has them:

- ``reset() -> obs`` and ``step(actions) -> (obs, rewards, dones, infos)`` with numpy arrays (a dict
  of arrays for ``Dict`` observations); ``dones = terminated | truncated``; an env that ended is
  already reset, its true last observation is ``infos[i]["terminal_observation"]`` (a dict for
  ``Dict`` observations), read from SAME_STEP's ``info["final_obs"]``, and
  ``infos[i]["TimeLimit.truncated"] = truncated and not terminated`` on every step.
- ``seed(s)`` stores ``s + i`` for env ``i`` and ``set_options(...)`` stores reset options; both are
  used by the next ``reset()`` only, then cleared (SB3's ``VecEnv.seed`` / ``DummyVecEnv.reset``).
- ``get_attr`` / ``set_attr`` / ``env_method`` reach the one batched env (see their docstrings for
  what "env ``i``'s attribute" means there); ``get_images`` gives one frame per env.
- Goal envs (a ``Dict`` observation with ``achieved_goal`` / ``desired_goal``) give the observations
  SB3's ``MultiInputPolicy`` and ``HerReplayBuffer`` expect, HER's
  ``env_method("compute_reward", achieved_goal (B, G), desired_goal (B, G), infos, indices=[0])``
  returns ``[ndarray (B,)]`` for any B, and ``infos[i]["is_success"]`` is filled from
  ``compute_terminated`` when the env reports no success itself (SB3 logs it as ``success_rate``).

>>> import envs
>>> venv = envs.SB3VecEnv(envs.make("hrl_nested/CartPole-v1", num_envs=4, autoreset_mode="same_step"))
>>> venv.seed(0)
[0, 1, 2, 3]
>>> venv.reset().shape
(4, 4)
"""

from __future__ import annotations

import inspect
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

__all__ = ["SB3VecEnv"]

# Keys of a SAME_STEP info that the adapter turns into SB3's own per-env entries.
_STEP_KEYS = frozenset({"final_obs", "_final_obs", "final_info", "_final_info"})
_SUCCESS_KEYS = ("is_success", "success")
_FLAT_SPACES = (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)


class SB3VecEnv(VecEnv):
    """A vector env of ours as an SB3 ``VecEnv``, with SB3's reset, seeding and episode-end conventions.

    Args:
        env: a `TorchVectorEnv`, a `GymnasiumVectorAdapter` or any Gymnasium ``VectorEnv``. SB3's API
            reports an episode end and the next episode's first observation in the same step, which is
            Gymnasium's SAME_STEP autoreset: an env in SAME_STEP mode is used as it is; a
            `TorchVectorEnv` or a ``SyncVectorEnv``-backed adapter in NEXT_STEP mode is switched to
            SAME_STEP (the wrapper takes the env over, as ``DummyVecEnv`` takes over its envs; SB3 resets
            it before the first step); any other env must be made in SAME_STEP mode (a ``ValueError``
            says so).

    Raises:
        ValueError: ``env`` is not a Gymnasium ``VectorEnv``, or cannot be run in SAME_STEP mode.

    >>> import envs
    >>> venv = envs.SB3VecEnv(envs.make("hrl_nested/PointMaze-U-v0", num_envs=2))
    >>> sorted(venv.reset())
    ['achieved_goal', 'desired_goal', 'observation']
    """

    def __init__(self, env: Any):
        if not isinstance(env, VectorEnv):
            raise ValueError(
                f"SB3VecEnv: expected a gymnasium.vector.VectorEnv (a TorchVectorEnv, envs.make(...)), "
                f"got {type(env).__name__}"
            )
        _use_same_step(env)
        self.env = env
        self._device = getattr(env, "device", None)  # None: a numpy vector env
        self._goal_env = _is_goal_space(env.single_observation_space) and callable(
            getattr(env, "compute_terminated", None)
        )
        self._actions: Any = None
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)
        # VecEnv's own render_modes, plus the env's other declarations (render_fps, autoreset_mode).
        self.metadata = {**getattr(env, "metadata", {}), **self.metadata}

    @classmethod
    def make(cls, id: str, num_envs: int = 1, **kwargs: Any) -> SB3VecEnv:
        """``SB3VecEnv(envs.make(id, num_envs, autoreset_mode="same_step", **kwargs))``."""
        from envs.registration import make

        return cls(make(id, num_envs, autoreset_mode="same_step", **kwargs))

    # ---------------------------------------------------------------- reset / step
    def reset(self) -> VecEnvObs:
        """Reset every env with the seeds of `seed` and the options of ``set_options`` (then forgotten).

        Env ``i`` gets ``seed=s + i`` after ``seed(s)``, as SB3's ``DummyVecEnv`` passes ``s + i`` to its
        ``i``-th env; without a stored seed the envs keep their streams (a fresh random seed on the very
        first reset). ``infos`` of the reset are in ``self.reset_infos``.
        """
        seeds, options = list(self._seeds), self._reset_options_dict()
        if all(s is None for s in seeds):
            obs, info = self.env.reset(seed=None, options=options)
        elif all(s is not None for s in seeds):
            obs, info = self.env.reset(seed=seeds, options=options)
        else:  # some envs seeded, some not: two masked resets of one batch
            seeded = np.array([s is not None for s in seeds])
            filled = [0 if s is None else s for s in seeds]
            base = dict(options or {})
            self.env.reset(seed=None, options={**base, "reset_mask": self._mask(~seeded)})
            obs, info = self.env.reset(seed=filled, options={**base, "reset_mask": self._mask(seeded)})
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [_info_row(info, i, self.num_envs) for i in range(self.num_envs)]
        return _to_numpy(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        """Step every env; an env that ended is reset in the same step (its last obs in ``infos``)."""
        if self._actions is None:
            raise RuntimeError("SB3VecEnv.step_wait: call step_async(actions) first")
        actions, self._actions = self._env_actions(self._actions), None
        obs, reward, terminated, truncated, info = self.env.step(actions)
        n = self.num_envs
        terminated = _to_numpy(terminated).astype(bool).reshape(n)
        truncated = _to_numpy(truncated).astype(bool).reshape(n)
        dones = terminated | truncated
        success = self._success(info)
        success = None if success is None else success.tolist()
        final_obs = _to_numpy(info["final_obs"]) if dones.any() else None
        final_info = info.get("final_info") if isinstance(info.get("final_info"), Mapping) else None
        # Converted to numpy once for the whole batch; an info without per-env entries costs nothing.
        step_info = _info_to_numpy(info)
        final_info = None if final_info is None else _info_to_numpy(final_info)
        time_limit = (truncated & ~terminated).tolist()
        infos: list[dict[str, Any]] = []
        for i, done in enumerate(dones.tolist()):
            if done:  # SAME_STEP: info describes the new episode's reset, final_info the last step
                self.reset_infos[i] = _info_row(step_info, i, n) if step_info else {}
                row = _info_row(final_info, i, n) if final_info else {}
                row["terminal_observation"] = _row(final_obs, i)
            else:
                row = _info_row(step_info, i, n) if step_info else {}
            row["TimeLimit.truncated"] = time_limit[i]
            if success is not None and not any(k in row for k in _SUCCESS_KEYS):
                row["is_success"] = success[i]
            infos.append(row)
        rewards = _to_numpy(reward).astype(np.float32).reshape(n)
        return _to_numpy(obs), rewards, dones, infos

    def close(self) -> None:
        self.env.close()

    # ---------------------------------------------------------------- attributes and methods
    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The batched env's attribute, once per index (tensors as numpy).

        All envs of a batch share one object, so env ``i``'s attribute is the batch's (``render_mode``,
        ``max_episode_steps``, ``goal_space``; a per-env tensor such as ``state`` comes whole, rows =
        envs). ``render_mode`` is None for an env that declares none. Missing: ``AttributeError``.
        """
        idx = self._indices(indices)
        if attr_name == "render_mode":
            value = getattr(self.env, "render_mode", None)
        else:
            value = _to_numpy(getattr(self.env, attr_name))
        return [value for _ in idx]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute of the batched env: only for all envs at once (``indices`` None or all)."""
        idx = self._indices(indices)
        if sorted(idx) != list(range(self.num_envs)):
            raise ValueError(
                f"set_attr({attr_name!r}): the {self.num_envs} envs are one batched env sharing its "
                f"attributes, so indices must be None or all of range({self.num_envs}), got {list(idx)}"
            )
        setattr(self.env, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        """Call a method of the batched env; one result per index, as SB3 expects.

        A method with an ``env_index`` keyword (a per-env frame, ``render(env_index=i)``) is called once
        per index with it. Any other method acts on the whole batch, so it is called once and its
        result (tensors as numpy) is returned for each index: HER's
        ``env_method("compute_reward", achieved_goal (B, G), desired_goal (B, G), infos, indices=[0])``
        returns ``[rewards (B,)]`` whatever B is.
        """
        idx = self._indices(indices)
        method = getattr(self.env, method_name)
        if _accepts(method, "env_index"):
            return [_to_numpy(method(*method_args, env_index=i, **method_kwargs)) for i in idx]
        if not idx:
            return []
        result = _to_numpy(method(*method_args, **method_kwargs))
        return [result for _ in idx]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """Whether env ``i`` is wrapped in ``wrapper_class``: the single envs of a wrapped Gymnasium env
        (the adapter's ``SyncVectorEnv``) are checked; a `TorchVectorEnv` has no gym wrappers."""
        from stable_baselines3.common.env_util import is_wrapped

        idx = self._indices(indices)
        singles = getattr(getattr(self.env, "env", self.env), "envs", None)
        if singles is None:
            return [False for _ in idx]
        return [is_wrapped(singles[i], wrapper_class) for i in idx]

    def get_images(self) -> Sequence[np.ndarray | None]:
        """One ``(H, W, 3)`` frame per env, for SB3's tiled ``render()`` and video recorder.

        Uses ``env.render(env_index=i)`` where the env renders one env at a time, else the batch of frames
        ``env.render()`` returns. With a ``render_mode`` other than ``"rgb_array"``: a warning and None per
        env, as ``DummyVecEnv``.
        """
        if self.render_mode != "rgb_array":
            warnings.warn(
                f"The render mode is {self.render_mode}, but this method assumes it is `rgb_array` to obtain "
                "images.",
                stacklevel=2,
            )
            return [None for _ in range(self.num_envs)]
        render = self.env.render
        if _accepts(render, "env_index"):
            return [np.asarray(_to_numpy(render(env_index=i))) for i in range(self.num_envs)]
        frames = _to_numpy(render())
        if isinstance(frames, list | tuple) and len(frames) == self.num_envs:
            return [np.asarray(f) for f in frames]
        if isinstance(frames, np.ndarray) and frames.ndim == 4 and frames.shape[0] == self.num_envs:
            return list(frames)
        if isinstance(frames, np.ndarray) and frames.ndim == 3 and self.num_envs == 1:
            return [frames]
        shape = getattr(frames, "shape", type(frames).__name__)
        raise ValueError(
            f"get_images: expected env.render() to give {self.num_envs} frames (a sequence, or an array of "
            f"shape ({self.num_envs}, H, W, 3)), or env.render(env_index=i) to exist; got {shape}"
        )

    # ---------------------------------------------------------------- helpers
    def _indices(self, indices: VecEnvIndices) -> list[int]:
        idx = [int(i) for i in self._get_indices(indices)]
        bad = [i for i in idx if not 0 <= i < self.num_envs]
        if bad:
            raise IndexError(f"indices: expected env indices in range({self.num_envs}), got {bad}")
        return idx

    def _mask(self, mask: np.ndarray) -> Any:
        return mask if self._device is None else torch.as_tensor(mask, device=self._device)

    def _reset_options_dict(self) -> dict[str, Any] | None:
        """SB3's per-env option dicts as the one dict a batched reset takes.

        Equal dicts (``set_options(dict)``) pass as they are; per-env scalar ``env_index`` entries become
        one ``env_index`` list. Other per-env differences cannot be expressed: ``ValueError``.
        """
        opts = [dict(o or {}) for o in self._options]
        if all(not o for o in opts):
            return None
        if all(_same(o, opts[0]) for o in opts):
            return opts[0]
        if all(set(o) == {"env_index"} and np.ndim(o["env_index"]) == 0 for o in opts):
            return {"env_index": [int(o["env_index"]) for o in opts]}
        raise ValueError(
            f"set_options: a batched env resets all its envs with one options dict, so the options must be "
            f"the same for every env (or a scalar 'env_index' each); got {opts}"
        )

    def _env_actions(self, actions: Any) -> Any:
        """SB3's numpy actions in the env's dtype (and on its device for a torch env)."""
        arr = np.asarray(actions)
        space = self.env.single_action_space
        if isinstance(space, _FLAT_SPACES):
            arr = arr.astype(space.dtype, copy=False)
            expected = (self.num_envs, *space.shape)
            if arr.shape != expected and arr.size == int(np.prod(expected)):
                arr = arr.reshape(expected)  # SB3 gives (N, 1) for some Discrete policies
        if self._device is None:
            return arr
        return torch.as_tensor(arr, device=self._device)

    def _success(self, info: Mapping[str, Any]) -> np.ndarray | None:
        """Per-env success from ``compute_terminated`` on the step's final observation (goal envs that
        report no success key themselves), else None."""
        if not self._goal_env:
            return None
        if any(k in info or k in (info.get("final_info") or {}) for k in _SUCCESS_KEYS):
            return None
        final = info["final_obs"]
        out = self.env.compute_terminated(final["achieved_goal"], final["desired_goal"])
        return _to_numpy(out).astype(bool).reshape(self.num_envs)


# ---------------------------------------------------------------------------- module helpers
def _use_same_step(env: VectorEnv) -> None:
    """Make ``env`` a SAME_STEP env (see `SB3VecEnv`), or raise ``ValueError`` saying how to."""
    from envs.core import TorchVectorEnv

    mode = env.metadata.get("autoreset_mode")
    if mode == AutoresetMode.SAME_STEP:
        return
    same = AutoresetMode.SAME_STEP
    if isinstance(env, TorchVectorEnv) and mode == AutoresetMode.NEXT_STEP:
        env.autoreset_mode = same  # read by every step (a compiled step re-traces on the assignment)
        env.metadata = {**env.metadata, "autoreset_mode": same}
        return
    inner = getattr(env, "env", None)
    if (
        isinstance(inner, gym.vector.SyncVectorEnv)
        and mode == AutoresetMode.NEXT_STEP
        and getattr(env, "autoreset_mode", None) == AutoresetMode.NEXT_STEP
    ):
        inner.autoreset_mode = same
        inner.metadata = {**inner.metadata, "autoreset_mode": same}
        env.autoreset_mode = same
        env.metadata = {**env.metadata, "autoreset_mode": same}
        return
    raise ValueError(
        f"SB3VecEnv: expected an env in SAME_STEP autoreset mode (SB3 reports an episode's end and the next "
        f"episode's first observation in one step), got {type(env).__name__} with autoreset_mode={mode}; "
        f"make it with autoreset_mode='same_step' (envs.make(id, n, autoreset_mode='same_step'))"
    )


def _is_goal_space(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Dict) and {"achieved_goal", "desired_goal"} <= set(space.spaces)


def _to_numpy(x: Any) -> Any:
    """Tensors (nested in dicts, lists, tuples) as numpy arrays that own their memory."""
    if isinstance(x, torch.Tensor):
        arr = x.detach().cpu().numpy()
        # On CPU, numpy() shares the tensor's memory; an env may write into it on its next step.
        return arr.copy() if x.device.type == "cpu" else arr
    if isinstance(x, Mapping):
        return OrderedDict((k, _to_numpy(v)) for k, v in x.items())
    if isinstance(x, list | tuple) and any(isinstance(v, torch.Tensor | Mapping) for v in x):
        return type(x)(_to_numpy(v) for v in x)
    return x


def _row(batched: Any, i: int) -> Any:
    """Env ``i``'s entry of a batched observation (an array, or a dict of arrays)."""
    if isinstance(batched, Mapping):
        return OrderedDict((k, _row(v, i)) for k, v in batched.items())
    if isinstance(batched, np.ndarray) and batched.dtype == object:  # a numpy SAME_STEP env's final_obs
        return batched[i]
    return np.array(batched[i])


def _info_to_numpy(info: Mapping[str, Any]) -> dict[str, Any]:
    """A vector info without SAME_STEP's own keys, tensors as numpy (masks kept)."""
    return {
        k: _info_to_numpy(v) if isinstance(v, Mapping) else _to_numpy(v)
        for k, v in info.items()
        if k not in _STEP_KEYS
    }


def _info_row(info: Mapping[str, Any] | None, i: int, n: int) -> dict[str, Any]:
    """Env ``i``'s entries of a Gymnasium vector info (batched values, ``_key`` masks, nested dicts).

    Entries masked out for env ``i`` are left out; a value without a leading ``n`` dim is shared by all.
    """
    row: dict[str, Any] = {}
    for key, value in (info or {}).items():
        if key in _STEP_KEYS or key.startswith("_"):
            continue
        mask = info.get("_" + key)
        if mask is not None and not bool(np.asarray(_to_numpy(mask)).reshape(-1)[i]):
            continue
        if isinstance(value, Mapping):
            row[key] = _info_row(value, i, n)
            continue
        value = _to_numpy(value)
        if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == n:
            value = value[i]
            row[key] = value.item() if value.ndim == 0 and value.dtype != object else value
        else:
            row[key] = value
    return row


def _accepts(fn: Any, name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (explicitly, not through ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = params.get(name)
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def _same(a: Any, b: Any) -> bool:
    """Equality of option dicts that may hold arrays."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except (TypeError, ValueError):
        return a is b
