"""Evaluation of K stacked agents at once, and the per-seed observation statistics they share with
training (`hrl_nested.algos.ppo_multiseed`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from envs.core import TorchVectorEnv
from hrl_nested.algos.ppo import PPOConfig
from hrl_nested.algos.ppo_multiseed_parts import StackedObsNormalizer
from hrl_nested.evaluation import step_success
from hrl_nested.networks import ActorCritic
from hrl_nested.obs_norm import ObsNormalizer, normalize
from hrl_nested.pytree import tree_map
from hrl_nested.stacked import stacked_actor_critic_apply

__all__ = ["apply_stacked_stats", "evaluate_seeds", "stacked_stats"]


def apply_stacked_stats(x: Any, stats: dict[str, torch.Tensor], *, lead: int) -> Any:
    """Normalize seed-major obs ``(K, *lead dims, ...)`` with stacked per-seed stats ``(K, ...)``: the
    elementwise formula of `hrl_nested.obs_norm.ObsNormalizer.apply`, so each seed's values are the
    same bits as a single run's."""
    leaves = dict(x) if isinstance(x, dict) else {"obs": x}
    for name in {k.rsplit(".", 1)[0] for k in stats}:
        t = leaves[name]
        mean, var = stats[f"{name}.mean"], stats[f"{name}.var"]
        t = t if t.is_floating_point() else t.to(mean.dtype)
        shape = (mean.shape[0],) + (1,) * lead + tuple(mean.shape[1:])
        leaves[name] = normalize(t, mean.to(t.dtype).reshape(shape), var.to(t.dtype).reshape(shape))
    return leaves if isinstance(x, dict) else leaves["obs"]


def stacked_stats(rmss: list[ObsNormalizer] | StackedObsNormalizer | None) -> dict[str, torch.Tensor]:
    """Each seed's `ObsNormalizer.stats`, stacked: ``{"<key>.mean": (K, ...), "<key>.var": (K, ...)}``."""
    if rmss is None:
        return {}
    if isinstance(rmss, StackedObsNormalizer):
        return rmss.stats()
    per_seed = [r.stats() for r in rmss]
    return {k: torch.stack([s[k] for s in per_seed]) for k in per_seed[0]}


@torch.inference_mode()
def evaluate_seeds(
    template: ActorCritic,
    params: dict[str, torch.Tensor],
    env: TorchVectorEnv,
    rmss: list[ObsNormalizer] | StackedObsNormalizer | None,
    seeds: Sequence[int],
    *,
    live: Sequence[bool],
    cfg: PPOConfig,
    max_steps: int = 10_000,
) -> list[dict[str, float]]:
    """`hrl_nested.algos.ppo.evaluate` for K seeds at once: seed k's ``E = num_envs / K`` eval envs are
    reset with ``seeds[k]`` and stream indices ``0 ... E-1`` (as a single run's eval env), act with its
    deterministic policy, and stop (all episodes over, or hopeless under ``stop_at_return`` /
    ``eval_max_return``) by the same rule; the loop ends when no live seed is still running.

    Returns:
        One dict per seed (``eval_return_mean``, ``eval_length_mean``, ``eval_stopped_early`` when cut
        short, ``eval_success_rate`` on goal envs); ``{}`` for a seed not ``live``.
    """
    K = len(seeds)
    E = env.num_envs // K
    device = env.device
    obs, _ = env.reset(seed=[s for s in seeds for _ in range(E)], options={"env_index": list(range(E)) * K})
    stats = stacked_stats(rmss)
    ret = torch.zeros(K * E, device=device)
    length = torch.zeros(K * E, device=device)
    done = torch.zeros(K * E, dtype=torch.bool, device=device)
    success = None
    running = list(live)
    running_t = torch.tensor(running, device=device)
    remaining = sum(running)
    stopped = [False] * K
    frozen: list[list[float] | None] = [None] * K
    hopeless = None
    if cfg.stop_at_return is not None and cfg.eval_max_return is not None:
        hopeless = (cfg.stop_at_return, cfg.eval_max_return)
    check_every = 1 if device.type == "cpu" else 32
    discrete = template.log_std is None

    def summary_rows() -> torch.Tensor:
        cols = [ret.view(K, E).mean(1), length.view(K, E).mean(1)]
        if success is not None:
            cols.append(success.view(K, E).float().mean(1))
        return torch.stack(cols, 1)

    for step in range((env.max_episode_steps or max_steps) if remaining else 0):
        x = (
            obs.reshape(K, E, *obs.shape[1:])
            if not isinstance(obs, dict)
            else tree_map(lambda t: t.reshape(K, E, *t.shape[1:]), obs)
        )
        if stats:
            x = apply_stacked_stats(x, stats, lead=1)
        out = stacked_actor_critic_apply(template, params, x, critic=False)[0]
        if discrete:
            action = out.argmax(-1)
        else:
            dist = template.distribution(out)
            action = dist.env_action(dist.mode())
        obs, reward, terminated, truncated, info = env.step(action.reshape(K * E, *action.shape[2:]))
        ended = terminated | truncated
        ret += torch.where(done, 0.0, reward.to(ret.dtype))
        length += ~done
        now = step_success(env, info)
        if now is not None:
            success = torch.zeros(K * E, dtype=torch.bool, device=device) if success is None else success
            success |= ended & now & ~done
        done |= ended
        if (step + 1) % check_every == 0:
            all_done = done.view(K, E).all(1)
            flags = [all_done]
            if hopeless is not None:
                best = torch.where(done, ret, hopeless[1]).view(K, E).sum(1)
                flags.append(best < E * hopeless[0])
            # one host read per check; a Python loop only over the seeds whose evaluation ends now
            ends = torch.stack(flags, 1).any(1) & running_t
            if bool(ends.any()):
                idx = ends.nonzero().squeeze(1)
                rows = summary_rows()[idx].tolist()
                complete = flags[0][idx].tolist()
                for k, row, all_over in zip(idx.tolist(), rows, complete):
                    running[k], stopped[k], frozen[k] = False, not all_over, row
                running_t[idx] = False
                remaining -= len(rows)
                if remaining == 0:
                    break
    final = summary_rows().tolist()
    results: list[dict[str, float]] = []
    for k in range(K):
        if not live[k]:
            results.append({})
            continue
        vals = frozen[k] if frozen[k] is not None else final[k]
        row = {"eval_return_mean": vals[0], "eval_length_mean": vals[1]}
        if stopped[k]:
            row["eval_stopped_early"] = 1.0
        if success is not None:
            row["eval_success_rate"] = vals[2]
        results.append(row)
    return results
