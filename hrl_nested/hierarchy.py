"""The networks of nested HRL and the rollout's policy step: a manager that sets goals, stacked
goal-conditioned subpolicies, their two critics, and the per-env carry that holds the open segment.

- **Subpolicies** ``π_k(a | o, g)``, ``k < K``, one stacked parameter dict θ (`stack_modules`), one
  member per env (`vmap_apply` + `select_member`). They see the observation (never the env's
  ``desired_goal``, else the hierarchy collapses into flat goal-conditioned PPO) and the subgoal,
  absolute or relative to the achieved goal, scaled by the goal space's half-range.
- **Critics** ``V_w(o, g)`` (for the shaped reward) and ``V_ext(o, g)`` (extrinsic), ordinary modules.
- **Manager** (HIRO-style, Nachum et al. 2018): from the full observation (desired goal included) a
  Gaussian over ``u ∈ [-1, 1]^d`` mapped to a goal in the goal bounds (absolute: ``c + h u``;
  relative: ``clip(ag + h u)``), and, when ``K > 1``, a categorical subpolicy index.

The carry (a dict of ``(N, ...)`` tensors) is what a segment needs across steps and rollouts:
``goal``, ``k``, ``step`` (the step's index in its segment), ``need_new`` (an episode just ended),
``seg_return`` (the open segment's running ``Σ γ^i r_ext``: the policy step passes it through, the
learner keeps it), the manager's ``m_action``, ``m_logp``, ``m_value`` and ``m_input``, the manager's
input at the segment's start, normalized with the statistics in use then (so that its PPO ratio is 1 at
zero policy change even when the statistics moved while the segment was open). Observation statistics
are inputs of the policy step (``obs_norm.*`` entries next to the parameters), never learnable
parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from hrl_nested.deprecation import renamed_attribute
from hrl_nested.distributions import Categorical, DiagGaussian
from hrl_nested.networks import MLP, encode_leaf, flat_dim, select_member, stack_modules, vmap_apply
from hrl_nested.obs_norm import ObsNormalizer
from hrl_nested.pytree import where_rows
from hrl_nested.rollout import PolicyOutput
from hrl_nested.segments import subgoal_reached

Params = dict[str, torch.Tensor]

__all__ = ["GoalBounds", "Hierarchy", "JointGoalDist", "goal_bounds"]


class GoalBounds(NamedTuple):
    """Where the manager's goals live: ``low``, ``high`` (``(d,)`` tensors), and ``source``, a sentence
    saying where they came from (the task's goal space, or ``goal_scale`` for unbounded dims)."""

    low: torch.Tensor
    high: torch.Tensor
    source: str

    @property
    def center(self) -> torch.Tensor:
        return (self.low + self.high) / 2

    @property
    def half(self) -> torch.Tensor:
        return (self.high - self.low) / 2


def goal_bounds(space: gym.Space, goal_scale: float, device: torch.device) -> GoalBounds:
    """Bounds of a Box goal space; an unbounded dim gets ``[-goal_scale, goal_scale]`` (and says so).

    >>> goal_bounds(gym.spaces.Box(-np.inf, np.inf, (1,)), 2.0, torch.device("cpu")).high.tolist()
    [2.0]
    """
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise ValueError(
            "goal space: expected a 1-D Box (a goal env's achieved_goal or a flat Box observation), "
            f"got {space}"
        )
    low, high = space.low.astype(np.float64).copy(), space.high.astype(np.float64).copy()
    unbounded = [i for i in range(low.shape[0]) if not (np.isfinite(low[i]) and np.isfinite(high[i]))]
    low[unbounded], high[unbounded] = -goal_scale, goal_scale
    source = "the task's goal space"
    if unbounded:
        source += (
            f"; dims {unbounded} are unbounded there and use [-goal_scale, goal_scale] = ±{goal_scale:g}"
        )
    t = lambda x: torch.as_tensor(x, dtype=torch.float32, device=device)  # noqa: E731
    return GoalBounds(t(low), t(high), source)


class JointGoalDist:
    """The manager's action distribution: ``u ~ N(mean, std)`` (``d`` dims, stored unclipped, as flat
    PPO's "clip" Gaussian) and, with ``logits``, ``k ~ Categorical``; the action is ``[u, k]``.

    ``log_prob`` and ``entropy`` are sums over the independent parts.
    """

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor, logits: torch.Tensor | None):
        self.gauss = DiagGaussian(mean, log_std)
        self.cat = None if logits is None else Categorical(logits)
        self.d = mean.shape[-1]

    def sample(self) -> torch.Tensor:
        u = self.gauss.sample()
        k = torch.zeros_like(u[..., :1]) if self.cat is None else self.cat.sample().to(u.dtype)[..., None]
        return torch.cat([u, k], -1)

    def mode(self) -> torch.Tensor:
        u = self.gauss.mode()
        k = torch.zeros_like(u[..., :1]) if self.cat is None else self.cat.mode().to(u.dtype)[..., None]
        return torch.cat([u, k], -1)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        logp = self.gauss.log_prob(action[..., : self.d])
        return logp if self.cat is None else logp + self.cat.log_prob(action[..., self.d].long())

    def entropy(self) -> torch.Tensor:
        ent = self.gauss.entropy()
        return ent if self.cat is None else ent + self.cat.entropy()


