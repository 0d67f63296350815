"""`check_vector_env`: find the mistakes that silently break learning code in a torch vector env.

Gymnasium's ``check_env`` covers single numpy envs; this checks the batched torch interface that
`hrl_nested` relies on (a `TorchVectorEnv`, a `GymnasiumVectorAdapter`, or a user's own
``gymnasium.vector.VectorEnv``): it resets, steps with random actions, and reports every problem it
finds in a message that names it:

- tensors of the wrong shape, dtype or device, and observations outside the declared space;
- batched spaces that are not ``batch_space(single_space, num_envs)``;
- a missing or invalid ``metadata["autoreset_mode"]``, and autoreset behaviour that contradicts it
  (SAME_STEP without full ``info["final_obs"]`` / ``info["_final_obs"]``; NEXT_STEP without a reset
  step of reward 0 after an episode ends);
- terminated / truncated confusion: the time limit reported as ``terminated``, episodes that run past
  ``max_episode_steps``, or two flags that are equal at every episode end;
- non-reproducible seeding: two resets with the same seed and the same actions that differ;
- for goal envs, a ``compute_reward`` that disagrees with the step reward.

The env is stepped and reset (with ``seed``) by the check; reset it again before using it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space


class EnvCheckError(ValueError):
    """Raised by `check_vector_env` with one line per problem found."""


class _Report:
    """Problems, each kind kept once (the first occurrence) so that a per-step bug reads as one line."""

    def __init__(self) -> None:
        self.problems: dict[str, str] = {}

    def add(self, kind: str, message: str) -> None:
        self.problems.setdefault(kind, message)


def check_vector_env(
    env: Any, *, num_steps: int | None = None, seed: int = 0, warn_only: bool = False
) -> list[str]:
    """Run ``env`` with random actions and report what breaks the torch vector-env contract.

    Args:
        env: a `TorchVectorEnv`, a `GymnasiumVectorAdapter` or any ``gymnasium.vector.VectorEnv``
            returning torch tensors.
        num_steps: steps of random actions; default ``max_episode_steps + 2`` (so that time limits
            are seen), at least 64 and at most 1002.
        seed: seed of the resets and of the random actions.
        warn_only: issue one ``UserWarning`` instead of raising.

    Returns:
        The problems found (empty when the env passes).

    Raises:
        EnvCheckError: (a ``ValueError``) listing every problem, unless ``warn_only``.

    >>> import envs
    >>> envs.check_vector_env(envs.make("hrl_nested/FourRooms-v0", num_envs=8))
    []
    """
    report = _Report()
    if not isinstance(env, VectorEnv):
        report.add("type", f"env is a {type(env).__name__}, expected a gymnasium.vector.VectorEnv subclass")
    n = getattr(env, "num_envs", None)
    if not isinstance(n, int) or n < 1:
        report.add("num_envs", f"num_envs is {n!r}, expected a positive int")
    device = getattr(env, "device", None)
    if not isinstance(device, torch.device):
        report.add("device", f"env.device is {device!r}, expected a torch.device")
    for name in ("single_observation_space", "single_action_space", "observation_space", "action_space"):
        if not isinstance(getattr(env, name, None), gym.Space):
            report.add(name, f"env.{name} is {getattr(env, name, None)!r}, expected a gymnasium Space")
    if not report.problems:
        _check_spaces(env, report)
        mode = _check_autoreset_mode(env, report)
        limit = getattr(env, "max_episode_steps", None)
        if limit is None and getattr(env, "spec", None) is not None:
            limit = env.spec.max_episode_steps
        if num_steps is None:
            num_steps = min(max((limit or 0) + 2, 64), 1002)
        actions = _random_actions(env, num_steps, seed)
        try:
            _check_rollout(env, actions, mode, limit, seed, report)
        except Exception as e:  # report, rather than crash on, what a broken env raises
            report.add("rollout", f"reset/step raised {type(e).__name__}: {e}")
        # Replaying reads every tensor on the host: pointless (and may fail) when their form is wrong.
        if not any(k.endswith(("-type", "-device", "-keys", "-tuple")) for k in report.problems):
            try:
                _check_seeding(env, actions[: min(num_steps, 32)], seed, report)
            except Exception as e:
                report.add("seeding-error", f"the seeding check raised {type(e).__name__}: {e}")
    problems = list(report.problems.values())
    if problems:
        message = f"check_vector_env({env!r}) found {len(problems)} problem(s):\n" + "\n".join(
            f"  - {p}" for p in problems
        )
        if warn_only:
            warnings.warn(message, UserWarning, stacklevel=2)
        else:
            raise EnvCheckError(message)
    return problems


# -------------------------------------------------------------------- static checks
def _check_spaces(env: Any, report: _Report) -> None:
    for what in ("observation", "action"):
        single, batched = getattr(env, f"single_{what}_space"), getattr(env, f"{what}_space")
        expected = batch_space(single, env.num_envs)
        if batched != expected:
            report.add(
                f"{what}_space",
                f"env.{what}_space is {batched}, expected "
                f"batch_space(single_{what}_space, num_envs) = {expected}",
            )


def _check_autoreset_mode(env: Any, report: _Report) -> AutoresetMode | None:
    metadata = getattr(env, "metadata", None)
    mode = metadata.get("autoreset_mode") if isinstance(metadata, Mapping) else None
    if mode is None:
        report.add(
            "autoreset_mode",
            "metadata['autoreset_mode'] is missing: declare AutoresetMode.NEXT_STEP or SAME_STEP "
            "(learning code cannot tell which observation ends an episode otherwise)",
        )
        return None
    if not isinstance(mode, AutoresetMode) or mode == AutoresetMode.DISABLED:
        report.add(
            "autoreset_mode",
            f"metadata['autoreset_mode'] is {mode!r}, "
            f"expected AutoresetMode.NEXT_STEP or AutoresetMode.SAME_STEP",
        )
        return None
    return mode


def _random_actions(env: Any, num_steps: int, seed: int) -> list[Any]:
    space = env.action_space
    space.seed(seed)
    return [_to_tensor(space.sample(), env.device) for _ in range(num_steps)]


def _to_tensor(x: Any, device: torch.device) -> Any:
    if isinstance(x, Mapping):
        return {k: _to_tensor(v, device) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_to_tensor(v, device) for v in x)
    return torch.as_tensor(np.asarray(x), device=device)


def _torch_dtype(np_dtype: Any) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=np_dtype)).dtype


def _check_value(
    x: Any, space: gym.Space, env: Any, name: str, report: _Report, batched: bool = True
) -> bool:
    """Structure, shape, dtype, device and bounds of a (batched) value of ``space``; True if all fine."""
    if isinstance(space, gym.spaces.Dict):
        if not isinstance(x, Mapping) or set(x) != set(space.spaces):
            got = sorted(x) if isinstance(x, Mapping) else type(x).__name__
            report.add(f"{name}-keys", f"{name} is {got}, expected a dict with keys {sorted(space.spaces)}")
            return False
        return all([_check_value(x[k], s, env, f"{name}[{k!r}]", report) for k, s in space.spaces.items()])
    if isinstance(space, gym.spaces.Tuple):
        if not isinstance(x, Sequence) or len(x) != len(space.spaces):
            report.add(
                f"{name}-tuple", f"{name} is {type(x).__name__}, expected a tuple of {len(space.spaces)}"
            )
            return False
        return all(
            [
                _check_value(xi, s, env, f"{name}[{i}]", report)
                for i, (xi, s) in enumerate(zip(x, space.spaces))
            ]
        )
    if not isinstance(x, torch.Tensor):
        report.add(f"{name}-type", f"{name} is a {type(x).__name__}, expected a torch.Tensor on {env.device}")
        return False
    ok = True
    shape = (env.num_envs, *space.shape) if batched else tuple(space.shape)
    if tuple(x.shape) != shape:
        report.add(
            f"{name}-shape", f"{name} has shape {tuple(x.shape)}, expected {shape} (num_envs x {space})"
        )
        ok = False
    want = _torch_dtype(space.dtype)
    if x.dtype != want:
        report.add(f"{name}-dtype", f"{name} has dtype {x.dtype}, expected {want} (the dtype of {space})")
        ok = False
    if x.device != env.device:
        report.add(f"{name}-device", f"{name} is on {x.device}, expected env.device = {env.device}")
        return False
    if ok:
        _check_bounds(x.detach().cpu().numpy(), space, name, report)
    return ok


def _check_bounds(a: np.ndarray, space: gym.Space, name: str, report: _Report) -> None:
    if isinstance(space, gym.spaces.Box):
        inside = (a >= space.low) & (a <= space.high)  # False on NaN too
        what = f"[{space.low.min()}, {space.high.max()}]"
    elif isinstance(space, gym.spaces.Discrete):
        inside = (a >= space.start) & (a < space.start + space.n)
        what = f"[{space.start}, {space.start + space.n})"
    elif isinstance(space, gym.spaces.MultiDiscrete):
        inside = (a >= space.start) & (a < space.start + space.nvec)
        what = f"[start, start + nvec) = [{space.start.min()}, {(space.start + space.nvec).max()})"
    elif isinstance(space, gym.spaces.MultiBinary):
        inside = (a == 0) | (a == 1)
        what = "{0, 1}"
    else:
        return
    if not inside.all():
        idx = tuple(int(i) for i in np.argwhere(~inside)[0])
        report.add(
            f"{name}-bounds",
            f"{name} is outside the declared space {space}: value {a[idx]!r} at index {idx} (env {idx[0]}) "
            f"is not in {what}",
        )


def _check_flag(x: Any, env: Any, name: str, report: _Report, floating: bool) -> bool:
    if not isinstance(x, torch.Tensor):
        report.add(f"{name}-type", f"{name} is a {type(x).__name__}, expected a torch.Tensor on {env.device}")
        return False
    problems = []
    if tuple(x.shape) != (env.num_envs,):
        problems.append(f"shape {tuple(x.shape)}, expected ({env.num_envs},)")
    if floating and not x.is_floating_point():
        problems.append(f"dtype {x.dtype}, expected a floating-point dtype")
    if not floating and x.dtype != torch.bool:
        problems.append(f"dtype {x.dtype}, expected torch.bool")
    if x.device != env.device:
        problems.append(f"device {x.device}, expected env.device = {env.device}")
    for p in problems:
        report.add(f"{name}-{p.split()[0]}", f"{name} has {p}")
    if not problems and floating and not bool(torch.isfinite(x).all()):
        report.add(f"{name}-finite", f"{name} has NaN or inf values")
    return not problems


# -------------------------------------------------------------------- dynamic checks
def _check_rollout(
    env: Any, actions: list[Any], mode: AutoresetMode | None, limit: int | None, seed: int, report: _Report
) -> None:
    out = env.reset(seed=seed)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
        report.add("reset-return", f"reset returned {type(out).__name__}, expected a tuple (obs, info: dict)")
        return
    obs_space = env.single_observation_space
    obs_ok = _check_value(out[0], obs_space, env, "reset observation", report)
    n = env.num_envs
    length = np.zeros(n, dtype=np.int64)
    pending = np.zeros(n, dtype=bool)  # NEXT_STEP: the next step of these envs is a reset step
    ends: list[tuple[int, bool, bool]] = []
    goal_env = isinstance(obs_space, gym.spaces.Dict) and {"achieved_goal", "desired_goal"} <= set(
        obs_space.spaces
    )
    for t, action in enumerate(actions):
        out = env.step(action)
        if not (isinstance(out, tuple) and len(out) == 5):
            report.add(
                "step-return", "step returned something else than (obs, reward, terminated, truncated, info)"
            )
            return
        obs, reward, terminated, truncated, info = out
        step_ok = _check_value(obs, obs_space, env, "step observation", report) and obs_ok
        step_ok &= _check_flag(reward, env, "reward", report, floating=True)
        step_ok &= _check_flag(terminated, env, "terminated", report, floating=False)
        step_ok &= _check_flag(truncated, env, "truncated", report, floating=False)
        if not isinstance(info, dict):
            report.add("info", f"info is a {type(info).__name__}, expected a dict")
            return
        if not step_ok:
            return  # later checks read these values
        r, te, tr = (v.detach().cpu().numpy() for v in (reward, terminated, truncated))
        done = te | tr
        final = obs
        if mode == AutoresetMode.SAME_STEP:
            final = _check_same_step_info(env, info, done, report)
        elif mode == AutoresetMode.NEXT_STEP:
            bad = pending & ((r != 0) | done)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                report.add(
                    "next-step",
                    f"metadata says NEXT_STEP, but at step {t} env {i}, whose episode ended on the step "
                    f"before, returned reward {r[i]}, terminated {te[i]}, truncated {tr[i]}; a NEXT_STEP "
                    f"reset step has reward 0 and both flags False (did you mean SAME_STEP?)",
                )
        counted = ~pending
        length += counted
        if limit is not None:
            over = counted & (length > limit) & ~done
            if over.any():
                i = int(np.flatnonzero(over)[0])
                report.add(
                    "past-limit",
                    f"env {i} ran {length[i]} steps, past max_episode_steps={limit}, without truncated=True",
                )
        for i in np.flatnonzero(counted & done):
            ends.append((int(length[i]), bool(te[i]), bool(tr[i])))
        if goal_env and hasattr(env, "compute_reward") and final is not None:
            _check_compute_reward(env, final, info, r, counted, t, report)
        if mode == AutoresetMode.NEXT_STEP:
            length[pending] = 0
            pending = counted & done
        else:
            length[done] = 0
    _check_ends(ends, limit, report)
    if goal_env:
        goal = env.achieved_goal(obs)
        _check_value(goal, env.goal_space, env, "env.achieved_goal(obs)", report)


def _check_same_step_info(env: Any, info: dict[str, Any], done: np.ndarray, report: _Report) -> Any:
    if "final_obs" not in info or "_final_obs" not in info:
        report.add(
            "same-step",
            "metadata says SAME_STEP, but info lacks 'final_obs' / '_final_obs' (full (num_envs, ...) "
            "tensors: the true last observation of envs that ended, and the mask of those envs)",
        )
        return None
    mask = info["_final_obs"]
    if not _check_flag(mask, env, "info['_final_obs']", report, floating=False):
        return None
    mask = mask.detach().cpu().numpy()
    if (mask != done).any():
        i = int(np.flatnonzero(mask != done)[0])
        report.add(
            "same-step-mask",
            f"info['_final_obs'][{i}] is {mask[i]} but terminated | truncated is {done[i]}: the mask must "
            f"mark exactly the envs whose episode ended on this step",
        )
    ok = _check_value(info["final_obs"], env.single_observation_space, env, "info['final_obs']", report)
    return info["final_obs"] if ok else None


def _check_compute_reward(
    env: Any, obs: Any, info: dict[str, Any], r: np.ndarray, valid: np.ndarray, t: int, report: _Report
) -> None:
    try:
        pred = env.compute_reward(obs["achieved_goal"], obs["desired_goal"], info)
    except Exception as e:
        report.add(
            "compute_reward",
            f"compute_reward(achieved_goal, desired_goal, info) raised {type(e).__name__}: {e}",
        )
        return
    pred = np.asarray(pred.detach().cpu() if isinstance(pred, torch.Tensor) else pred, dtype=np.float64)
    if pred.shape != r.shape:
        report.add("compute_reward", f"compute_reward returned shape {pred.shape}, expected {r.shape}")
        return
    bad = valid & ~np.isclose(pred, r, rtol=1e-5, atol=1e-6)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        report.add(
            "compute_reward",
            f"compute_reward(achieved_goal, desired_goal, info) = {pred[i]} disagrees with the step "
            f"reward {r[i]} at step {t}, env {i} (hindsight relabelling relies on them being equal)",
        )


def _check_ends(ends: list[tuple[int, bool, bool]], limit: int | None, report: _Report) -> None:
    if limit is not None:
        at_limit = [(te, tr) for n, te, tr in ends if n == limit]
        if any(not tr for _, tr in at_limit):
            report.add(
                "limit-terminated",
                f"{sum(not tr for _, tr in at_limit)} episode(s) ended at the time limit "
                f"(max_episode_steps={limit}) with truncated=False: a time limit is truncation, not "
                f"termination (terminated=True makes learning code drop the value bootstrap)",
            )
    if len(ends) >= 2 and all(te == tr for _, te, tr in ends):
        report.add(
            "flags-equal",
            f"terminated and truncated were equal at all {len(ends)} episode ends: they look like one "
            f"signal; terminated marks a terminal state of the task, truncated an outside cut such as a "
            f"time limit",
        )


def _check_seeding(env: Any, actions: list[Any], seed: int, report: _Report) -> None:
    first, second = _replay(env, actions, seed), _replay(env, actions, seed)
    for t, (a, b) in enumerate(zip(first, second)):
        if not _equal(a, b):
            when = "the reset observations" if t == 0 else f"the results of step {t}"
            report.add(
                "seeding",
                f"two resets with seed={seed} followed by the same actions differ in {when}: seeding is not "
                f"reproducible (draw randomness from the seed, e.g. the Draw passed to TorchVectorEnv hooks)",
            )
            return


def _replay(env: Any, actions: list[Any], seed: int) -> list[Any]:
    obs, _ = env.reset(seed=seed)
    out = [_host(obs)]
    for a in actions:
        obs, r, te, tr, _ = env.step(a)
        out.append(_host((obs, r, te, tr)))
    return out


def _host(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _host(v) for k, v in x.items()}
    if isinstance(x, tuple | list):
        return tuple(_host(v) for v in x)
    return x.detach().cpu().clone() if isinstance(x, torch.Tensor) else np.array(x, copy=True)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and set(a) == set(b) and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    return bool(np.array_equal(a, b, equal_nan=True))
