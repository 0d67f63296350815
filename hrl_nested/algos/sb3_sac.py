"""``--algo sb3-sac``: Stable-Baselines3's SAC on our continuous-action envs, optionally with HER.

SB3's ``SAC`` (Haarnoja et al. 2018) with SB3's defaults, through `envs.SB3VecEnv`; with ``--sb3-sac.her``
on a goal env (a ``Dict`` observation with ``achieved_goal`` / ``desired_goal``, such as
``hrl_nested/PointMaze-U-v0``) the replay buffer is SB3's ``HerReplayBuffer`` (Andrychowicz et al. 2017,
"Hindsight Experience Replay"), which relabels sampled transitions with goals achieved later in the
same episode and recomputes their rewards with the env's ``compute_reward``. The run directory,
evaluation, checkpoints and resume come from `hrl_nested.algos.sb3`.

One deviation from SB3's defaults, with HER only: HER samples finished episodes alone, so
``learning_starts`` is raised to at least one full episode of every env (``num_envs x
max_episode_steps``); SB3 would otherwise stop with "Unable to sample before the end of the first
episode".
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import gymnasium as gym
import torch

from hrl_nested.algos import ConfigError, Task, check, finite_float, positive_int

GOAL_SELECTION = ("future", "final", "episode")


@dataclasses.dataclass(frozen=True)
class SB3SACConfig:
    """SB3 SAC hyperparameters (SB3's names and defaults; see ``stable_baselines3.SAC``)."""

    learning_rate: float = 3e-4
    """Adam learning rate of actor, critics and entropy coefficient."""
    buffer_size: int = 1_000_000
    """Replay buffer size (transitions)."""
    learning_starts: int = 100
    """Env steps of random actions before learning starts (raised with HER, see the module doc)."""
    batch_size: int = 256
    """Minibatch size of each gradient step."""
    tau: float = 0.005
    """Polyak coefficient of the target critics."""
    gamma: float = 0.99
    """Discount factor."""
    train_freq: int = 1
    """Update every this many steps of the vec env (each step is ``num_envs`` env steps)."""
    gradient_steps: int = 1
    """Gradient steps per update; -1: as many as env steps collected since the last update."""
    ent_coef: str = "auto"
    """Entropy coefficient: ``auto`` (learned, from 1.0), ``auto_<x>`` (learned, from x) or a number."""
    target_update_interval: int = 1
    """Gradient steps between target-network updates."""
    net_arch: tuple[int, ...] = (256, 256)
    """Hidden layer sizes of the actor and of each critic (SB3's default for SAC)."""
    her: bool = False
    """Hindsight experience replay (SB3's ``HerReplayBuffer``); needs a goal env."""
    her_n_sampled_goal: int = 4
    """HER: relabelled goals per real transition (a fraction 4/5 of the samples is relabelled)."""
    her_goal_selection_strategy: str = "future"
    """HER: where relabelled goals come from: ``future``, ``final`` or ``episode``."""
    norm_obs: bool = False
    """Normalize observations with SB3's ``VecNormalize`` (its statistics are saved with the model)."""
    norm_reward: bool = False
    """Normalize rewards with SB3's ``VecNormalize``."""
    save_replay_buffer: bool = True
    """Save the replay buffer with every checkpoint, so that a resumed run continues with it (large:
    up to ``buffer_size`` transitions)."""
    eval_every: int = 10_000
    """Env steps between evaluations (and always one at the end); 0: only at the end."""
    log_every: int = 1_000
    """Env steps between ``metrics.jsonl`` rows; 0: one row per vec-env step."""

    state_shaping_fields: ClassVar[tuple[str, ...]] = (
        "net_arch",
        "buffer_size",
        "her",
        "norm_obs",
        "norm_reward",
    )
    """Fields a resumed run may not change (networks, replay buffer, normalization statistics)."""

    def sb3_ent_coef(self) -> str | float:
        """``ent_coef`` as SB3 takes it: ``"auto"`` / ``"auto_<x>"`` as is, a number as a float."""
        return self.ent_coef if self.ent_coef.startswith("auto") else float(self.ent_coef)

    def validate(self, task: Task | None = None) -> None:
        """Raise `ConfigError` naming the first bad field."""
        from hrl_nested.algos.sb3 import check_common

        sec = {"section": "sb3_sac"}
        check_common(self, "sb3_sac")
        positive_int(self.buffer_size, "buffer_size", **sec)
        positive_int(self.learning_starts, "learning_starts", minimum=0, **sec)
        positive_int(self.batch_size, "batch_size", **sec)
        finite_float(self.tau, "tau", low=0.0, high=1.0, low_open=True, **sec)
        positive_int(self.train_freq, "train_freq", **sec)
        check(
            isinstance(self.gradient_steps, int) and (self.gradient_steps >= 1 or self.gradient_steps == -1),
            "gradient_steps",
            "a positive int or -1",
            self.gradient_steps,
            **sec,
        )
        check(
            _ent_coef_ok(self.ent_coef), "ent_coef", "auto, auto_<x> or a number, x > 0", self.ent_coef, **sec
        )
        positive_int(self.target_update_interval, "target_update_interval", **sec)
        positive_int(self.her_n_sampled_goal, "her_n_sampled_goal", **sec)
        check(
            self.her_goal_selection_strategy in GOAL_SELECTION,
            "her_goal_selection_strategy",
            f"one of {', '.join(GOAL_SELECTION)}",
            self.her_goal_selection_strategy,
            **sec,
        )

    def learning_starts_for(self, num_envs: int, max_episode_steps: int | None) -> int:
        """``learning_starts``, raised with HER to one full episode of every env (see the module doc)."""
        if not self.her or max_episode_steps is None:
            return self.learning_starts
        return max(self.learning_starts, num_envs * max_episode_steps)


Config = SB3SACConfig  # the name `hrl_nested.algos` expects


def _ent_coef_ok(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    text = value[len("auto_") :] if value.startswith("auto_") else value
    if value == "auto":
        return True
    try:
        return float(text) > 0
    except ValueError:
        return False


def check_env(cfg: SB3SACConfig, env: Any) -> None:
    """SAC needs continuous (``Box``) actions; HER needs a goal env. Raises `ConfigError` otherwise."""
    if not isinstance(env.single_action_space, gym.spaces.Box):
        raise ConfigError(
            "env",
            "an env with continuous (Box) actions for --algo sb3-sac",
            f"{getattr(env, 'spec', None) and env.spec.id or type(env).__name__} with "
            f"{env.single_action_space}",
        )
    space = env.single_observation_space
    goal = isinstance(space, gym.spaces.Dict) and {"achieved_goal", "desired_goal"} <= set(space.spaces)
    if cfg.her and not goal:
        raise ConfigError(
            "her",
            "a goal env (a Dict observation with achieved_goal and desired_goal) for HER",
            f"observations {space}",
            section="sb3_sac",
        )


def train(task: Task, cfg: SB3SACConfig, run: Any = None) -> dict[str, Any]:
    """Train SB3's SAC (with HER when ``cfg.her``) on ``task``; log through ``run``; return the summary
    (see `hrl_nested.algos.sb3.train_sb3`)."""
    from stable_baselines3 import SAC, HerReplayBuffer

    from hrl_nested.algos.sb3 import policy_name, train_sb3

    def build(venv: Any, device: torch.device, seed: int) -> Any:
        max_steps = venv.unwrapped.env.max_episode_steps if hasattr(venv.unwrapped, "env") else None
        her = {}
        if cfg.her:
            her = {
                "replay_buffer_class": HerReplayBuffer,
                "replay_buffer_kwargs": {
                    "n_sampled_goal": cfg.her_n_sampled_goal,
                    "goal_selection_strategy": cfg.her_goal_selection_strategy,
                },
            }
        return SAC(
            policy_name(venv),
            venv,
            learning_rate=cfg.learning_rate,
            buffer_size=cfg.buffer_size,
            learning_starts=cfg.learning_starts_for(task.num_envs, max_steps),
            batch_size=cfg.batch_size,
            tau=cfg.tau,
            gamma=cfg.gamma,
            train_freq=cfg.train_freq,
            gradient_steps=cfg.gradient_steps,
            ent_coef=cfg.sb3_ent_coef(),
            target_update_interval=cfg.target_update_interval,
            policy_kwargs={"net_arch": list(cfg.net_arch)},
            seed=seed,
            device=str(device),
            verbose=0,
            **her,
        )

    return train_sb3(
        task,
        cfg,
        run,
        algo="sb3-sac",
        model_class=SAC,
        build=build,
        check_env=lambda env: check_env(cfg, env),
    )
