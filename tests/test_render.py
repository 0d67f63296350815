"""``render_mode`` / ``render()`` / ``render_all()`` / ``set_render_goals`` and the frames they draw.

Positions in frames are checked against Gymnasium's drawing formulas (CartPole's cart at
``x * 125 + 300`` px, Pendulum upright at ``theta = 0``, ...) and maze walls against the maze maps.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs
from envs.render import AGENT_COLOR, SUBGOAL_COLOR, WALL_COLOR, Canvas, draw_walls
from envs.tasks.four_rooms import FOUR_ROOMS_LAYOUT
from envs.tasks.maze_layouts import LARGE_MAZE_TASK, MEDIUM_MAZE_TASK, U_MAZE_TASK

CLASSIC = {
    "CartPole-v1": (400, 600),
    "MountainCar-v0": (400, 600),
    "MountainCarContinuous-v0": (400, 600),
    "Acrobot-v1": (500, 500),
    "Pendulum-v1": (500, 500),
}
GOAL_TASKS = {"FourRooms-v0": (416, 416), "PointMaze-U-v0": (320, 320), "PointMaze-Medium-v0": (512, 512)}
GOAL_TASKS["PointMaze-Large-v0"] = (576, 768)
ALL = {**CLASSIC, **GOAL_TASKS}


def _make(name: str, n: int = 3, **kw):
    return envs.make(f"hrl_nested/{name}", n, **kw)


def _mask(frame: np.ndarray, color) -> np.ndarray:
    return (frame == np.asarray(color, dtype=np.uint8)).all(-1)


@pytest.mark.parametrize("name", sorted(ALL))
def test_no_render_mode_returns_none(name):
    env = _make(name)
    env.reset(seed=0)
    assert env.render_mode is None
    assert env.render() is None  # Gymnasium's envs return None here; VectorEnv's default raises
    assert env.render_all() is None


@pytest.mark.parametrize("name", sorted(ALL))
def test_rgb_array_frames(name):
    env = _make(name, render_mode="rgb_array")
    assert "rgb_array" in env.metadata["render_modes"]
    assert isinstance(env.metadata["render_fps"], int) and env.metadata["render_fps"] > 0
    env.reset(seed=1)
    frame = env.render()
    assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8
    assert frame.shape == (*ALL[name], 3)
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) >= 2  # something is drawn
    frames = env.render_all()
    assert len(frames) == env.num_envs
    np.testing.assert_array_equal(frames[0], frame)


def test_make_vec_and_make_accept_render_mode():
    vec = gym.make_vec("hrl_nested/CartPole-v1", num_envs=2, render_mode="rgb_array")
    assert vec.render_mode == "rgb_array"
    assert vec.spec.kwargs["render_mode"] == "rgb_array"
    vec.reset(seed=0)
    assert vec.render().shape == (400, 600, 3)
    env = envs.make("hrl_nested/PointMaze-U-v0", 2, render_mode="rgb_array")
    assert env.render_mode == "rgb_array"


@pytest.mark.parametrize("mode", ["human", "rgb", 1])
def test_bad_render_mode_names_the_modes(mode):
    with pytest.raises(ValueError, match=r"render_mode: expected None or one of \['rgb_array'\]"):
        _make("CartPole-v1", render_mode=mode)


def test_array_conversion_render_is_none():
    """Gymnasium's own ArrayConversion wrapper test calls ``render()`` on an env without a mode."""
    pytest.importorskip("array_api_compat")
    from gymnasium.wrappers.vector import ArrayConversion

    env = ArrayConversion(_make("CartPole-v1", 2), env_xp=torch, target_xp=np)
    env.reset(seed=0)
    assert env.render() is None


