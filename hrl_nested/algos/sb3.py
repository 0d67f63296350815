"""Stable-Baselines3 baselines (``--algo sb3-ppo``, ``--algo sb3-sac``) that write our run directory.

SB3 trains on our envs through `envs.SB3VecEnv` (wrapped in SB3's ``VecMonitor``, and ``VecNormalize``
when asked), and an SB3 callback (`RunCallback`) writes what our own algorithms write through
`hrl_nested.tracking.Run`: ``metrics.jsonl`` rows with ``env_steps`` and ``wall_s`` (SB3's ``train/*``
statistics, the finished episodes' mean return and length, the evaluations), checkpoints, and
``summary.json`` with ``eval_return_mean`` (and ``eval_success_rate`` on goal tasks), from the same
deterministic evaluation our algorithms run (`hrl_nested.evaluation.run_eval_episodes`), so SB3
baselines sit in the same results tables.

Checkpoints: SB3's own ``model.save`` (``sb3_model.zip``; for SAC also ``sb3_replay_buffer.pkl``, for
``VecNormalize`` its ``sb3_vecnormalize.pkl``) next to the run's ``checkpoint.pt`` (counters, RNG states
and, for a `TorchVectorEnv`, the env state), so ``--resume`` continues the run: exactly for our envs
(the model's last observation is the restored env's), with fresh episodes from a derived seed for an
env whose state lives in a simulator.

The per-algorithm modules (`hrl_nested.algos.sb3_ppo`, `hrl_nested.algos.sb3_sac`) hold the configs and
build the SB3 model; this module runs it. They import it only when a run starts or a config is
validated, so that ``experiments/train.py`` does not pay for importing SB3 on every start.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

import envs
from envs.core import EnvState
from hrl_nested.algos import ConfigError, Task, check, finite_float, positive_int, resolve_device
from hrl_nested.algos.ppo import _make_env  # the one SAME_STEP env maker, with its --env error
from hrl_nested.evaluation import run_eval_episodes
from hrl_nested.tracking import CheckpointError, Run, checkpoint_fits, require_keys, set_rng_state
from hrl_nested.video import EpisodeClip, VideoCapture, eval_env_kwargs

MODEL_FILE = "sb3_model.zip"
REPLAY_BUFFER_FILE = "sb3_replay_buffer.pkl"
VECNORMALIZE_FILE = "sb3_vecnormalize.pkl"

# Build the SB3 model for a fresh run: (vec_env, device, seed) -> model.
BuildFn = Callable[[Any, torch.device, int], Any]


def check_common(cfg: Any, section: str) -> None:
    """The checks every SB3 config shares (evaluation and logging periods, net sizes, discount)."""
    sec = {"section": section}
    finite_float(cfg.learning_rate, "learning_rate", low=0.0, low_open=True, **sec)
    finite_float(cfg.gamma, "gamma", low=0.0, high=1.0, **sec)
    ok = len(cfg.net_arch) > 0 and all(isinstance(h, int) and h >= 1 for h in cfg.net_arch)
    check(ok, "net_arch", "one or more positive layer sizes", tuple(cfg.net_arch), **sec)
    positive_int(cfg.eval_every, "eval_every", minimum=0, **sec)
    positive_int(cfg.log_every, "log_every", minimum=0, **sec)


def make_vec_env(task: Task, cfg: Any, device: torch.device) -> tuple[Any, Any]:
    """``(env, venv)``: our SAME_STEP env and the SB3 stack on it, ``VecMonitor(SB3VecEnv(env))`` plus
    ``VecNormalize`` with ``cfg.norm_obs`` / ``cfg.norm_reward``. An env that cannot be made is a
    `ConfigError` on ``--env`` (before any file is written)."""
    from hrl_nested.algos.ppo import _make_env

    env = _make_env(task.env, task.num_envs, device)
    venv = VecMonitor(envs.SB3VecEnv(env))
    if cfg.norm_obs or cfg.norm_reward:
        venv = VecNormalize(venv, norm_obs=cfg.norm_obs, norm_reward=cfg.norm_reward, gamma=cfg.gamma)
    return env, venv


def policy_name(venv: Any) -> str:
    """SB3's policy for a vec env's observations: ``MultiInputPolicy`` for ``Dict``, else ``MlpPolicy``."""
    import gymnasium as gym

    return "MultiInputPolicy" if isinstance(venv.observation_space, gym.spaces.Dict) else "MlpPolicy"


def train_sb3(
    task: Task,
    cfg: Any,
    run: Run | None,
    *,
    algo: str,
    model_class: Any,
    build: BuildFn,
    check_env: Callable[[Any], None] = lambda env: None,
) -> dict[str, Any]:
    """Train an SB3 model on ``task`` and write the run directory through ``run``.

    Args:
        task: env, step budget, number of envs, seed, device, evaluation episodes.
        cfg: the algorithm's config (``norm_obs``, ``norm_reward``, ``gamma``, ``eval_every``,
            ``log_every``, ``save_replay_buffer`` are read here).
        run: where metrics, checkpoints and the summary go; None keeps them in memory. When
            ``run.resume_state`` is set, training continues from that checkpoint.
        algo: the name on the command line (``sb3-ppo``).
        model_class: the SB3 class (``PPO``), for ``load`` on resume.
        build: makes a fresh model on the vec env.
        check_env: raises `ConfigError` when the env does not suit the algorithm (SAC: Box actions).

    Returns:
        The summary: ``env_steps``, ``iterations``, ``eval_return_mean`` (and ``eval_success_rate`` on goal
        envs), ``eval_time_s``, and on a resumed run ``env_state_restored``.
    """
    task.validate()
    cfg.validate(task)
    if run is None:
        run = Run(None, config={}, algo=algo, env=task.env, seed=task.seed, total_steps=0, progress=False)
    device = resolve_device(task.device)
    torch.manual_seed(task.seed)
    env, venv = make_vec_env(task, cfg, device)
    check_env(env)
    eval_env = _make_env(task.env, task.eval_episodes, device, **eval_env_kwargs(task))
    videos = VideoCapture.for_run(task, run)  # None unless --capture-video

    files = Files(run.dir)
    resumed: dict[str, Any] = {}
    iteration, last_eval = 0, {}
    if run.resume_state is not None:
        model, iteration, last_eval, restored = _resume(run, files, model_class, venv, env, task, device)
        venv = model.get_env()
        resumed["env_state_restored"] = restored
    else:
        model = build(venv, device, task.seed)
    run.start()  # the run directory changes only now, with the checkpoint (if any) loaded

    def evaluate(at_iteration: int, env_steps: int) -> dict[str, float]:
        video = None if videos is None else videos.clip(env_steps)
        return evaluate_sb3(model, eval_env, seed=task.seed + 7919 * (at_iteration + 1), video=video)

    def save(state: dict[str, Any]) -> None:
        files.save_model(model, save_replay_buffer=getattr(cfg, "save_replay_buffer", False))
        has_state = envs.supports_state(env)
        state["env"] = dataclasses.asdict(env.get_state()) if has_state else None
        run.save_checkpoint(state)

    callback = RunCallback(
        run, evaluate, save, eval_every=cfg.eval_every, log_every=cfg.log_every, iteration=iteration
    )
    callback.last_eval = last_eval
    remaining = max(0, task.total_steps - model.num_timesteps)
    if remaining > 0:  # else a resumed run already at its budget: its last row and checkpoint stand
        model.learn(
            total_timesteps=remaining,
            callback=callback,
            reset_num_timesteps=run.resume_state is None,
            progress_bar=False,
        )
        callback.finish()
    venv.close()
    summary = {
        "iterations": callback.iteration,
        **callback.last_eval,
        **resumed,
        "eval_time_s": callback.eval_time,
    }
    return run.finish(summary)


@torch.inference_mode()
def evaluate_sb3(model: Any, env: Any, *, seed: int, video: EpisodeClip | None = None) -> dict[str, float]:
    """One deterministic episode per eval env (``model.predict(obs, deterministic=True)``), scored as our
    algorithms are (`hrl_nested.evaluation.run_eval_episodes`); observations are normalized with the
    training ``VecNormalize`` statistics when there are any. ``video`` records env 0's episode
    (``--capture-video``)."""
    from envs.sb3 import _to_numpy

    norm = model.get_vec_normalize_env()
    space = env.single_action_space

    def act(obs: Any, carry: None) -> tuple[torch.Tensor, None]:
        x = _to_numpy(obs)
        if norm is not None:
            x = norm.normalize_obs(x)
        actions, _ = model.predict(x, deterministic=True)
        actions = np.asarray(actions).astype(space.dtype, copy=False).reshape(env.num_envs, *space.shape)
        return torch.as_tensor(actions, device=env.device), None

    return run_eval_episodes(env, act, seed=seed, video=video)


class Files:
    """The SB3 files of a run directory, each replaced atomically (write a temporary file, rename)."""

    def __init__(self, run_dir: Path | None):
        self.dir = run_dir

    def path(self, name: str) -> Path:
        assert self.dir is not None
        return self.dir / name

    def save_model(self, model: Any, *, save_replay_buffer: bool) -> None:
        if self.dir is None:
            return
        self._replace(MODEL_FILE, model.save)
        if save_replay_buffer and getattr(model, "replay_buffer", None) is not None:
            self._replace(REPLAY_BUFFER_FILE, model.save_replay_buffer)
        norm = model.get_vec_normalize_env()
        if norm is not None:
            self._replace(VECNORMALIZE_FILE, norm.save)

    def _replace(self, name: str, save: Callable[[str], None]) -> None:
        final = self.path(name)
        # SB3 appends ".zip" to a model path without it, so the temporary name keeps the suffix.
        tmp = final.with_name(f".tmp-{final.name}")
        save(str(tmp))
        os.replace(tmp, final)


_REQUIRED = ("iteration", "env_steps", "env", "last_eval", "rng")


def _resume(
    run: Run, files: Files, model_class: Any, venv: Any, env: Any, task: Task, device: torch.device
) -> tuple[Any, int, dict[str, Any], bool]:
    """Load the SB3 files and ``checkpoint.pt`` of ``run``; returns ``(model, iteration, last_eval,
    env_state_restored)``.

    Raises:
        CheckpointError: a file is missing, or the model's step count disagrees with ``checkpoint.pt``
            (a crash between writing the two).
    """
    state, path = run.resume_state, run.checkpoint_path
    assert state is not None
    require_keys(state, _REQUIRED, path)
    restored = envs.supports_state(env) and state["env"] is not None
    model_path = files.path(MODEL_FILE)
    if not model_path.is_file():
        raise CheckpointError(f"--resume: no {model_path} (SB3's model.save), which {path} goes with")
    with checkpoint_fits(model_path, "; it was written by a run with another env, network or batch shape"):
        if isinstance(venv, VecNormalize):
            if not files.path(VECNORMALIZE_FILE).is_file():
                raise CheckpointError(f"--resume: no {files.path(VECNORMALIZE_FILE)} for VecNormalize")
            venv = VecNormalize.load(str(files.path(VECNORMALIZE_FILE)), venv.venv)
        # force_reset=False keeps the saved last observation: the restored env state continues from it.
        model = model_class.load(str(model_path), env=venv, device=str(device), force_reset=False)
        if files.path(REPLAY_BUFFER_FILE).is_file() and hasattr(model, "load_replay_buffer"):
            # HER: a restored env continues the episode the buffer's last trajectory is part of.
            model.load_replay_buffer(str(files.path(REPLAY_BUFFER_FILE)), truncate_last_traj=not restored)
    if model.num_timesteps != int(state["env_steps"]):
        raise CheckpointError(
            f"checkpoint {path}: {MODEL_FILE} is at {model.num_timesteps} env steps, checkpoint.pt at "
            f"{state['env_steps']} (the run stopped between writing them); start a new run"
        )
    iteration = int(state["iteration"])
    with checkpoint_fits(path, "; it was written by a run with another env or --num-envs"):
        if restored:  # the model's saved last observation is this env state's
            env.set_state(EnvState(**state["env"]))
        set_rng_state(state["rng"])
    if not restored:
        reset_seed = task.seed + 1_000_003 * iteration
        model.get_env().seed(reset_seed)
        model._last_obs = None  # SB3 resets the env at the start of learn
        print(
            f"resume: {task.env} keeps its state in a simulator, which a checkpoint cannot hold; the SB3 "
            f"model is restored and the envs start fresh episodes (reset seed {reset_seed})",
            flush=True,
        )
    return model, iteration, dict(state["last_eval"] or {}), restored


class RunCallback(BaseCallback):
    """An SB3 callback that logs to a `Run`: one ``metrics.jsonl`` row per rollout (PPO) or per
    ``log_every`` env steps, evaluations every ``eval_every`` env steps, checkpoints when due.

    A row is written at the start of a rollout, after the update that followed the previous one, so
    its ``train/*`` values (SB3's logger) belong to the data its ``env_steps`` counts. Episode returns
    and lengths are the means over the episodes that ended since the previous row (``VecMonitor``).
    `finish` writes the last row, always with an evaluation, and the last checkpoint.

    Args:
        run: the run to log to.
        evaluate: ``evaluate(iteration, env_steps) -> eval metrics``.
        save: ``save(state)`` writes SB3's files and ``checkpoint.pt`` (``state`` has ``iteration``,
            ``env_steps``, ``last_eval``).
        eval_every: env steps between evaluations (0: only at the end).
        log_every: env steps between rows (0: every rollout).
        iteration: rollouts collected before (a resumed run).
    """

    def __init__(
        self,
        run: Run,
        evaluate: Callable[[int, int], dict[str, float]],
        save: Callable[[dict[str, Any]], None],
        *,
        eval_every: int,
        log_every: int,
        iteration: int = 0,
    ):
        super().__init__(verbose=0)
        self.run, self.evaluate, self.save = run, evaluate, save
        self.eval_every, self.log_every = eval_every, log_every
        self.iteration = iteration
        self.last_eval: dict[str, float] = {}
        self.eval_time = 0.0
        self._returns: list[float] = []
        self._lengths: list[float] = []
        self._row_steps: int | None = None
        self._row_time = time.perf_counter()
        self._next_eval: int | None = None

    def _on_training_start(self) -> None:
        self._row_steps = self.num_timesteps
        self._row_time = time.perf_counter()
        if self.eval_every > 0:
            self._next_eval = (self.num_timesteps // self.eval_every + 1) * self.eval_every

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            episode = info.get("episode")
            if episode is not None:
                self._returns.append(float(episode["r"]))
                self._lengths.append(float(episode["l"]))
        return True

    def _on_rollout_start(self) -> None:
        if self._row_steps is None or self.num_timesteps == self._row_steps:
            return
        if self.num_timesteps - self._row_steps >= self.log_every:
            self._log_row(final=False)

    def _on_rollout_end(self) -> None:
        self.iteration += 1

    def finish(self) -> None:
        """The last row (always with an evaluation) and the last checkpoint."""
        if self._row_steps is None:
            self._row_steps = self.num_timesteps
        self._log_row(final=True)

    def _log_row(self, *, final: bool) -> None:
        steps, since = self.num_timesteps, self._row_steps or 0
        row: dict[str, Any] = {"iteration": self.iteration, "env_steps": steps}
        logged = getattr(self.model.logger, "name_to_value", {})
        row.update({k: float(v) for k, v in logged.items() if k.startswith("train/")})
        if self._returns:
            row["episodes"] = len(self._returns)
            row["episode_return_mean"] = float(np.mean(self._returns))
            row["episode_length_mean"] = float(np.mean(self._lengths))
        if steps > since:
            row["sps"] = round((steps - since) / max(time.perf_counter() - self._row_time, 1e-9))
        if final or (self._next_eval is not None and steps >= self._next_eval):
            t_eval = time.perf_counter()
            self.last_eval = self.evaluate(self.iteration, steps)
            row.update(self.last_eval, eval_s=time.perf_counter() - t_eval)
            self.eval_time += row["eval_s"]
            if self._next_eval is not None:
                self._next_eval = (steps // self.eval_every + 1) * self.eval_every
        self.run.log(row)
        self._returns, self._lengths = [], []
        self._row_steps, self._row_time = steps, time.perf_counter()
        if final or self.run.checkpoint_due():
            self.save({"iteration": self.iteration, "env_steps": steps, "last_eval": dict(self.last_eval)})


__all__ = ["ConfigError", "RunCallback", "check_common", "evaluate_sb3", "make_vec_env", "train_sb3"]
