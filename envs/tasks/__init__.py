"""Hierarchical goal tasks as batched torch environments: four rooms and point mazes.

Sparse, long-horizon tasks where flat RL struggles: each is sized so that a uniformly random policy
succeeds in under 2% of episodes while a scripted path-follower always does. All follow
Gymnasium-Robotics' goal-env conventions (``observation`` / ``achieved_goal`` / ``desired_goal``
and a batched ``compute_reward``).
"""

from envs.tasks.four_rooms import FourRoomsEnv
from envs.tasks.point_maze import PointMazeEnv, PointMazeLargeEnv, PointMazeMediumEnv

__all__ = ["FourRoomsEnv", "PointMazeEnv", "PointMazeLargeEnv", "PointMazeMediumEnv"]
