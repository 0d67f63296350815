"""Fused rollouts: T steps of (policy step, env step) for N envs, into one typed `Batch`.

The loop has no host synchronization and no data-dependent Python branch: episode ends are handled
with ``torch.where`` masks, the true final observation of an episode comes from SAME_STEP autoreset's
``info["final_obs"]``, and episode statistics are kept in on-device accumulators. That makes the
whole T-step loop capturable as one CUDA graph, replayed every iteration.

A captured graph remembers tensor addresses. So the collector owns *static* input buffers (the
parameters, the observation and the policy carry); every call copies its arguments into them with
``copy_`` before the replay and never replaces them, so a replay cannot run stale weights. The env's
own tensors are its static state (its steps and ``set_state`` write in place); warm-up steps are
undone with ``env.get_state()`` / ``env.set_state()`` before the capture (`Collector._warm_up`, which
the CPU ``"static"`` mode runs too). Streams, the graph and the RNG state are those of the env's device,
whatever the current device is.

Inside a graph every kernel is paid per step, so with ``compile_step`` (the default wherever a CUDA graph
is captured) a step is ONE ``torch.compile``-d call: policy, sampling, the env step (inlined, not a
separate compiled region), episode bookkeeping as per-env sums, and the write of the step's record into
row t of the preallocated T-step buffers; the loop runs nothing else between steps
(`Collector._fused_loop`; ``experiments/bench_rollout.py`` reports the kernels per step).

A policy step is ``policy_fn(params, obs, carry) -> PolicyOutput``; the *carry* is any per-env pytree
the policy threads through time (a manager's goal, chosen subpolicy, steps left in its segment...).
It is recorded in ``batch.carry``, returned, and fed to the next call, so a rollout can be resumed.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from torch import nn

import envs
from envs.compiled_step import _private_copy, is_compile_failure, uncompiled_steps, warn_compile_fallback
from hrl_nested.batch import Batch
from hrl_nested.distributions import DiagGaussian
from hrl_nested.exploration import Exploration
from hrl_nested.networks import actor_critic_apply
from hrl_nested.pytree import Obs, tree_leaves, tree_map, where_rows

CAPTURE_MODES = ("auto", "none", "static", "cuda_graph")


class PolicyOutput(NamedTuple):
    """One policy step for N envs.

    Attributes:
        action: ``(N, ...)`` the action as stored in the batch and scored by ``logprob``: for a
            Gaussian policy the draw ``u`` itself (before a tanh squash or a clip, see
            `hrl_nested.distributions.DiagGaussian`), so the learner recomputes the same log-prob.
        logprob: ``(N,)`` ``log pi(action | obs, carry)``.
        value: ``(N,)`` ``V(obs)``.
        carry: the per-env carry the action was chosen with and that the next step receives: a
            pytree of ``(N, ...)`` tensors, or None.
        env_action: ``(N, ...)`` what the env receives (``dist.env_action(action)``), or None for
            ``action`` itself. Either way a Box action is then clipped to the space's bounds.
    """

    action: torch.Tensor
    logprob: torch.Tensor
    value: torch.Tensor
    carry: Any
    env_action: torch.Tensor | None = None


class RolloutResult(NamedTuple):
    """What one ``collect`` returns.

    Attributes:
        batch: the ``(T, N)`` `Batch` (``next_values`` left None: the learner computes ``V(next_obs)``).
        obs: ``(N, ...)`` observation to continue from (first observation of a new episode where one ended).
        carry: the carry to continue from.
        episode_return_sum: scalar tensor, the summed returns of the episodes that *ended* in this rollout.
        episode_length_sum: int64 scalar tensor, their summed lengths.
        episode_count: int64 scalar tensor, how many ended.
    """

    batch: Batch
    obs: Obs
    carry: Any
    episode_return_sum: torch.Tensor
    episode_length_sum: torch.Tensor
    episode_count: torch.Tensor


PolicyFn = Callable[[dict[str, torch.Tensor], Obs, Any], PolicyOutput]


def _policy_draw(
    module: nn.Module, params: dict[str, torch.Tensor], obs: Obs
) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The policy's own draw for `actor_critic_policy` with or without exploration: ``(dist, value, action,
    logprob)``; a Gaussian draws ``u`` and its exact ``log_prob(u)`` together, a categorical draws, then
    scores."""
    dist_params, value = actor_critic_apply(module, params, obs)
    dist = module.distribution(dist_params)
    if isinstance(dist, DiagGaussian):
        action, logprob = dist.sample_and_log_prob()
    else:
        action = dist.sample()
        logprob = dist.log_prob(action)
    return dist, value, action, logprob


