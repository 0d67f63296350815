"""PointMaze: a velocity-limited point mass in a grid maze, batched as a `TorchVectorEnv`.

The tasks follow Gymnasium-Robotics' PointMaze (its ``maze_map`` format, coordinate frame, success
radius 0.45 and goal-env observation) with the MuJoCo ball replaced by closed-form dynamics, so that
a million envs step as a handful of tensor ops. The U-maze is the layout of HIRO's AntMaze (Nachum,
Gu, Lee & Levine 2018, "Data-Efficient Hierarchical Reinforcement Learning"): start at one end of
the U, goal at the other, a wall between them, so that greedy distance-to-goal shaping leads into the
wall. The medium and large layouts are D4RL's (Fu et al. 2020), as copied by Gymnasium-Robotics.

Dynamics, per step of length ``dt`` with action ``a`` in ``[-1, 1]^2`` (semi-implicit Euler)::

    v'  = clip(v + max_accel * a * dt, -max_speed, max_speed)      (per axis)
    p'  = sweep(p, v' * dt)                                        (x first, then y)

``sweep`` moves the agent, an axis-aligned square of half-width ``agent_radius``, along one axis at
a time and stops it ``1e-3`` short of the first wall cell in its way; the velocity component of a
blocked axis is set to 0 (an inelastic contact). The first wall in the way is read from
precomputed "next wall along this row/column" tables, so one step costs the same at any speed and a
point never tunnels through a wall, however fast it moves. Cells outside the map count as walls.

Defaults (``dt = 0.1``, ``max_accel = 50``, ``max_speed = 2``: at most 0.2 cells per step, and one
step can stop or reverse the point) and step limits (60 / 120 / 160 for the U / medium / large
mazes, 2-3 times what a waypoint follower needs) are sized so that a uniformly random policy reaches
the goal in under 1% of episodes, while a BFS waypoint follower always does.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from envs.core import Draw, TorchVectorEnv
from envs.options import EnvOptions, Unpack, numpy_dtype
from envs.render import AGENT_COLOR, GOAL_COLOR, SUBGOAL_COLOR, SUBGOAL_RADIUS, GoalRenderMixin, draw_walls
from envs.tasks.maze_layouts import (
    LARGE_MAZE_TASK,
    MEDIUM_MAZE_TASK,
    U_MAZE_TASK,
    GoalRewardMixin,
    MazeMap,
    ParsedMaze,
    check_cells,
    parse_maze_map,
)

_EPS = 1e-3  # contact gap, in cells: keeps floor() of the agent's edges out of the wall it touches


def _next_wall_tables(wall: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each (lane, cell) of a padded grid: index of the nearest wall cell after / before it."""
    lanes, cells = wall.shape
    fwd = np.empty((lanes, cells), dtype=np.int64)
    bwd = np.empty((lanes, cells), dtype=np.int64)
    for i in range(lanes):
        nxt = cells - 1  # the padding wall
        for j in range(cells - 1, -1, -1):
            fwd[i, j] = nxt
            if wall[i, j]:
                nxt = j
        prv = 0
        for j in range(cells):
            bwd[i, j] = prv
            if wall[i, j]:
                prv = j
    return fwd, bwd


