"""`GymnasiumVectorAdapter`: any Gymnasium environment behind the torch vector interface.

A CPU simulator (a MuJoCo task, a Gymnasium-Robotics goal env, MiniGrid, a user's own ``gym.Env``)
runs in Gymnasium's ``SyncVectorEnv`` with a declared autoreset mode; the adapter converts actions
from torch tensors to numpy on the way in and observations, rewards, flags and infos to torch tensors
on ``device`` on the way out, so learning code sees the same interface as a `TorchVectorEnv`:
``num_envs``, ``device``, ``dtype``, single and batched spaces, ``metadata["autoreset_mode"]``,
``reset(seed=, options=)``, ``step`` and, in SAME_STEP mode, ``info["final_obs"]`` as a full
``(num_envs, ...)`` tensor with the mask ``info["_final_obs"]``; ``goal_space`` and
``achieved_goal`` for goal envs.

Spaces with a tensor form are supported: ``Box``, ``Discrete``, ``MultiDiscrete``, ``MultiBinary``
and ``Dict`` / ``Tuple`` of these. Floating-point ``Box`` observations are cast to ``dtype`` (and the
adapter's observation space says so); integer spaces keep their dtype (``uint8`` images stay small).
Any other space (``Text``, ``Graph``, ``Sequence``, MiniGrid's ``mission``) raises a ``ValueError``
naming it, its key, and the way out: a Gymnasium wrapper that drops or encodes it, passed with
``wrappers=[...]``.

Actions follow the rule of every env (`envs.actions`, the same `ActionRule`): with ``validate=False``
an out-of-range ``Discrete`` action is clamped and a NaN ``Box`` coordinate becomes the env's
``neutral_action`` (the middle of the bounds unless the wrapped env declares a ``neutral_action``
attribute) before every ``Box`` coordinate is clamped into the bounds (a wrapped env that clips
out-of-bounds actions itself may declare ``clip_actions = True``); with ``validate=True`` an invalid
action raises at once, before the simulator sees it: the adapter copies actions to the host anyway, so
it never defers a check and `GymnasiumVectorAdapter.raise_pending` is a no-op. Seeds are checked as a
`TorchVectorEnv` checks them (`envs.core.check_seed`).

The adapter is a `gymnasium.vector.VectorEnv`, not a `TorchVectorEnv`: the latter is built from
tensor hooks, while here the dynamics live in the wrapped simulator. Hence there is no
``get_state`` / ``set_state`` (``supports_state`` is False, see `supports_state`): a learner runs it
with an eager (uncaptured) rollout, and a resumed run restores the learner and starts fresh episodes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array

from envs.actions import ActionRule
from envs.core import (
    GoalAccess,
    TorchVectorEnv,
    check_seed,
    parse_autoreset_mode,
    resolve_device,
    seeded_np_random,
)

_SUPPORTED = "Box, Discrete, MultiDiscrete, MultiBinary, and Dict / Tuple of these"
Wrapper = Callable[[gym.Env], gym.Env]


def check_space(space: gym.Space, what: str, path: str = "") -> None:
    """Raise ``ValueError`` naming the first sub-space of ``space`` that has no tensor form."""
    if isinstance(space, gym.spaces.Dict):
        for key, sub in space.spaces.items():
            check_space(sub, what, f"{path}[{key!r}]")
    elif isinstance(space, gym.spaces.Tuple):
        for i, sub in enumerate(space.spaces):
            check_space(sub, what, f"{path}[{i}]")
    elif not isinstance(
        space, gym.spaces.Box | gym.spaces.Discrete | gym.spaces.MultiDiscrete | gym.spaces.MultiBinary
    ):
        where = f" at key {path}" if path else ""
        fix = (
            "drop it with gymnasium.wrappers.FilterObservation(env, filter_keys=[...]) or encode it as a Box "
            "with a gymnasium.ObservationWrapper"
            if what == "observation"
            else "map it to a Box or Discrete action with a gymnasium.ActionWrapper"
        )
        raise ValueError(
            f"{what} space{where}: {space} ({type(space).__name__}) has no tensor form; "
            f"supported: {_SUPPORTED}. "
            f"Way out: {fix}, passed as envs.make(..., wrappers=[lambda env: ...])"
        )


def torch_space(space: gym.Space, dtype: torch.dtype) -> gym.Space:
    """The space of what the adapter returns: floating-point Boxes become ``dtype``, the rest is kept."""
    if isinstance(space, gym.spaces.Dict):
        return gym.spaces.Dict({k: torch_space(s, dtype) for k, s in space.spaces.items()})
    if isinstance(space, gym.spaces.Tuple):
        return gym.spaces.Tuple(tuple(torch_space(s, dtype) for s in space.spaces))
    if isinstance(space, gym.spaces.Box) and np.issubdtype(space.dtype, np.floating):
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        return gym.spaces.Box(space.low.astype(np_dtype), space.high.astype(np_dtype), dtype=np_dtype)
    return space


class GymnasiumVectorAdapter(GoalAccess, VectorEnv):
    """A numpy Gymnasium ``VectorEnv`` seen through torch tensors on ``device``.

    Args:
        vector_env: a Gymnasium vector env (usually a ``SyncVectorEnv``) declaring NEXT_STEP or
            SAME_STEP in ``metadata["autoreset_mode"]``.
        device: torch device of every tensor in and out.
        dtype: float dtype of floating-point observations and of rewards.
        validate: what an invalid action does, as in `TorchVectorEnv` (`envs.actions`): ``True`` raises
            ``ValueError`` at once (``Box`` actions must then have ``dtype``); ``False`` sanitises it
            (``Discrete`` clamped, ``Box`` NaN -> ``neutral_action``, then clamped into the bounds).
        max_episode_steps: the time limit, if known (`from_id` and `from_creator` fill it in).

    >>> import envs
    >>> env = envs.make("CartPole-v1", num_envs=2)  # a plain Gymnasium id: wrapped
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape, obs.dtype
    (torch.Size([2, 4]), torch.float32)
    """

    def __init__(
        self,
        vector_env: VectorEnv,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        validate: bool = True,
        max_episode_steps: int | None = None,
    ):
        if not isinstance(vector_env, VectorEnv):
            raise ValueError(
                f"vector_env: expected a gymnasium.vector.VectorEnv, got {type(vector_env).__name__}"
            )
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype!r}")
        declared = vector_env.metadata.get("autoreset_mode")
        if declared is None:
            raise ValueError(
                f"{type(vector_env).__name__} declares no metadata['autoreset_mode']; "
                f"expected AutoresetMode.NEXT_STEP or SAME_STEP"
            )
        self.autoreset_mode = parse_autoreset_mode(declared)
        check_space(vector_env.single_observation_space, "observation")
        check_space(vector_env.single_action_space, "action")
        self.env = vector_env
        self.num_envs = int(vector_env.num_envs)
        self.device = resolve_device(device)
        self.dtype = dtype
        self.validate = bool(validate)
        self.max_episode_steps = max_episode_steps
        self.metadata = {**vector_env.metadata, "autoreset_mode": self.autoreset_mode, "torch": True}
        self.render_mode = getattr(vector_env, "render_mode", None)
        self.spec = getattr(vector_env, "spec", None)
        self._np_obs_space = vector_env.single_observation_space
        self.single_observation_space = torch_space(vector_env.single_observation_space, dtype)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.single_action_space = vector_env.single_action_space
        self.action_space = vector_env.action_space
        # The wrapped env's own declarations of the rule (as TorchVectorEnv's class attributes).
        inner = vector_env.envs[0].unwrapped if getattr(vector_env, "envs", None) else vector_env
        self._action_rules = _action_rules(
            self.single_action_space,
            "actions",
            self.num_envs,
            dtype,
            getattr(inner, "clip_actions", False),
            getattr(inner, "neutral_action", None),
        )

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_id(
        cls,
        id: str,
        num_envs: int = 1,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        validate: bool = True,
        wrappers: Sequence[Wrapper] | None = None,
        **env_kwargs: Any,
    ) -> VectorEnv:
        """Make a registered Gymnasium id as a torch vector env.

        An id with an ``entry_point`` runs ``num_envs`` copies in a ``SyncVectorEnv``: ``env_kwargs``
        go to ``gymnasium.make`` (``max_episode_steps``, ``render_mode``, task options), ``wrappers``
        are applied to each copy, innermost first. An id with only a ``vector_entry_point`` is made
        through it: a `TorchVectorEnv` (a user's own, registered under any namespace) is returned as
        it is, a numpy vector env is wrapped (and must declare the autoreset mode asked for).
        """
        from envs.registration import resolve_version

        mode = parse_autoreset_mode(autoreset_mode)
        id = resolve_version(id)  # an id without a version: its latest, as gymnasium.make does
        try:
            spec = gym.spec(id)
        except gym.error.Error as e:
            raise ValueError(f"id: {id!r} is not a registered Gymnasium id ({e})") from None
        vector_creator = spec.vector_entry_point
        if isinstance(vector_creator, str):
            vector_creator = gym.envs.registration.load_env_creator(vector_creator)
        if isinstance(vector_creator, type) and issubclass(vector_creator, TorchVectorEnv):
            if wrappers:
                raise ValueError(f"wrappers: {id!r} is a TorchVectorEnv; it has no single envs to wrap")
            kwargs = dict(env_kwargs, device=device, dtype=dtype, autoreset_mode=mode, validate=validate)
            return gym.make_vec(id, num_envs=num_envs, **kwargs)
        if spec.entry_point is None and vector_creator is not None:
            vec = gym.make_vec(id, num_envs=num_envs, vectorization_mode="vector_entry_point", **env_kwargs)
            if vec.metadata.get("autoreset_mode") != mode:
                raise ValueError(
                    f"autoreset_mode: {id!r} declares {vec.metadata.get('autoreset_mode')}, asked for {mode}"
                )
            limit = env_kwargs.get("max_episode_steps", spec.max_episode_steps)
            return cls(vec, device=device, dtype=dtype, validate=validate, max_episode_steps=limit)
        try:
            vec = gym.make_vec(
                id,
                num_envs=num_envs,
                vectorization_mode="sync",
                vector_kwargs={"autoreset_mode": mode},
                wrappers=list(wrappers or []),
                **env_kwargs,
            )
        except gym.error.Error as e:
            raise ValueError(f"{id!r}: cannot be made as a Gymnasium SyncVectorEnv ({e})") from None
        limit = env_kwargs.get("max_episode_steps", spec.max_episode_steps)
        return cls(vec, device=device, dtype=dtype, validate=validate, max_episode_steps=limit)

    @classmethod
    def from_creator(
        cls,
        creator: Callable[..., Any],
        num_envs: int = 1,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        autoreset_mode: AutoresetMode | str | None = None,
        validate: bool = True,
        wrappers: Sequence[Wrapper] | None = None,
        max_episode_steps: int | None = None,
        **env_kwargs: Any,
    ) -> GymnasiumVectorAdapter:
        """Wrap a ``gym.Env`` class or factory (``creator(**env_kwargs)``), or a numpy ``VectorEnv`` class.

        A ``gym.Env`` creator runs in a ``SyncVectorEnv`` (``autoreset_mode`` NEXT_STEP unless given),
        with ``max_episode_steps`` as a ``TimeLimit`` and ``wrappers`` applied to each copy. A
        ``VectorEnv`` class is built as ``creator(num_envs=num_envs, **env_kwargs)`` and must declare the
        autoreset mode asked for (if any).
        """
        if isinstance(creator, type) and issubclass(creator, VectorEnv):
            if wrappers:
                raise ValueError(
                    f"wrappers: cannot wrap the single envs of the vector env class {creator.__name__}"
                )
            vec = creator(num_envs=num_envs, **env_kwargs)
            if autoreset_mode is not None:
                want = parse_autoreset_mode(autoreset_mode)
                got = vec.metadata.get("autoreset_mode")
                if got != want:
                    raise ValueError(f"autoreset_mode: {creator.__name__} declares {got}, asked for {want}")
            limit = (
                max_episode_steps
                if max_episode_steps is not None
                else getattr(vec, "max_episode_steps", None)
            )
            return cls(vec, device=device, dtype=dtype, validate=validate, max_episode_steps=limit)
        mode = parse_autoreset_mode(autoreset_mode if autoreset_mode is not None else AutoresetMode.NEXT_STEP)
        name = getattr(creator, "__name__", repr(creator))

        def make_one() -> gym.Env:
            env = creator(**env_kwargs)
            if not isinstance(env, gym.Env):
                raise ValueError(f"{name}: expected it to create a gymnasium.Env, got {type(env).__name__}")
            if max_episode_steps is not None:
                env = gym.wrappers.TimeLimit(env, max_episode_steps)
            for wrap in wrappers or []:
                env = wrap(env)
            return env

        vec = gym.vector.SyncVectorEnv([make_one] * num_envs, autoreset_mode=mode)
        limit = max_episode_steps
        if limit is None and getattr(vec.envs[0], "spec", None) is not None:
            limit = vec.envs[0].spec.max_episode_steps
        return cls(vec, device=device, dtype=dtype, validate=validate, max_episode_steps=limit)

    # ---------------------------------------------------------------- VectorEnv API
    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset all envs (or those in ``options["reset_mask"]``, a bool tensor or array).

        ``seed``: as for `TorchVectorEnv` (an int in ``[0, 2**64)``, a list of N such ints, or None;
        anything else raises ``ValueError``); Gymnasium seeds env ``i`` with ``seed + i``.
        ``options["env_index"]`` raises ``ValueError``: the wrapped envs draw from their simulators' own
        generators, which have no stream index to set; pass per-env seeds instead.
        """
        seed = check_seed(seed, self.num_envs)
        if seed is not None:  # np_random_seed == seed afterwards, as Gymnasium's VectorEnv.reset sets it
            self._np_random, self._np_random_seed = seeded_np_random(seed)
        options = dict(options or {})
        if "env_index" in options:
            raise ValueError(
                f"options['env_index']: expected no env_index for a GymnasiumVectorAdapter (its envs draw "
                f"from the wrapped simulators' own generators, not counter-based streams with an index), "
                f"got {options['env_index']!r}; pass per-env seeds (seed=[...]) instead"
            )
        if "reset_mask" in options:
            mask = options["reset_mask"]
            if isinstance(mask, torch.Tensor):
                mask = mask.detach().cpu().numpy()
            options["reset_mask"] = np.asarray(mask, dtype=np.bool_)
        obs, info = self.env.reset(seed=seed, options=options or None)
        return self._obs_to_torch(obs), self._info_to_torch(info, obs)

    def step(self, actions: Any) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """One step of every env; returns ``(obs, reward, terminated, truncated, info)`` as tensors."""
        np_actions = self._action_to_numpy(actions, self.single_action_space, "actions")
        obs, reward, terminated, truncated, info = self.env.step(np_actions)
        obs_t, info_t = self._obs_to_torch(obs), self._info_to_torch(info, obs)
        if self.autoreset_mode == AutoresetMode.SAME_STEP and "final_obs" not in info_t:
            # Gymnasium adds final_obs only on steps where some env ended; TorchVectorEnv always does.
            info_t["final_obs"] = _clone(obs_t)
            info_t["_final_obs"] = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
            info_t["final_info"] = {}
            info_t["_final_info"] = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        return (
            obs_t,
            torch.as_tensor(np.asarray(reward), dtype=self.dtype).to(self.device),
            torch.as_tensor(np.asarray(terminated, dtype=np.bool_)).to(self.device),
            torch.as_tensor(np.asarray(truncated, dtype=np.bool_)).to(self.device),
            info_t,
        )

    def raise_pending(self) -> None:
        """A no-op, for the interface of `TorchVectorEnv`: the adapter checks actions in ``step`` itself
        (they go to the host for the simulator anyway), so it never has deferred invalid actions."""

    def compute_reward(self, achieved_goal: Any, desired_goal: Any, info: Any = None) -> torch.Tensor:
        """The wrapped goal env's ``compute_reward`` on tensors (batched over the leading dims)."""
        fn = self._goal_method("compute_reward")
        ag = (
            achieved_goal.detach().cpu().numpy() if isinstance(achieved_goal, torch.Tensor) else achieved_goal
        )
        dg = desired_goal.detach().cpu().numpy() if isinstance(desired_goal, torch.Tensor) else desired_goal
        return torch.as_tensor(np.asarray(fn(ag, dg, info if info is not None else {})), dtype=self.dtype).to(
            self.device
        )

    supports_state = False
    """``get_state`` / ``set_state`` cannot snapshot a simulator: no capture, no env state in checkpoints."""

    def get_state(self) -> Any:
        raise NotImplementedError(
            "GymnasiumVectorAdapter: the state lives inside the wrapped simulator and cannot be snapshotted; "
            "use a TorchVectorEnv for get_state / set_state"
        )

    def set_state(self, state: Any) -> None:
        self.get_state()

    def render(self) -> Any:
        return self.env.render()

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.env.call(name, *args, **kwargs)

    def get_attr(self, name: str) -> Any:
        return self.env.get_attr(name)

    def set_attr(self, name: str, values: Any) -> None:
        self.env.set_attr(name, values)

    def close_extras(self, **kwargs: Any) -> None:
        self.env.close(**kwargs)

    def __repr__(self) -> str:
        return (
            f"GymnasiumVectorAdapter({self.env!r}, num_envs={self.num_envs}, device={self.device}, "
            f"dtype={self.dtype}, autoreset_mode={self.autoreset_mode.name})"
        )

    # ---------------------------------------------------------------- conversions
    def _goal_method(self, name: str) -> Callable[..., Any]:
        inner = self.env.envs[0].unwrapped if hasattr(self.env, "envs") else self.env
        fn = getattr(inner, name, None)
        if fn is None:
            raise NotImplementedError(f"{name}: the wrapped env {type(inner).__name__} has no {name}")
        return fn

    def _to_torch(self, x: Any, space: gym.Space) -> Any:
        if isinstance(space, gym.spaces.Dict):
            return {k: self._to_torch(x[k], s) for k, s in space.spaces.items()}
        if isinstance(space, gym.spaces.Tuple):
            return tuple(self._to_torch(xi, s) for xi, s in zip(x, space.spaces))
        arr = np.asarray(x)
        if isinstance(space, gym.spaces.Box) and np.issubdtype(space.dtype, np.floating):
            return torch.as_tensor(arr, dtype=self.dtype).to(self.device)
        return torch.as_tensor(arr.astype(space.dtype, copy=False)).to(self.device)

    def _obs_to_torch(self, obs: Any) -> Any:
        return self._to_torch(obs, self._np_obs_space)

    def _info_to_torch(self, info: dict[str, Any], obs: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in info.items():
            if key == "final_obs":
                mask = np.asarray(info.get("_final_obs", np.zeros(self.num_envs, dtype=np.bool_)))
                out[key] = self._full_final_obs(value, mask, obs)
            elif isinstance(value, dict):
                out[key] = self._info_to_torch(value, obs)
            elif isinstance(value, np.ndarray) and value.dtype != object:
                out[key] = torch.as_tensor(value).to(self.device)
            elif isinstance(value, np.bool_ | np.number | bool | int | float):
                out[key] = torch.as_tensor(value).to(self.device)
            else:
                out[key] = value  # objects (strings, None rows) stay as they are
        return out

    def _full_final_obs(self, rows: np.ndarray, mask: np.ndarray, obs: Any) -> Any:
        """SAME_STEP's per-env object array of final observations as one batched tensor.

        Rows of envs that did not end hold the returned observation, as in `TorchVectorEnv`.
        """
        space = self._np_obs_space
        parts = [rows[i] if mask[i] else _row(obs, i) for i in range(self.num_envs)]
        batched = concatenate(space, parts, create_empty_array(space, self.num_envs))
        return self._to_torch(batched, space)

    def _action_to_numpy(self, a: Any, space: gym.Space, name: str) -> Any:
        if isinstance(space, gym.spaces.Dict):
            if not isinstance(a, Mapping) or set(a) != set(space.spaces):
                raise ValueError(
                    f"{name}: expected a dict with keys {sorted(space.spaces)}, got {type(a).__name__}"
                )
            return {k: self._action_to_numpy(a[k], s, f"{name}[{k!r}]") for k, s in space.spaces.items()}
        if isinstance(space, gym.spaces.Tuple):
            if not isinstance(a, Sequence) or len(a) != len(space.spaces):
                raise ValueError(f"{name}: expected a tuple of {len(space.spaces)} batched actions")
            return tuple(
                self._action_to_numpy(ai, s, f"{name}[{i}]") for i, (ai, s) in enumerate(zip(a, space.spaces))
            )
        if isinstance(a, torch.Tensor):
            if a.device != self.device:
                raise ValueError(f"{name}: expected a tensor on {self.device}, got one on {a.device}")
            a = a.detach().cpu()
        rule = self._action_rules.get(name)
        if rule is not None:  # Discrete and floating-point Box: the rule of every env (envs.actions)
            t = rule.check(a, self.validate)
            if self.validate:
                rule.check_now(t)
            else:
                t = rule.sanitize(t)
            return t.numpy().astype(space.dtype, copy=False)
        arr = np.asarray(a.numpy() if isinstance(a, torch.Tensor) else a)
        expected = (self.num_envs, *space.shape)
        if arr.shape != expected:
            raise ValueError(f"{name}: expected shape {expected} (num_envs x single action), got {arr.shape}")
        if not isinstance(space, gym.spaces.Box) and (
            np.issubdtype(arr.dtype, np.floating)
            or (arr.dtype == np.bool_ and not isinstance(space, gym.spaces.MultiBinary))
        ):
            raise ValueError(f"{name}: expected an integer tensor for {space}, got {arr.dtype}")
        return arr.astype(space.dtype, copy=False)


def _action_rules(
    space: gym.Space, name: str, num_envs: int, dtype: torch.dtype, clip: bool, neutral: Any
) -> dict[str, ActionRule]:
    """One `ActionRule` (on the CPU, where the simulator's actions go) per ``Discrete`` or floating-point
    ``Box`` action space, keyed by its name in error messages (``actions``, ``actions['move']``).

    The wrapped env's ``clip_actions`` / ``neutral_action`` apply to a top-level space only.
    """
    if isinstance(space, gym.spaces.Dict):
        subs = [(f"{name}[{k!r}]", s) for k, s in space.spaces.items()]
    elif isinstance(space, gym.spaces.Tuple):
        subs = [(f"{name}[{i}]", s) for i, s in enumerate(space.spaces)]
    else:
        box = isinstance(space, gym.spaces.Box) and np.issubdtype(space.dtype, np.floating)
        if not (box or isinstance(space, gym.spaces.Discrete)):
            return {}  # MultiDiscrete, MultiBinary, integer Box: shape and dtype checks only
        return {name: ActionRule(space, num_envs, dtype, torch.device("cpu"), clip, neutral)}
    out: dict[str, ActionRule] = {}
    for sub_name, sub in subs:
        out.update(_action_rules(sub, sub_name, num_envs, dtype, False, None))
    return out


def supports_state(env: Any) -> bool:
    """Whether ``env.get_state()`` / ``env.set_state()`` snapshot everything needed to continue exactly.

    True for a `TorchVectorEnv` (its state is tensors); False for a `GymnasiumVectorAdapter`, whose state
    lives inside the wrapped simulator. Any env may declare it with a ``supports_state`` attribute.

    >>> import envs
    >>> envs.supports_state(envs.make("hrl_nested/CartPole-v1"))
    True
    >>> envs.supports_state(envs.make("CartPole-v1"))
    False
    """
    declared = getattr(env, "supports_state", None)
    if declared is not None:
        return bool(declared)
    return isinstance(env, TorchVectorEnv) or (
        callable(getattr(env, "get_state", None)) and callable(getattr(env, "set_state", None))
    )


def _row(batched: Any, i: int) -> Any:
    """Row ``i`` of a batched (possibly nested) observation."""
    if isinstance(batched, dict):
        return {k: _row(v, i) for k, v in batched.items()}
    if isinstance(batched, tuple):
        return tuple(_row(v, i) for v in batched)
    return batched[i]


def _clone(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _clone(v) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_clone(v) for v in x)
    return x.clone()
