"""A tiny Gymnasium goal env (a plain ``gym.Env``, Gymnasium-Robotics conventions), defined only in tests/.

A point on the unit square moves by 0.1 (Discrete(4)); the observation is a ``Dict`` with
``observation``, ``achieved_goal`` and ``desired_goal``; the reward is Gymnasium-Robotics' sparse
``-(distance > 0.1)`` from a batched ``compute_reward``; reaching the goal terminates (with
``info["is_success"]``), 20 steps truncate. Used through ``--env tests._nested_goal_env:TinyGoalEnv``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

_MOVES = np.array([[0.1, 0.0], [-0.1, 0.0], [0.0, 0.1], [0.0, -0.1]], dtype=np.float32)


class TinyGoalEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, max_steps: int = 20):
        box = gym.spaces.Box(0.0, 1.0, (2,), dtype=np.float32)
        self.observation_space = gym.spaces.Dict(
            {"observation": box, "achieved_goal": box, "desired_goal": box}
        )
        self.action_space = gym.spaces.Discrete(4)
        self.max_steps = max_steps

    def _obs(self):
        return {
            "observation": self.pos.copy(),
            "achieved_goal": self.pos.copy(),
            "desired_goal": self.goal.copy(),
        }

    def compute_reward(self, achieved_goal, desired_goal, info=None):
        return -(np.linalg.norm(np.asarray(achieved_goal) - np.asarray(desired_goal), axis=-1) > 0.1).astype(
            np.float32
        )

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(0.0, 1.0, 2).astype(np.float32)
        self.goal = self.np_random.uniform(0.0, 1.0, 2).astype(np.float32)
        self.t = 0
        return self._obs(), {"is_success": False}

    def step(self, action):
        self.pos = np.clip(self.pos + _MOVES[int(action)], 0.0, 1.0).astype(np.float32)
        self.t += 1
        reward = float(self.compute_reward(self.pos, self.goal))
        success = reward == 0.0
        return self._obs(), reward, success, self.t >= self.max_steps and not success, {"is_success": success}


class FailingGoalEnv(TinyGoalEnv):
    """`TinyGoalEnv` whose episodes terminate after 3 steps in a failure state (``is_success`` False):
    termination is not success here, as in many wrapped goal envs."""

    def step(self, action):
        obs, reward, _, _, _ = super().step(action)
        return obs, reward, self.t >= 3, False, {"is_success": False}