def test_cartpole_cart_and_pole_positions():
    env = _make("CartPole-v1", 2, dtype=torch.float64, render_mode="rgb_array")
    env.reset(seed=0)
    xs, thetas = (-1.3, 0.7), (0.15, -0.1)
    env.state = torch.tensor(
        [[xs[0], 0.0, thetas[0], 0.0], [xs[1], 0.0, thetas[1], 0.0]], dtype=torch.float64
    )
    scale = 600 / 4.8
    for i, (x, theta) in enumerate(zip(xs, thetas, strict=True)):
        frame = env.render(env_index=i)
        cartx = x * scale + 300  # Gymnasium: cartx = x * scale + screen_width / 2
        # Row 310 (pygame y = 90, the lower half of the cart, 85..115) crosses only the 50 px cart.
        cols = np.flatnonzero(_mask(frame[310], (0, 0, 0)))
        assert abs(cols.mean() + 0.5 - cartx) <= 0.5
        assert cols.size == 50
        # The pole's far end leans by polelen * sin(theta) (to the right for theta > 0).
        pole = np.argwhere(_mask(frame, (202, 152, 101)))
        top_row = pole[:, 0].min()
        tip_cols = pole[pole[:, 0] == top_row, 1]
        polelen = scale * 1.0
        expect = cartx + (polelen - 5) * math.sin(theta)
        assert abs(tip_cols.mean() - expect) < 6


def test_pendulum_and_acrobot_orientation():
    pend = _make("Pendulum-v1", 2, dtype=torch.float64, render_mode="rgb_array")
    pend.reset(seed=0)
    pend.state = torch.tensor([[0.0, 0.0], [math.pi, 0.0]], dtype=torch.float64)
    up, down = (np.argwhere(_mask(pend.render(env_index=i), (204, 77, 77))) for i in (0, 1))
    # theta = 0 is upright (Gymnasium's convention): the rod goes from the centre 250 up to 250 - 113.6.
    assert up[:, 0].min() < 250 - 100 and up[:, 0].max() < 250 + 20
    assert down[:, 0].max() > 250 + 100 and down[:, 0].min() > 250 - 20
    acro = _make("Acrobot-v1", 1, dtype=torch.float64, render_mode="rgb_array")
    acro.reset(seed=0)
    acro.state = torch.zeros(1, 4, dtype=torch.float64)  # both links hanging down
    links = np.argwhere(_mask(acro.render(), (0, 204, 204)))
    scale = 500 / 4.4
    assert abs(links[:, 1].mean() - 250) < 2
    assert abs(links[:, 0].max() - (250 + 2 * scale)) < 0.2 * scale + 2


def test_mountain_car_moves_with_position():
    env = _make("MountainCar-v0", 2, dtype=torch.float64, render_mode="rgb_array")
    env.reset(seed=0)
    env.state = torch.tensor([[-1.0, 0.0], [0.3, 0.0]], dtype=torch.float64)
    scale = 600 / 1.8
    for i, pos in enumerate((-1.0, 0.3)):
        wheels = np.argwhere(_mask(env.render(env_index=i), (128, 128, 128)))
        assert abs(wheels[:, 1].mean() - (pos + 1.2) * scale) < 3


def _wall_map(maze_map) -> np.ndarray:
    return np.array([[cell == 1 for cell in row] for row in maze_map], dtype=bool)


@pytest.mark.parametrize(
    "name, maze_map",
    [
        ("PointMaze-U-v0", U_MAZE_TASK),
        ("PointMaze-Medium-v0", MEDIUM_MAZE_TASK),
        ("PointMaze-Large-v0", LARGE_MAZE_TASK),
    ],
)
def test_maze_walls_match_the_map(name, maze_map):
    env = _make(name, 1, render_mode="rgb_array")
    env.reset(seed=0)
    frame, px, wall = env.render(), env.render_cell_px, _wall_map(maze_map)
    assert frame.shape[:2] == (wall.shape[0] * px, wall.shape[1] * px)
    for i, j in np.ndindex(*wall.shape):
        for r, c in ((i * px + 1, j * px + 1), ((i + 1) * px - 2, (j + 1) * px - 2)):  # two corners
            assert _mask(frame[r : r + 1, c : c + 1], WALL_COLOR)[0, 0] == wall[i, j], (i, j)


