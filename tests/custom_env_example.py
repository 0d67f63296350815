"""A small user environment defined only inside ``tests/``: the custom-environment path end to end.

``tests/test_custom_env.py`` registers it, checks it with `envs.check_vector_env` and trains PPO on
it through ``experiments/train.py --env tests.custom_env_example:ReachTargetEnv``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from envs import Draw, TorchVectorEnv


class ReachTargetEnv(TorchVectorEnv):
    """Move a point along [-1, 1] onto a target drawn each episode.

    Observation ``(x, target)``; actions 0 (left), 1 (stay), 2 (right) move by ``step_size``.
    Reward -0.01 per step and 1 on arriving within ``step_size / 2`` of the target, which
    terminates the episode; the time limit (50 steps) is truncation.
    """

    metadata: dict[str, Any] = {**TorchVectorEnv.metadata}

    def __init__(
        self,
        num_envs: int = 1,
        *,
        step_size: float = 0.1,
        max_episode_steps: int | None = 50,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        autoreset_mode: str | object = "next_step",
        validate: bool = True,
        compile: bool = False,
    ):
        self.step_size = float(step_size)
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        super().__init__(
            num_envs,
            single_observation_space=gym.spaces.Box(-1.0, 1.0, (2,), dtype=np_dtype),
            single_action_space=gym.spaces.Discrete(3),
            max_episode_steps=max_episode_steps,
            device=device,
            dtype=dtype,
            autoreset_mode=autoreset_mode,
            validate=validate,
            compile=compile,
        )

    def _sample_reset(self, draw: Draw) -> dict[str, torch.Tensor]:
        u = draw.uniform(2, -1.0, 1.0)
        return {"state": u[:, :1], "target": u[:, 1:]}

    def _transition(self, vars, action, draw):
        x = (vars["state"] + self.step_size * (action.to(self.dtype) - 1).unsqueeze(-1)).clamp(-1.0, 1.0)
        reached = ((x - vars["target"]).abs() <= self.step_size / 2)[:, 0]
        reward = torch.where(reached, 1.0, -0.01).to(self.dtype)
        return {"state": x, "target": vars["target"]}, reward, reached

    def _observe(self, vars):
        return torch.cat([vars["state"], vars["target"]], -1)
