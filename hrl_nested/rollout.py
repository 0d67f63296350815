"""Fused rollouts: T steps of (policy step, env step) for N envs, into one typed `Batch`.

The loop has no host synchronization and no data-dependent Python branch: episode ends are handled
with ``torch.where`` masks, the true final observation of an episode comes from SAME_STEP autoreset's
``info["final_obs"]``, and episode statistics are kept in on-device accumulators. That makes the
whole T-step loop capturable as one CUDA graph, replayed every iteration.

A captured graph remembers tensor addresses. So the collector owns *static* input buffers (the
parameters, the observation and the policy carry); every call copies its arguments into them with
``copy_`` before the replay and never replaces them, so a replay cannot run stale weights. The env's
own tensors are its static state (its steps and ``set_state`` write in place); warm-up steps are
undone with ``env.get_state()`` / ``env.set_state()`` before the capture.

A policy step is ``policy_fn(params, obs, carry) -> PolicyOutput``; the *carry* is any per-env pytree
the policy threads through time (a manager's goal, chosen subpolicy, steps left in its segment...).
It is recorded in ``batch.carry``, returned, and fed to the next call, so a rollout can be resumed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from torch import nn

from hrl_nested.batch import Batch, tree_map
from hrl_nested.distributions import DiagGaussian
from hrl_nested.networks import actor_critic_apply

Obs = torch.Tensor | dict[str, torch.Tensor]
CAPTURE_MODES = ("auto", "none", "static", "cuda_graph")


class PolicyOutput(NamedTuple):
    """One policy step for N envs.

    Attributes:
        action: ``(N, ...)`` the action as stored in the batch (for a ``"clip"`` Gaussian, unclipped).
        logprob: ``(N,)`` ``log pi(action | obs, carry)``.
        value: ``(N,)`` ``V(obs)``.
        carry: the per-env carry the action was chosen with and that the next step receives: a
            pytree of ``(N, ...)`` tensors, or None.
    """

    action: torch.Tensor
    logprob: torch.Tensor
    value: torch.Tensor
    carry: Any


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


def actor_critic_policy(module: nn.Module) -> PolicyFn:
    """A stochastic policy step for an `hrl_nested.networks.ActorCritic`, driven by a parameter dict.

    The carry passes through unchanged.

    >>> import gymnasium as gym
    >>> from hrl_nested.networks import ActorCritic, params_of
    >>> ac = ActorCritic(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2))
    >>> out = actor_critic_policy(ac)(params_of(ac), torch.zeros(3, 4), None)
    >>> out.action.shape, out.logprob.shape, out.value.shape
    (torch.Size([3]), torch.Size([3]), torch.Size([3]))
    """

    def policy_fn(params: dict[str, torch.Tensor], obs: Obs, carry: Any) -> PolicyOutput:
        dist_params, value = actor_critic_apply(module, params, obs)
        dist = module.distribution(dist_params)
        if isinstance(dist, DiagGaussian):
            action, logprob = dist.sample_and_log_prob()
        else:
            action = dist.sample()
            logprob = dist.log_prob(action)
        return PolicyOutput(action, logprob, value, carry)

    return policy_fn


def _where(mask: torch.Tensor, a: Any, b: Any) -> Any:
    """Row-wise ``torch.where`` over matching pytrees (``mask``: ``(N,)``)."""
    if isinstance(a, Mapping):
        return {k: _where(mask, a[k], b[k]) for k in a}
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


def _leaves(x: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    tree_map(lambda t: out.append(t) or t, x)
    return out


def _copy_tree(dst: Any, src: Any, name: str) -> None:
    """``dst.copy_(src)`` leaf by leaf, with a clear error when structure, shape or dtype changed."""
    d, s = _leaves(dst), _leaves(src)
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
        compile_step: bool,
    ):
        self.env, self.policy_fn, self.num_steps, self.reset_carry = env, policy_fn, num_steps, reset_carry
        dev = torch.device(env.device)
        self.mode = capture if capture != "auto" else ("cuda_graph" if dev.type == "cuda" else "none")
        if self.mode == "cuda_graph":
            if dev.type != "cuda":
                raise ValueError(f"capture='cuda_graph': expected an env on a CUDA device, got {dev}")
            if getattr(env, "validate", False):
                raise ValueError(
                    "capture on CUDA: env.validate=True checks action values with a host sync, which cannot "
                    "be captured in a CUDA graph; make the env with validate=False"
                )
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
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_out: Any = None
        self._step_fn = torch.compile(self._step, dynamic=False) if compile_step else self._step

    # ------------------------------------------------------------------ public
    def __call__(self, params: Mapping[str, torch.Tensor], obs: Obs, carry: Any = None) -> RolloutResult:
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
                out = self._run(s_params, s_obs, s_carry)
            else:
                if self._graph is None:
                    self._capture()
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
    def _capture(self) -> None:
        """Warm up on a side stream, undo the warm-up's effects, then capture the T-step loop once."""
        s_params, s_obs, s_carry = self._static
        env_state, acc = self.env.get_state(), self.state_dict()
        rng_cpu, rng_cuda = torch.get_rng_state(), torch.cuda.get_rng_state()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._run(s_params, s_obs, s_carry)
        torch.cuda.current_stream().wait_stream(stream)
        # The warm-up leaves no trace: env, episode accumulators and the policy's RNG stream rewind.
        self.env.set_state(env_state)
        self.load_state_dict(acc)
        torch.set_rng_state(rng_cpu)
        torch.cuda.set_rng_state(rng_cuda)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # records only: env and accumulators are not advanced
            self._graph_out = self._run(s_params, s_obs, s_carry)
        self._graph = graph

    def _step(self, params, obs, carry, ep_ret, ep_len):
        """One (policy, env) step with the episode bookkeeping; all masks, no branches on data."""
        out = self.policy_fn(params, obs, carry)
        action = out.action
        if self._bounds is not None:  # the env gets the clipped action, the batch keeps the policy's
            action = torch.maximum(torch.minimum(action, self._bounds[1]), self._bounds[0])
        next_obs, r_t, term_t, trunc_t, info = self.env.step(action)
        # SAME_STEP's mask is exactly terminated | truncated; reusing it (rather than OR-ing two bool
        # inputs) also sidesteps an inductor C++ codegen bug on vectorized bool | bool (torch 2.13, CPU).
        done = info["_final_obs"]
        final_obs = _where(done, info["final_obs"], next_obs)
        ep_ret = ep_ret + r_t
        ep_len = ep_len + 1
        ended = (
            torch.where(done, ep_ret, 0).sum(),
            torch.where(done, ep_len, 0).sum(),
            done.sum(),
        )
        ep_ret = torch.where(done, torch.zeros_like(ep_ret), ep_ret)
        ep_len = torch.where(done, torch.zeros_like(ep_len), ep_len)
        carry_next = out.carry if self.reset_carry is None else self.reset_carry(out.carry, done)
        record = (obs, out.action, out.logprob, out.value, r_t, final_obs, term_t, trunc_t, out.carry)
        return record, next_obs, carry_next, ep_ret, ep_len, ended

    def _run(self, params, obs, carry) -> RolloutResult:
        T = self.num_steps
        ep_ret, ep_len = self._ep_ret, self._ep_len
        record, obs, carry, ep_ret, ep_len, sums = self._step_fn(params, obs, carry, ep_ret, ep_len)
        leaves = _leaves(record)
        bufs = [torch.empty((T, *x.shape), dtype=x.dtype, device=x.device) for x in leaves]
        for t in range(T):
            if t > 0:
                record, obs, carry, ep_ret, ep_len, ended = self._step_fn(params, obs, carry, ep_ret, ep_len)
                leaves = _leaves(record)
                sums = tuple(a + b for a, b in zip(sums, ended))
            for buf, x in zip(bufs, leaves):
                buf[t].copy_(x)
        self._ep_ret.copy_(ep_ret)
        self._ep_len.copy_(ep_len)
        it = iter(bufs)
        obs_t, a_t, logp_t, v_t, r_t, next_obs_t, term_t, trunc_t, carry_t = tree_map(
            lambda _: next(it), record
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
    compile_step: bool = False,
) -> Collector:
    """Build ``collect(params, obs, carry) -> RolloutResult`` running ``num_steps`` fused steps.

    Box actions are clipped to the action space's bounds before ``env.step`` (the batch keeps the
    policy's own action, as SB3 does), so a ``"clip"`` Gaussian policy needs nothing more.

    Args:
        env: a `envs.TorchVectorEnv` with SAME_STEP autoreset
            (``envs.make(..., autoreset_mode="same_step")``); for CUDA-graph capture also ``validate=False``.
        policy_fn: ``policy_fn(params, obs, carry) -> PolicyOutput``, e.g. `actor_critic_policy`.
        num_steps: T.
        capture: ``"auto"`` (``"cuda_graph"`` on CUDA, ``"none"`` on CPU); ``"none"`` (eager);
            ``"cuda_graph"`` (captured once, replayed; inputs copied into static buffers);
            ``"static"`` (the static-buffer path without a graph: the capture logic, testable on CPU).
        reset_carry: optional ``reset_carry(carry, done) -> carry`` applied after each env step with the
            ``(N,)`` episode-end mask (e.g. end a manager's segment when its episode ends).
        compile_step: run each (policy, env, bookkeeping) step through ``torch.compile`` (fuses the
            elementwise work; under ``"cuda_graph"`` the compiled step is what gets captured). Pays on
            long runs only: a cold compile takes seconds to tens of seconds. Best with an env made
            with ``compile=True`` (branch-free, no graph break).

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
    return Collector(env, policy_fn, int(num_steps), capture, reset_carry, bool(compile_step))
