"""Maze maps (Gymnasium-Robotics' ``maze_map`` format), their validation, grid BFS, and the goal-env API.

The pieces the grid tasks share: `parse_maze_map`, `bfs_distances` (for validation and scripted
path-followers); the goal-env API (`GoalRewardMixin`) lives in `envs.goal` and is re-exported here.

A maze map is a list of equal-length rows; each cell is ``1`` (wall), ``0`` (free), ``"r"`` (a free
cell where episodes may start), ``"g"`` (a free cell where goals may be placed) or ``"c"`` (both).
Row 0 is the top of the maze. Cell ``(i, j)`` (row, column) has its centre at
``x = (j + 0.5) - W / 2``, ``y = H / 2 - (i + 0.5)`` for a map of ``H`` rows and ``W`` columns (one
unit per cell), exactly as Gymnasium-Robotics' ``Maze.cell_rowcol_to_xy`` with
``maze_size_scaling = 1``.

``U_MAZE``, ``MEDIUM_MAZE`` and ``LARGE_MAZE`` are copied from Gymnasium-Robotics'
``gymnasium_robotics/envs/maze/maps.py`` (which took them from D4RL, Fu et al. 2020). The ``*_TASK``
variants mark the fixed start (``"r"``) and goal (``"g"``) cells used by the registered
``hrl_nested/PointMaze-*`` tasks: the two ends of the U (as in HIRO's AntMaze, Nachum et al. 2018)
and opposite corners of the medium and large mazes (the goal cells of D4RL's maze2d tasks).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from envs.goal import GoalRewardMixin  # noqa: F401 - re-exported: its former home

R, G, C = "r", "g", "c"
MazeMap = list[list[int | str]]

U_MAZE: MazeMap = [
    [1, 1, 1, 1, 1],
    [1, 0, 0, 0, 1],
    [1, 1, 1, 0, 1],
    [1, 0, 0, 0, 1],
    [1, 1, 1, 1, 1],
]

MEDIUM_MAZE: MazeMap = [
    [1, 1, 1, 1, 1, 1, 1, 1],
    [1, 0, 0, 1, 1, 0, 0, 1],
    [1, 0, 0, 1, 0, 0, 0, 1],
    [1, 1, 0, 0, 0, 1, 1, 1],
    [1, 0, 0, 1, 0, 0, 0, 1],
    [1, 0, 1, 0, 0, 1, 0, 1],
    [1, 0, 0, 0, 1, 0, 0, 1],
    [1, 1, 1, 1, 1, 1, 1, 1],
]

LARGE_MAZE: MazeMap = [
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
    [1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1],
    [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
    [1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1],
    [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1],
    [1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1],
    [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1],
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
]


def with_cells(maze_map: MazeMap, *, reset: tuple[int, int], goal: tuple[int, int]) -> MazeMap:
    """A copy of ``maze_map`` with ``"r"`` at ``reset`` and ``"g"`` at ``goal`` (both must be free).

    >>> with_cells(U_MAZE, reset=(3, 1), goal=(1, 1))[3][1]
    'r'
    """
    out = [list(row) for row in maze_map]
    for name, (i, j), mark in (("reset", reset, R), ("goal", goal, G)):
        if out[i][j] != 0:
            raise ValueError(f"with_cells: {name} cell {(i, j)} is not a free cell (it holds {out[i][j]!r})")
        out[i][j] = mark
    return out


# The registered tasks: start at one end of the U, goal at the other, the wall between them.
U_MAZE_TASK: MazeMap = with_cells(U_MAZE, reset=(3, 1), goal=(1, 1))
MEDIUM_MAZE_TASK: MazeMap = with_cells(MEDIUM_MAZE, reset=(1, 1), goal=(6, 6))
LARGE_MAZE_TASK: MazeMap = with_cells(LARGE_MAZE, reset=(1, 1), goal=(7, 9))


class ParsedMaze:
    """A validated maze map.

    Attributes:
        wall: bool ``(H, W)``, True where a wall is.
        reset_cells: ``(K, 2)`` int (row, col) cells where episodes may start (the ``"r"``/``"c"``
            cells; every free cell if none is marked).
        goal_cells: ``(M, 2)`` int cells where goals may be placed (``"g"``/``"c"``; every free cell
            if none is marked).
        free_cells: ``(F, 2)`` int, every free cell in row-major order.
    """

    def __init__(self, wall: np.ndarray, reset_cells: np.ndarray, goal_cells: np.ndarray):
        self.wall = wall
        self.reset_cells = reset_cells
        self.goal_cells = goal_cells
        self.free_cells = np.argwhere(~wall)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.wall.shape[0]), int(self.wall.shape[1])

    def cell_to_xy(self, cells: np.ndarray) -> np.ndarray:
        """Centres ``(..., 2)`` in world ``(x, y)`` of ``(..., 2)`` (row, col) cells."""
        h, w = self.shape
        cells = np.asarray(cells, dtype=np.float64)
        return np.stack([cells[..., 1] + 0.5 - w / 2, h / 2 - (cells[..., 0] + 0.5)], -1)


def parse_maze_map(maze_map: Any) -> ParsedMaze:
    """Validate a maze map and split it into walls, reset cells and goal cells.

    Raises:
        ValueError: naming the problem: not a list of equal-length rows, an unknown cell value (with
            its row and column), no free cell, or marked cells that leave no distinct start and goal.

    >>> parse_maze_map(U_MAZE_TASK).reset_cells.tolist()
    [[3, 1]]
    """
    if isinstance(maze_map, str | bytes) or not isinstance(maze_map, Sequence | np.ndarray):
        raise ValueError(
            f"maze_map: expected a list of rows (lists of 0, 1, 'r', 'g', 'c'), got {maze_map!r}"
        )
    rows = [
        list(r) if isinstance(r, Sequence | np.ndarray) and not isinstance(r, str) else r for r in maze_map
    ]
    if not rows:
        raise ValueError("maze_map: expected at least one row, got an empty map")
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise ValueError(f"maze_map: row {i} is {row!r}, expected a list of cells")
    width = len(rows[0])
    if width == 0:
        raise ValueError("maze_map: row 0 is empty")
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(
                f"maze_map: row {i} has {len(row)} cells, expected {width} (the length of row 0)"
            )
    wall = np.zeros((len(rows), width), dtype=bool)
    marks: dict[str, list[tuple[int, int]]] = {R: [], G: [], C: []}
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            if isinstance(cell, bool):  # bool is an int subclass; True/False are ambiguous here
                raise ValueError(f"maze_map: cell ({i}, {j}) is {cell!r}; use 1 (wall) or 0 (free)")
            if isinstance(cell, int | np.integer) and int(cell) in (0, 1):
                wall[i, j] = int(cell) == 1
            elif isinstance(cell, str) and cell in marks:
                marks[cell].append((i, j))
            else:
                raise ValueError(
                    f"maze_map: cell ({i}, {j}) is {cell!r}; expected 1 (wall), 0 (free), "
                    f"'r' (reset), 'g' (goal) or 'c' (reset or goal)"
                )
    if wall.all():
        raise ValueError("maze_map: every cell is a wall; expected at least two free cells")
    free = np.argwhere(~wall)
    resets = marks[R] + marks[C]
    goals = marks[G] + marks[C]
    reset_cells = np.array(sorted(resets), dtype=np.int64).reshape(-1, 2) if resets else free
    goal_cells = np.array(sorted(goals), dtype=np.int64).reshape(-1, 2) if goals else free
    maze = ParsedMaze(wall, reset_cells, goal_cells)
    check_cells(maze, reset_cells, goal_cells)
    return maze


def check_cells(maze: ParsedMaze, reset_cells: np.ndarray, goal_cells: np.ndarray) -> bool:
    """Check that starts and goals can always differ and are connected; return the drawing order.

    Episodes draw one cell set first and the other from its cells other than the first draw, so that
    an episode never starts on its goal. Returns True to draw the goal first (every goal cell leaves a
    reset cell), False to draw the start first (every reset cell leaves a goal cell).
    """
    resets = {tuple(c) for c in reset_cells.tolist()}
    goals = {tuple(c) for c in goal_cells.tolist()}
    goal_first = all(resets - {g} for g in goals)
    if not goal_first and not all(goals - {r} for r in resets):
        raise ValueError(
            f"maze_map: reset cells {sorted(resets)} and goal cells {sorted(goals)} leave no distinct start "
            f"and goal; mark more 'r', 'g' or 'c' cells so that an episode never starts on its goal"
        )
    cells = reset_cells.tolist() + goal_cells.tolist()
    dist = bfs_distances(maze.wall, tuple(cells[0]))
    for c in cells:
        if dist[c[0], c[1]] < 0:
            raise ValueError(
                f"maze_map: cell {tuple(c)} cannot be reached from cell {tuple(cells[0])}; "
                f"every reset and goal cell must lie in one connected region"
            )
    return goal_first


def bfs_distances(wall: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Shortest 4-connected path lengths from every cell to ``target`` (-1: unreachable or wall).

    Breadth-first search on the grid; used for validation and by scripted path-followers.

    >>> int(bfs_distances(np.array(U_MAZE) == 1, (1, 1))[3, 1])
    6
    """
    h, w = wall.shape
    dist = np.full((h, w), -1, dtype=np.int64)
    if wall[target]:
        return dist
    dist[target] = 0
    queue = deque([target])
    while queue:
        i, j = queue.popleft()
        for di, dj in ((-1, 0), (0, 1), (1, 0), (0, -1)):
            a, b = i + di, j + dj
            if 0 <= a < h and 0 <= b < w and not wall[a, b] and dist[a, b] < 0:
                dist[a, b] = dist[i, j] + 1
                queue.append((a, b))
    return dist
