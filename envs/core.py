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
(`envs.compiled_step.fused_step`) is shared by every env; ``compile=True`` turns it into one kernel.

``(N, D)`` variables are stored column-major (strides ``(1, N)``): still ``(N, D)`` tensors, row ``i``
for env ``i``, but each column is contiguous, which is what a vectorized kernel over envs reads.
Observations are always returned contiguous.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs import rng
from envs.actions import ActionRule
from envs.compiled_step import RESET_STREAM, CompiledStep, fused_step, resolve_compile
from envs.goal import GoalAccess
from envs.options import EnvOptions, Unpack, resolve_env_options
from envs.pytree import Obs, contiguous, where_rows
from envs.render import RenderMixin, check_render_mode
from envs.rng import Draw

__all__ = [
    "Draw",
    "EndedEnvError",
    "EnvOptions",
    "EnvState",
    "Obs",
    "TorchVectorEnv",
    "check_seed",
    "parse_autoreset_mode",
    "seeded_np_random",
]


class EndedEnvError(ValueError, AssertionError):
    """A step of an env that has ended, in DISABLED autoreset mode.

    Gymnasium's ``SyncVectorEnv`` asserts (``AssertionError``); this is also a ``ValueError`` (bad input:
    the caller must reset the env first), so either ``except`` catches it.
    """


# Attributes assigned after construction that the step itself does not read (the env's own
# bookkeeping); assigning any other attribute tells a compiled step that the configuration may have
# changed (``validate`` is one: the step records invalid actions when it is on). Properties, such as
# ``state``, copy into the existing buffers and are not counted either (see ``__setattr__``).
_STATE_ATTRIBUTES = frozenset(
    {"_seeded", "_config_version", "_np_random", "_np_random_seed", "_render_goals"}
)


@dataclasses.dataclass
class EnvState:
    """Everything a `TorchVectorEnv` needs to continue exactly.

    Attributes:
        vars: the env's per-env variables: ``"state"`` (physics, Gymnasium layout) and any task
            variables such as goals (``(N, D)`` ones column-major, as the env stores them).
        elapsed: int64 ``(N,)`` steps since each env's last reset (for the time limit).
        needs_reset: bool ``(N,)`` envs whose next ``step`` is a NEXT_STEP autoreset.
        rng_key: int64 ``(N, 4)`` per-env stream keys, 32-bit words ``(seed_lo, seed_hi, index_lo,
            index_hi)``: the 64-bit reset seed and the env's stream index (`envs.rng.seed_keys`).
        rng_counter: int64 ``(N, 2)`` per-env 64-bit counters of ``step`` / ``reset`` calls, 32-bit
            words ``(lo, hi)``.
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


def seeded_np_random(seed: int | list[int]) -> tuple[np.random.Generator, int]:
    """``(np_random, np_random_seed)`` after ``reset(seed=seed)``, as Gymnasium's ``VectorEnv.reset`` sets
    them: an int seeds ``seeding.np_random(seed)`` and is the seed; a list of per-env seeds gives a
    generator seeded from all of them and ``-1`` (Gymnasium's mark for "not one int seed")."""
    if isinstance(seed, int):
        return seeding.np_random(seed)
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed))), -1


def parse_autoreset_mode(
    mode: AutoresetMode | str,
    supported: tuple[AutoresetMode, ...] = (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP),
) -> AutoresetMode:
    """Accept an ``AutoresetMode`` or its value/name (``"next_step"``, ``"SAME_STEP"``, ``"disabled"``).

    ``supported``: the modes the caller implements (a `TorchVectorEnv` all three; the Gymnasium adapter,
    by default, NEXT_STEP and SAME_STEP); any other raises ``ValueError``.
    """
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
    if mode_out not in supported:
        names = " or ".join(m.name for m in supported)
        raise ValueError(f"autoreset_mode: expected {names}, got {mode_out}")
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


