"""``--algo sb3-ppo``: Stable-Baselines3's PPO on our envs, writing our run directory.

SB3's ``PPO`` (Schulman et al. 2017) with SB3's defaults, through `envs.SB3VecEnv`; the run directory,
evaluation, checkpoints and resume come from `hrl_nested.algos.sb3`. One deviation from SB3's
defaults: ``n_steps`` (SB3: 2048 per env, sized for one env) defaults to ``ceil(2048 / num_envs)``, so
that a rollout holds SB3's default 2048 transitions whatever ``--num-envs`` is (with the default 128
envs, 2048 steps per env would be a 262k-step rollout).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch

from hrl_nested.algos import Task, check, finite_float, positive_int


@dataclasses.dataclass(frozen=True)
class SB3PPOConfig:
    """SB3 PPO hyperparameters (SB3's names and defaults; see ``stable_baselines3.PPO``)."""

    learning_rate: float = 3e-4
    """Adam learning rate (constant)."""
    n_steps: int | None = None
    """Steps per env per rollout; None: ``ceil(2048 / num_envs)`` (SB3's 2048-transition rollout)."""
    batch_size: int = 64
    """Minibatch size."""
    n_epochs: int = 10
    """Passes over each rollout."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_range: float = 0.2
    """Surrogate clipping epsilon."""
    clip_range_vf: float | None = None
    """Value clipping around the old values; None: no clipping."""
    normalize_advantage: bool = True
    """Normalize advantages per minibatch."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    max_grad_norm: float = 0.5
    """Clip the global gradient norm to this."""
    target_kl: float | None = None
    """Stop an update's epochs early once the approximate KL exceeds this; None: never."""
    net_arch: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the actor and of the critic (SB3's default for PPO)."""
    norm_obs: bool = False
    """Normalize observations with SB3's ``VecNormalize`` (its statistics are saved with the model)."""
    norm_reward: bool = False
    """Normalize rewards with SB3's ``VecNormalize`` (by a running std of the discounted return)."""
    eval_every: int = 10_000
    """Env steps between evaluations (and always one at the end); 0: only at the end."""
    log_every: int = 0
    """Env steps between ``metrics.jsonl`` rows; 0: one row per rollout."""

    state_shaping_fields: ClassVar[tuple[str, ...]] = ("n_steps", "net_arch", "norm_obs", "norm_reward")
    """Fields a resumed run may not change (rollout buffer, network, normalization statistics)."""

    def rollout_steps(self, num_envs: int) -> int:
        """``n_steps``, or ``ceil(2048 / num_envs)`` when it is None."""
        return self.n_steps if self.n_steps is not None else max(1, math.ceil(2048 / num_envs))

    def validate(self, task: Task | None = None) -> None:
        """Raise `ConfigError` naming the first bad field (with ``task``: also ``batch_size`` against the
        rollout ``num_envs * n_steps``)."""
        from hrl_nested.algos.sb3 import check_common

        sec = {"section": "sb3_ppo"}
        check_common(self, "sb3_ppo")
        if self.n_steps is not None:
            positive_int(self.n_steps, "n_steps", **sec)
        positive_int(self.batch_size, "batch_size", minimum=2, **sec)  # SB3: a batch of 1 has no std
        positive_int(self.n_epochs, "n_epochs", **sec)
        finite_float(self.gae_lambda, "gae_lambda", low=0.0, high=1.0, **sec)
        finite_float(self.clip_range, "clip_range", low=0.0, low_open=True, **sec)
        for name in ("clip_range_vf", "target_kl"):
            if getattr(self, name) is not None:
                finite_float(getattr(self, name), name, low=0.0, low_open=True, **sec)
        finite_float(self.ent_coef, "ent_coef", low=0.0, **sec)
        finite_float(self.vf_coef, "vf_coef", low=0.0, **sec)
        finite_float(self.max_grad_norm, "max_grad_norm", low=0.0, low_open=True, **sec)
        if task is not None:
            rollout = task.num_envs * self.rollout_steps(task.num_envs)
            check(
                self.batch_size <= rollout,
                "batch_size",
                f"at most the rollout --num-envs x --sb3-ppo.n-steps = {rollout}",
                self.batch_size,
                **sec,
            )


Config = SB3PPOConfig  # the name `hrl_nested.algos` expects


def train(task: Task, cfg: SB3PPOConfig, run: Any = None) -> dict[str, Any]:
    """Train SB3's PPO on ``task``; log through ``run`` (a `hrl_nested.tracking.Run`); return the summary
    (see `hrl_nested.algos.sb3.train_sb3`)."""
    from stable_baselines3 import PPO

    from hrl_nested.algos.sb3 import policy_name, train_sb3

    def build(venv: Any, device: torch.device, seed: int) -> Any:
        return PPO(
            policy_name(venv),
            venv,
            learning_rate=cfg.learning_rate,
            n_steps=cfg.rollout_steps(task.num_envs),
            batch_size=cfg.batch_size,
            n_epochs=cfg.n_epochs,
            gamma=cfg.gamma,
            gae_lambda=cfg.gae_lambda,
            clip_range=cfg.clip_range,
            clip_range_vf=cfg.clip_range_vf,
            normalize_advantage=cfg.normalize_advantage,
            ent_coef=cfg.ent_coef,
            vf_coef=cfg.vf_coef,
            max_grad_norm=cfg.max_grad_norm,
            target_kl=cfg.target_kl,
            policy_kwargs={"net_arch": list(cfg.net_arch)},
            seed=seed,
            device=str(device),
            verbose=0,
        )

    return train_sb3(task, cfg, run, algo="sb3-ppo", model_class=PPO, build=build)
