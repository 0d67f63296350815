"""The fused step of a `TorchVectorEnv`, and its compiled form.

`fused_step` is one step of every env as a function of the env's explicit buffers: the subclass
transition, Gymnasium's autoreset (NEXT_STEP or SAME_STEP), the time limit and the in-place write-back
of every buffer. Eager, it is simply called. With ``compile=True``, `CompiledStep` turns it into
one inductor kernel and calls that kernel directly:

- ``torch.compile`` (dynamo) traces the step once and inductor lowers it to one kernel (on CPU a
  C++/OpenMP loop over envs). Compiled, the step selects and writes ``(N, D)`` variables column by
  column (`_select`, `_write`) and stores bool flags through uint8 (`_flag`): both keep inductor's
  CPU loops vectorized, 1.2x to 2.4x faster on the classic-control tasks than whole-tensor selects.
- Dynamo re-checks its guards and sets up its frame on every call: 20-30 us here, a third to a half
  of a whole 4096-CartPole step on two cores. `CompiledStep` therefore keeps the compiled graph
  and its exact inputs (the env's buffers are fixed objects; only the action changes) and calls it
  directly, after checking once, on a copy of the state, that the direct call reproduces dynamo's
  outputs and buffer writes bit for bit. Anything it cannot vouch for (a graph break, an action that
  requires grad, a change of grad mode or thread count, an attribute assigned on the env) goes
  through dynamo again, which recompiles where needed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from gymnasium.vector import AutoresetMode

from envs import pytree, rng
from envs.pytree import Obs, contiguous, where_rows
from envs.rng import Draw

RESET_STREAM, STEP_STREAM = 0, 1

# ``compile="auto"`` compiles on CUDA, and on CPU from this many envs: there an eager step is a few hundred
# tensor ops whose per-op overhead dominates (about 1 ms a step), the compiled kernel several times faster,
# and a warm compile (inductor's on-disk cache) a few seconds. Below it a compile's seconds rarely pay.
AUTO_COMPILE_MIN_ENVS_CPU = 4096
_log = logging.getLogger("envs")
_notice_given = False
_uncompiled = threading.local()  # `uncompiled_steps`'s flag, per thread


@contextlib.contextmanager
def uncompiled_steps() -> Iterator[None]:
    """Inside the block a compiled env step runs `fused_step` eagerly (the same branch-free step, uncompiled)
    instead of compiling on its first call.

    For a caller that needs one step's output shapes before compiling a larger function that inlines the
    env step (`hrl_nested.rollout.make_rollout` with ``compile_step``): it probes the step eagerly and
    rewinds, and must not pay for a separate compile of the env step that it will never call.
    """
    was = getattr(_uncompiled, "on", False)
    _uncompiled.on = True
    try:
        yield
    finally:
        _uncompiled.on = was


def resolve_compile(compile: bool | str, device: torch.device, num_envs: int) -> bool:
    """Whether an env's step is compiled: ``compile=True`` / ``False`` as given; ``"auto"`` (the default):
    on CUDA always, on CPU from `AUTO_COMPILE_MIN_ENVS_CPU` envs.

    >>> resolve_compile("auto", torch.device("cpu"), 4096), resolve_compile("auto", torch.device("cpu"), 64)
    (True, False)
    """
    if isinstance(compile, bool):
        return compile
    if compile != "auto":
        raise ValueError(f"compile: expected True, False or 'auto', got {compile!r}")
    return device.type == "cuda" or (device.type == "cpu" and num_envs >= AUTO_COMPILE_MIN_ENVS_CPU)


_MAX_COLUMNS = 16  # wider (N, D) variables are selected and written as whole tensors


def _columnwise(t: torch.Tensor) -> bool:
    return t.dim() == 2 and 1 < t.shape[1] <= _MAX_COLUMNS


def _select(mask: torch.Tensor, a: Obs, b: Obs, by_column: bool) -> Obs:
    """`where_rows`; ``by_column`` selects each column of an ``(N, D)`` tensor separately.

    Compiled, per-column 1-D expressions keep the whole step in one vectorized loop over envs
    (inductor otherwise materializes ``(N, D)`` intermediates and loops over them with strides).
    """
    if by_column and not isinstance(a, Mapping) and _columnwise(a):
        cols = [torch.where(mask, x, y) for x, y in zip(a.unbind(-1), b.unbind(-1))]
        return torch.stack(cols, -1)
    return where_rows(mask, a, b)


def _write(dst: torch.Tensor, src: torch.Tensor, by_column: bool) -> None:
    """``dst.copy_(src)``; ``by_column`` copies column by column (see `_select`)."""
    if by_column and _columnwise(dst):
        for j, col in enumerate(src.unbind(-1)):
            dst[:, j].copy_(col)
    else:
        dst.copy_(src)


def _flag(b: torch.Tensor, via_uint8: bool) -> torch.Tensor:
    """``b`` as a fresh bool tensor; ``via_uint8`` computes it as uint8 and views it as bool.

    Inductor's CPU code stores bool tensors element by element; a uint8 store vectorizes, and the
    dtype view is free. Used in the compiled CPU step only.
    """
    if not via_uint8:
        return b
    return torch.where(b, 1, 0).to(torch.uint8).view(torch.bool)


def _rows(env: Any, mask: torch.Tensor) -> torch.Tensor | None:
    """The rows a reset draw must fill: on the eager CPU path only the envs being reset (Philox costs
    about a hundred tensor ops per draw, so a few rows cost far less than all); elsewhere all (None),
    branch-free and without a host sync."""
    if env._branch_free:
        return None
    rows = mask.nonzero().squeeze(1)
    return None if rows.shape[0] == mask.shape[0] else rows


def fused_step(
    env: Any,
    actions: torch.Tensor,
    vars: dict[str, torch.Tensor],
    elapsed: torch.Tensor,
    needs_reset: torch.Tensor,
    rng_key: torch.Tensor,
    rng_counter: torch.Tensor,
    inline: bool = False,
) -> tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """One step of every env over the env's explicit buffers, written back in place.

    A free function of tensors (rather than a bound method reading ``self._...``) so that, compiled,
    the buffers are plain graph inputs: inductor fuses the transition, the autoreset select, the
    time limit and the write-back of every buffer into one kernel, and the outputs (obs, reward, flags)
    are fresh tensors that never alias the env's state.
    """
    u8, cols = env._uint8_flags, env.compiled
    # Traced into a caller's graph (a compiled rollout step), the flags it returns are read by the caller's
    # own float selects: a bool viewed from uint8 is then loaded as Vectorized<bool>, which inductor's CPU
    # code cannot cast (a C++ compile error, torch 2.13). Computed bools fuse into the caller's selects.
    out_u8 = u8 and not inline
    # Invalid actions are recorded (validate=True on CUDA / compiled) and replaced by the nearest valid
    # ones here, inside the kernel, so that no env's state is poisoned and no host sync is needed.
    actions = env._step_actions(actions)
    new_v, reward, terminated = env._transition(
        vars, actions, Draw(rng_key, rng_counter, STEP_STREAM, env.dtype)
    )
    elapsed_new = elapsed + 1
    if env.max_episode_steps is None:
        truncated = torch.zeros_like(terminated)
    else:
        truncated = elapsed_new >= env.max_episode_steps
    info: dict[str, Any] = {}
    if env.autoreset_mode != AutoresetMode.SAME_STEP:
        # Gymnasium's NEXT_STEP: an env whose episode ended last step ignores the action, returns its
        # reset observation, reward 0 and both flags False. DISABLED: no autoreset (`TorchVectorEnv.step`
        # refuses a step while an env has ended), only the ended flags are kept.
        pending = needs_reset.view(torch.uint8) != 0 if u8 else needs_reset
        next_step = env.autoreset_mode == AutoresetMode.NEXT_STEP
        if next_step and (env._branch_free or bool(pending.any())):
            fresh = env._sample_reset(
                Draw(rng_key, rng_counter, RESET_STREAM, env.dtype, _rows(env, pending))
            )
            new_v = {k: _select(pending, fresh[k], new_v[k], cols) for k in new_v}
            reward = torch.where(pending, torch.zeros_like(reward), reward)
            terminated = terminated & ~pending
            truncated = truncated & ~pending
            elapsed_new = torch.where(pending, torch.zeros_like(elapsed_new), elapsed_new)
        done = terminated | truncated
        if u8:
            needs_reset.view(torch.uint8).copy_(torch.where(done, 1, 0))
        else:
            needs_reset.copy_(done)
    else:
        done = terminated | truncated
        info["final_obs"] = contiguous(env._observe(new_v))
        info["_final_obs"] = _flag(done, out_u8)
        # Gymnasium's final_info: the info of each ended env's last step; the step itself reports none.
        info["final_info"] = {}
        info["_final_info"] = _flag(done, out_u8)
        if env._branch_free or bool(done.any()):
            fresh = env._sample_reset(Draw(rng_key, rng_counter, RESET_STREAM, env.dtype, _rows(env, done)))
            new_v = {k: _select(done, fresh[k], new_v[k], cols) for k in new_v}
            elapsed_new = torch.where(done, torch.zeros_like(elapsed_new), elapsed_new)
    obs = contiguous(env._observe(new_v))
    for k, t in new_v.items():
        _write(vars[k], t, cols)
    elapsed.copy_(elapsed_new)
    rng.increment(rng_counter)
    return obs, reward, _flag(terminated, out_u8), _flag(truncated, out_u8), info


def _private_copy(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with a code object of its own.

    ``torch.compile`` keeps its graph cache on the code object, with a limit of 8 recompilations.
    One shared ``_fused_step`` would make every env (task, size, dtype) a recompilation of the same
    code, and the ninth env would silently fall back to eager; a private copy per env avoids that.
    """
    code = fn.__code__.replace()
    return types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def inductor_backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Any:
    """The inductor backend of ``torch.compile`` (what ``backend="inductor"`` runs)."""
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(gm, example_inputs)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise-equal values (NaN equal to NaN), same dtype and shape."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bool(((a == b) | (a.isnan() & b.isnan()) if a.is_floating_point() else (a == b)).all())