def _check_options(
    dt: float,
    max_accel: float,
    max_speed: float,
    agent_radius: float,
    position_noise: float,
    success_radius: float,
    reward_type: str,
) -> None:
    """Raise ``ValueError`` naming the first invalid dynamics or reward option."""
    for name, value in (("dt", dt), ("max_accel", max_accel), ("max_speed", max_speed)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    if not 0.0 <= agent_radius < 0.5 - 2 * _EPS:
        raise ValueError(f"agent_radius: expected a number in [0, 0.5), got {agent_radius!r}")
    if not 0.0 <= position_noise < 0.5 - agent_radius - 2 * _EPS:
        raise ValueError(
            f"position_noise: expected a number in [0, 0.5 - agent_radius) = [0, {0.5 - agent_radius:g}) "
            f"so that starts and goals stay inside their cell, got {position_noise!r}"
        )
    if not success_radius > 0:
        raise ValueError(f"success_radius: expected a positive number, got {success_radius!r}")
    if reward_type not in ("sparse", "dense"):
        raise ValueError(f"reward_type: expected 'sparse' or 'dense', got {reward_type!r}")


class PointMazeEnv(GoalRenderMixin, GoalRewardMixin, TorchVectorEnv):
    """Batched PointMaze (``hrl_nested/PointMaze-U-v0``; medium and large via subclasses).

    Observation (a ``Dict``, Gymnasium-Robotics' goal-env convention): ``observation`` =
    ``(x, y, vx, vy)``, ``achieved_goal`` = ``(x, y)``, ``desired_goal`` = the goal ``(x, y)``.
    Actions are accelerations in ``[-1, 1]^2``; with ``validate=False`` a NaN coordinate becomes
    ``neutral_action`` = 0 (no acceleration) and out-of-bounds values are clamped (see `envs.actions`).
    Reward (``reward_type="sparse"``) 1 when ``||achieved_goal - desired_goal|| <= success_radius``,
    else 0, and the episode then terminates; ``"dense"`` gives ``exp(-distance)`` with the same
    termination. Reaching ``max_episode_steps`` is truncation.

    Start and goal: each episode draws the start uniformly from the map's reset cells (``"r"``/``"c"``;
    all free cells if none is marked, or with ``random_start``) and the goal from its goal cells
    (``"g"``/``"c"``; all free cells if none is marked, or with ``random_goal``), never both in the
    same cell, each at the cell centre plus a uniform offset in ``[-position_noise, position_noise]^2``.
    The registered maps mark one reset and one goal cell, so start and goal are fixed by default.

    Args:
        num_envs: batch size.
        maze_map: the layout (see `envs.tasks.maze_layouts`); malformed maps raise ``ValueError``.
        random_start, random_goal: draw the start / goal from every free cell each episode.
        position_noise: half-width of the uniform offset from the cell centre (Gymnasium-Robotics
            uses 0.25); below ``0.5 - agent_radius``.
        dt, max_accel, max_speed: the dynamics above (time step, acceleration per unit action,
            per-axis speed limit, in cells and seconds).
        agent_radius: half-width of the agent's square, in ``[0, 0.5)``.
        success_radius: distance to the goal that counts as reaching it.
        reward_type: ``"sparse"`` or ``"dense"``.
        **options: the options every env takes (time limit, device, dtype, ...): `envs.options.EnvOptions`.
            The time limit is ``default_max_episode_steps`` (60 here) unless ``max_episode_steps`` is given.

    >>> env = PointMazeEnv(num_envs=4)
    >>> obs, _ = env.reset(seed=0)
    >>> obs["achieved_goal"][0].tolist(), obs["desired_goal"][0].tolist()
    ([-1.0, -1.0], [-1.0, 1.0])
    """

    metadata: dict[str, Any] = {**TorchVectorEnv.metadata, "render_modes": ["rgb_array"], "render_fps": 10}
    default_max_episode_steps = 60
    neutral_action = 0.0  # no acceleration

    def __init__(
        self,
        num_envs: int = 1,
        *,
        maze_map: MazeMap = U_MAZE_TASK,
        random_start: bool = False,
        random_goal: bool = False,
        position_noise: float = 0.0,
        dt: float = 0.1,
        max_accel: float = 50.0,
        max_speed: float = 2.0,
        agent_radius: float = 0.1,
        success_radius: float = 0.45,
        reward_type: str = "sparse",
        **options: Unpack[EnvOptions],
    ):
        opts = self.resolve_options(options)
        maze = parse_maze_map(maze_map)
        _check_options(dt, max_accel, max_speed, agent_radius, position_noise, success_radius, reward_type)
        self.maze: ParsedMaze = maze
        self.random_start, self.random_goal = bool(random_start), bool(random_goal)
        reset_cells = maze.free_cells if random_start else maze.reset_cells
        goal_cells = maze.free_cells if random_goal else maze.goal_cells
        self._goal_first = check_cells(maze, reset_cells, goal_cells)
        self.position_noise = float(position_noise)
        self.dt, self.max_accel, self.max_speed = float(dt), float(max_accel), float(max_speed)
        self.agent_radius = float(agent_radius)
        self.success_radius = float(success_radius)
        self.reward_type = reward_type

        self._build_tables(reset_cells, goal_cells, opts["dtype"], torch.device(opts["device"]))

        h, w = maze.shape
        np_dtype = numpy_dtype(opts["dtype"])
        pos_high = np.array([w / 2, h / 2], dtype=np_dtype)
        obs_high = np.concatenate([pos_high, np.full(2, self.max_speed, dtype=np_dtype)])
        goal_box = gym.spaces.Box(-pos_high, pos_high, dtype=np_dtype)
        super().__init__(
            num_envs,
            single_observation_space=gym.spaces.Dict(
                {
                    "observation": gym.spaces.Box(-obs_high, obs_high, dtype=np_dtype),
                    "achieved_goal": goal_box,
                    "desired_goal": goal_box,
                }
            ),
            single_action_space=gym.spaces.Box(-1.0, 1.0, (2,), dtype=np_dtype),
            **opts,
        )

    def _build_tables(
        self, reset_cells: np.ndarray, goal_cells: np.ndarray, dtype: torch.dtype, dev: torch.device
    ) -> None:
        """The next-wall tables of `_sweep` and the candidate start and goal cells, on the device."""
        h, w = self.maze.shape
        # Padded grid: a virtual wall ring makes every lookup in range and the map's edge solid.
        padded = np.ones((h + 2, w + 2), dtype=bool)
        padded[1:-1, 1:-1] = self.maze.wall
        fx, bx = _next_wall_tables(padded)  # along a row: [row, col]
        fy, by = _next_wall_tables(padded.T)  # along a column: [col, row]
        as_t = lambda a: torch.as_tensor(a.reshape(-1), dtype=dtype, device=dev)  # noqa: E731
        self._fwd_x, self._bwd_x, self._fwd_y, self._bwd_y = as_t(fx), as_t(bx), as_t(fy), as_t(by)
        self._reset_ids = torch.as_tensor(reset_cells[:, 0] * w + reset_cells[:, 1], device=dev)
        self._reset_xy = torch.as_tensor(self.maze.cell_to_xy(reset_cells), dtype=dtype, device=dev)
        self._goal_ids = torch.as_tensor(goal_cells[:, 0] * w + goal_cells[:, 1], device=dev)
        self._goal_xy = torch.as_tensor(self.maze.cell_to_xy(goal_cells), dtype=dtype, device=dev)

    # ---------------------------------------------------------------- hooks
    def _sample_reset(self, draw: Draw) -> dict[str, torch.Tensor]:
        # One of start and goal is drawn first, the other from its cells but the first draw's (the
        # order that always leaves a cell, found at init), with no per-env branch: count, then pick.
        if self._goal_first:
            first = (self._goal_ids, self._goal_xy)
            second = (self._reset_ids, self._reset_xy)
        else:
            first = (self._reset_ids, self._reset_xy)
            second = (self._goal_ids, self._goal_xy)
        k_first = draw.integers(len(first[0]))[:, 0]
        allowed = second[0].unsqueeze(0) != first[0].index_select(0, k_first).unsqueeze(1)  # (N, K)
        k = draw.integers(allowed.sum(1, keepdim=True))  # (N, 1), and >= 1 cell is allowed
        k_second = (allowed.cumsum(1) <= k).sum(1)
        a, b = first[1].index_select(0, k_first), second[1].index_select(0, k_second)
        goal, start = (a, b) if self._goal_first else (b, a)
        if self.position_noise > 0:
            noise = draw.uniform(4, -self.position_noise, self.position_noise)
            start, goal = start + noise[:, :2], goal + noise[:, 2:]
        return {"state": torch.cat([start, torch.zeros_like(start)], -1), "goal": goal}

    def _transition(self, vars, action, draw):
        h, w = self.maze.shape
        x, y, vx, vy = vars["state"].unbind(-1)
        # ``action`` is finite and in [-1, 1]: the base class replaces invalid actions (NaN -> 0,
        # out of bounds -> clamped) before the transition, so no NaN reaches a table index.
        a = action
        dv = self.max_accel * self.dt
        vx = (vx + dv * a[:, 0]).clamp(-self.max_speed, self.max_speed)
        vy = (vy + dv * a[:, 1]).clamp(-self.max_speed, self.max_speed)
        # Padded grid coordinates: u grows with x (columns), r grows downwards (rows, y flipped).
        u, r = x + (w / 2 + 1), (h / 2 + 1) - y
        u_new, blocked_x = self._sweep(u, r, vx * self.dt, self._fwd_x, self._bwd_x, w + 2)
        r_new, blocked_y = self._sweep(r, u_new, -vy * self.dt, self._fwd_y, self._bwd_y, h + 2)
        vx = torch.where(blocked_x, torch.zeros_like(vx), vx)
        vy = torch.where(blocked_y, torch.zeros_like(vy), vy)
        state = torch.stack([u_new - (w / 2 + 1), (h / 2 + 1) - r_new, vx, vy], -1)
        goal = vars["goal"]
        dist = torch.linalg.vector_norm(state[:, :2] - goal, dim=-1)
        terminated = dist <= self.success_radius
        return {"state": state, "goal": goal}, self._reward_from_distance(dist), terminated

    def _sweep(
        self,
        pos: torch.Tensor,
        cross: torch.Tensor,
        delta: torch.Tensor,
        fwd: torch.Tensor,
        bwd: torch.Tensor,
        stride: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Move ``pos`` by ``delta`` along one axis, stopping short of the first wall in the way.

        The agent's square covers lanes ``floor(cross -+ radius)`` across the motion (at most two,
        as radius < 0.5); its leading edges sit in cells ``floor(pos -+ radius)``. The nearest wall
        ahead in either lane bounds the move from above, the nearest behind from below, so a single
        clamp handles both directions and any distance.
        """
        rad = self.agent_radius
        # Padded coordinates of the agent's edges are >= 1, so truncation is floor.
        lane_a = (cross - rad).long() * stride
        lane_b = (cross + rad).long() * stride
        lead_f = (pos + rad).long()
        lead_b = (pos - rad).long()
        # index_select: on CPU far faster than advanced indexing.
        wall_f = torch.minimum(fwd.index_select(0, lane_a + lead_f), fwd.index_select(0, lane_b + lead_f))
        wall_b = torch.maximum(bwd.index_select(0, lane_a + lead_b), bwd.index_select(0, lane_b + lead_b))
        target = pos + delta
        new = torch.minimum(torch.maximum(target, wall_b + (1 + rad + _EPS)), wall_f - (rad + _EPS))
        return new, new != target

    def _observe(self, vars):
        state, goal = vars["state"], vars["goal"]
        return {
            "observation": state.clone(),
            "achieved_goal": state[:, :2].clone(),
            "desired_goal": goal.clone(),
        }

    # ---------------------------------------------------------------- goal-env API
    def _reward_from_distance(self, dist: torch.Tensor) -> torch.Tensor:
        if self.reward_type == "dense":
            return torch.exp(-dist)
        return (dist <= self.success_radius).to(dist.dtype)

    def _success_from_distance(self, dist: torch.Tensor) -> torch.Tensor:
        return dist <= self.success_radius

    # ---------------------------------------------------------------- rendering
    render_cell_px = 64
    """Pixels per maze cell in ``rgb_array`` frames (cell ``(i, j)`` covers rows ``[64 i, 64 (i + 1))``
    and columns ``[64 j, 64 (j + 1))``)."""

    def _render_frame(self, env_index: int, v: dict[str, np.ndarray]) -> np.ndarray:
        """The maze from above: walls, the goal's success disc, the subgoal of `set_render_goals` (if
        any) and the agent, at ``render_cell_px`` pixels per cell."""
        h, w = self.maze.shape
        px = self.render_cell_px
        canvas = draw_walls(self.maze.wall, px)
        to_px = lambda p: ((p[0] + w / 2) * px, (h / 2 - p[1]) * px)  # noqa: E731 (world x, y -> pixels)
        canvas.circle(*to_px(v["goal"]), self.success_radius * px, GOAL_COLOR)
        subgoal = self._render_goal(env_index)
        if subgoal is not None:
            canvas.circle(*to_px(subgoal), SUBGOAL_RADIUS * px, SUBGOAL_COLOR)
        canvas.circle(*to_px(v["state"][:2]), max(self.agent_radius, 0.15) * px, AGENT_COLOR)
        return canvas.image

    def _vars_from_obs(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"state": obs["observation"], "goal": obs["desired_goal"]}


class PointMazeMediumEnv(PointMazeEnv):
    """``hrl_nested/PointMaze-Medium-v0``: `PointMazeEnv` on D4RL's medium maze, corner to corner."""

    default_max_episode_steps = 120

    def __init__(self, num_envs: int = 1, *, maze_map: MazeMap = MEDIUM_MAZE_TASK, **kw: Any):
        super().__init__(num_envs, maze_map=maze_map, **kw)


class PointMazeLargeEnv(PointMazeEnv):
    """``hrl_nested/PointMaze-Large-v0``: `PointMazeEnv` on D4RL's large maze, corner to corner."""

    default_max_episode_steps = 160

    def __init__(self, num_envs: int = 1, *, maze_map: MazeMap = LARGE_MAZE_TASK, **kw: Any):
        super().__init__(num_envs, maze_map=maze_map, **kw)
