"""The pieces of the nested-HRL loop (`hrl_nested.algos.nested_hrl`) that are not the loop itself:
turning a rollout into the inner/outer problem, the critics' and the manager's ordinary updates, the
deterministic evaluation and the checkpoint's (de)serialization.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, NamedTuple

import torch

import envs
from hrl_nested.batch import Batch
from hrl_nested.evaluation import run_eval_episodes
from hrl_nested.hierarchy import Hierarchy
from hrl_nested.nested_objective import PolicyBatch, ShapingBatch
from hrl_nested.optim import AdamState, SGDState
from hrl_nested.ppo_objective import ppo_objective
from hrl_nested.returns import gae
from hrl_nested.segments import SMDPTransitions, segment_ends, smdp_gae, smdp_transitions
from hrl_nested.shaping import (
    extrinsic_weight,
    fixed_shaping,
    free_shaping,
    goal_shaping,
    potential,
    scalar_shaping,
)
from hrl_nested.video import EpisodeClip


class Prepared(NamedTuple):
    """One rollout, ready for the learners (all tensors on the env's device)."""

    sb: ShapingBatch
    pb: PolicyBatch
    seg_end: torch.Tensor  # (T, N) the third signal
    reached: torch.Tensor  # (T, N) subgoal reached
    smdp: SMDPTransitions | None
    open_return: torch.Tensor | None  # (N,) running return of the segments still open
    critic_x: torch.Tensor  # (B, F) critic inputs
    ret_ext: torch.Tensor  # (B,) V_ext targets
    manager_rows: dict[str, torch.Tensor] | None


def reward_fn_for(kind: str, gamma: float):
    """``reward_fn(φ, features) -> (T, N)`` for the shaping kind: ``"goal"`` (learned, `goal_shaping`),
    ``"scalar"`` (one learned weight on the fixed shaping, `scalar_shaping`), ``"fixed"`` (HIRO's
    negative distance, `fixed_shaping`) or ``"free"`` (LIRPG, `free_shaping`)."""
    if kind == "goal":
        return lambda phi, f: goal_shaping(
            phi, f["ag"], f["ag_next"], f["goal"], f["reached"], f["terminal"], gamma, f["scale"]
        )
    if kind == "scalar":
        return lambda phi, f: scalar_shaping(phi, f["ag_next"], f["goal"])
    if kind == "fixed":
        return lambda phi, f: fixed_shaping(f["ag_next"], f["goal"])
    if kind == "free":
        return lambda phi, f: free_shaping(phi, f["x"])
    raise ValueError(f"shaping kind: expected 'goal', 'scalar', 'fixed' or 'free', got {kind!r}")


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, *x.shape[2:])


def _action_features(h: Hierarchy, actions: torch.Tensor) -> torch.Tensor:
    if h.continuous:
        return actions.float()
    return torch.nn.functional.one_hot(actions.long(), h.act_dim).float()


@torch.no_grad()
def prepare(h: Hierarchy, batch: Batch, carry_in: dict[str, Any], stats, cfg, kind: str) -> Prepared:
    """Segments, shaped-reward inputs, extrinsic advantages and the manager's SMDP transitions of one
    rollout. ``stats`` are the observation statistics the rollout used; ``carry_in`` the carry it
    started from (for the running return of a segment open across the boundary)."""
    c, term, trunc = batch.carry, batch.terminated, batch.truncated
    x = h.sub_input(batch.obs, c["goal"], stats)
    x_next = h.sub_input(batch.next_obs, c["goal"], stats)
    vw, vx = h.critic_values(x, c["k"])
    vw_n, vx_n = h.critic_values(x_next, c["k"])
    ag, ag_n = h.achieved_goal(batch.obs), h.achieved_goal(batch.next_obs)
    smdp = open_return = manager_rows = None
    if h.manager is not None:
        ends = segment_ends(c["step"], c["goal"], ag_n, term, trunc, horizon=h.horizon, tolerance=h.tolerance)
        reached, seg_end = ends.reached, ends.any
        smdp, open_return = smdp_transitions(
            batch.rewards, c["step"], seg_end, term, cfg.manager_gamma, carry_in["seg_return"]
        )
        manager_rows = _manager_rows(h, batch, smdp, term | trunc, stats, cfg)
    else:
        reached, seg_end = torch.zeros_like(term), term | trunc
    # Subpolicy: reaching its subgoal is terminal; a horizon end or a truncation bootstraps with
    # V(s', g_old); the segment end cuts the trace, so no advantage crosses a goal change.
    sub_term = term | reached
    sub_trunc = (seg_end | trunc) & ~sub_term
    if kind == "free":
        feats = {"x": torch.cat([x, _action_features(h, batch.actions), x_next], -1)}
    else:
        feats = {"ag": ag, "ag_next": ag_n, "goal": c["goal"], "reached": reached, "terminal": sub_term}
        feats["scale"] = h.goal.half
    sb = ShapingBatch(batch.rewards, vw, vw_n, sub_term, sub_trunc, feats)
    # The extrinsic critic is goal-conditioned too: it bootstraps at every segment end, stops at terminations.
    adv_ext, ret_ext = gae(
        batch.rewards, vx, vx_n, term, (seg_end | trunc) & ~term, cfg.gamma, cfg.gae_lambda
    )
    rows = (_flat(x), c["k"].reshape(-1))
    pb = PolicyBatch(rows, _flat(batch.actions), batch.logprobs.reshape(-1), adv_ext.reshape(-1))
    crit_x = h.critic_input(*rows)
    return Prepared(sb, pb, seg_end, reached, smdp, open_return, crit_x, ret_ext.reshape(-1), manager_rows)