def _error_chain(e: BaseException) -> Iterator[BaseException]:
    """``e``, then each error it wraps (dynamo's ``inner_exception``, else ``__cause__``), each once: a
    chain may loop (``a.__cause__ = b; b.__cause__ = a``), and the walk stops at the first error met twice."""
    x: BaseException | None = e
    seen: set[int] = set()
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        yield x
        x = getattr(x, "inner_exception", None) or x.__cause__


def is_compile_failure(e: BaseException) -> bool:
    """Whether ``e`` is a failure of ``torch.compile``'s machinery rather than an error of the code compiled.

    True when ``e`` or an error it wraps (``inner_exception`` / ``__cause__``) is a dynamo exception
    (``BackendCompilerFailed``, ``InductorError``, ``Unsupported``, ``TorchRuntimeError``, ...) or one of
    inductor's own (``CppCompileError``, ``LoweringException``, ...). A user's error met while tracing
    (a wrong action shape, a ``KeyError`` in a policy) reaches the caller as itself, so it is False:
    an ``"auto"`` compile may fall back to eager on a True only. ``TorchRuntimeError`` (an op that
    failed on fake tensors) may still be the user's bug: callers confirm by running eagerly.

    >>> is_compile_failure(ValueError("actions: expected shape (8,), got (4,)"))
    False
    """
    from torch._dynamo.exc import TorchDynamoException

    return any(
        isinstance(x, TorchDynamoException) or type(x).__module__.startswith("torch._inductor")
        for x in _error_chain(e)
    )