class _Manager(nn.Module):
    def __init__(self, in_dim: int, goal_dim: int, num_subpolicies: int, hidden):
        super().__init__()
        extra = num_subpolicies if num_subpolicies > 1 else 0
        self.actor = MLP(in_dim, goal_dim + extra, hidden, out_gain=0.01)
        self.critic = MLP(in_dim, 1, hidden, out_gain=1.0)
        self.log_std = nn.Parameter(torch.zeros(goal_dim))


class Hierarchy:
    """The networks of one run, on ``device``, and their functional forms (see the module docstring).

    Args:
        obs_space: single-env observation space.
        action_space: single-env action space (Discrete or 1-D Box).
        goal: `GoalBounds` of the manager's goals, or None without a manager (LIRPG: the flat policy
            is conditioned on the env's ``desired_goal`` instead, when there is one).
        num_subpolicies: ``K``.
        hidden: hidden sizes of every MLP.
        relative_goals: goals relative to the achieved goal (subpolicy input ``g - ag``, manager output
            ``ag + h u``).
        horizon, tolerance: segment length limit and subgoal tolerance (see `hrl_nested.segments`).
        norm_obs: normalize Box observation leaves by running statistics (``obs_normalizer``, an
            `ObsNormalizer`, or None).
    """

    rms = renamed_attribute("rms", "obs_normalizer")

    def __init__(
        self,
        obs_space: gym.Space,
        action_space: gym.Space,
        goal: GoalBounds | None,
        *,
        num_subpolicies: int,
        hidden,
        relative_goals: bool,
        horizon: int,
        tolerance: float,
        norm_obs: bool,
        device: torch.device,
    ):
        self.is_dict = isinstance(obs_space, gym.spaces.Dict)
        self.obs_space, self.action_space, self.goal, self.device = obs_space, action_space, goal, device
        self.K, self.relative, self.horizon, self.tolerance = (
            num_subpolicies,
            relative_goals,
            horizon,
            tolerance,
        )
        self.obs_normalizer = ObsNormalizer(obs_space, device=device) if norm_obs else None
        own = obs_space["observation"] if self.is_dict else obs_space
        self._own_space = own
        has_dg = self.is_dict and "desired_goal" in obs_space.spaces
        if goal is not None:
            self.goal_dim = int(goal.low.shape[0])
        else:  # LIRPG: the env's desired goal, if any, is the flat policy's "goal"
            self.goal_dim = flat_dim(obs_space["desired_goal"]) if has_dg else 0
        own_dim = flat_dim(own)
        self.sub_in = own_dim + self.goal_dim
        self.mgr_in = own_dim + (flat_dim(obs_space["desired_goal"]) if has_dg else 0)
        if isinstance(action_space, gym.spaces.Discrete):
            self.act_dim, self.continuous = int(action_space.n), False
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            self.act_dim, self.continuous = int(action_space.shape[0]), True
            self.act_low = torch.as_tensor(action_space.low, dtype=torch.float32, device=device)
            self.act_high = torch.as_tensor(action_space.high, dtype=torch.float32, device=device)
        else:
            raise ValueError(f"action space: expected Discrete or a 1-D Box, got {action_space}")
        members = [MLP(self.sub_in, self.act_dim, hidden, out_gain=0.01) for _ in range(self.K)]
        stacked, self.sub_base = stack_modules(members)
        self.theta0: Params = {k: v.detach().to(device) for k, v in stacked.items()}
        if self.continuous:
            self.theta0["log_std"] = torch.zeros(self.K, self.act_dim, device=device)
        crit_in = self.sub_in + (self.K if self.K > 1 else 0)
        self.critics = nn.ModuleDict({"w": MLP(crit_in, 1, hidden), "ext": MLP(crit_in, 1, hidden)}).to(
            device
        )
        self.manager = (
            None if goal is None else _Manager(self.mgr_in, self.goal_dim, self.K, hidden).to(device)
        )

    # ------------------------------------------------------------------ features
    def stats(self) -> Params:
        return {} if self.obs_normalizer is None else self.obs_normalizer.stats()

    def _norm(self, obs: Any, stats: Mapping[str, torch.Tensor]) -> Any:
        return obs if self.obs_normalizer is None else self.obs_normalizer.normalize(obs, stats)

    @staticmethod
    def _encode(x: torch.Tensor, space: gym.Space) -> torch.Tensor:
        if isinstance(space, gym.spaces.Discrete):
            return encode_leaf(x, int(space.start), int(space.n), torch.float32)
        return encode_leaf(x, None, len(space.shape), torch.float32)

    def achieved_goal(self, obs: Any) -> torch.Tensor:
        """``ag(obs)``, float: ``obs["achieved_goal"]`` for goal envs, else the observation itself."""
        return (obs["achieved_goal"] if self.is_dict else obs).float()

    def goal_features(self, obs: Any, goal: torch.Tensor) -> torch.Tensor:
        """The subpolicies' goal input: ``(g - c) / h`` or, relative, ``(g - ag) / h``."""
        if self.goal is None:
            return goal
        if self.relative:
            return (goal - self.achieved_goal(obs)) / self.goal.half
        return (goal - self.goal.center) / self.goal.half

    def sub_input(self, obs: Any, goal: torch.Tensor, stats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[normalized own observation, goal features]``, ``(..., sub_in)``."""
        n = self._norm(obs, stats)
        own = self._encode(n["observation"] if self.is_dict else n, self._own_space)
        return torch.cat([own, self.goal_features(obs, goal)], -1)

    def manager_input(self, obs: Any, stats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        n = self._norm(obs, stats)
        own = self._encode(n["observation"] if self.is_dict else n, self._own_space)
        if self.is_dict and "desired_goal" in n:
            return torch.cat([own, self._encode(n["desired_goal"], self.obs_space["desired_goal"])], -1)
        return own

    def env_goal(self, obs: Any) -> torch.Tensor:
        """Without a manager: the env's desired goal (or an empty ``(N, 0)`` goal)."""
        if self.goal_dim == 0:
            ref = obs if not isinstance(obs, Mapping) else next(iter(obs.values()))
            return torch.zeros(*ref.shape[:1], 0, device=ref.device)
        return obs["desired_goal"].float()

    # ------------------------------------------------------------------ subpolicies
    def sub_dist(self, theta: Mapping[str, torch.Tensor], rows: tuple[torch.Tensor, torch.Tensor]):
        """``(π_k(· | x), None)`` for rows ``(x, k)``: ``x`` ``(B, sub_in)``, ``k`` ``(B,)`` member index."""
        x, k = rows
        net = {n: v for n, v in theta.items() if n != "log_std"}
        if self.K == 1:
            out = functional_call(self.sub_base, {n: v[0] for n, v in net.items()}, (x,))
        else:
            out = select_member(vmap_apply(self.sub_base, net, x), k)
        if not self.continuous:
            return Categorical(out), None
        log_std = theta["log_std"][0] if self.K == 1 else theta["log_std"][k]
        return DiagGaussian(out, log_std, squash="clip", low=self.act_low, high=self.act_high), None

    def critic_input(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        if self.K == 1:
            return x
        return torch.cat([x, nn.functional.one_hot(k.long(), self.K).to(x.dtype)], -1)

    def critic_values(self, x: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(V_w, V_ext)`` of rows ``(x, k)``."""
        c = self.critic_input(x, k)
        return self.critics["w"](c).squeeze(-1), self.critics["ext"](c).squeeze(-1)

    # ------------------------------------------------------------------ manager
    def manager_dist(self, params: Mapping[str, torch.Tensor], x: torch.Tensor):
        """``(JointGoalDist, V_m(x))`` from the manager's parameter dict."""
        out = functional_call(
            self.manager.actor, {k[6:]: v for k, v in params.items() if k.startswith("actor.")}, (x,)
        )
        v = functional_call(
            self.manager.critic, {k[7:]: v for k, v in params.items() if k.startswith("critic.")}, (x,)
        )
        d = self.goal_dim
        logits = out[..., d:] if self.K > 1 else None
        return JointGoalDist(out[..., :d], params["log_std"], logits), v.squeeze(-1)

    def goal_from_action(self, u: torch.Tensor, ag: torch.Tensor) -> torch.Tensor:
        """The subgoal for the manager's ``u`` (clipped to ``[-1, 1]``), inside the goal bounds."""
        u = u.clamp(-1.0, 1.0)
        if self.relative:
            return torch.maximum(torch.minimum(ag + self.goal.half * u, self.goal.high), self.goal.low)
        return self.goal.center + self.goal.half * u

    # ------------------------------------------------------------------ rollout
    def initial_carry(self, obs: Any) -> dict[str, Any]:
        """The carry before the first step: every env starts a segment (``need_new``)."""
        ag = self.achieved_goal(obs)
        n, dev = ag.shape[0], ag.device
        zeros = torch.zeros(n, device=dev)
        return {
            "goal": torch.zeros(n, self.goal_dim, device=dev)
            if self.goal is not None
            else self.env_goal(obs),
            "k": torch.zeros(n, dtype=torch.int64, device=dev),
            "step": torch.full((n,), -1, dtype=torch.int64, device=dev),
            "need_new": torch.ones(n, dtype=torch.bool, device=dev),
            "seg_return": zeros.clone(),
            "m_action": torch.zeros(n, self.goal_dim + 1, device=dev),
            "m_logp": zeros.clone(),
            "m_value": zeros.clone(),
            "m_input": torch.zeros(n, self.mgr_in, device=dev),
        }

    @staticmethod
    def reset_carry(carry: dict[str, Any], done: torch.Tensor) -> dict[str, Any]:
        """After an env step: an episode that ended starts a new segment at the next step."""
        return {**carry, "need_new": done}

    def split_params(self, params: Mapping[str, torch.Tensor]) -> tuple[Params, Params, Params]:
        """``(θ, manager params, obs statistics)`` from the rollout's one flat input dict."""
        theta = {k[6:]: v for k, v in params.items() if k.startswith("theta.")}
        mgr = {k[4:]: v for k, v in params.items() if k.startswith("mgr.")}
        stats = {k[9:]: v for k, v in params.items() if k.startswith("obs_norm.")}
        return theta, mgr, stats

    def rollout_params(self, theta: Params, stats: Params) -> Params:
        """The flat input dict of the rollout: θ, the manager's parameters and the obs statistics, each
        under its own prefix (the statistics are inputs, not parameters)."""
        out = {f"theta.{k}": v.detach() for k, v in theta.items()}
        if self.manager is not None:
            out.update({f"mgr.{k}": v.detach() for k, v in self.manager.named_parameters()})
        out.update({f"obs_norm.{k}": v for k, v in stats.items()})
        return out

    def policy_fn(self, deterministic: bool = False):
        """``policy_fn(params, obs, carry) -> PolicyOutput`` for `hrl_nested.rollout.make_rollout`.

        Starts a segment where the carry says so (episode end, horizon, subgoal reached at ``obs``),
        then lets subpolicy ``k`` act for goal ``g``. No host sync, no data-dependent branch.
        """

        def step(params: Mapping[str, torch.Tensor], obs: Any, carry: dict[str, Any]) -> PolicyOutput:
            theta, mgr, stats = self.split_params(params)
            if self.manager is not None:
                carry = self._manage(mgr, stats, obs, carry, deterministic)
            else:  # no manager (LIRPG): a segment is an episode, the goal is the env's own
                step_t = torch.where(carry["need_new"], 0, carry["step"] + 1)
                carry = {
                    **carry,
                    "goal": self.env_goal(obs),
                    "step": step_t,
                    "need_new": torch.zeros_like(carry["need_new"]),
                }
            x = self.sub_input(obs, carry["goal"], stats)
            dist, _ = self.sub_dist(theta, (x, carry["k"]))
            if deterministic:
                action = dist.mode()
                logp = dist.log_prob(action)
            elif self.continuous:
                action, logp = dist.sample_and_log_prob()
            else:
                action = dist.sample()
                logp = dist.log_prob(action)
            return PolicyOutput(action, logp, torch.zeros_like(logp), carry)

        return step

    def _manage(self, mgr, stats, obs, carry, deterministic: bool) -> dict[str, Any]:
        ag = self.achieved_goal(obs)
        steps_done = carry["step"] + 1
        reached = subgoal_reached(ag, carry["goal"], self.tolerance)
        new = carry["need_new"] | (steps_done >= self.horizon) | reached
        x = self.manager_input(obs, stats)
        dist, value = self.manager_dist(mgr, x)
        a = dist.mode() if deterministic else dist.sample()
        fresh = {
            "goal": self.goal_from_action(a[:, : self.goal_dim], ag),
            "k": a[:, self.goal_dim].long(),
            "m_action": a,
            "m_logp": dist.log_prob(a),
            "m_value": value,
            "m_input": x,
        }
        out = {**carry, "need_new": torch.zeros_like(new), "step": torch.where(new, 0, steps_done)}
        out.update({key: where_rows(new, val, carry[key]) for key, val in fresh.items()})
        return out


def num_params(params: Mapping[str, torch.Tensor]) -> int:
    return int(sum(math.prod(v.shape) for v in params.values()))
