"""Drawing for ``render_mode="rgb_array"``: a small numpy rasterizer and the render plumbing of every env.

`Canvas` fills pixels of an ``(H, W, 3)`` uint8 image with rectangles, circles, rings, convex or
concave polygons and lines, in continuous pixel coordinates: pixel ``(row, col)`` covers
``[col, col + 1) x [row, row + 1)`` and is painted when its centre ``(col + 0.5, row + 0.5)`` lies in
the shape (no anti-aliasing, so that a test can read positions off the frame exactly). With
``y_up=True`` the y axis points up, as in the pygame drawings of Gymnasium's classic-control tasks
(which draw y-up and flip the surface at the end), so that those pictures are reproduced with the same
numbers and no pygame.

`RenderMixin` gives a `TorchVectorEnv` Gymnasium's rendering API: the ``render_mode`` keyword
(None or one of ``metadata["render_modes"]``), ``render()`` (None without a render mode, as
Gymnasium's envs return; else env 0's frame, or ``render(env_index=i)``'s), and ``render_all()``, one
frame per env (what SB3's ``VecEnv.get_images`` returns), and ``render_obs(obs, i)``, the frame of the
state an observation shows (SAME_STEP's ``info["final_obs"]``: the state an episode ended in). A task
draws one env in ``_render_frame(i, vars)``.

`GoalRenderMixin` adds ``set_render_goals(goals)`` for goal tasks: the subgoals a hierarchical agent's
manager currently proposes, drawn into the frames until they are replaced or cleared with None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "RENDER_MODES",
    "Canvas",
    "GoalRenderMixin",
    "RenderMixin",
    "check_render_mode",
    "draw_walls",
    "rotate",
]

RENDER_MODES = ("rgb_array",)
Color = tuple[int, int, int]


class Canvas:
    """An ``(height, width, 3)`` uint8 image to draw on; read the result from ``canvas.image``.

    Args:
        width, height: size in pixels.
        background: RGB fill.
        y_up: y grows upwards (row ``height - 1`` is y in ``[0, 1)``), as in Gymnasium's classic-control
            drawings; otherwise y grows downwards (row ``r`` is y in ``[r, r + 1)``).

    >>> c = Canvas(4, 3)
    >>> c.rect(1, 0, 3, 2, (0, 0, 0))
    >>> c.image[:, :, 0].tolist()
    [[255, 0, 0, 255], [255, 0, 0, 255], [255, 255, 255, 255]]
    """

    def __init__(self, width: int, height: int, background: Color = (255, 255, 255), *, y_up: bool = False):
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            raise ValueError(f"Canvas: expected positive int width and height, got {width!r}, {height!r}")
        self.width, self.height, self.y_up = width, height, bool(y_up)
        self.image = np.empty((height, width, 3), dtype=np.uint8)
        self.image[:] = np.asarray(background, dtype=np.uint8)

    def _row(self, y: float | np.ndarray) -> Any:
        """Image-space y (down, continuous) of a drawing-space y."""
        return self.height - y if self.y_up else y

    def _grid(
        self, x0: float, y0: float, x1: float, y1: float
    ) -> tuple[slice, slice, np.ndarray, np.ndarray]:
        """Pixel slices covering image-space ``[x0, x1] x [y0, y1]`` and their centres (clipped)."""
        c0, c1 = max(int(math.floor(x0)), 0), min(int(math.ceil(x1)) + 1, self.width)
        r0, r1 = max(int(math.floor(y0)), 0), min(int(math.ceil(y1)) + 1, self.height)
        xs = np.arange(c0, max(c1, c0)) + 0.5
        ys = np.arange(r0, max(r1, r0)) + 0.5
        return slice(r0, max(r1, r0)), slice(c0, max(c1, c0)), xs[None, :], ys[:, None]

    def _paint(self, rows: slice, cols: slice, inside: np.ndarray, color: Color) -> None:
        if inside.size:
            self.image[rows, cols][inside] = np.asarray(color, dtype=np.uint8)

    def rect(self, x0: float, y0: float, x1: float, y1: float, color: Color) -> None:
        """Fill the axis-aligned rectangle with corners ``(x0, y0)`` and ``(x1, y1)``."""
        ya, yb = sorted((self._row(y0), self._row(y1)))
        xa, xb = sorted((x0, x1))
        rows, cols, xs, ys = self._grid(xa, ya, xb, yb)
        inside = (xs >= xa) & (xs < xb) & (ys >= ya) & (ys < yb)
        self._paint(rows, cols, inside, color)

    def circle(self, cx: float, cy: float, radius: float, color: Color) -> None:
        """Fill the disc of ``radius`` around ``(cx, cy)``."""
        cy = self._row(cy)
        rows, cols, xs, ys = self._grid(cx - radius, cy - radius, cx + radius, cy + radius)
        self._paint(rows, cols, (xs - cx) ** 2 + (ys - cy) ** 2 <= radius * radius, color)

    def ring(self, cx: float, cy: float, radius: float, width: float, color: Color) -> None:
        """Fill the annulus between ``radius - width`` and ``radius`` around ``(cx, cy)``."""
        cy = self._row(cy)
        rows, cols, xs, ys = self._grid(cx - radius, cy - radius, cx + radius, cy + radius)
        d2 = (xs - cx) ** 2 + (ys - cy) ** 2
        inner = max(radius - width, 0.0)
        self._paint(rows, cols, (d2 <= radius * radius) & (d2 >= inner * inner), color)

    def polygon(self, points: Sequence[Sequence[float]] | np.ndarray, color: Color) -> None:
        """Fill a polygon (even-odd rule, so concave ones too) given its vertices in order."""
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
            raise ValueError(f"polygon: expected 3 or more (x, y) points, got shape {pts.shape}")
        px, py = pts[:, 0], self._row(pts[:, 1])
        rows, cols, xs, ys = self._grid(px.min(), py.min(), px.max(), py.max())
        inside = np.zeros((ys.shape[0], xs.shape[1]), dtype=bool)
        for k in range(len(pts)):
            ax, ay, bx, by = px[k - 1], py[k - 1], px[k], py[k]
            if ay == by:
                continue  # a horizontal edge crosses no horizontal scanline through pixel centres
            crosses = (ay > ys) != (by > ys)
            x_at = ax + (ys - ay) * (bx - ax) / (by - ay)
            inside ^= crosses & (xs < x_at)
        self._paint(rows, cols, inside, color)

    def line(self, p0: Sequence[float], p1: Sequence[float], color: Color, width: float = 1.0) -> None:
        """A segment from ``p0`` to ``p1``: one pixel wide (every pixel it passes), or ``width`` wide."""
        (x0, y0), (x1, y1) = p0, p1
        if width > 1.0:
            dx, dy = x1 - x0, y1 - y0
            norm = math.hypot(dx, dy) or 1.0
            ox, oy = -dy / norm * width / 2, dx / norm * width / 2
            self.polygon(
                [(x0 + ox, y0 + oy), (x1 + ox, y1 + oy), (x1 - ox, y1 - oy), (x0 - ox, y0 - oy)], color
            )
            return
        ya, yb = self._row(y0), self._row(y1)
        n = int(math.ceil(max(abs(x1 - x0), abs(yb - ya)))) * 2 + 2
        t = np.linspace(0.0, 1.0, n)
        cols = np.floor(x0 + t * (x1 - x0)).astype(np.int64)
        rows = np.floor(ya + t * (yb - ya)).astype(np.int64)
        ok = (cols >= 0) & (cols < self.width) & (rows >= 0) & (rows < self.height)
        self.image[rows[ok], cols[ok]] = np.asarray(color, dtype=np.uint8)

    def polyline(
        self, points: Sequence[Sequence[float]] | np.ndarray, color: Color, width: float = 1.0
    ) -> None:
        """Connected segments through ``points``."""
        pts = np.asarray(points, dtype=np.float64)
        for a, b in zip(pts[:-1], pts[1:], strict=True):
            self.line(a, b, color, width)


def rotate(points: Sequence[Sequence[float]], angle: float, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """``points`` rotated counter-clockwise by ``angle`` radians, then shifted by ``(dx, dy)``
    (pygame's ``Vector2.rotate_rad`` followed by a translation, as Gymnasium's drawings use them)."""
    pts = np.asarray(points, dtype=np.float64)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([pts[:, 0] * c - pts[:, 1] * s + dx, pts[:, 0] * s + pts[:, 1] * c + dy], -1)


# Colours of the goal tasks' frames.
FLOOR_COLOR: Color = (255, 255, 255)
WALL_COLOR: Color = (64, 64, 64)
GOAL_COLOR: Color = (220, 50, 50)
SUBGOAL_COLOR: Color = (255, 165, 0)
AGENT_COLOR: Color = (40, 90, 220)
SUBGOAL_RADIUS = 0.2
"""Radius of a drawn subgoal, in cells."""


def draw_walls(wall: np.ndarray, cell_px: int) -> Canvas:
    """A canvas of a grid seen from above: ``cell_px`` pixels per cell, ``WALL_COLOR`` where ``wall``
    (bool ``(H, W)``, row 0 at the top) is True, ``FLOOR_COLOR`` elsewhere.

    >>> draw_walls(np.array([[True, False]]), 2).image[:, :, 0].tolist()
    [[64, 64, 255, 255], [64, 64, 255, 255]]
    """
    wall = np.asarray(wall, dtype=bool)
    canvas = Canvas(wall.shape[1] * cell_px, wall.shape[0] * cell_px, FLOOR_COLOR)
    canvas.image[np.kron(wall, np.ones((cell_px, cell_px), dtype=bool))] = WALL_COLOR
    return canvas


def check_render_mode(render_mode: Any, render_modes: Sequence[str]) -> str | None:
    """``render_mode`` if it is None or one of ``render_modes``; else a ``ValueError`` naming them."""
    if render_mode is None or (isinstance(render_mode, str) and render_mode in render_modes):
        return render_mode
    raise ValueError(
        f"render_mode: expected None or one of {list(render_modes)} (this env's metadata['render_modes']), "
        f"got {render_mode!r}"
    )


class RenderMixin:
    """Gymnasium's rendering API for a batched env.

    A task implements ``_render_frame(env_index, v) -> frame``, drawing from ``v``, env ``env_index``'s
    variables as float64 numpy rows (``v["state"]``, ``v["goal"]``, ...), and, to draw states it only
    has observations of (`render_obs`), ``_vars_from_obs(obs_row) -> v``. ``render_mode`` is set by the
    env's constructor through `check_render_mode`. Frames are uint8 ``(H, W, 3)`` numpy arrays of one
    env each; drawing copies that env's variables to the host.
    """

    render_mode: str | None = None
    num_envs: int
    metadata: dict[str, Any]

    def render(self, env_index: int = 0) -> np.ndarray | None:
        """The frame of env ``env_index`` (default env 0), or None when ``render_mode`` is None.

        Raises:
            ValueError: ``env_index`` is not an int in ``[0, num_envs)``.
        """
        if self.render_mode is None:
            return None
        i = self._check_env_index(env_index)
        return self._render_frame(i, self._host_vars(i))

    def render_all(self) -> list[np.ndarray] | None:
        """One frame per env, in env order (what SB3's ``VecEnv.get_images`` tiles); None without a
        render mode."""
        if self.render_mode is None:
            return None
        return [self._render_frame(i, self._host_vars(i)) for i in range(self.num_envs)]

    def render_obs(self, obs: Any, env_index: int = 0) -> np.ndarray | None:
        """The frame of the state that env ``env_index``'s row of the observation batch ``obs`` shows.

        For SAME_STEP's ``info["final_obs"]``: the state an episode ended in, which ``step`` has
        already replaced by the next episode's start (so `render` cannot draw it). Subgoals of
        `GoalRenderMixin.set_render_goals` are drawn as in `render`. None without a render mode.

        Raises:
            ValueError: ``env_index`` out of range, or an ``obs`` that is not a ``(num_envs, ...)`` batch
                (a dict of them for ``Dict`` observations).
        """
        if self.render_mode is None:
            return None
        i = self._check_env_index(env_index)

        def row(x: Any) -> np.ndarray:
            x = x.detach().to("cpu", torch.float64).numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            if x.ndim < 1 or x.shape[0] != self.num_envs:
                raise ValueError(
                    f"render_obs: expected a ({self.num_envs}, ...) observation batch, got {x.shape}"
                )
            return x[i].astype(np.float64)

        obs_row = {k: row(v) for k, v in obs.items()} if isinstance(obs, dict) else row(obs)
        return self._render_frame(i, self._vars_from_obs(obs_row))

    def _render_frame(self, env_index: int, v: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} does not draw frames (no _render_frame)")

    def _vars_from_obs(self, obs: Any) -> dict[str, np.ndarray]:
        raise NotImplementedError(f"{type(self).__name__} cannot draw from observations (no _vars_from_obs)")

    def _check_env_index(self, env_index: Any) -> int:
        ok = isinstance(env_index, int | np.integer) and not isinstance(env_index, bool)
        if not ok or not 0 <= env_index < self.num_envs:
            raise ValueError(f"env_index: expected an int in [0, {self.num_envs}), got {env_index!r}")
        return int(env_index)

    def _host_vars(self, env_index: int) -> dict[str, np.ndarray]:
        """Env ``env_index``'s variables (``"state"``, ``"goal"``, ...) as float64 numpy rows."""
        vars_: dict[str, torch.Tensor] = self._vars  # type: ignore[attr-defined]
        return {k: v[env_index].detach().to("cpu", torch.float64).numpy() for k, v in vars_.items()}


class GoalRenderMixin:
    """``set_render_goals``: the subgoals to draw, for goal tasks (a hierarchy's current subgoals)."""

    num_envs: int
    goal_space: Any

    def set_render_goals(self, goals: torch.Tensor | np.ndarray | None) -> None:
        """Draw ``goals`` (``(num_envs, goal_dim)``, in ``goal_space`` coordinates, e.g. a manager's
        current subgoals) into every later frame, until replaced; None clears them.

        Raises:
            ValueError: ``goals`` is not ``(num_envs, goal_dim)`` finite numbers.
        """
        if goals is None:
            self._render_goals = None
            return
        dim = int(np.prod(self.goal_space.shape))
        if isinstance(goals, torch.Tensor):
            goals = goals.detach().to("cpu", torch.float64).numpy()
        arr = np.asarray(goals)
        if arr.shape != (self.num_envs, dim) or arr.dtype.kind not in "iuf":
            raise ValueError(
                f"set_render_goals: expected None or a ({self.num_envs}, {dim}) array of numbers "
                f"(num_envs, goal_dim), got {arr.dtype} of shape {arr.shape}"
            )
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise ValueError("set_render_goals: expected finite goals, got NaN or inf")
        self._render_goals = arr

    def _render_goal(self, env_index: int) -> np.ndarray | None:
        goals = getattr(self, "_render_goals", None)
        return None if goals is None else goals[env_index]