def compile_failure(e: BaseException) -> tuple[BaseException, str]:
    """The error behind a failed ``torch.compile`` and its first line (at most 160 characters), for a
    one-line notice: dynamo wraps the backend's error (``BackendCompilerFailed``), so follow
    ``inner_exception`` / ``__cause__`` to the original."""
    *_, root = _error_chain(e)
    text = str(root).strip()
    return root, text.splitlines()[0][:160] if text else ""


def warn_compile_fallback(log: logging.Logger, option: str, what: str, failure: BaseException) -> None:
    """The one warning of a ``option="auto"`` compile that failed and now runs eagerly (the env step's
    ``compile``, the rollout's ``compile_step``): the root error (`compile_failure`) and how to skip the
    attempt, as ``"<logger>: <option>='auto' could not compile the <what> (<Error>: <first line>); ..."``."""
    root, first = compile_failure(failure)
    log.warning(
        "%s: %s='auto' could not compile the %s (%s: %s); running it eagerly "
        "(pass %s=False to skip the attempt)",
        log.name,
        option,
        what,
        type(root).__name__,
        first,
        option,
    )


class _DirectCall:
    """A compiled graph with its inputs: the env's fixed tensors and one slot for the action."""

    def __init__(self, fn: Callable[..., Any], args: list[Any], slot: int, spec: pytree.TreeSpec):
        self.fn, self.args, self.slot, self.spec = fn, args, slot, spec

    def __call__(self, actions: torch.Tensor) -> Any:
        args = self.args
        args[self.slot] = actions
        try:
            leaves = self.fn(*args)
        finally:
            args[self.slot] = None  # do not keep the caller's action alive
        return pytree.tree_unflatten(leaves, self.spec)


