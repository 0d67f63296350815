"""PointMaze: layouts, map validation, walls without tunnelling, reward, limits, seeding, success rates."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs
from envs.tasks.maze_layouts import (
    LARGE_MAZE,
    LARGE_MAZE_TASK,
    MEDIUM_MAZE,
    MEDIUM_MAZE_TASK,
    U_MAZE,
    U_MAZE_TASK,
    bfs_distances,
    parse_maze_map,
)
from envs.tasks.point_maze import PointMazeEnv, PointMazeLargeEnv, PointMazeMediumEnv
from tests._episodes import first_episode_success_rate

CLASSES = [PointMazeEnv, PointMazeMediumEnv, PointMazeLargeEnv]


def _const(env, a) -> torch.Tensor:
    return torch.tensor(a, dtype=env.dtype).expand(env.num_envs, 2).contiguous()


def test_layouts_are_gymnasium_robotics_maps():
    # Shapes, free-cell counts and a few rows of Gymnasium-Robotics' maze_v4 maps.
    assert np.array(U_MAZE).shape == (5, 5) and (np.array(U_MAZE) == 0).sum() == 7
    assert np.array(MEDIUM_MAZE).shape == (8, 8) and (np.array(MEDIUM_MAZE) == 0).sum() == 26
    assert np.array(LARGE_MAZE).shape == (9, 12) and (np.array(LARGE_MAZE) == 0).sum() == 46
    assert U_MAZE[2] == [1, 1, 1, 0, 1]
    assert MEDIUM_MAZE[3] == [1, 1, 0, 0, 0, 1, 1, 1]
    assert LARGE_MAZE[5] == [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1]
    for raw, task in ((U_MAZE, U_MAZE_TASK), (MEDIUM_MAZE, MEDIUM_MAZE_TASK), (LARGE_MAZE, LARGE_MAZE_TASK)):
        diff = [
            (i, j, task[i][j]) for i in range(len(raw)) for j in range(len(raw[0])) if raw[i][j] != task[i][j]
        ]
        assert sorted(v for *_, v in diff) == ["g", "r"]


def test_fixed_start_and_goal_in_gymnasium_robotics_coordinates():
    env = PointMazeEnv(num_envs=3)
    obs, _ = env.reset(seed=0)
    # U_MAZE_TASK: reset cell (3, 1), goal cell (1, 1); x = j + 0.5 - W/2, y = H/2 - (i + 0.5).
    assert obs["achieved_goal"].tolist() == [[-1.0, -1.0]] * 3
    assert obs["desired_goal"].tolist() == [[-1.0, 1.0]] * 3
    assert obs["observation"][:, 2:].abs().sum() == 0
    assert torch.equal(env.achieved_goal(obs), obs["achieved_goal"])
    assert env.goal_space == env.single_observation_space["desired_goal"]


def test_wall_blocks_and_corridor_passes():
    env = PointMazeEnv(num_envs=1, max_episode_steps=None)
    env.reset(seed=0)
    for _ in range(20):  # straight up from the start: the wall between the arms of the U
        obs, *_ = env.step(_const(env, [0.0, 1.0]))
    x, y, vx, vy = obs["observation"][0].tolist()
    assert y == pytest.approx(-0.5 - env.agent_radius, abs=2e-3) and vy == 0.0 and x == -1.0
    path = [([1.0, 0.0], (1.5 - env.agent_radius, None)), ([0.0, 1.0], (None, 1.5 - env.agent_radius))]
    for action, (x_end, y_end) in path:  # along the bottom arm, then up the right side
        for _ in range(40):
            obs, reward, terminated, *_ = env.step(_const(env, action))
        x, y = obs["achieved_goal"][0].tolist()
        assert (x_end is None or x == pytest.approx(x_end, abs=2e-3)) and (
            y_end is None or y == pytest.approx(y_end, abs=2e-3)
        )
        assert not terminated.any()
    for _ in range(40):  # along the top arm to the goal
        obs, reward, terminated, truncated, _ = env.step(_const(env, [-1.0, 0.0]))
        if terminated.any():
            break
    assert terminated.tolist() == [True] and reward.tolist() == [1.0] and not truncated.any()


def _free_along(wall: np.ndarray, a, b, lane, axis) -> bool:
    """All cells the segment from a to b (in grid units along axis, at lane across it) touches are free."""
    lo, hi = sorted((a, b))
    cells = np.arange(int(np.floor(lo)), int(np.floor(hi)) + 1)
    rows, cols = (
        (np.full_like(cells, int(np.floor(lane))), cells)
        if axis == 0
        else (cells, np.full_like(cells, int(np.floor(lane))))
    )
    inside = (rows >= 0) & (rows < wall.shape[0]) & (cols >= 0) & (cols < wall.shape[1])
    return bool(inside.all() and not wall[rows, cols].any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_tunnelling_at_extreme_speeds(dtype):
    # Speeds up to 1e6 cells/s with dt = 1: a step may cross the whole maze many times over.
    env = PointMazeLargeEnv(
        num_envs=256,
        max_speed=1e6,
        max_accel=1e7,
        dt=1.0,
        random_start=True,
        random_goal=True,
        max_episode_steps=None,
        success_radius=1e-6,
        dtype=dtype,
    )
    env.reset(seed=0)
    wall, (h, w), rad = env.maze.wall, env.maze.shape, env.agent_radius
    gen = torch.Generator().manual_seed(0)
    prev = env.state[:, :2].double().numpy().copy()
    crossings = 0
    for _ in range(40):
        a = (torch.randint(-1, 2, (256, 2), generator=gen) * torch.rand(256, 1, generator=gen)).to(dtype)
        obs, *_ = env.step(a)
        cur = obs["achieved_goal"].double().numpy()
        for (x0, y0), (x1, y1) in zip(prev, cur):
            u0, u1, r0, r1 = x0 + w / 2, x1 + w / 2, h / 2 - y0, h / 2 - y1
            # The move is x first (at the old row), then y (at the new column): both legs stay in free cells,
            # and so does the agent's whole square at the end.
            assert _free_along(wall, u0, u1, r0, axis=0) and _free_along(wall, r0, r1, u1, axis=1)
            corners = [
                (int(np.floor(r1 + dr)), int(np.floor(u1 + du))) for dr in (-rad, rad) for du in (-rad, rad)
            ]
            assert not any(wall[c] for c in corners)
            crossings += abs(u1 - u0) > 1 or abs(r1 - r0) > 1
        prev = cur
    assert crossings > 1000  # the agents really did move several cells per step


def test_a_single_huge_step_stops_at_the_first_wall():
    env = PointMazeEnv(num_envs=2, max_speed=1e9, max_accel=1e12, max_episode_steps=None)
    env.reset(seed=0)
    obs, *_ = env.step(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    x, y = obs["achieved_goal"].T.tolist()
    assert y[0] == pytest.approx(-0.6, abs=2e-3) and x[1] == pytest.approx(1.4, abs=2e-3)
    assert obs["observation"][0, 3] == 0 and obs["observation"][1, 2] == 0  # blocked axes stop


def test_dynamics_follow_the_documented_formulas():
    env = PointMazeMediumEnv(num_envs=1, dtype=torch.float64, max_episode_steps=None)
    env.reset(seed=0)
    env.state = torch.tensor([[0.0, 0.5, 0.3, -0.2]], dtype=torch.float64)  # cell (3, 4): open around
    obs, *_ = env.step(torch.tensor([[0.5, -0.01]], dtype=torch.float64))
    v = torch.tensor([0.3 + 50 * 0.1 * 0.5, -0.2 + 50 * 0.1 * -0.01]).clamp(-2.0, 2.0)
    expected = torch.tensor([0.0, 0.5]) + 0.1 * v
    assert torch.allclose(obs["observation"][0], torch.cat([expected, v]).double(), atol=1e-12)


def test_reward_termination_and_compute_reward():
    env = PointMazeEnv(num_envs=3, autoreset_mode="same_step", max_episode_steps=None)
    env.reset(seed=0)
    env.state = torch.tensor([[-1.0, 0.6, 0, 0], [-1.0, 0.5, 0, 0], [1.0, 1.0, 0, 0]])
    obs, reward, terminated, truncated, info = env.step(torch.zeros(3, 2))
    assert reward.tolist() == [1.0, 0.0, 0.0] and terminated.tolist() == [True, False, False]
    assert not truncated.any() and info["_final_obs"].tolist() == [True, False, False]
    final = info["final_obs"]
    assert torch.equal(env.compute_reward(final["achieved_goal"], final["desired_goal"], info), reward)
    ag, dg = final["achieved_goal"].numpy(), final["desired_goal"].numpy()
    assert env.compute_reward(ag, dg, {}).tolist() == [1.0, 0.0, 0.0]
    assert env.compute_terminated(ag, dg, {}).tolist() == [True, False, False]
    assert env.compute_reward(np.zeros((4, 5, 2)), np.zeros((4, 5, 2))).shape == (4, 5)
    assert obs["achieved_goal"][0].tolist() == [-1.0, -1.0]  # env 0 was reset to the start

    dense = PointMazeEnv(num_envs=1, reward_type="dense")
    dense.reset(seed=0)
    _, reward, terminated, *_ = dense.step(torch.zeros(1, 2))
    assert reward.item() == pytest.approx(np.exp(-2.0)) and not terminated.any()


def test_time_limit_is_truncation():
    env = PointMazeEnv(num_envs=2)
    env.reset(seed=0)
    for t in range(60):
        _, reward, terminated, truncated, _ = env.step(torch.zeros(2, 2))
        assert not terminated.any() and reward.sum() == 0 and truncated.all() == (t == 59)


def test_actions_are_validated():
    env = PointMazeEnv(num_envs=2)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions.*1\.5"):
        env.step(torch.tensor([[0.0, 0.0], [1.5, 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        env.step(torch.tensor([[float("nan"), 0.0], [0.0, 0.0]]))
    loose = PointMazeEnv(num_envs=1, validate=False)
    loose.reset(seed=0)
    strict = PointMazeEnv(num_envs=1)
    strict.reset(seed=0)
    assert torch.equal(
        loose.step(torch.tensor([[5.0, 0.0]]))[0]["observation"],
        strict.step(torch.tensor([[1.0, 0.0]]))[0]["observation"],
    )


@pytest.mark.parametrize(
    ("maze_map", "match"),
    [
        ([], "empty"),
        ("1111", "list of rows"),
        ([[1, 1, 1], [1, 0]], r"row 1 has 2 cells, expected 3"),
        ([[1, 1, 1], [1, 2, 0]], r"cell \(1, 1\) is 2"),
        ([[1, "x", 0]], r"cell \(0, 1\) is 'x'"),
        ([[True, 0, 0]], r"cell \(0, 0\) is True"),
        ([[1, 1], [1, 1]], "every cell is a wall"),
        ([[0, 1, 0]], "cannot be reached"),
        ([[1, "c", 0, 1]], "leave no distinct start and goal"),
        ([["r", "g", 1, "g"]], "cannot be reached"),
    ],
)
def test_malformed_maze_maps_name_the_problem(maze_map, match):
    with pytest.raises(ValueError, match=match):
        PointMazeEnv(maze_map=maze_map)


def test_other_options_are_validated():
    for kwargs, match in [
        ({"agent_radius": 0.5}, "agent_radius"),
        ({"position_noise": 0.45}, "position_noise"),
        ({"dt": 0.0}, "dt"),
        ({"max_speed": float("inf")}, "max_speed"),
        ({"reward_type": "shaped"}, "reward_type"),
        ({"success_radius": 0}, "success_radius"),
    ]:
        with pytest.raises(ValueError, match=match):
            PointMazeEnv(**kwargs)


def test_custom_map_and_random_starts_and_goals():
    maze = [
        [1, 1, 1, 1, 1, 1],
        [1, "r", 0, 0, "g", 1],
        [1, "c", 1, 1, 0, 1],
        [1, 1, 1, 1, 1, 1],
    ]
    env = PointMazeEnv(num_envs=2000, maze_map=maze, position_noise=0.25)
    obs, _ = env.reset(seed=0)
    parsed = parse_maze_map(maze)
    assert parsed.reset_cells.tolist() == [[1, 1], [2, 1]] and parsed.goal_cells.tolist() == [[1, 4], [2, 1]]
    start, goal = obs["achieved_goal"].numpy(), obs["desired_goal"].numpy()
    to_cell = lambda p: (np.floor(2 - p[:, 1]).astype(int), np.floor(p[:, 0] + 3).astype(int))  # noqa: E731
    s_cells, g_cells = set(zip(*to_cell(start))), set(zip(*to_cell(goal)))
    assert s_cells == {(1, 1), (2, 1)} and g_cells == {(1, 4), (2, 1)}
    assert (np.array(to_cell(start)) != np.array(to_cell(goal))).any(0).all()  # never start on the goal cell
    centres = parsed.cell_to_xy(np.stack(to_cell(start), -1))
    assert np.abs(start - centres).max() <= 0.25 and np.abs(start - centres).max() > 0.2

    env = PointMazeMediumEnv(num_envs=3000, random_start=True, random_goal=True)
    obs, _ = env.reset(seed=1)
    assert len({tuple(p) for p in obs["achieved_goal"].tolist()}) == 26
    assert len({tuple(p) for p in obs["desired_goal"].tolist()}) == 26
    assert (obs["achieved_goal"] != obs["desired_goal"]).any(-1).all()


def test_seeding_is_reproducible_and_independent_of_num_envs():
    def run(n, seed):
        env = PointMazeLargeEnv(num_envs=n, random_start=True, random_goal=True, position_noise=0.2)
        obs, _ = env.reset(seed=seed)
        out = [obs["observation"][:3].clone(), obs["desired_goal"][:3].clone()]
        actions = torch.rand(20, 32, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
        for t in range(20):
            obs, *_ = env.step(actions[t, :n])
            out.append(obs["observation"][:3].clone())
        return torch.cat([x.flatten() for x in out])

    a, b, c, d = run(32, 7), run(32, 7), run(3, 7), run(32, 8)
    assert torch.equal(a, b) and torch.equal(a, c) and not torch.equal(a, d)


def test_registered_ids():
    for name, cls, limit in [
        ("U", PointMazeEnv, 60),
        ("Medium", PointMazeMediumEnv, 120),
        ("Large", PointMazeLargeEnv, 160),
    ]:
        env = gym.make_vec(f"hrl_nested/PointMaze-{name}-v0", num_envs=2)
        assert type(env) is cls and env.max_episode_steps == limit
        assert isinstance(envs.make(f"hrl_nested/PointMaze-{name}-v0", num_envs=2, random_goal=True), cls)


# ---------------------------------------------------------------------------- success rates


def _distance_tables(env) -> torch.Tensor:
    """dist[goal_cell * H * W + cell]: BFS path length on the maze grid (-1: unreachable)."""
    wall = env.maze.wall
    h, w = wall.shape
    return torch.as_tensor(
        np.stack([bfs_distances(wall, (i, j)) for i in range(h) for j in range(w)]).reshape(-1)
    )


def _waypoint_follower(env, tables):
    """Head for the centre of the neighbouring cell one BFS step closer to the goal (the goal itself in
    its own cell), with a proportional velocity command: a scripted path-follower."""
    h, w = env.maze.shape
    lim = env.max_speed

    def policy(obs):
        p, v, g = obs["observation"][:, :2], obs["observation"][:, 2:], obs["desired_goal"]
        row, col = (h / 2 - p[:, 1]).floor().long(), (p[:, 0] + w / 2).floor().long()
        base = ((h / 2 - g[:, 1]).floor().long() * w + (g[:, 0] + w / 2).floor().long()) * (h * w)
        cand_d, cand_r, cand_c = [], [], []
        for dr, dc in ((-1, 0), (0, 1), (1, 0), (0, -1)):
            r2, c2 = (row + dr).clamp(0, h - 1), (col + dc).clamp(0, w - 1)
            d = tables.index_select(0, base + r2 * w + c2)
            cand_d.append(torch.where(d < 0, 10**9, d))
            cand_r.append(r2)
            cand_c.append(c2)
        k = torch.stack(cand_d, 1).argmin(1, keepdim=True)
        r2, c2 = torch.stack(cand_r, 1).gather(1, k)[:, 0], torch.stack(cand_c, 1).gather(1, k)[:, 0]
        waypoint = torch.stack([c2 + 0.5 - w / 2, h / 2 - (r2 + 0.5)], -1).to(p.dtype)
        in_goal_cell = tables.index_select(0, base + row * w + col) == 0
        waypoint = torch.where(in_goal_cell[:, None], g, waypoint)
        v_cmd = (3.0 * (waypoint - p)).clamp(-lim, lim)
        return ((v_cmd - v) / (env.max_accel * env.dt)).clamp(-1, 1)

    return policy


@pytest.mark.parametrize("cls", CLASSES)
def test_random_policy_rarely_succeeds_and_waypoint_follower_always_does(cls, one_thread):
    n = 10_000
    # compile=False: 10k envs would be compiled by compile="auto" (seconds cold), which this test is not about
    env = cls(num_envs=n, autoreset_mode="same_step", compile=False)
    gen = torch.Generator().manual_seed(0)
    random_rate = first_episode_success_rate(env, lambda obs: torch.rand(n, 2, generator=gen) * 2 - 1)
    scripted_rate = first_episode_success_rate(env, _waypoint_follower(env, _distance_tables(env)))
    # The follower also copes with random starts and goals anywhere, off-centre by up to 0.25.
    hard = cls(
        num_envs=n,
        autoreset_mode="same_step",
        random_start=True,
        random_goal=True,
        position_noise=0.25,
        compile=False,
    )
    hard_rate = first_episode_success_rate(hard, _waypoint_follower(hard, _distance_tables(hard)))
    print(
        f"{cls.__name__}: random {random_rate:.4f}, follower {scripted_rate:.4f}, "
        f"random start/goal {hard_rate:.4f}"
    )
    assert random_rate < 0.02
    assert scripted_rate == 1.0 and hard_rate == 1.0


def test_greedy_distance_shaping_leads_into_the_u_maze_wall():
    env = PointMazeEnv(num_envs=1)
    obs, _ = env.reset(seed=0)
    for _ in range(env.max_episode_steps - 1):  # head straight for the goal, as greedy shaping suggests
        obs, _, terminated, truncated, _ = env.step(
            (3.0 * (obs["desired_goal"] - obs["achieved_goal"])).clamp(-1, 1)
        )
        assert not (terminated.any() or truncated.any())
    assert obs["achieved_goal"][0].tolist() == pytest.approx([-1.0, -0.6], abs=2e-3)  # stuck under the wall


def test_get_and_set_state_continue_exactly():
    env = PointMazeMediumEnv(
        num_envs=16, random_start=True, random_goal=True, position_noise=0.2, max_episode_steps=15
    )
    env.reset(seed=4)
    snap = env.get_state()
    assert set(snap.vars) == {"state", "goal"}
    actions = torch.rand(40, 16, 2, generator=torch.Generator().manual_seed(2)) * 2 - 1
    first = [env.step(a)[0]["observation"].clone() for a in actions]  # crosses several resets
    env.set_state(snap)
    again = [env.step(a)[0]["observation"].clone() for a in actions]
    assert all(torch.equal(x, y) for x, y in zip(first, again))
