"""`TorchVectorEnv`: a Gymnasium ``VectorEnv`` whose whole batch is torch tensors on one device.

A subclass describes one environment as pure functions of batched tensors (gymnax style) and the
base class supplies Gymnasium's vector semantics around them: autoreset (NEXT_STEP by default,
SAME_STEP on request), time limits reported as truncation, counter-based seeding, input checks,
and an explicit, restorable state.

Subclass hooks (all receive and return ``(num_envs, ...)`` tensors; ``vars`` is a dict of the env's
per-env variables, with the Gymnasium-layout physics under ``"state"``):

- ``_sample_reset(draw) -> vars``: fresh variables for *every* env (the base keeps only the rows
  being reset). ``draw.uniform(lanes)`` gives per-env uniforms.
- ``_transition(vars, action, draw) -> (vars, reward, terminated)``: one step for every env.
- ``_observe(vars) -> obs``: a tensor, or a dict of tensors for ``Dict`` spaces.

Hooks must be pure tensor functions of their inputs (no Python branches on tensor values), so that
the same code runs eagerly, under ``torch.compile`` and inside a captured CUDA graph. The step itself
(`envs.fused.fused_step`) is shared by every env; ``compile=True`` turns it into one kernel.

``(N, D)`` variables are stored column-major (strides ``(1, N)``): still ``(N, D)`` tensors, row ``i``
for env ``i``, but each column is contiguous, which is what a vectorized kernel over envs reads.
Observations are always returned contiguous.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs import rng
from envs.fused import RESET_STREAM, CompiledStep, Obs, _contiguous, _where, fused_step
from envs.rng import Draw

__all__ = ["Draw", "EnvState", "Obs", "TorchVectorEnv", "parse_autoreset_mode"]

# Attributes assigned after construction that the step itself does not read (the env's own
# bookkeeping, and ``validate``, checked before the step); assigning any other attribute tells a
# compiled step that the configuration may have changed.
_STATE_ATTRIBUTES = frozenset({"_seeded", "_config_version", "validate"})


@dataclasses.dataclass
class EnvState:
    """Everything a `TorchVectorEnv` needs to continue exactly.

    Attributes:
        vars: the env's per-env variables: ``"state"`` (physics, Gymnasium layout) and any task
            variables such as goals (``(N, D)`` ones column-major, as the env stores them).
        elapsed: int64 ``(N,)`` steps since each env's last reset (for the time limit).
        needs_reset: bool ``(N,)`` envs whose next ``step`` is a NEXT_STEP autoreset.
        rng_key: int64 ``(N,)`` per-env random keys (from seed and env index).
        rng_counter: int64 ``(N,)`` per-env random counters.
    """

    vars: dict[str, torch.Tensor]
    elapsed: torch.Tensor
    needs_reset: torch.Tensor
    rng_key: torch.Tensor
    rng_counter: torch.Tensor

    def tensors(self) -> dict[str, torch.Tensor]:
        """A flat name -> tensor view (``vars.state``, ``elapsed``, ...)."""
        out = {f"vars.{k}": v for k, v in self.vars.items()}
        for f in ("elapsed", "needs_reset", "rng_key", "rng_counter"):
            out[f] = getattr(self, f)
        return out

    def to(self, device: torch.device | str) -> EnvState:
        """The same state on ``device``."""
        return EnvState(
            vars={k: v.to(device) for k, v in self.vars.items()},
            elapsed=self.elapsed.to(device),
            needs_reset=self.needs_reset.to(device),
            rng_key=self.rng_key.to(device),
            rng_counter=self.rng_counter.to(device),
        )


def parse_autoreset_mode(mode: AutoresetMode | str) -> AutoresetMode:
    """Accept an ``AutoresetMode`` or its value/name (``"next_step"``, ``"SAME_STEP"``)."""
    if isinstance(mode, AutoresetMode):
        mode_out = mode
    else:
        lookup = {}
        for m in AutoresetMode:
            lookup[m.name.lower()] = lookup[m.value.lower()] = m
        mode_out = lookup.get(str(mode).lower().replace("-", "_"))
        if mode_out is None:
            raise ValueError(
                f"autoreset_mode: expected an AutoresetMode or one of "
                f"{sorted({m.name.lower() for m in AutoresetMode})}, got {mode!r}"
            )
    if mode_out not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
        raise ValueError(f"autoreset_mode: TorchVectorEnv supports NEXT_STEP and SAME_STEP, got {mode_out}")
    return mode_out


def _new_buffer(v: torch.Tensor) -> torch.Tensor:
    """A fresh buffer for a per-env variable; ``(N, D)`` ones are stored column-major.

    The buffer is still an ``(N, D)`` tensor (row ``i`` is env ``i``), but with strides ``(1, N)``:
    ``state.unbind(-1)`` then yields contiguous columns, so a compiled step runs one vectorized loop
    over envs instead of a scalar loop over strided rows (on CPU up to 2.4x faster, for Acrobot).
    """
    if v.dim() == 2 and v.shape[1] > 1:
        return v.t().contiguous().t()
    return v.contiguous().clone()


class GoalAccess:
    """``goal_space`` / ``achieved_goal`` from a vector env's ``single_observation_space``.

    Shared by `TorchVectorEnv` and the Gymnasium adapter: goal envs (a ``Dict`` observation with
    ``achieved_goal``, Gymnasium-Robotics style) expose that entry; any other env gets the identity.
    """

    single_observation_space: gym.Space

    @property
    def goal_space(self) -> gym.Space:
        """The single-env goal space: ``achieved_goal`` for goal envs, else the observation (identity)."""
        space = self.single_observation_space
        if isinstance(space, gym.spaces.Dict) and "achieved_goal" in space.spaces:
            return space["achieved_goal"]
        return space

    def achieved_goal(self, obs: Any) -> torch.Tensor:
        """``(num_envs, *goal_space.shape)``: ``obs["achieved_goal"]`` for goal envs, else ``obs``."""
        if isinstance(obs, Mapping):
            if "achieved_goal" not in obs:
                raise ValueError(f"achieved_goal: expected a goal observation, got keys {sorted(obs)}")
            return obs["achieved_goal"]
        return obs


class TorchVectorEnv(GoalAccess, VectorEnv):
    """Base class of batched torch environments with Gymnasium vector semantics.

    Args:
        num_envs: batch size N.
        single_observation_space, single_action_space: the spaces of one env.
        max_episode_steps: time limit; reaching it sets ``truncated`` (never ``terminated``).
        device: any torch device; all tensors in and out live there.
        dtype: float dtype of physics, observations and rewards (float32 or float64).
        autoreset_mode: NEXT_STEP (Gymnasium's default) or SAME_STEP.
        validate: check action *values* (range, NaN) on every step. Costs a host sync on CUDA;
            turn off on the fast rollout path. Shape, dtype and device are always checked.
        compile: run the step through ``torch.compile``: the transition, the autoreset, the time limit
            and every in-place buffer write become one fused kernel (CPU and CUDA), called without
            dynamo's per-call overhead (`envs.fused.CompiledStep`). The first step compiles (seconds,
            see ``compile_seconds``); validation, when on, stays outside the kernel. Assigning an
            attribute of the env later (``env.max_episode_steps = 100``) triggers a re-trace.

    Attributes:
        clip_actions: class attribute, ``True`` for tasks whose Gymnasium original clips a ``Box``
            action itself (Pendulum, MountainCarContinuous); otherwise ``validate`` rejects
            out-of-bounds actions.
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}
    clip_actions: bool = False

    def __init__(
        self,
        num_envs: int,
        *,
        single_observation_space: gym.Space,
        single_action_space: gym.Space,
        max_episode_steps: int | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        validate: bool = True,
        compile: bool = False,
    ):
        if not isinstance(num_envs, int | np.integer) or isinstance(num_envs, bool) or num_envs < 1:
            raise ValueError(f"num_envs: expected a positive int, got {num_envs!r}")
        if max_episode_steps is not None and (
            not isinstance(max_episode_steps, int | np.integer) or max_episode_steps < 1
        ):
            raise ValueError(f"max_episode_steps: expected a positive int or None, got {max_episode_steps!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype!r}")
        self.num_envs = int(num_envs)
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = dtype
        self.max_episode_steps = None if max_episode_steps is None else int(max_episode_steps)
        self.autoreset_mode = parse_autoreset_mode(autoreset_mode)
        self.metadata = {**type(self).metadata, "autoreset_mode": self.autoreset_mode}
        self.validate = bool(validate)
        self.single_observation_space = single_observation_space
        self.single_action_space = single_action_space
        self.observation_space = batch_space(single_observation_space, self.num_envs)
        self.action_space = batch_space(single_action_space, self.num_envs)

        n, dev = self.num_envs, self.device
        self._env_index = torch.arange(n, device=dev, dtype=torch.int64)
        self._rng_key = rng.seed_keys(torch.zeros(n, dtype=torch.int64, device=dev), self._env_index)
        self._rng_counter = torch.zeros(n, dtype=torch.int64, device=dev)
        self._elapsed = torch.zeros(n, dtype=torch.int64, device=dev)
        self._needs_reset = torch.zeros(n, dtype=torch.bool, device=dev)
        self._seeded = False
        fresh = self._sample_reset(Draw(self._rng_key, self._rng_counter, 0, dtype))
        self._vars = {k: _new_buffer(v) for k, v in fresh.items()}
        # A data-dependent skip of the reset draw is free on CPU eager; CUDA and compiled steps stay
        # branch-free so that no host sync happens and a graph can be captured.
        self._branch_free = self.device.type != "cpu" or compile
        self.compiled = bool(compile)
        self._uint8_flags = self.compiled and self.device.type == "cpu"
        self._init_action_checks()
        self._config_version = 0
        self._compiled_step = CompiledStep(self) if compile else None

    # ---------------------------------------------------------------- subclass hooks
    def _sample_reset(self, draw: Draw) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _transition(
        self, vars: dict[str, torch.Tensor], action: torch.Tensor, draw: Draw
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _observe(self, vars: dict[str, torch.Tensor]) -> Obs:
        raise NotImplementedError

    def _check_action_values(self, action: torch.Tensor) -> None:
        """Value checks (run only when ``validate``): Discrete range; Box NaN/inf and, unless the task
        clips (``clip_actions``), bounds. One reduction and one host read on the common path."""
        space = self.single_action_space
        if isinstance(space, gym.spaces.Discrete):
            lo, hi = self._discrete_range
            mn, mx = torch.aminmax(action)
            if int(mn) < lo or int(mx) >= hi:
                i = int(((action < lo) | (action >= hi)).nonzero()[0, 0])
                raise ValueError(
                    f"actions: expected integers in [{lo}, {hi}) for {space}, got {int(action[i])} at env {i}"
                )
        elif isinstance(space, gym.spaces.Box):
            flat = action.reshape(action.shape[0], -1)
            mn, mx = (t.tolist() for t in torch.aminmax(flat, dim=0))
            if not all(math.isfinite(v) for v in mn + mx):  # aminmax propagates NaN
                i = int((~torch.isfinite(flat)).any(-1).nonzero()[0, 0])
                raise ValueError(
                    f"actions: expected finite values for {space}, "
                    f"got {action[i].tolist()} (NaN/inf) at env {i}"
                )
            if not self.clip_actions:
                low, high = self._box_bounds
                if any(m < b for m, b in zip(mn, low)) or any(m > b for m, b in zip(mx, high)):
                    lo_t = torch.as_tensor(low, dtype=flat.dtype, device=flat.device)
                    hi_t = torch.as_tensor(high, dtype=flat.dtype, device=flat.device)
                    i = int(((flat < lo_t) | (flat > hi_t)).any(-1).nonzero()[0, 0])
                    raise ValueError(
                        f"actions: expected values within the bounds of {space} (low={space.low.tolist()}, "
                        f"high={space.high.tolist()}), got {action[i].tolist()} at env {i}"
                    )

    # ---------------------------------------------------------------- public API
    @property
    def state(self) -> torch.Tensor:
        """The ``(num_envs, D)`` physics in the layout of Gymnasium's ``env.unwrapped.state``."""
        return self._vars["state"]

    @state.setter
    def state(self, value: torch.Tensor | np.ndarray) -> None:
        self._copy_into(self._vars["state"], value, "state")

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, torch.Tensor]]:
        """Reset all envs (or those in ``options["reset_mask"]``).

        ``seed``: an int (env i is keyed on ``(seed, i)``, as Gymnasium seeds env i with ``seed + i``),
        a list of N per-env seeds, or None (keep the current keys; a fresh entropy seed the first time).
        """
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        if options:
            raise ValueError(f"reset options: expected only 'reset_mask', got {sorted(options)}")
        if mask is None:
            mask = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        else:
            mask = torch.as_tensor(mask, device=self.device)
            if mask.shape != (self.num_envs,) or mask.dtype != torch.bool:
                raise ValueError(
                    f"reset_mask: expected a bool tensor of shape ({self.num_envs},), "
                    f"got {mask.dtype} {tuple(mask.shape)}"
                )
        if seed is None and not self._seeded:
            seed = int(np.random.SeedSequence().entropy % (2**63))
        if seed is not None:
            seeds = self._seed_tensor(seed)
            keys = rng.seed_keys(seeds, self._env_index)
            self._rng_key.copy_(torch.where(mask, keys, self._rng_key))
            self._rng_counter.masked_fill_(mask, 0)
            self._seeded = True
        fresh = self._sample_reset(Draw(self._rng_key, self._rng_counter, RESET_STREAM, self.dtype))
        for k, v in fresh.items():
            self._vars[k].copy_(_where(mask, v, self._vars[k]))
        self._rng_counter.add_(mask.long())
        self._elapsed.masked_fill_(mask, 0)
        self._needs_reset.masked_fill_(mask, False)
        return _contiguous(self._observe(self._vars)), {}

    def step(
        self, actions: torch.Tensor | np.ndarray
    ) -> tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """One step of every env; returns ``(obs, reward, terminated, truncated, info)``."""
        return self._step_impl(self._check_actions(actions))

    def get_state(self) -> EnvState:
        """A snapshot (cloned tensors) of everything needed to continue exactly."""
        return EnvState(
            vars={k: v.clone() for k, v in self._vars.items()},
            elapsed=self._elapsed.clone(),
            needs_reset=self._needs_reset.clone(),
            rng_key=self._rng_key.clone(),
            rng_counter=self._rng_counter.clone(),
        )

    def set_state(self, state: EnvState) -> None:
        """Restore a snapshot by copying in place (tensor addresses stay stable for CUDA graphs)."""
        if not isinstance(state, EnvState):
            raise ValueError(f"set_state: expected an EnvState, got {type(state).__name__}")
        if set(state.vars) != set(self._vars):
            raise ValueError(f"set_state: expected vars {sorted(self._vars)}, got {sorted(state.vars)}")
        for k, v in state.vars.items():
            self._copy_into(self._vars[k], v, f"vars[{k!r}]")
        self._copy_into(self._elapsed, state.elapsed, "elapsed")
        self._copy_into(self._needs_reset, state.needs_reset, "needs_reset")
        self._copy_into(self._rng_key, state.rng_key, "rng_key")
        self._copy_into(self._rng_counter, state.rng_counter, "rng_counter")
        self._seeded = True

    def close_extras(self, **kwargs: Any) -> None:
        pass

    # ---------------------------------------------------------------- internals
    def _step_impl(self, actions: torch.Tensor):
        """The step without the action checks (eager or compiled, as constructed)."""
        if self._compiled_step is not None:
            return self._compiled_step(actions)
        return fused_step(
            self, actions, self._vars, self._elapsed, self._needs_reset, self._rng_key, self._rng_counter
        )

    @property
    def compile_seconds(self) -> float:
        """Wall time this env has spent compiling its step so far (0 when not compiled)."""
        return 0.0 if self._compiled_step is None else self._compiled_step.compile_seconds

    def __setattr__(self, name: str, value: Any) -> None:
        # A compiled step bakes the env's attributes into its kernel: count assignments so that it
        # re-traces (through dynamo's guards) after one.
        object.__setattr__(self, name, value)
        if name not in _STATE_ATTRIBUTES and "_config_version" in self.__dict__:
            self.__dict__["_config_version"] += 1

    def _init_action_checks(self) -> None:
        """Precompute what `_check_actions` compares against, so the hot path is attribute reads."""
        space = self.single_action_space
        self._action_shape = torch.Size(self.action_space.shape)
        self._discrete_action = isinstance(space, gym.spaces.Discrete)
        self._box_action = isinstance(space, gym.spaces.Box)
        self._discrete_range = (
            (int(space.start), int(space.start + space.n)) if self._discrete_action else None
        )
        if self._box_action:
            low = np.broadcast_to(space.low, space.shape).reshape(-1).astype(np.float64)
            high = np.broadcast_to(space.high, space.shape).reshape(-1).astype(np.float64)
            self._box_bounds = (low.tolist(), high.tolist())

    def _check_actions(self, a: torch.Tensor | np.ndarray) -> torch.Tensor:
        if not isinstance(a, torch.Tensor):
            a = torch.as_tensor(np.asarray(a), device=self.device)
        if a.device != self.device:
            raise ValueError(f"actions: expected a tensor on {self.device}, got one on {a.device}")
        if a.shape != self._action_shape:
            raise ValueError(
                f"actions: expected shape {tuple(self._action_shape)} (num_envs={self.num_envs} x single "
                f"action {tuple(self.single_action_space.shape)}), got {tuple(a.shape)}"
            )
        if self._discrete_action:
            if a.is_floating_point() or a.is_complex() or a.dtype == torch.bool:
                raise ValueError(
                    f"actions: expected an integer tensor for {self.single_action_space}, got {a.dtype}"
                )
        elif self._box_action:
            if not a.is_floating_point():
                raise ValueError(
                    f"actions: expected a floating-point tensor for {self.single_action_space}, got {a.dtype}"
                )
            if a.dtype != self.dtype:
                a = a.to(self.dtype)
        if self.validate:
            self._check_action_values(a)
        return a

    def _seed_tensor(self, seed: int | list[int]) -> torch.Tensor:
        if isinstance(seed, int | np.integer) and not isinstance(seed, bool):
            if seed < 0:
                raise ValueError(f"seed: expected a non-negative int, got {seed}")
            return torch.full((self.num_envs,), int(seed) % 2**63, dtype=torch.int64, device=self.device)
        seeds = list(seed)
        if len(seeds) != self.num_envs or any(not isinstance(s, int | np.integer) or s < 0 for s in seeds):
            raise ValueError(
                f"seed: expected an int, None or a list of {self.num_envs} non-negative ints, got {seed!r}"
            )
        return torch.tensor([int(s) % 2**63 for s in seeds], dtype=torch.int64, device=self.device)

    def _copy_into(self, dst: torch.Tensor, src: torch.Tensor | np.ndarray, name: str) -> None:
        if not isinstance(src, torch.Tensor):
            src = torch.as_tensor(np.asarray(src))
        if src.shape != dst.shape or src.dtype != dst.dtype:
            raise ValueError(
                f"{name}: expected {dst.dtype} of shape {tuple(dst.shape)}, "
                f"got {src.dtype} of shape {tuple(src.shape)}"
            )
        dst.copy_(src)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_envs={self.num_envs}, device={self.device}, dtype={self.dtype}, "
            f"autoreset_mode={self.autoreset_mode.name}, max_episode_steps={self.max_episode_steps})"
        )