class CompiledStep:
    """`fused_step` of one env, compiled by inductor and called directly once verified.

    Args:
        env: the `TorchVectorEnv` whose buffers the step reads and writes.
        auto: compiled because of ``compile="auto"``: the first compile in a process logs a one-line
            notice (logger ``envs``), and a compile that fails (no C++ compiler, an inductor bug) logs a
            warning and leaves the step eager (the same branch-free step, uncompiled) instead of raising.
            An error that the eager step reproduces (a bug in the env's own transition) is not the
            compiler's: it is raised as the eager step raises it, with no warning.

    Attributes:
        compile_seconds: wall time spent tracing and compiling (and verifying) so far.
        failed: the exception of a failed ``auto`` compile (the step then runs eagerly), else None.
    """

    def __init__(self, env: Any, auto: bool = False):
        self.env = env
        self.auto = auto
        self.failed: BaseException | None = None
        self.compile_seconds = 0.0
        self._direct: dict[tuple[Any, ...], _DirectCall] = {}
        self._dynamo: Callable[..., Any] | None = None  # the plain torch.compile path, once needed

    def __call__(self, actions: torch.Tensor) -> Any:
        env = self.env
        buffers = (env._vars, env._elapsed, env._needs_reset, env._rng_key, env._rng_counter)
        compiling = torch.compiler.is_compiling()
        if compiling or self.failed is not None or getattr(_uncompiled, "on", False):
            # Inside a caller's torch.compile: let it inline the step. After a failed auto compile, or in
            # `uncompiled_steps`: eager.
            return fused_step(env, actions, *buffers, inline=compiling)
        key = (
            env._config_version,
            torch.is_grad_enabled(),
            torch.get_num_threads(),
            actions.dtype,
            actions.stride(),
        )
        direct = self._direct.get(key)
        if direct is not None and not actions.requires_grad:
            return direct(actions)
        if self._dynamo is not None or actions.requires_grad:
            return self._dynamo_step()(env, actions, *buffers)
        if _stream_capturing(env.device):
            # Compiling reads the device (verification) and so breaks a capture; an auto fallback would then
            # run its eager step into the broken capture without a word. A collector warms up first.
            raise RuntimeError(
                f"envs: the compiled {type(env).__name__} step compiles on its first call (and again after "
                "an attribute of the env changed), which cannot happen inside a CUDA graph capture; step "
                "the env once before capturing (a warm-up), or make it with compile=False"
            )
        if not self.auto:
            return self._compile(key, actions, buffers)
        _auto_notice(env)
        before = env._state()
        try:
            return self._compile(key, actions, buffers)
        except Exception as e:  # noqa: BLE001 - compile="auto" must never cost the user their env
            # The traced step (and the verification's) may have run before the failure: take the eager
            # step (or leave the env) at the state the user's step started from, not a second step after it.
            env.set_state(before)
            failure = e
        # Outside the except block, the eager step from the same state tells whose error it was: if it fails
        # too, the error is the env's own (a bug in its transition, met while tracing) and is raised as the
        # eager step raises it, with no fallback notice and the compile tried again next call; if it runs,
        # the compiler failed (`is_compile_failure`, or a verification that raised): warn and stay eager.
        out = fused_step(env, actions, *buffers)
        self.failed = failure
        warn_compile_fallback(_log, "compile", f"{type(env).__name__} step", failure)
        return out

    def _dynamo_step(self) -> Callable[..., Any]:
        if self._dynamo is None:
            self._dynamo = torch.compile(_private_copy(fused_step), dynamic=False, backend=inductor_backend)
        return self._dynamo

    def _compile(self, key: tuple[Any, ...], actions: torch.Tensor, buffers: tuple[Any, ...]) -> Any:
        """Trace and compile for ``key``, take the step, and keep the direct call if it checks out."""
        captured: list[tuple[Any, list[Any], int]] = []

        def backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
            compiled = inductor_backend(gm, example_inputs)
            out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
            captured.append(
                (compiled, list(example_inputs), len(out) if isinstance(out, tuple | list) else -1)
            )
            return compiled

        start = time.perf_counter()
        # A fresh code object per compilation: this trace cannot be answered from an older cache entry,
        # so the graph captured here is the one that belongs to ``key``.
        fn = torch.compile(_private_copy(fused_step), dynamic=False, backend=backend)
        env = self.env
        before = _snapshot(env)
        out = fn(env, actions, *buffers)
        direct = self._verify(fn, captured, out, actions, before, buffers)
        if direct is None:
            self._dynamo = fn  # keep the plain compiled path (it may hold several graphs)
        else:
            # Graphs of an older configuration can never be called again: drop them, not leak them.
            self._direct = {k: v for k, v in self._direct.items() if k[0] == key[0]}
            self._direct[key] = direct
        self.compile_seconds += time.perf_counter() - start
        return out

    def _verify(self, fn, captured, out, actions, before, buffers) -> _DirectCall | None:
        """A direct call of the single captured graph, if it reproduces ``fn`` exactly."""
        leaves, spec = pytree.tree_flatten(out)
        if len(captured) != 1 or not all(isinstance(x, torch.Tensor) for x in leaves):
            return None  # a graph break, or non-tensor outputs
        compiled, inputs, n_out = captured[0]
        slots = [i for i, t in enumerate(inputs) if t is actions]
        if n_out != len(leaves) or len(slots) != 1 or any(not isinstance(t, torch.Tensor) for t in inputs):
            return None
        env = self.env
        after = _snapshot(env)
        probe = _probe_state(env, before)
        # From the same (probe) state: once through dynamo, once directly; everything must match.
        env.set_state(probe)
        ref = pytree.tree_leaves(fn(env, actions, *buffers))
        ref_state = _snapshot(env).tensors()
        env.set_state(probe)
        got = compiled(*inputs)
        ok = len(got) == len(ref) and all(_same(a, b) for a, b in zip(got, ref))
        ok = ok and all(_same(a, ref_state[k]) for k, a in _snapshot(env).tensors().items())
        env.set_state(after)
        if not ok:
            return None
        args = list(inputs)
        args[slots[0]] = None
        return _DirectCall(compiled, args, slots[0], spec)