def test_four_rooms_walls_and_agent():
    env = _make("FourRooms-v0", 2, render_mode="rgb_array")
    env.reset(seed=0)
    wall = np.array([[ch == "x" for ch in row] for row in FOUR_ROOMS_LAYOUT.splitlines()])
    frame, px = env.render(env_index=1), env.render_cell_px
    centers = frame[px // 2 :: px, px // 2 :: px]
    corners = frame[1::px, 1::px]
    np.testing.assert_array_equal(_mask(corners, WALL_COLOR), wall)
    agent = env.state[1].tolist()
    assert _mask(centers, AGENT_COLOR)[agent[0], agent[1]]
    assert _mask(centers, AGENT_COLOR).sum() == 1


def test_point_maze_agent_position():
    env = _make("PointMaze-Medium-v0", 2, dtype=torch.float64, render_mode="rgb_array")
    env.reset(seed=0)
    state = env.state.clone()
    state[1, :2] = torch.tensor([0.3, -1.2], dtype=torch.float64)  # a free cell (row 5, col 4)
    env.state = state
    px, (h, w) = env.render_cell_px, env.maze.shape
    agent = np.argwhere(_mask(env.render(env_index=1), AGENT_COLOR)) + 0.5
    np.testing.assert_allclose(agent.mean(0), [(h / 2 + 1.2) * px, (0.3 + w / 2) * px], atol=0.5)


def test_set_render_goals_draws_the_subgoal_and_clears():
    env = _make("PointMaze-Medium-v0", 2, render_mode="rgb_array")
    env.reset(seed=0)
    before = [env.render(env_index=i) for i in range(2)]
    px, (h, w) = env.render_cell_px, env.maze.shape
    goals = np.array([[-1.5, 0.5], [1.5, -1.5]])  # free cells (row 3, col 2) and (row 5, col 5)
    env.set_render_goals(torch.as_tensor(goals, dtype=torch.float32))
    for i, (x, y) in enumerate(goals):
        r, c = int((h / 2 - y) * px), int((x + w / 2) * px)
        assert not _mask(before[i][r : r + 1, c : c + 1], SUBGOAL_COLOR).any()
        after = env.render(env_index=i)
        assert _mask(after[r : r + 1, c : c + 1], SUBGOAL_COLOR).all()
        changed = np.argwhere((after != before[i]).any(-1)) + 0.5
        np.testing.assert_allclose(changed.mean(0), [r + 0.5, c + 0.5], atol=1.0)  # only around the goal
    env.set_render_goals(None)
    for i in range(2):
        np.testing.assert_array_equal(env.render(env_index=i), before[i])


def test_four_rooms_subgoal_in_goal_space():
    env = _make("FourRooms-v0", 1, render_mode="rgb_array")
    env.reset(seed=0)
    px = env.render_cell_px
    env.set_render_goals(np.array([[3 / 12, 9 / 12]]))  # cell (row 3, col 9), normalized like the obs
    frame = env.render()
    assert _mask(
        frame[3 * px + px // 2 : 3 * px + px // 2 + 1, 9 * px + px // 2 :][:, :1], SUBGOAL_COLOR
    ).all()


def test_set_render_goals_does_not_retrace_a_compiled_step():
    env = _make("PointMaze-U-v0", 2)
    version = env._config_version
    env.set_render_goals(np.zeros((2, 2)))
    assert env._config_version == version


@pytest.mark.parametrize(
    "goals, match",
    [
        (np.zeros((3, 2)), r"\(2, 2\) array"),
        (np.zeros((2, 3)), r"\(2, 2\) array"),
        (np.zeros(2), r"got float64 of shape \(2,\)"),
        (np.array([["a", "b"], ["c", "d"]]), "array of numbers"),
        (np.full((2, 2), np.nan), "finite"),
    ],
)
def test_set_render_goals_bad_input(goals, match):
    env = _make("PointMaze-U-v0", 2, render_mode="rgb_array")
    with pytest.raises(ValueError, match=match):
        env.set_render_goals(goals)


def test_env_index_option():
    env = _make("CartPole-v1", 3, dtype=torch.float64, render_mode="rgb_array")
    env.reset(seed=0)
    env.state = torch.tensor([[-1.0, 0, 0, 0], [0.0, 0, 0, 0], [1.0, 0, 0, 0]], dtype=torch.float64)
    frames = env.render_all()
    np.testing.assert_array_equal(env.render(), frames[0])
    np.testing.assert_array_equal(env.render(env_index=2), frames[2])
    assert not np.array_equal(frames[0], frames[2])
    for bad in (-1, 3, 1.0, True, "0", None):
        with pytest.raises(ValueError, match=r"env_index: expected an int in \[0, 3\)"):
            env.render(env_index=bad)


def test_canvas_shapes_against_closed_forms():
    c = Canvas(100, 80)
    c.circle(50.0, 40.0, 20.0, (0, 0, 0))
    area = _mask(c.image, (0, 0, 0)).sum()
    assert abs(area - math.pi * 400) < 2 * math.pi * 20  # within one perimeter of pixels
    c = Canvas(100, 80)
    c.polygon([(10, 10), (60, 10), (60, 30), (10, 30)], (0, 0, 0))  # 50 x 20, on pixel edges
    assert _mask(c.image, (0, 0, 0)).sum() == 1000
    c = Canvas(100, 80)
    c.polygon([(0, 0), (40, 0), (0, 40)], (0, 0, 0))  # right triangle of area 800
    assert abs(_mask(c.image, (0, 0, 0)).sum() - 800) <= 40
    c = Canvas(100, 80, y_up=True)
    c.rect(0, 0, 10, 5, (0, 0, 0))  # y-up: the bottom 5 rows
    assert _mask(c.image[75:, :10], (0, 0, 0)).all() and _mask(c.image, (0, 0, 0)).sum() == 50
    c = Canvas(100, 80)
    c.line((3.5, 2.5), (90.5, 70.5), (0, 0, 0))  # a 1-px line is 8-connected, end to end
    pix = np.argwhere(_mask(c.image, (0, 0, 0)))
    assert (2, 3) in map(tuple, pix) and (70, 90) in map(tuple, pix)
    rows = np.unique(pix[:, 0])
    np.testing.assert_array_equal(rows, np.arange(2, 71))
    with pytest.raises(ValueError, match="3 or more"):
        Canvas(4, 4).polygon([(0, 0), (1, 1)], (0, 0, 0))
    with pytest.raises(ValueError, match="positive int width and height"):
        Canvas(0, 4)


def test_draw_walls_matches_its_grid():
    wall = np.array([[1, 0, 1], [0, 0, 1]], dtype=bool)
    img = draw_walls(wall, 3).image
    np.testing.assert_array_equal(_mask(img, WALL_COLOR), np.kron(wall, np.ones((3, 3), dtype=bool)))


@pytest.mark.parametrize("name", sorted(ALL))
def test_render_obs_draws_the_state_the_observation_shows(name):
    """Drawing from an observation (SAME_STEP's final_obs) gives the frame of the state it came from."""
    env = _make(name, 3, dtype=torch.float64, render_mode="rgb_array")
    obs, _ = env.reset(seed=4)
    for _ in range(3):  # away from the start, so that velocities and angles are not trivial
        obs, *_ = env.step(torch.as_tensor(env.action_space.sample()))
    if hasattr(env, "set_render_goals"):
        env.set_render_goals(np.stack([env.goal_space.sample() for _ in range(3)]))
    for i in range(3):
        expected, got = env.render(env_index=i), env.render_obs(obs, env_index=i)
        assert (expected != got).any(-1).mean() < 1e-4, i  # an edge pixel may round differently
    assert _make(name, 3).render_obs(obs) is None  # no render mode


def test_render_obs_bad_batch():
    env = _make("CartPole-v1", 3, render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    with pytest.raises(
        ValueError, match=r"render_obs: expected a \(3, \.\.\.\) observation batch, got \(4,\)"
    ):
        env.render_obs(obs[0])
    with pytest.raises(ValueError, match=r"env_index: expected an int in \[0, 3\)"):
        env.render_obs(obs, env_index=3)