def check_seed(seed: Any, num_envs: int) -> int | list[int] | None:
    """A reset seed, validated: None, an int in ``[0, 2**64)`` or a list of ``num_envs`` such ints.

    Philox's whole 64-bit key is the seed, so no two seeds in range share one. NumPy / torch integer
    scalars and 0-d tensors count as ints; ``bool``, floats, strings and out-of-range values raise
    ``ValueError``. Returns a Python int or list of ints (None stays None). Shared by `TorchVectorEnv`
    and the Gymnasium adapter, so that both accept exactly the same seeds.

    >>> check_seed(np.int64(3), 2), check_seed([1, 2], 2)
    (3, [1, 2])
    """
    if seed is None:
        return None
    expected = f"an int in [0, 2**64), None or a list of {num_envs} such ints"
    if isinstance(seed, torch.Tensor | np.ndarray) and seed.ndim == 0:
        seed = seed.item()

    def ok(s: Any) -> bool:
        return isinstance(s, int | np.integer) and not isinstance(s, bool | np.bool_) and 0 <= s < 2**64

    if isinstance(seed, int | np.integer | bool | np.bool_):
        if not ok(seed):
            raise ValueError(f"seed: expected {expected}, got {seed!r}")
        return int(seed)
    if isinstance(seed, float | str | bytes) or not hasattr(seed, "__len__"):
        raise ValueError(f"seed: expected {expected}, got {type(seed).__name__} {seed!r}")
    seeds = [s.item() if isinstance(s, np.generic | torch.Tensor) and s.ndim == 0 else s for s in seed]
    if len(seeds) != num_envs or not all(ok(s) for s in seeds):
        raise ValueError(f"seed: expected {expected}, got {seed!r}")
    return [int(s) for s in seeds]


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` with its index filled in (``"cuda"`` -> ``cuda:<current>``), so that comparing it with a
    tensor's ``.device`` (always indexed on CUDA) is an equality test."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


class TorchVectorEnv(RenderMixin, GoalAccess, VectorEnv):
    """Base class of batched torch environments with Gymnasium vector semantics.

    Args:
        num_envs: batch size N.
        single_observation_space, single_action_space: the spaces of one env.
        **options: `envs.options.EnvOptions`, the keywords every env takes (a task's constructor
            passes them on untouched):
        max_episode_steps: time limit; reaching it sets ``truncated`` (never ``terminated``). Not given:
            the class's ``default_max_episode_steps``; ``None``: no limit.
        device: any torch device; all tensors in and out live there.
        dtype: float dtype of physics, observations and rewards (float32 or float64).
        autoreset_mode: NEXT_STEP (Gymnasium's default), SAME_STEP, or DISABLED (no autoreset: the user
            resets ended envs with ``reset(options={"reset_mask": m})``; stepping an env that has ended and
            not been reset raises, as Gymnasium's ``SyncVectorEnv`` asserts; the check reads the flags on
            the host, one sync per step, so DISABLED is for hand-written loops, not captured rollouts).
        validate: what an invalid action (out of range, NaN) does. ``True``: a ``ValueError``, at once
            on an eager CPU step; on CUDA or a compiled step (where checking at once costs a host sync)
            at the next ``reset``, ``get_state`` or `raise_pending`. ``False`` (the fast path learners
            use): it is replaced by the nearest valid action (NaN: ``neutral_action``), the same way in
            every env. Also ``True``: ``Box`` actions must have the env's dtype. See `envs.actions`.
            Shape, device and integer-vs-float are always checked.
        compile: ``"auto"`` (the default): compile on CUDA, and on CPU from 4096 envs
            (`envs.compiled_step.AUTO_COMPILE_MIN_ENVS_CPU`), where the compiled step is several times faster
            than the eager one; the first compile in a process logs one line (logger ``envs``), inductor's
            on-disk FX-graph cache makes later processes' compiles faster, and a compile that fails
            falls back to the eager step with a warning. ``True`` / ``False``: always / never.
            Compiled, invalid actions with ``validate=True`` raise at the next sync point (``reset``,
            ``get_state``, `raise_pending`) and float results may differ from the eager step's in the
            low bits (see below); random numbers, integer state and autoreset are the same bits.
            A compiled step runs through ``torch.compile``: the sanitising of actions, the transition, the
            autoreset, the time limit and every in-place buffer write become one fused kernel (CPU and
            CUDA), called without dynamo's per-call overhead
            (`envs.compiled_step.CompiledStep`). The first step
            compiles (seconds, see ``compile_seconds``). Assigning an attribute of the env later
            (``env.max_episode_steps = 100``) triggers a re-trace; assigning ``env.state`` copies in
            place and does not. The kernel computes the same dynamics with other math routines
            (vectorized ``sin``, ``cos``, fused expressions): its results can differ from the eager
            step's in the low bits (in float64, agreement to 1e-5 over 100 steps is tested for every
            task; in float32 a task's own dynamics may amplify a one-ulp difference over a trajectory).
        render_mode: None (``render()`` returns None) or one of ``metadata["render_modes"]``
            (``"rgb_array"``: ``render()`` is env 0's frame, ``render(env_index=i)`` env i's,
            ``render_all()`` one per env; see `envs.render.RenderMixin`).

    Attributes:
        default_max_episode_steps: class attribute, the time limit when ``max_episode_steps`` is not
            given (``None``: none); each task sets its Gymnasium original's.
        clip_actions: class attribute, ``True`` for tasks whose Gymnasium original accepts out-of-bounds
            ``Box`` actions and clips them itself (Pendulum, MountainCarContinuous): there any finite
            value is a valid action and the task applies Gymnasium's clip; elsewhere out-of-bounds
            actions are invalid.
        neutral_action: class attribute, the task's "do nothing" action; a NaN ``Box`` coordinate is
            replaced by it. ``None``: the middle of the bounds (0 clipped into them where one is
            infinite). On a ``Discrete`` task it names the no-op, if there is one (integers cannot be
            NaN).
    """

    # "torch": True is Gymnasium's tag for envs whose arrays are torch tensors (as "jax": True for JAX).
    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": [], "torch": True}
    default_max_episode_steps: int | None = None
    clip_actions: bool = False
    neutral_action: Any = None

    def __init__(
        self,
        num_envs: int,
        *,
        single_observation_space: gym.Space,
        single_action_space: gym.Space,
        **options: Unpack[EnvOptions],
    ):
        opts = type(self).resolve_options(options)
        max_episode_steps, device, dtype = opts["max_episode_steps"], opts["device"], opts["dtype"]
        if not isinstance(num_envs, int | np.integer) or isinstance(num_envs, bool) or num_envs < 1:
            raise ValueError(f"num_envs: expected a positive int, got {num_envs!r}")
        if max_episode_steps is not None and (
            not isinstance(max_episode_steps, int | np.integer) or max_episode_steps < 1
        ):
            raise ValueError(f"max_episode_steps: expected a positive int or None, got {max_episode_steps!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype!r}")
        self.num_envs = int(num_envs)
        self.device = resolve_device(device)
        self.dtype = dtype
        self.max_episode_steps = None if max_episode_steps is None else int(max_episode_steps)
        self.autoreset_mode = parse_autoreset_mode(opts["autoreset_mode"], tuple(AutoresetMode))
        self.metadata = {**type(self).metadata, "autoreset_mode": self.autoreset_mode, "torch": True}
        self.render_mode = check_render_mode(opts["render_mode"], self.metadata.get("render_modes", []))
        self.validate = bool(opts["validate"])
        self.single_observation_space = single_observation_space
        self.single_action_space = single_action_space
        self.observation_space = batch_space(single_observation_space, self.num_envs)
        self.action_space = batch_space(single_action_space, self.num_envs)

        n, dev = self.num_envs, self.device
        index = torch.arange(n, device=dev, dtype=torch.int64)
        # The stream indices live only in the key (words 2, 3): restored with it by set_state. Column-major
        # as the variables (`_new_buffer`): each Philox word is then a contiguous column, which inductor
        # vectorizes; read as (N, 4) rows, the compiled CartPole step's Philox loop stayed scalar and took
        # most of the step (the whole step is 1.45x faster with columns: one thread, 4096 envs).
        self._rng_key = _new_buffer(rng.seed_keys(torch.zeros(n, dtype=torch.int64, device=dev), index))
        self._rng_counter = _new_buffer(torch.zeros(n, 2, dtype=torch.int64, device=dev))
        self._elapsed = torch.zeros(n, dtype=torch.int64, device=dev)
        self._needs_reset = torch.zeros(n, dtype=torch.bool, device=dev)
        self._seeded = False
        fresh = self._sample_reset(Draw(self._rng_key, self._rng_counter, 0, dtype))
        self._vars = {k: _new_buffer(v) for k, v in fresh.items()}
        # A data-dependent skip of the reset draw is free on CPU eager; CUDA and compiled steps stay
        # branch-free so that no host sync happens and a graph can be captured.
        compile = opts["compile"]
        compile_on = resolve_compile(compile, self.device, self.num_envs)
        self._branch_free = self.device.type != "cpu" or compile_on
        self.compiled = compile_on
        self._uint8_flags = self.compiled and self.device.type == "cpu"
        # Action checks: at once on the eager CPU path; CUDA and compiled steps record invalid actions
        # on the device instead (no host sync), reported by `raise_pending`.
        self._defer_checks = self._branch_free
        self._action_rule = ActionRule(
            single_action_space, n, dtype, dev, type(self).clip_actions, type(self).neutral_action
        )
        self._config_version = 0
        self._compiled_step = CompiledStep(self, auto=compile == "auto") if compile_on else None

    @classmethod
    def resolve_options(cls, options: EnvOptions) -> EnvOptions:
        """``options`` with every default filled in (``max_episode_steps``: ``default_max_episode_steps``).

        A task reads ``dtype`` or ``device`` from it before ``super().__init__`` (to build its spaces
        and tables). A key that is not an `EnvOptions` name raises ``TypeError`` naming the expected ones.
        """
        return resolve_env_options(options, cls, cls.default_max_episode_steps)

    # ---------------------------------------------------------------- subclass hooks
    def _sample_reset(self, draw: Draw) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _transition(
        self, vars: dict[str, torch.Tensor], action: torch.Tensor, draw: Draw
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _observe(self, vars: dict[str, torch.Tensor]) -> Obs:
        raise NotImplementedError

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

        Args:
            seed: an int in ``[0, 2**64)`` (env ``i`` draws from the stream ``(seed, i)``, as Gymnasium
                seeds env ``i`` with ``seed + i``; distinct seeds are distinct streams), a list of N
                such per-env seeds, or None (keep the current streams; a fresh entropy seed the first
                time). As Gymnasium's ``VectorEnv.reset`` does, an int seed also seeds ``env.np_random``
                and sets ``env.np_random_seed`` to it; the first unseeded reset sets it to the entropy
                seed it drew (``reset(seed=env.np_random_seed)`` replays the run); a list sets it to -1
                (Gymnasium's mark for "not one int seed").
            options: ``"reset_mask"``: bool ``(N,)``, the envs to reset (default all; at least one True,
                else ``ValueError``, as in Gymnasium). In DISABLED autoreset mode this is how ended envs
                are restarted;
                ``"env_index"``: N ints in ``[0, 2**40)``, the stream index of each env in place of its
                position, so that one batch can hold the envs of several runs: env ``k`` reset with
                ``seed=s, options={"env_index": [..., j, ...]}`` (``j`` at position ``k``) draws exactly
                what env ``j`` of a batch reset with ``seed=s`` draws. The index stays with the env
                (it is part of the env's key, so ``get_state`` / ``set_state`` carry it) until the next
                ``env_index``: a later ``reset(seed=s2)`` draws what env ``j`` of a batch reset with
                ``seed=s2`` draws. With ``seed=None`` the envs keep their current seeds.
                Reseeding or a new index restarts the env's counter.
        """
        self.raise_pending()  # invalid actions of earlier deferred-check steps surface here
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        env_index = options.pop("env_index", None)
        if options:
            raise ValueError(
                f"reset options: expected only 'reset_mask' and 'env_index', got {sorted(options)}"
            )
        if mask is None:
            mask = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        else:
            mask = torch.as_tensor(mask, device=self.device)
            if mask.shape != (self.num_envs,) or mask.dtype != torch.bool:
                raise ValueError(
                    f"reset_mask: expected a bool tensor of shape ({self.num_envs},), "
                    f"got {mask.dtype} {tuple(mask.shape)}"
                )
            if not bool(mask.any()):  # Gymnasium's vector envs refuse an empty mask the same way
                raise ValueError(f"reset_mask: expected at least one True value, got all False: {mask}")
        seed = check_seed(seed, self.num_envs)
        if seed is None and not self._seeded:
            seed = int(np.random.SeedSequence().entropy % (2**64))
        if seed is not None:
            self._seed_np_random(seed)
        if seed is not None or env_index is not None:
            words = self._rng_key[:, :2] if seed is None else self._seed_words(seed)
            if env_index is None:  # each env keeps the index it has (its key's words 2, 3)
                keys = torch.cat((words, self._rng_key[:, 2:]), -1)
            else:
                keys = rng.seed_keys(words, self._env_index_tensor(env_index))
            self._rng_key.copy_(torch.where(mask.unsqueeze(1), keys, self._rng_key))
            self._rng_counter.masked_fill_(mask.unsqueeze(1), 0)
            self._seeded = True
        # On the eager CPU path a partial reset draws only the rows it keeps (the draw is the step's
        # costliest part); every other path draws all rows, branch-free.
        rows = None if self._branch_free or bool(mask.all()) else mask.nonzero().squeeze(1)
        fresh = self._sample_reset(Draw(self._rng_key, self._rng_counter, RESET_STREAM, self.dtype, rows))
        for k, v in fresh.items():
            self._vars[k].copy_(where_rows(mask, v, self._vars[k]))
        rng.increment(self._rng_counter, mask.long())
        self._elapsed.masked_fill_(mask, 0)
        self._needs_reset.masked_fill_(mask, False)
        return contiguous(self._observe(self._vars)), {}

    def step(
        self, actions: torch.Tensor | np.ndarray
    ) -> tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """One step of every env; returns ``(obs, reward, terminated, truncated, info)``.

        Invalid actions (out of range, NaN; see `envs.actions`): with ``validate=False`` they are
        replaced by the nearest valid action (NaN: ``neutral_action``) and no error is raised. With
        ``validate=True`` on an eager CPU env, this call raises ``ValueError`` and changes nothing. With
        ``validate=True`` on CUDA or with ``compile=True``, this call does *not* raise: the step runs
        with the sanitised actions and records the invalid ones on the device; a direct ``env.step``
        user sees the ``ValueError`` at the next ``reset()``, ``get_state()`` or ``env.raise_pending()``.
        Wrong shape, device or kind of dtype raise at once everywhere.

        ``info``: empty in NEXT_STEP and DISABLED modes. In SAME_STEP mode (where an ended env returns
        its reset observation at once), Gymnasium's keys: ``info["final_obs"]``, the observation the
        step reached before the reset, and ``info["final_info"]``, the info of that last step (a dict
        of ``(num_envs, ...)`` tensors; the tasks here report no per-step info, so it is empty), with
        the masks ``info["_final_obs"]`` and ``info["_final_info"]`` (bool ``(num_envs,)``, True for
        the envs that ended). Unlike Gymnasium, which adds these keys only on steps where some env
        ended, they are present on every step and ``final_obs`` is a full ``(num_envs, ...)`` tensor
        (rows of envs that did not end hold their ordinary next observation): fixed shapes and keys
        keep the step free of data-dependent branches, so it compiles and replays in a CUDA graph.

        In DISABLED mode, stepping while an env has ended and not been reset raises
        `EndedEnvError` (an ``AssertionError``, as Gymnasium's ``SyncVectorEnv`` asserts, and a
        ``ValueError``) and changes nothing.
        """
        actions = self._check_actions(actions)
        if self.autoreset_mode == AutoresetMode.DISABLED:
            self._check_none_ended()
        return self._step_impl(actions)

    def _check_none_ended(self) -> None:
        """DISABLED mode: refuse a step while some env waits for its reset (one host read)."""
        ended = self._needs_reset
        if bool(ended.any()):
            idx = ended.nonzero().squeeze(1).tolist()
            raise EndedEnvError(
                f"step: autoreset_mode is DISABLED and envs {idx} have ended (terminated or truncated); "
                f"expected them reset first with env.reset(options={{'reset_mask': mask}})"
            )

    def _seed_np_random(self, seed: int | list[int]) -> None:
        """``np_random`` / ``np_random_seed`` as Gymnasium's ``VectorEnv.reset(seed=...)`` sets them."""
        self._np_random, self._np_random_seed = seeded_np_random(seed)

    def raise_pending(self) -> None:
        """Raise the invalid actions recorded by CUDA or compiled steps with ``validate=True``, if any.

        Raises ``ValueError`` naming the envs and the first invalid action of each, and clears the
        record. Costs one host sync, and only once such a step has run (never with ``validate=False``
        or on the eager CPU path, where the check happens in ``step`` itself), so learning code can call
        it once per iteration at no cost. ``reset`` and ``get_state`` call it first.
        """
        self._action_rule.raise_recorded()

    def get_state(self) -> EnvState:
        """A snapshot (cloned tensors) of everything needed to continue exactly.

        Raises first the invalid actions recorded by deferred checks, if any (see `raise_pending`).
        """
        self.raise_pending()
        return self._state()

    def _state(self) -> EnvState:
        """`get_state` without raising recorded invalid actions: for internal copies (the compiled
        step's verification) that must leave them for the user's next sync point."""
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
        for name, words in (("rng_key", 4), ("rng_counter", 2)):
            got = getattr(state, name)
            if isinstance(got, torch.Tensor | np.ndarray) and got.ndim == 1:
                raise ValueError(
                    f"set_state: {name} has shape {tuple(got.shape)}, the 32-bit RNG layout of an EnvState "
                    f"saved before the RNG was widened to Philox-4x32 (64-bit seeds and counters); it "
                    f"cannot be continued. Expected int64 of shape ({self.num_envs}, {words}); reset the "
                    f"env instead."
                )
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
        # re-traces (through dynamo's guards) after one. A property (``env.state = x``) is not counted:
        # its setter copies into the existing buffers, and any attribute it assigns is counted itself.
        object.__setattr__(self, name, value)
        if (
            name not in _STATE_ATTRIBUTES
            and "_config_version" in self.__dict__
            and not isinstance(getattr(type(self), name, None), property)
        ):
            self.__dict__["_config_version"] += 1

    def _check_actions(self, a: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Shape, device and dtype always; values at once on the eager CPU path with ``validate``."""
        rule = self._action_rule
        a = rule.check(a, self.validate)
        if self.validate:
            if self._defer_checks:
                rule.used = True  # the step records invalid actions on the device
            else:
                rule.check_now(a)
        return a

    def _step_actions(self, a: torch.Tensor) -> torch.Tensor:
        """The actions the transition sees (called inside the fused step, eager or compiled).

        Already checked (eager CPU with ``validate``): unchanged. Deferred checks: recorded, then
        sanitised. ``validate=False``: sanitised. Sanitising leaves valid actions unchanged.
        """
        rule = self._action_rule
        if self.validate and not self._defer_checks:
            return a
        if self.validate:
            rule.record(a)
        return rule.sanitize(a)

    def _seed_words(self, seed: int | list[int]) -> torch.Tensor:
        """int64 ``(N, 2)`` 32-bit words ``(lo, hi)`` of an int seed or a list of N seeds (`check_seed`)."""
        seeds = check_seed(seed, self.num_envs)
        seeds = [seeds] * self.num_envs if isinstance(seeds, int) else seeds
        words = [(s & 0xFFFFFFFF, s >> 32) for s in seeds]
        return torch.tensor(words, dtype=torch.int64, device=self.device)

    def _env_index_tensor(self, env_index: Any) -> torch.Tensor:
        """``options["env_index"]`` as int64 ``(N,)`` on the env's device, validated."""
        expected = (
            f"{self.num_envs} ints in [0, 2**{rng.INDEX_BITS}) (a sequence, array or integer tensor "
            f"of shape ({self.num_envs},))"
        )
        if isinstance(env_index, torch.Tensor):
            idx = env_index
        else:
            try:
                arr = np.asarray(env_index)
            except (TypeError, ValueError, OverflowError) as err:
                raise ValueError(f"env_index: expected {expected}, got {env_index!r}") from err
            if arr.dtype == object or arr.dtype.kind not in "iu":
                raise ValueError(f"env_index: expected {expected}, got dtype {arr.dtype}: {env_index!r}")
            if arr.dtype.kind == "u" and arr.size and int(arr.max()) >= 2**rng.INDEX_BITS:
                raise ValueError(f"env_index: expected {expected}, got a value {int(arr.max())}")
            idx = torch.as_tensor(arr.astype(np.int64))
        if idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
            raise ValueError(f"env_index: expected {expected}, got dtype {idx.dtype}")
        if tuple(idx.shape) != (self.num_envs,):
            raise ValueError(f"env_index: expected {expected}, got shape {tuple(idx.shape)}")
        idx = idx.to(device=self.device, dtype=torch.int64)
        lo, hi = (int(v) for v in torch.aminmax(idx))  # one host read, at reset only
        if lo < 0 or hi >= 2**rng.INDEX_BITS:
            bad = lo if lo < 0 else hi
            raise ValueError(f"env_index: expected {expected}, got a value {bad}")
        return idx

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