def _stream_capturing(device: torch.device) -> bool:
    """Whether ``device``'s current stream is capturing a CUDA graph (False on every other device)."""
    if device.type != "cuda":
        return False
    with torch.cuda.device(device):  # the env's device, which need not be the current one
        return torch.cuda.is_current_stream_capturing()


def _auto_notice(env: Any) -> None:
    """One line, once per process, when ``compile="auto"`` first compiles a step."""
    global _notice_given
    if _notice_given:
        return
    _notice_given = True
    _log.warning(
        "envs: compile='auto' is compiling the %s step for %d envs on %s (seconds once; inductor's cache "
        "makes later runs faster; compile=False skips it)",
        type(env).__name__,
        env.num_envs,
        env.device,
    )


def _snapshot(env: Any) -> Any:
    """``env._state()``: a copy that leaves recorded invalid actions for the user's next sync point
    (`TorchVectorEnv.raise_pending`) instead of raising them in the middle of a compile."""
    return env._state()


def _probe_state(env: Any, state: Any) -> Any:
    """``state`` with time limits about to expire and resets pending in different rows.

    So that terminated / truncated / final observations differ from each other and from the plain
    observation in the verification step, whatever the physics does.
    """
    probe = type(state)(**{f: getattr(state, f) for f in state.__dataclass_fields__})
    n = env.num_envs
    rows = torch.arange(n, device=env.device)
    if env.max_episode_steps is not None:
        probe.elapsed = torch.where(rows % 3 == 1, env.max_episode_steps - 1, state.elapsed)
    probe.needs_reset = (rows % 4 == 2) | state.needs_reset
    return probe
