"""FourRooms: the gridworld of Sutton, Precup & Singh (1999), batched as a `TorchVectorEnv`.

Sutton, Precup & Singh (1999), "Between MDPs and semi-MDPs: A framework for temporal abstraction in
reinforcement learning", Artificial Intelligence 112. A 13x13 grid (walls included) holds four rooms
of 25, 30, 25 and 20 cells joined by four one-cell hallways: 104 free cells, the layout gymnax's
``FourRooms-misc`` also uses. The agent moves up, right, down or left; a move into a wall leaves it
in place; with ``slip_prob`` the move goes instead in one of the other three directions, uniformly
(the paper's stochastic variant has ``slip_prob = 1/3``).

The task is sized to need a detour through two hallways: the goal sits in one room and each episode
starts in the room diagonally opposite. Within the default 100 steps a uniformly random policy
reaches the default goal (the far corner) in about 1% of episodes, while the shortest path
takes 14 to 20 steps.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from envs.core import Draw, TorchVectorEnv
from envs.goal import GoalRewardMixin
from envs.options import EnvOptions, Unpack, numpy_dtype
from envs.render import AGENT_COLOR, GOAL_COLOR, SUBGOAL_COLOR, SUBGOAL_RADIUS, GoalRenderMixin, draw_walls

FOUR_ROOMS_LAYOUT = """\
xxxxxxxxxxxxx
x     x     x
x     x     x
x           x
x     x     x
x     x     x
xx xxxx     x
x     xxx xxx
x     x     x
x     x     x
x           x
x     x     x
xxxxxxxxxxxxx"""

SIZE = 13
# Rooms as half-open (row0, row1, col0, col1) rectangles: 0 top-left, 1 top-right, 2 bottom-left,
# 3 bottom-right, so that the room diagonally opposite room k is 3 - k.
ROOMS = ((1, 6, 1, 6), (1, 7, 7, 12), (7, 12, 1, 6), (8, 12, 7, 12))
HALLWAYS = ((3, 6), (6, 2), (7, 9), (10, 6))
# Actions: 0 up, 1 right, 2 down, 3 left, as (d_row, d_col).
MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))
DEFAULT_GOAL = (11, 11)  # the far corner of the bottom-right room


def four_rooms_free() -> np.ndarray:
    """bool ``(13, 13)``: True on the 104 free cells."""
    return np.array([[ch == " " for ch in row] for row in FOUR_ROOMS_LAYOUT.splitlines()], dtype=bool)


def room_of(cell: tuple[int, int]) -> int:
    """The room (0-3) holding a (row, col) cell; -1 for hallways and walls."""
    for k, (r0, r1, c0, c1) in enumerate(ROOMS):
        if r0 <= cell[0] < r1 and c0 <= cell[1] < c1:
            return k
    return -1


class FourRoomsEnv(GoalRenderMixin, GoalRewardMixin, TorchVectorEnv):
    """Batched four-rooms goal task (``hrl_nested/FourRooms-v0``).

    Observation (a ``Dict``, Gymnasium-Robotics' goal-env convention): ``observation`` and
    ``achieved_goal`` are the agent's cell ``(row, col) / 12`` (in ``[0, 1]``), ``desired_goal`` the
    goal's cell, normalized the same way. Reward 1 on entering the goal cell, which terminates the
    episode; 0 otherwise. Reaching ``max_episode_steps`` is truncation. Actions: 0 up, 1 right,
    2 down, 3 left; every action moves (``neutral_action = None``). With ``validate=False`` an
    out-of-range action is clamped into ``{0, ..., 3}`` (see `envs.actions`).

    ``env.state`` is the int64 ``(num_envs, 2)`` (row, col) of each agent; the goal cells are
    ``env.get_state().vars["goal"]``.

    Args:
        num_envs: batch size.
        goal: the fixed goal cell (row, col), in a room (not a hallway).
        random_goal: draw the goal uniformly from the 100 room cells each episode instead.
        slip_prob: probability that a move goes in one of the other three directions instead.
        **options: the options every env takes (time limit, device, dtype, ...): `envs.options.EnvOptions`.
            The time limit is 100 steps unless ``max_episode_steps`` is given.

    >>> env = FourRoomsEnv(num_envs=2)
    >>> obs, _ = env.reset(seed=0)
    >>> (obs["desired_goal"][0] * 12).tolist()
    [11.0, 11.0]
    """

    metadata: dict[str, Any] = {**TorchVectorEnv.metadata, "render_modes": ["rgb_array"], "render_fps": 10}
    default_max_episode_steps = 100
    neutral_action = None  # every action moves

    def __init__(
        self,
        num_envs: int = 1,
        *,
        goal: tuple[int, int] = DEFAULT_GOAL,
        random_goal: bool = False,
        slip_prob: float = 0.0,
        **options: Unpack[EnvOptions],
    ):
        opts = self.resolve_options(options)
        free = four_rooms_free()
        try:
            goal = (int(goal[0]), int(goal[1]))
        except (TypeError, ValueError, IndexError):
            raise ValueError(f"goal: expected a (row, col) pair, got {goal!r}") from None
        if room_of(goal) < 0:
            raise ValueError(f"goal: expected a cell inside one of the four rooms {ROOMS}, got {goal}")
        if not 0.0 <= slip_prob <= 1.0:
            raise ValueError(f"slip_prob: expected a probability in [0, 1], got {slip_prob!r}")
        self.goal, self.random_goal, self.slip_prob = goal, bool(random_goal), float(slip_prob)

        dev = torch.device(opts["device"])
        cells = np.argwhere(np.ones((SIZE, SIZE), dtype=bool))  # (169, 2) row-major
        # next_cell[cell * 4 + a]: where action a leads from cell (itself when blocked by a wall).
        nxt = np.empty((SIZE * SIZE, 4), dtype=np.int64)
        for idx, (r, c) in enumerate(cells):
            for a, (dr, dc) in enumerate(MOVES):
                rr, cc = r + dr, c + dc
                ok = 0 <= rr < SIZE and 0 <= cc < SIZE and free[rr, cc]
                nxt[idx, a] = rr * SIZE + cc if ok else idx
        self._next_cell = torch.as_tensor(nxt.reshape(-1), device=dev)
        self._cells = torch.as_tensor(cells, device=dev)
        room_cells = [
            [r * SIZE + c for r in range(r0, r1) for c in range(c0, c1)] for r0, r1, c0, c1 in ROOMS
        ]
        width = max(map(len, room_cells))
        padded_rooms = [rc + [rc[0]] * (width - len(rc)) for rc in room_cells]
        self._room_table = torch.as_tensor(sum(padded_rooms, []), device=dev)  # flat (4 * width,)
        self._room_width = width
        self._room_size = torch.as_tensor([len(rc) for rc in room_cells], device=dev)
        self._room_of = torch.as_tensor([room_of(tuple(c)) for c in cells], device=dev)
        self._all_room_cells = torch.as_tensor(sum(room_cells, []), device=dev)
        self._goal_fixed = torch.as_tensor([goal[0] * SIZE + goal[1]], device=dev)
        self._moves = torch.as_tensor(MOVES, device=dev)

        np_dtype = numpy_dtype(opts["dtype"])
        box = gym.spaces.Box(0.0, 1.0, (2,), dtype=np_dtype)
        super().__init__(
            num_envs,
            single_observation_space=gym.spaces.Dict(
                {"observation": box, "achieved_goal": box, "desired_goal": box}
            ),
            single_action_space=gym.spaces.Discrete(4),
            **opts,
        )

    # ---------------------------------------------------------------- hooks
    def _sample_reset(self, draw: Draw) -> dict[str, torch.Tensor]:
        # Table lookups use index_select: on CPU it is far faster than advanced indexing.
        if self.random_goal:
            k = draw.integers(len(self._all_room_cells))[:, 0]
            goal_idx = self._all_room_cells.index_select(0, k)
        else:
            goal_idx = self._goal_fixed.expand(draw.key.shape[0])
        start_room = 3 - self._room_of.index_select(0, goal_idx)
        k = draw.integers(self._room_size.index_select(0, start_room).unsqueeze(1))[:, 0]
        start_idx = self._room_table.index_select(0, start_room * self._room_width + k)
        return {
            "state": self._cells.index_select(0, start_idx),
            "goal": self._cells.index_select(0, goal_idx),
        }

    def _transition(self, vars, action, draw):
        pos, goal = vars["state"], vars["goal"]
        a = action.long()  # in range: the base class clamps invalid actions before the transition
        if self.slip_prob > 0:
            u = draw.uniform(2)
            other = (a + 1 + (u[:, 1] * 3).floor().long().clamp(max=2)) % 4
            a = torch.where(u[:, 0] < self.slip_prob, other, a)
        idx = pos[:, 0] * SIZE + pos[:, 1]
        new_pos = self._cells.index_select(0, self._next_cell.index_select(0, idx * 4 + a))
        at_goal = (new_pos == goal).all(-1)
        return {"state": new_pos, "goal": goal}, at_goal.to(self.dtype), at_goal

    def _observe(self, vars):
        pos = vars["state"].to(self.dtype) / (SIZE - 1)
        return {
            "observation": pos,
            "achieved_goal": pos.clone(),
            "desired_goal": vars["goal"].to(self.dtype) / (SIZE - 1),
        }

    # ---------------------------------------------------------------- goal-env API
    def _success_from_distance(self, dist: torch.Tensor) -> torch.Tensor:
        # Distinct cells are at least 1/12 apart in normalized coordinates.
        return dist < 0.5 / (SIZE - 1)

    def _reward_from_distance(self, dist: torch.Tensor) -> torch.Tensor:
        return self._success_from_distance(dist).to(dist.dtype)

    # ---------------------------------------------------------------- rendering
    render_cell_px = 32
    """Pixels per grid cell in ``rgb_array`` frames (cell ``(row, col)`` covers rows
    ``[32 row, 32 (row + 1))`` and columns ``[32 col, 32 (col + 1))``)."""

    def _render_frame(self, env_index: int, v: dict[str, np.ndarray]) -> np.ndarray:
        """The grid from above: walls, the goal cell, the subgoal of `set_render_goals` (a point in the
        normalized ``(row, col) / 12`` goal space, if any) and the agent."""
        px = self.render_cell_px
        canvas = draw_walls(~four_rooms_free(), px)
        (gr, gc), (ar, ac) = v["goal"], v["state"]
        canvas.rect(gc * px + 2, gr * px + 2, (gc + 1) * px - 2, (gr + 1) * px - 2, GOAL_COLOR)
        subgoal = self._render_goal(env_index)
        if subgoal is not None:
            row, col = subgoal * (SIZE - 1)
            canvas.circle((col + 0.5) * px, (row + 0.5) * px, SUBGOAL_RADIUS * px, SUBGOAL_COLOR)
        canvas.circle((ac + 0.5) * px, (ar + 0.5) * px, 0.35 * px, AGENT_COLOR)
        return canvas.image

    def _vars_from_obs(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Cells from the normalized ``(row, col) / 12`` observation."""
        return {
            "state": np.rint(obs["observation"] * (SIZE - 1)),
            "goal": np.rint(obs["desired_goal"] * (SIZE - 1)),
        }