def actor_critic_policy(module: nn.Module, explore: Exploration | None = None) -> PolicyFn:
    """A stochastic policy step for an `hrl_nested.networks.ActorCritic`, driven by a parameter dict.

    The carry passes through unchanged. A Gaussian policy stores its draw ``u`` with the exact
    ``log_prob(u)``, and the env receives ``dist.env_action(u)`` (squashed or clipped into the box).

    With ``explore`` (`hrl_nested.exploration.Exploration`: εz-greedy or action repeat) the carry is the
    exploration state (`hrl_nested.exploration.initial_explore_carry`; end runs at episode ends with
    ``reset_carry=hrl_nested.exploration.end_runs``): the action stored and taken is the exploratory one
    where a run is open, its ``logprob`` is ``log π`` of that action, and ``carry["off_policy"]`` (recorded
    in ``batch.carry``) marks those steps, for the learner to mask out of the policy loss. On-policy steps
    keep exactly the policy's draw and log-prob. Without ``explore`` nothing changes.

    >>> import gymnasium as gym
    >>> from hrl_nested.networks import ActorCritic, params_of
    >>> ac = ActorCritic(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2))
    >>> out = actor_critic_policy(ac)(params_of(ac), torch.zeros(3, 4), None)
    >>> out.action.shape, out.logprob.shape, out.value.shape
    (torch.Size([3]), torch.Size([3]), torch.Size([3]))
    """

    def policy_fn(params: dict[str, torch.Tensor], obs: Obs, carry: Any) -> PolicyOutput:
        dist, value, action, logprob = _policy_draw(module, params, obs)
        env_action = dist.env_action(action) if isinstance(dist, DiagGaussian) else None
        return PolicyOutput(action, logprob, value, carry, env_action)

    if explore is None:
        return policy_fn

    def exploring_policy_fn(params: dict[str, torch.Tensor], obs: Obs, carry: Any) -> PolicyOutput:
        dist, value, own, own_logp = _policy_draw(module, params, obs)
        action, carry = explore.step(dist, own, carry)
        logprob = torch.where(carry["off_policy"], dist.log_prob(action), own_logp)
        env_action = dist.env_action(action) if isinstance(dist, DiagGaussian) else None
        return PolicyOutput(action, logprob, value, carry, env_action)

    return exploring_policy_fn


