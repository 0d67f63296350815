"""Deterministic evaluation episodes, one per env of a SAME_STEP `TorchVectorEnv`, for every algorithm.

`run_eval_episodes` runs the loop (return, length, success of each env's first episode) around an
``act_fn``; `step_success` is the one success rule: ``info["is_success"]`` / ``info["success"]``
(Gymnasium-Robotics' keys, read from ``info["final_info"]`` where an episode just ended), else
``compute_terminated`` on the true final observation of a goal env.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from hrl_nested.video import EpisodeClip

__all__ = ["run_eval_episodes", "step_success"]

# Gymnasium-Robotics: the Fetch and Shadow-hand tasks report "is_success", the mazes "success".
SUCCESS_KEYS = ("is_success", "success")

ActFn = Callable[[Any, Any], tuple[torch.Tensor, Any]]


def run_eval_episodes(
    env: Any,
    act_fn: ActFn,
    *,
    seed: int,
    max_steps: int = 10_000,
    stop_if_below: tuple[float, float] | None = None,
    init_carry: Callable[[Any], Any] | None = None,
    reset_carry: Callable[[Any, torch.Tensor], Any] | None = None,
    video: EpisodeClip | None = None,
) -> dict[str, float]:
    """One episode per env: reset with ``seed``, act until every env's first episode ended.

    Args:
        env: a SAME_STEP env, one env per episode to evaluate.
        act_fn: ``act_fn(obs, carry) -> (env_action, carry)``, deterministic (e.g. the distribution's
            mode); ``carry`` is None without ``init_carry``.
        seed: reset seed (a fresh one per evaluation, so successive evaluations see new starts).
        max_steps: cap for envs without a time limit.
        stop_if_below: ``(target, max_return)``: stop as soon as the mean return can no longer reach
            ``target``, i.e. when ``sum(finished returns) + (unfinished episodes) * max_return <
            n * target``; the returned mean is then the partial one and ``eval_stopped_early`` is 1.0.
        init_carry: ``init_carry(first obs) -> carry`` for a policy with a carry (a hierarchy's goals).
        reset_carry: ``reset_carry(carry, ended) -> carry`` after each step.
        video: records env 0's episode (`hrl_nested.video.EpisodeClip`; the env needs
            ``render_mode="rgb_array"``) and writes it when the evaluation ends (``--capture-video``).

    Returns:
        ``eval_return_mean``, ``eval_length_mean`` and, where `step_success` has a rule,
        ``eval_success_rate`` (success on an episode's last step), as floats: one host copy.
    """
    obs, _ = env.reset(seed=seed)
    if video is not None:
        video.begin(env)
    n, device = env.num_envs, env.device
    carry = None if init_carry is None else init_carry(obs)
    ret = torch.zeros(n, device=device)
    length = torch.zeros(n, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    success, stopped_early = None, False
    # On a CPU the "all done?" check is free; on a GPU it is a sync, so only look now and then.
    check_every = 1 if device.type == "cpu" else 32
    for step in range(env.max_episode_steps or max_steps):
        action, carry = act_fn(obs, carry)
        obs, reward, terminated, truncated, info = env.step(action)
        ended = terminated | truncated
        if video is not None:
            video.after_step(env, ended, info)
        if reset_carry is not None:
            carry = reset_carry(carry, ended)
        ret += torch.where(done, 0.0, reward.to(ret.dtype))
        length += ~done
        now = step_success(env, info)
        if now is not None:
            success = torch.zeros(n, dtype=torch.bool, device=device) if success is None else success
            success |= ended & now & ~done
        done |= ended
        if (step + 1) % check_every == 0:
            if bool(done.all()):
                break
            if stop_if_below is not None:
                best = torch.where(done, ret, stop_if_below[1]).sum()  # unfinished ones at the bound
                if bool(best < n * stop_if_below[0]):
                    stopped_early = True
                    break
    if video is not None:
        video.finish(env)
    out = {"eval_return_mean": ret.mean(), "eval_length_mean": length.mean()}
    if stopped_early:
        out["eval_stopped_early"] = torch.ones((), device=device)
    if success is not None:
        out["eval_success_rate"] = success.float().mean()
    return {k: float(v) for k, v in zip(out, torch.stack(list(out.values())).tolist())}


def step_success(env: Any, info: dict[str, Any]) -> torch.Tensor | None:
    """Per-env success of this step, or None when the env reports none.

    Read from ``info["is_success"]`` or ``info["success"]`` (Gymnasium-Robotics envs, wrapped); for an env
    that ended this step in SAME_STEP mode, from ``info["final_info"]`` (``info`` then holds the new
    episode's reset info). Goal envs that report neither: ``compute_terminated`` on the true final
    observation.
    """
    final_info = info.get("final_info")
    final_info = final_info if isinstance(final_info, dict) else {}
    for key in SUCCESS_KEYS:
        if key not in info and key not in final_info:
            continue
        out = torch.zeros(env.num_envs, dtype=torch.bool, device=env.device)
        if key in info:
            out = _masked_flag(info, key, env)
        if key in final_info and "_final_obs" in info:
            ended = torch.as_tensor(info["_final_obs"], device=env.device).bool()
            out = torch.where(ended, _masked_flag(final_info, key, env), out)
        return out
    final = info.get("final_obs")
    if isinstance(final, dict) and "achieved_goal" in final and hasattr(env, "compute_terminated"):
        return torch.as_tensor(env.compute_terminated(final["achieved_goal"], final["desired_goal"])).bool()
    return None


def _masked_flag(info: dict[str, Any], key: str, env: Any) -> torch.Tensor:
    """``info[key]`` as a ``(num_envs,)`` bool tensor, False where Gymnasium's ``info["_" + key]`` mask is."""
    value = torch.as_tensor(info[key], device=env.device).bool().reshape(-1).expand(env.num_envs)
    mask = info.get("_" + key)
    return value if mask is None else value & torch.as_tensor(mask, device=env.device).bool()