def _manager_rows(
    h: Hierarchy, batch: Batch, smdp: SMDPTransitions, ep_end, stats, cfg
) -> dict[str, torch.Tensor]:
    """The manager's PPO rows: one per segment that ended in this batch (where ``smdp.mask``, in
    ``(t, n)`` order), with its input as the manager saw it at the segment's start (``m_input``)."""
    c = batch.carry
    mgr = {k: v.detach() for k, v in h.manager.named_parameters()}
    _, v_next = h.manager_dist(mgr, h.manager_input(batch.next_obs, stats))
    adv, ret = smdp_gae(smdp, ep_end, c["m_value"], v_next, cfg.manager_lambda)
    ended = smdp.mask.reshape(-1).nonzero().squeeze(-1)  # the iteration's one host sync for the manager
    return {
        "obs": _flat(c["m_input"])[ended],
        "actions": _flat(c["m_action"])[ended],
        "logprobs": c["m_logp"].reshape(-1)[ended],
        "values": c["m_value"].reshape(-1)[ended],
        "advantages": adv.reshape(-1)[ended],
        "returns": ret.reshape(-1)[ended],
    }


def shaped_returns(phi, prep: Prepared, reward_fn, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """``(V_w targets (B,), R_φ (T, N))`` with the current φ, detached."""
    with torch.no_grad():
        r_in = reward_fn(phi, prep.sb.features)
        r_w = extrinsic_weight(phi) * prep.sb.r_ext + r_in
        _, ret = gae(
            r_w,
            prep.sb.values,
            prep.sb.next_values,
            prep.sb.terminated,
            prep.sb.truncated,
            cfg.gamma,
            cfg.gae_lambda,
        )
    return ret.reshape(-1), r_in


def update_critics(
    h: Hierarchy,
    opt: torch.optim.Optimizer,
    prep: Prepared,
    ret_w: torch.Tensor,
    cfg,
    *,
    shards: Any = None,
) -> torch.Tensor:
    """Ordinary regression steps of ``V_w`` and ``V_ext`` on detached targets; the mean loss.

    ``shards`` (under ``torchrun``, a `hrl_nested.algos.nested_distributed.Shards`): the minibatches are
    those of the union batch, drawn from its generator, and the step uses the union minibatch's
    gradient (``all_reduce`` of the rows' summed loss gradients over the union size), as flat PPO does.
    """
    b = ret_w.shape[0]
    if shards is not None:
        return shards.update_critics(h, opt, prep, ret_w, cfg)
    mb = max(1, b // cfg.num_minibatches)
    total = torch.zeros((), device=ret_w.device)
    for _ in range(cfg.critic_epochs):
        perm = torch.randperm(b, device=ret_w.device)
        for s in range(0, b, mb):
            idx = perm[s : s + mb]
            x = prep.critic_x[idx]
            loss = 0.5 * (
                (h.critics["w"](x).squeeze(-1) - ret_w[idx]).square().mean()
                + (h.critics["ext"](x).squeeze(-1) - prep.ret_ext[idx]).square().mean()
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(h.critics.parameters(), cfg.max_grad_norm)
            opt.step()
            total += loss.detach()
    return total / (cfg.critic_epochs * ((b + mb - 1) // mb))


def critic_loss_sum(h: Hierarchy, prep: Prepared, ret_w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``½ Σ_idx [(V_w - R_w)² + (V_ext - R_ext)²]`` over rows ``idx``: the critics' minibatch loss times its
    size (a rank's part of the union minibatch's loss under ``torchrun``)."""
    x = prep.critic_x[idx]
    return 0.5 * (
        (h.critics["w"](x).squeeze(-1) - ret_w[idx]).square().sum()
        + (h.critics["ext"](x).squeeze(-1) - prep.ret_ext[idx]).square().sum()
    )


def update_manager(
    h: Hierarchy,
    opt: torch.optim.Optimizer,
    rows: list[dict[str, torch.Tensor]],
    cfg,
    *,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """PPO (`ppo_objective`) on the manager's SMDP transitions, the segments that ended since its last
    update; no optimizer step at all without one (Adam's momentum would move the manager on zero
    gradients). A minibatch of one transition is not advantage-normalized (its std is undefined).

    ``generator`` (a CPU generator; None: torch's global one) draws the permutations: under ``torchrun``
    every rank holds the union's rows and the same generator, so every rank takes the same steps."""
    data = {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
    b = data["advantages"].shape[0]
    if b == 0:
        return {"manager_transitions": 0}
    params = dict(h.manager.named_parameters())
    stats = []
    for _ in range(cfg.manager_epochs):
        if generator is None:
            perm = torch.randperm(b, device=data["advantages"].device)
        else:
            perm = torch.randperm(b, generator=generator).to(data["advantages"].device)
        for idx in perm.tensor_split(min(cfg.manager_minibatches, b)):
            loss, st = ppo_objective(
                h.manager_dist,
                params,
                {k: v[idx] for k, v in data.items()},
                clip_coef=cfg.clip_coef,
                vf_coef=0.5,
                ent_coef=cfg.manager_ent_coef,
                norm_adv=idx.shape[0] > 1,
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(h.manager.parameters(), cfg.max_grad_norm)
            opt.step()
            stats.append(torch.stack(tuple(st)[:4]))
    names = ("manager_policy_loss", "manager_value_loss", "manager_entropy", "manager_approx_kl")
    return dict(zip(names, torch.stack(stats).mean(0))) | {"manager_transitions": b}


def potential_range(phi, prep: Prepared) -> torch.Tensor | None:
    """``Φ_φ`` over the batch's achieved goals and subgoals (for the log), or None without a potential."""
    if "phi.0.weight" not in phi:
        return None
    f = prep.sb.features
    with torch.no_grad():
        return potential(phi, f["ag"], f["goal"], f["scale"])


@torch.inference_mode()
def evaluate(
    h: Hierarchy, theta, env, *, seed: int, max_steps: int = 10_000, video: EpisodeClip | None = None
) -> dict[str, float]:
    """One episode per eval env, deterministic manager and subpolicies; ``eval_return_mean``,
    ``eval_length_mean`` and, on goal envs, ``eval_success_rate`` (`run_eval_episodes`, as flat PPO).
    With ``video`` (``--capture-video``) the manager's current subgoals are drawn into its frames."""
    params = h.rollout_params(theta, h.stats())
    step_fn = h.policy_fn(deterministic=True)

    def act(obs: Any, carry: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        out = step_fn(params, obs, carry)
        action = out.action
        if video is not None and h.manager is not None:
            video.set_goals(env, out.carry["goal"])
        if h.continuous:
            action = torch.maximum(torch.minimum(action, h.act_high), h.act_low)
        return action, out.carry

    return run_eval_episodes(
        env,
        act,
        seed=seed,
        max_steps=max_steps,
        init_carry=h.initial_carry,
        reset_carry=h.reset_carry,
        video=video,
    )


def opt_state_to_dict(state: Any) -> dict[str, Any]:
    """A functional optimizer's state as plain dicts (a checkpoint loads with ``weights_only=True``)."""
    if isinstance(state, AdamState):
        return {"kind": "adam", "count": state.count, "mu": state.mu, "nu": state.nu}
    if isinstance(state, SGDState):
        return {"kind": "sgd", "count": state.count, "momentum": state.momentum}
    raise TypeError(f"optimizer state: expected AdamState or SGDState, got {type(state).__name__}")


def opt_state_from_dict(d: dict[str, Any], device: torch.device) -> Any:
    mv = lambda x: {k: v.to(device) for k, v in x.items()}  # noqa: E731
    if d["kind"] == "adam":
        return AdamState(d["count"].to(device), mv(d["mu"]), mv(d["nu"]))
    return SGDState(d["count"].to(device), mv(d["momentum"]))


# ---------------------------------------------------------------------------- logging
class _Timer:
    """Wall time per phase (synchronized on CUDA: one sync per phase per iteration, never per step)."""

    def __init__(self, device: torch.device):
        self.device, self.t, self.out = device, time.perf_counter(), {}

    def mark(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.out[f"time_{name}_s"] = self.out.get(f"time_{name}_s", 0.0) + now - self.t
        self.t = now

    def splits(self) -> dict[str, float]:
        return {k: round(v, 5) for k, v in self.out.items()}


def _batch_stats(h: Hierarchy, env, batch, prep, r_in, result, world=None) -> dict[str, torch.Tensor]:
    """Device scalars: episode returns, success, rewards, segments, subpolicy usage.

    ``success_rate``: the episodes that ended in the batch and succeeded, by `step_success`'s rule for an
    env whose info does not reach the batch: ``compute_terminated`` on the true final observation
    (``next_obs`` at an episode end). An env without that rule (a wrapped goal env, whose success
    lives in ``info["is_success"]``) logs none: termination is not success in general.

    Each value is a ratio of two sums over the batch (`_batch_sums`); under ``torchrun`` (``world`` with
    more than one rank) both sums are all-reduced first (one collective), so every value is the union's.
    """
    sums = _batch_sums(h, env, batch, prep, r_in, result)
    names = list(sums)
    num = torch.stack([sums[k][0].float().reshape(()) for k in names])
    den = torch.stack([torch.as_tensor(sums[k][1], device=num.device).float().reshape(()) for k in names])
    if world is not None and world.size > 1:
        from hrl_nested.distributed import all_reduce_sum  # the one-process loop never needs it

        both = all_reduce_sum(torch.cat([num, den]), world)
        num, den = both[: len(names)], both[len(names) :]
    return {k: num[i] / den[i].clamp_min(1) if k not in _SUMS else num[i] for i, k in enumerate(names)}


_SUMS = ("episodes", "episode_return_sum")


def _batch_sums(h: Hierarchy, env, batch, prep, r_in, result) -> dict[str, tuple[torch.Tensor, Any]]:
    """``{name: (numerator, denominator)}`` of `_batch_stats` over this process's batch."""
    rows = batch.rewards.numel()
    out = {
        "episodes": (result.episode_count, 1),
        "episode_return_sum": (result.episode_return_sum, 1),
        "r_ext_mean": (batch.rewards.float().sum(), rows),
        "r_in_mean": (r_in.float().sum(), rows),
    }
    final = batch.next_obs
    if h.is_dict and "achieved_goal" in final and hasattr(env, "compute_terminated"):
        done = batch.terminated | batch.truncated
        ok = torch.as_tensor(env.compute_terminated(final["achieved_goal"], final["desired_goal"])).bool()
        out["success_rate"] = ((ok & done).sum(), done.sum())
    if prep.smdp is not None:
        ended = prep.smdp.mask.sum()
        out["subgoal_reached_rate"] = ((prep.reached & prep.seg_end).sum(), ended)
        out["segment_length_mean"] = (prep.smdp.length.sum(), ended)
        for j in range(h.K if h.K > 1 else 0):
            out[f"subpolicy_usage_{j}"] = ((batch.carry["k"] == j).sum(), rows)
    return out


def _to_host(row: dict[str, Any]) -> dict[str, Any]:
    """All device scalars of a row in one host copy."""
    keys = [k for k, v in row.items() if isinstance(v, torch.Tensor)]
    values = torch.stack([row[k].detach().float().reshape(()) for k in keys]).tolist() if keys else []
    out = {k: v for k, v in row.items() if not isinstance(v, torch.Tensor)}
    out.update(zip(keys, values))
    if "episode_return_sum" in out:
        count, total = out.pop("episodes"), out.pop("episode_return_sum")
        out["episodes"] = int(count)
        if count > 0:
            out["episode_return_mean"] = total / count
    return out


# ---------------------------------------------------------------------------- checkpoints
_REQUIRED = (
    "iteration",
    "env_steps",
    "theta",
    "inner_state",
    "phi",
    "outer_state",
    "critics",
    "critic_opt",
    "manager",
    "manager_opt",
    "obs_norm",
    "env",
    "obs",
    "carry",
    "rollout",
    "outer_skipped",
    "mgr_rows",
    "rng",
)


class LearnerState(NamedTuple):
    """What the inner and outer loops update: the subpolicies θ and their inner optimizer's state, the
    shaping φ and its outer optimizer's state."""

    theta: dict[str, torch.Tensor]
    inner_state: Any
    phi: dict[str, torch.Tensor]
    outer_state: Any


class LoopState(NamedTuple):
    """Where the loop stands after an iteration: counters, the env's observation and the rollout carry
    to continue from, the last evaluation, and the manager's rows not yet trained on."""

    iteration: int
    env_steps: int
    obs: Any
    carry: dict[str, Any]
    last_eval: dict[str, float]
    outer_skipped: int
    mgr_rows: list[dict[str, torch.Tensor]]
    pending: PendingOuter | None = None


class PendingOuter(NamedTuple):
    """An inner update whose outer loss is still to come (``outer_batch="next"``, online cross-validation
    as in Xu et al. 2018): the batch it trained on, its minibatch indices, and the θ and inner optimizer
    state it started from. When the next rollout (collected by the updated θ') arrives, its hypergradient
    is computed by *recomputing* these inner steps (no graph is kept across iterations)."""

    sb: ShapingBatch
    pb: PolicyBatch
    minibatches: list[torch.Tensor]
    theta_start: dict[str, torch.Tensor]
    inner_state: Any
    inner_steps: int


def pending_to_dict(p: PendingOuter | None) -> dict[str, Any] | None:
    """A `PendingOuter` as plain dicts, lists and tuples (the checkpoint loads with ``weights_only=True``)."""
    if p is None:
        return None
    return {
        "sb": p.sb._asdict(),
        "pb": p.pb._asdict(),
        "minibatches": list(p.minibatches),
        "theta_start": p.theta_start,
        "inner_state": opt_state_to_dict(p.inner_state),
        "inner_steps": p.inner_steps,
    }


def pending_from_dict(d: dict[str, Any] | None, device) -> PendingOuter | None:
    """The inverse of `pending_to_dict`, on ``device`` (None stays None: a checkpoint of a ``same`` run)."""
    if d is None:
        return None
    return PendingOuter(
        ShapingBatch(**_to(d["sb"], device)),
        PolicyBatch(**_to(d["pb"], device)),
        _to(d["minibatches"], device),
        _to(d["theta_start"], device),
        opt_state_from_dict(d["inner_state"], device),
        int(d["inner_steps"]),
    )


def _checkpoint(
    loop: LoopState, learner: LearnerState, h: Hierarchy, critic_opt, mgr_opt, env, collect
) -> dict[str, Any]:
    has_state = envs.supports_state(env)
    return {
        "iteration": loop.iteration,
        "env_steps": loop.env_steps,
        "theta": learner.theta,
        "inner_state": opt_state_to_dict(learner.inner_state),
        "phi": learner.phi,
        "outer_state": opt_state_to_dict(learner.outer_state),
        "critics": h.critics.state_dict(),
        "critic_opt": critic_opt.state_dict(),
        "manager": None if h.manager is None else h.manager.state_dict(),
        "manager_opt": None if mgr_opt is None else mgr_opt.state_dict(),
        "obs_norm": None if h.obs_normalizer is None else h.obs_normalizer.state_dict(),
        "env": dataclasses.asdict(env.get_state()) if has_state else None,
        "obs": loop.obs if has_state else None,
        "carry": loop.carry if has_state else None,
        "rollout": collect.state_dict(),
        "last_eval": loop.last_eval,
        "outer_skipped": loop.outer_skipped,
        "mgr_rows": loop.mgr_rows,
        "outer_pending": pending_to_dict(loop.pending),
    }


def _restore(st, h: Hierarchy, critic_opt, mgr_opt, device) -> LearnerState:
    if (h.obs_normalizer is None) != (st["obs_norm"] is None):
        raise ValueError(
            f"saved with norm_obs={st['obs_norm'] is not None}, "
            f"this run has norm_obs={h.obs_normalizer is not None}"
        )
    theta = {k: v.to(device) for k, v in st["theta"].items()}
    if set(theta) != set(h.theta0) or any(theta[k].shape != h.theta0[k].shape for k in theta):
        raise ValueError("the subpolicies' parameters have other names or shapes")
    phi = {k: v.to(device) for k, v in st["phi"].items()}
    h.critics.load_state_dict(st["critics"])
    critic_opt.load_state_dict(st["critic_opt"])
    if h.manager is not None:
        h.manager.load_state_dict(st["manager"])
        mgr_opt.load_state_dict(st["manager_opt"])
    if h.obs_normalizer is not None:
        h.obs_normalizer.load_state_dict(st["obs_norm"])
    inner = opt_state_from_dict(st["inner_state"], device)
    outer = opt_state_from_dict(st["outer_state"], device)
    return LearnerState(theta, inner, phi, outer)


def _to(x: Any, device) -> Any:
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return (list if isinstance(x, list) else tuple)(_to(v, device) for v in x)
    return x.to(device) if isinstance(x, torch.Tensor) else x