@contextlib.contextmanager
def no_garbage_collection() -> Iterator[None]:
    """Python's cyclic garbage collector off inside the block (as it was before, after it).

    A CUDA graph capture must not see a CUDA graph freed: an earlier collector left in a reference cycle
    (an earlier training run in the same process) has its graph destroyed whenever the collector runs,
    and that destructor's ``cudaFree`` invalidates the capture in progress ("operation not permitted
    when stream is capturing"; seen on an H200 at the fifth nested-HRL run of one process).
    ``torch.cuda.graph`` collects once on entry; this keeps it from running again until the end.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def inductor_eager_rng(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Any:
    """Inductor with ``fallback_random``: the compiled step's ``torch.rand`` / ``randn`` are torch's own
    kernels on torch's generator, so they draw exactly the numbers the eager step draws (inductor's
    in-kernel RNG would draw others); the transform of the draw (Gumbel-max, ``loc + scale * eps``) still
    fuses into the step's kernel. The compiled rollout thereby takes the eager rollout's actions."""
    from torch._inductor.compile_fx import compile_fx

    with torch._inductor.config.patch(fallback_random=True):
        return compile_fx(gm, example_inputs)


_log = logging.getLogger("hrl_nested")
_notice_given = False


def _compile_notice(collector: Collector) -> None:
    """One line, once per process, when ``compile_step="auto"`` first compiles a rollout step."""
    global _notice_given
    if _notice_given:
        return
    _notice_given = True
    _log.warning(
        "hrl_nested: compile_step='auto' is compiling the rollout step (policy + env step + buffer writes) "
        "for %d envs on %s: seconds once, then a few kernels a step (compile_step=False skips it; compiled "
        "values may differ from eager in the low bits)",
        collector.env.num_envs,
        collector.device,
    )


def resolve_compile_step(compile_step: bool | str, mode: str, device: torch.device) -> bool:
    """Whether `make_rollout` compiles its step: ``True`` / ``False`` as given; ``"auto"`` (the default):
    when the rollout is captured as a CUDA graph (``mode == "cuda_graph"``), where one compile is replayed
    for the whole run and the compiled step is a few kernels instead of dozens.

    >>> resolve_compile_step("auto", "cuda_graph", torch.device("cuda"))
    True
    >>> resolve_compile_step("auto", "none", torch.device("cpu"))
    False
    """
    if isinstance(compile_step, bool):
        return compile_step
    if compile_step != "auto":
        raise ValueError(f"compile_step: expected True, False or 'auto', got {compile_step!r}")
    return mode == "cuda_graph" and device.type == "cuda"


def _copy_tree(dst: Any, src: Any, name: str) -> None:
    """``dst.copy_(src)`` leaf by leaf, with a clear error when structure, shape or dtype changed."""
    d, s = tree_leaves(dst), tree_leaves(src)
    if len(d) != len(s):
        raise ValueError(f"{name}: expected the structure of the first call ({len(d)} tensors), got {len(s)}")
    for a, b in zip(d, s):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(
                f"{name}: expected {a.dtype} {tuple(a.shape)} as in the first call, "
                f"got {b.dtype} {tuple(b.shape)}"
            )
        a.copy_(b)


class Collector:
    """``collect(params, obs, carry) -> RolloutResult``; made by `make_rollout`."""

    def __init__(
        self,
        env: Any,
        policy_fn: PolicyFn,
        num_steps: int,
        capture: str,
        reset_carry: Callable | None,
        compile_step: bool | str,
    ):
        self.env, self.policy_fn, self.num_steps, self.reset_carry = env, policy_fn, num_steps, reset_carry
        dev = torch.device(env.device)
        if dev.type == "cuda" and dev.index is None:  # pin "cuda" to the device it means now
            dev = torch.device("cuda", torch.cuda.current_device())
        self.device = dev  # every stream, graph and RNG call below is scoped to it, not the current device
        # A capture rewinds its warm-up with get_state/set_state; an env whose state lives in a simulator
        # (a wrapped Gymnasium env, supports_state=False) or that lacks them cannot: "auto" runs it eagerly.
        can_rewind = envs.supports_state(env)
        self.mode = (
            capture if capture != "auto" else ("cuda_graph" if dev.type == "cuda" and can_rewind else "none")
        )
        if self.mode in ("cuda_graph", "static") and not can_rewind:
            raise ValueError(
                f"capture={self.mode!r}: expected an env with get_state/set_state, got "
                f"{type(env).__name__} (its state lives in a simulator); use capture='none' or 'auto'"
            )
        if self.mode == "cuda_graph":
            if dev.type != "cuda":
                raise ValueError(f"capture='cuda_graph': expected an env on a CUDA device, got {dev}")
            # validate=True is capturable: on CUDA a TorchVectorEnv records invalid actions on the device
            # (no host sync in step, envs.actions), and __call__ raises them after the replay.
        self._ep_ret = torch.zeros(env.num_envs, device=dev, dtype=getattr(env, "dtype", torch.float32))
        self._ep_len = torch.zeros(env.num_envs, device=dev, dtype=torch.int64)
        space = env.single_action_space
        self._bounds = None
        if (
            isinstance(space, gym.spaces.Box)
            and np.all(np.isfinite(space.low))
            and np.all(np.isfinite(space.high))
        ):
            dt = getattr(env, "dtype", torch.float32)
            self._bounds = (
                torch.as_tensor(space.low, dtype=dt, device=dev),
                torch.as_tensor(space.high, dtype=dt, device=dev),
            )
        self._static: tuple[dict[str, torch.Tensor], Obs, Any] | None = None
        self._warmed_up = False
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_out: Any = None
        self.compiled = resolve_compile_step(compile_step, self.mode, dev)
        # The fused loop preallocates the T-step buffers from an eager probe step that it rewinds.
        self._fused = self.compiled and can_rewind
        self._layout: tuple[Any, list[tuple[torch.Size, torch.dtype]]] | None = None
        self._auto_untried = self._fused and compile_step == "auto"
        self._step_fn = self._step
        if self.compiled:
            # A code object of its own (envs.compiled_step's reason: dynamo caches graphs per code object,
            # at most 8; every collector of a process would otherwise be a recompilation of Collector._step).
            self._step = types.MethodType(_private_copy(Collector._step), self)
            self._step_fn = torch.compile(self._step, dynamic=False, backend=inductor_eager_rng)

    # ------------------------------------------------------------------ public
    def __call__(self, params: Mapping[str, torch.Tensor], obs: Obs, carry: Any = None) -> RolloutResult:
        """T steps from ``obs`` / ``carry``; then the env's deferred invalid-action checks are raised
        (``env.raise_pending()``: one host read per call, only for an env with ``validate=True`` whose
        checks were deferred, free otherwise), the learner's once-per-iteration sync point."""
        out = self._collect(params, obs, carry)
        raise_pending = getattr(self.env, "raise_pending", None)
        if raise_pending is not None:
            raise_pending()
        return out

    def _collect(self, params: Mapping[str, torch.Tensor], obs: Obs, carry: Any) -> RolloutResult:
        params = dict(params)
        if self.mode == "none":
            with torch.no_grad():
                return self._run(params, obs, carry)
        if self._static is None:
            self._static = tuple(tree_map(lambda t: t.detach().clone(), x) for x in (params, obs, carry))
        s_params, s_obs, s_carry = self._static
        if set(params) != set(s_params):
            raise ValueError(
                f"params: expected the keys of the first call {sorted(s_params)}, got {sorted(params)}"
            )
        with torch.no_grad():
            _copy_tree(
                [s_params[k] for k in sorted(s_params)], [params[k] for k in sorted(s_params)], "params"
            )
            _copy_tree(s_obs, obs, "obs")
            _copy_tree(s_carry, carry, "carry")
            if self.mode == "static":
                if not self._warmed_up:  # as before a capture: the warm-up must leave no trace
                    self._warm_up()
                out = self._run(s_params, s_obs, s_carry)
            else:
                if self._graph is None:
                    self._capture()
                with torch.cuda.device(self.device):
                    self._graph.replay()
                out = self._graph_out
            return tree_map(lambda t: t.clone(), out)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The per-env running episode return and length (to resume the episode statistics)."""
        return {"episode_return": self._ep_ret.clone(), "episode_length": self._ep_len.clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore `state_dict` by copying in place (addresses stay stable for the captured graph)."""
        if set(state) != {"episode_return", "episode_length"}:
            raise ValueError(
                f"state: expected keys ['episode_length', 'episode_return'], got {sorted(state)}"
            )
        with torch.no_grad():
            _copy_tree(self._ep_ret, state["episode_return"].to(self._ep_ret.device), "episode_return")
            _copy_tree(self._ep_len, state["episode_length"].to(self._ep_len.device), "episode_length")

    # ------------------------------------------------------------------ internals
    def _snapshot(self) -> tuple[Any, dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Everything a rollout advances: env state, episode accumulators, CPU and env-device RNG."""
        rng_dev = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return self.env.get_state(), self.state_dict(), torch.get_rng_state(), rng_dev

    def _rewind(self, snapshot: tuple[Any, dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]):
        """Restore a `_snapshot` in place (addresses stay stable for the graph)."""
        env_state, acc, rng_cpu, rng_dev = snapshot
        self.env.set_state(env_state)
        self.load_state_dict(acc)
        torch.set_rng_state(rng_cpu)
        if rng_dev is not None:
            torch.cuda.set_rng_state(rng_dev, self.device)

    def _warm_up(self) -> None:
        """Run the T-step loop once from the static buffers, then rewind everything it advanced.

        A capture needs one run first (allocations, lazy initialisation and ``torch.compile`` happen
        outside the graph). Its effects are undone: env state (physics, counters, RNG counters),
        episode accumulators and the CPU and env-device torch RNG are snapshotted before and restored
        after, so the next rollout is exactly the one a fresh collector would produce. On CUDA it runs
        on a side stream of the env's device (``torch.cuda.graphs`` asks for a side-stream warm-up).
        The ``"static"`` mode runs it too, so this logic is exercised on CPU.
        """
        s_params, s_obs, s_carry = self._static
        snapshot = self._snapshot()
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                current = torch.cuda.current_stream(self.device)
                stream = torch.cuda.Stream(device=self.device)
                stream.wait_stream(current)
                with torch.cuda.stream(stream):
                    self._run(s_params, s_obs, s_carry)
                current.wait_stream(stream)
        else:
            self._run(s_params, s_obs, s_carry)
        self._rewind(snapshot)
        self._warmed_up = True

    def _capture(self) -> None:
        """`_warm_up`, then capture the T-step loop once, on the env's device (not the current one)."""
        self._warm_up()
        s_params, s_obs, s_carry = self._static
        with torch.cuda.device(self.device):
            graph = torch.cuda.CUDAGraph()
            # An explicit stream: torch.cuda.graph's default capture stream is one per process, made on
            # whichever device was current at the first capture.
            stream = torch.cuda.Stream(device=self.device)
            with no_garbage_collection(), torch.cuda.graph(graph, stream=stream):  # records only
                self._graph_out = self._run(s_params, s_obs, s_carry)
        self._graph = graph

    def _step(self, params, obs, carry, ep_ret, ep_len, sums, out=None):
        """One (policy, env) step with the episode bookkeeping; all masks, no branches on data.

        ``out`` None (the eager loop): returns the step's record, and ``sums`` (None at t = 0) gains this
        step's scalar sums over the envs that ended. ``out`` a list of the record's ``(N, ...)`` slots
        (row t of the T-step buffers, the fused compiled loop): the record is written there, inside the
        step, and ``sums`` are per-env ``(N,)`` accumulators summed once after the loop. Either way
        returns ``(record or None, next_obs, carry, ep_ret, ep_len, sums)``.
        """
        pol = self.policy_fn(params, obs, carry)
        action = pol.action if pol.env_action is None else pol.env_action
        if self._bounds is not None:  # the env gets the clipped action, the batch keeps the policy's
            action = torch.maximum(torch.minimum(action, self._bounds[1]), self._bounds[0])
        next_obs, r_t, term_t, trunc_t, info = self.env.step(action)
        # SAME_STEP's mask is exactly terminated | truncated; reusing it (rather than OR-ing two bool
        # inputs) also sidesteps an inductor C++ codegen bug on vectorized bool | bool (torch 2.13, CPU).
        done = info["_final_obs"]
        final_obs = where_rows(done, info["final_obs"], next_obs)
        ep_ret = ep_ret + r_t
        ep_len = ep_len + 1
        ended = (torch.where(done, ep_ret, 0), torch.where(done, ep_len, 0), done)
        if out is None:
            ended = tuple(x.sum() for x in ended)
            sums = ended if sums is None else tuple(a + b for a, b in zip(sums, ended))
        else:  # elementwise: fuses into the step's kernel (a sum over envs would be a kernel per step)
            sums = tuple(a + b for a, b in zip(sums, ended))
        ep_ret = torch.where(done, torch.zeros_like(ep_ret), ep_ret)
        ep_len = torch.where(done, torch.zeros_like(ep_len), ep_len)
        carry_next = pol.carry if self.reset_carry is None else self.reset_carry(pol.carry, done)
        record = (obs, pol.action, pol.logprob, pol.value, r_t, final_obs, term_t, trunc_t, pol.carry)
        if out is None:
            return record, next_obs, carry_next, ep_ret, ep_len, sums
        leaves = tree_leaves(record)
        if len(leaves) != len(out):
            raise ValueError(
                f"policy: expected {len(out)} record tensors as in the probe step, got {len(leaves)}"
            )
        for buf, x in zip(out, leaves):
            buf.copy_(x)
        return None, next_obs, carry_next, ep_ret, ep_len, sums

    def _run(self, params, obs, carry) -> RolloutResult:
        if self._fused:
            return self._run_fused(params, obs, carry)
        T = self.num_steps
        ep_ret, ep_len = self._ep_ret, self._ep_len
        record, obs, carry, ep_ret, ep_len, sums = self._step_fn(params, obs, carry, ep_ret, ep_len, None)
        leaves = tree_leaves(record)
        bufs = [torch.empty((T, *x.shape), dtype=x.dtype, device=x.device) for x in leaves]
        for t in range(T):
            if t > 0:
                record, obs, carry, ep_ret, ep_len, sums = self._step_fn(
                    params, obs, carry, ep_ret, ep_len, sums
                )
                leaves = tree_leaves(record)
            for buf, x in zip(bufs, leaves):
                buf[t].copy_(x)
        return self._result(bufs, record, obs, carry, ep_ret, ep_len, sums)

    def _run_fused(self, params, obs, carry) -> RolloutResult:
        """`_fused_loop`; the first run of a ``compile_step="auto"`` rollout falls back to the eager loop
        (from the same state, with a warning) if compiling fails.

        Only a failure of the compiler (`envs.compiled_step.is_compile_failure`) falls back. Any other error
        (a wrong action shape, a bug in the policy) is the user's: the rollout is rewound and the error
        propagates unchanged, with no notice, and the next call tries the compile again. A compiler error
        that the eager loop reproduces (an op that failed on fake tensors) is the user's too: the eager
        loop's error is raised.
        """
        if not self._auto_untried:
            return self._fused_loop(params, obs, carry)
        _compile_notice(self)
        snapshot = self._snapshot()
        try:
            out = self._fused_loop(params, obs, carry)
        except Exception as e:  # noqa: BLE001 - compile_step="auto" must never cost the user their rollout
            self._rewind(snapshot)
            if not is_compile_failure(e):
                raise
            failure = e
        else:
            self._auto_untried = False
            return out
        compiled_step = self._step_fn
        self._step_fn, self._fused, self.compiled = self._step, False, False
        try:  # outside the except block: an eager error is shown without the compile error as its context
            out = self._run(params, obs, carry)
        except Exception:
            self._rewind(snapshot)
            self._step_fn, self._fused, self.compiled = compiled_step, True, True
            raise
        self._auto_untried = False
        warn_compile_fallback(_log, "compile_step", "rollout step", failure)
        return out

    def _fused_loop(self, params, obs, carry) -> RolloutResult:
        """The compiled loop: each step is ONE compiled call that also writes its row of the T-step buffers
        and updates per-env episode sums; nothing else runs between steps (one region, no eager ops)."""
        T = self.num_steps
        if self._layout is None:
            self._layout = self._probe(params, obs, carry)
        spec, metas = self._layout
        bufs = [torch.empty((T, *shape), dtype=dtype, device=self.device) for shape, dtype in metas]
        ep_ret, ep_len = self._ep_ret, self._ep_len
        sums = (torch.zeros_like(ep_ret), torch.zeros_like(ep_len), torch.zeros_like(ep_len))
        for t in range(T):
            _, obs, carry, ep_ret, ep_len, sums = self._step_fn(
                params, obs, carry, ep_ret, ep_len, sums, [b[t] for b in bufs]
            )
        return self._result(bufs, spec, obs, carry, ep_ret, ep_len, tuple(s.sum() for s in sums))

    def _probe(self, params, obs, carry) -> tuple[Any, list[tuple[torch.Size, torch.dtype]]]:
        """The record's structure, shapes and dtypes, from one eager step that is then rewound (env, episode
        accumulators and RNG as before; a compiled env step runs uncompiled here: no separate compile)."""
        snapshot = self._snapshot()
        try:
            with uncompiled_steps():
                record = self._step(params, obs, carry, self._ep_ret, self._ep_len, None)[0]
        finally:
            self._rewind(snapshot)
        skeleton = tree_map(lambda _: torch.empty(0), record)  # the structure, without the probe's tensors
        return skeleton, [(x.shape, x.dtype) for x in tree_leaves(record)]

    def _result(self, bufs, like, obs, carry, ep_ret, ep_len, sums) -> RolloutResult:
        """The `RolloutResult` of a finished loop; the running episode accumulators are stored in place."""
        self._ep_ret.copy_(ep_ret)
        self._ep_len.copy_(ep_len)
        it = iter(bufs)
        obs_t, a_t, logp_t, v_t, r_t, next_obs_t, term_t, trunc_t, carry_t = tree_map(
            lambda _: next(it), like
        )
        batch = Batch(obs_t, a_t, logp_t, v_t, r_t, next_obs_t, term_t, trunc_t, None, carry_t)
        return RolloutResult(batch, obs, carry, *sums)


def make_rollout(
    env: Any,
    policy_fn: PolicyFn,
    num_steps: int,
    *,
    capture: str = "auto",
    reset_carry: Callable[[Any, torch.Tensor], Any] | None = None,
    compile_step: bool | str = "auto",
) -> Collector:
    """Build ``collect(params, obs, carry) -> RolloutResult`` running ``num_steps`` fused steps.

    The env receives ``PolicyOutput.env_action`` when the policy gives one (a tanh-squashed Gaussian's
    ``loc + scale * tanh(u)``), else the action; a Box action is then clipped to the space's bounds
    before ``env.step``. The batch keeps the policy's own action (the draw ``u``, as SB3 keeps the
    unclipped action), so the learner scores exactly what the rollout scored.

    Args:
        env: a `envs.TorchVectorEnv` with SAME_STEP autoreset
            (``envs.make(..., autoreset_mode="same_step")``). With ``validate=True`` (deferred checks on
            CUDA or compiled steps) each collect ends with ``env.raise_pending()``; learners use
            ``validate=False``.
        policy_fn: ``policy_fn(params, obs, carry) -> PolicyOutput``, e.g. `actor_critic_policy`.
        num_steps: T.
        capture: ``"auto"`` (``"cuda_graph"`` on CUDA, ``"none"`` on CPU or for an env with
            ``supports_state = False``, such as a wrapped Gymnasium env); ``"none"`` (eager);
            ``"cuda_graph"`` (captured once, replayed; inputs copied into static buffers);
            ``"static"`` (the static-buffer path without a graph: the capture logic, with its
            warm-up-and-rewind on the first call, testable on CPU).
        reset_carry: optional ``reset_carry(carry, done) -> carry`` applied after each env step with the
            ``(N,)`` episode-end mask (e.g. end a manager's segment when its episode ends).
        compile_step: ``"auto"`` (the default): compile when the rollout is captured as a CUDA graph
            (`resolve_compile_step`), else not; ``True`` / ``False``. Compiled, each step (policy, sampling,
            env step with its autoreset, episode bookkeeping and the write of the step's row of the
            T-step buffers) is ONE ``torch.compile``-d call, so that the T-step loop runs nothing else
            (under ``"cuda_graph"`` it is what gets captured): a few kernels a step instead of dozens.
            The buffers are laid out from one eager probe step, rewound (an env whose state lives in a
            simulator, ``supports_state = False``, keeps the copies outside the compiled step). Pays on
            long runs only: a cold compile takes seconds to tens of seconds. Numbers: sampling draws from
            torch's generator as the eager step does (inductor's ``fallback_random``), so a compiled
            rollout takes the eager rollout's actions; values, log-probs and the physics may differ in
            the low bits (inductor's fused float arithmetic), and the episode-return sum is added up
            per env first (another order). With ``"auto"`` a compile that fails logs a warning and the
            rollout runs eagerly.

    Returns:
        The collector; call it as ``collect(params, obs, carry)``. It also has ``state_dict()`` /
        ``load_state_dict()`` for the running episode accumulators.

    >>> import envs
    >>> from hrl_nested.networks import ActorCritic, params_of
    >>> env = envs.make("hrl_nested/CartPole-v1", 8, autoreset_mode="same_step", validate=False)
    >>> ac = ActorCritic(env.single_observation_space, env.single_action_space)
    >>> collect = make_rollout(env, actor_critic_policy(ac), num_steps=16)
    >>> obs, _ = env.reset(seed=0)
    >>> res = collect(params_of(ac), obs, None)
    >>> res.batch.rewards.shape
    torch.Size([16, 8])
    """
    if capture not in CAPTURE_MODES:
        raise ValueError(f"capture: expected one of {CAPTURE_MODES}, got {capture!r}")
    if not isinstance(num_steps, int | np.integer) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps: expected a positive int, got {num_steps!r}")
    mode = getattr(env, "autoreset_mode", None) or env.metadata.get("autoreset_mode")
    if mode != AutoresetMode.SAME_STEP:
        raise ValueError(
            f"env: expected SAME_STEP autoreset (make it with autoreset_mode='same_step'), got {mode}; "
            "NEXT_STEP would put a dummy reset transition into the batch"
        )
    return Collector(env, policy_fn, int(num_steps), capture, reset_carry, compile_step)
