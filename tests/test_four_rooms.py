"""FourRooms (Sutton, Precup & Singh 1999): layout, moves, goals, reward, limits, seeding, success rates."""

from collections import deque

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs
from envs.tasks.four_rooms import FOUR_ROOMS_LAYOUT, HALLWAYS, ROOMS, FourRoomsEnv, four_rooms_free, room_of
from tests._episodes import first_episode_success_rate

UP, RIGHT, DOWN, LEFT = 0, 1, 2, 3
MOVES = {UP: (-1, 0), RIGHT: (0, 1), DOWN: (1, 0), LEFT: (0, -1)}


def _set_pos(env: FourRoomsEnv, cells) -> None:
    env.state = torch.tensor(cells, dtype=torch.int64).expand(env.num_envs, 2).contiguous()


def _act(env: FourRoomsEnv, a: int):
    return env.step(torch.full((env.num_envs,), a, dtype=torch.int64))


def _cell(obs) -> list[list[int]]:
    return torch.round(obs["achieved_goal"] * 12).long().tolist()


def test_layout_has_four_rooms_joined_by_four_hallways():
    free = four_rooms_free()
    assert free.shape == (13, 13) and free.sum() == 104
    assert FOUR_ROOMS_LAYOUT.count("\n") == 12
    sizes = [int(free[r0:r1, c0:c1].sum()) for r0, r1, c0, c1 in ROOMS]
    assert sizes == [(r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in ROOMS] == [25, 30, 25, 20]
    assert all(free[h] and room_of(h) == -1 for h in HALLWAYS)
    assert sum(sizes) + len(HALLWAYS) == 104
    # Each hallway joins exactly two rooms (its two free neighbours lie in different rooms).
    for r, c in HALLWAYS:
        rooms = {room_of((r + dr, c + dc)) for dr, dc in MOVES.values() if free[r + dr, c + dc]}
        assert len(rooms) == 2 and -1 not in rooms


def test_walls_block_and_hallways_pass():
    env = FourRoomsEnv(num_envs=1, max_episode_steps=None)
    env.reset(seed=0)
    _set_pos(env, [1, 1])  # top-left corner of the top-left room
    for a in (UP, LEFT):
        obs, *_ = _act(env, a)
        assert _cell(obs) == [[1, 1]]
    _set_pos(env, [1, 5])  # wall column 6 to the right
    assert _cell(_act(env, RIGHT)[0]) == [[1, 5]]
    _set_pos(env, [3, 5])  # the east hallway of the top-left room
    assert _cell(_act(env, RIGHT)[0]) == [[3, 6]]
    assert _cell(_act(env, UP)[0]) == [[3, 6]]  # hallways are one cell wide
    assert _cell(_act(env, RIGHT)[0]) == [[3, 7]]  # now in the top-right room
    _set_pos(env, [5, 2])
    assert _cell(_act(env, DOWN)[0]) == [[6, 2]]  # south hallway of the top-left room
    assert _cell(_act(env, DOWN)[0]) == [[7, 2]]


def test_start_in_the_room_opposite_the_goal():
    env = FourRoomsEnv(num_envs=2000)
    obs, _ = env.reset(seed=1)
    starts = {tuple(c) for c in _cell(obs)}
    goals = {tuple(c) for c in torch.round(obs["desired_goal"] * 12).long().tolist()}
    assert goals == {(11, 11)}
    assert {room_of(c) for c in starts} == {0}
    assert len(starts) == 25  # every top-left cell is drawn

    env = FourRoomsEnv(num_envs=4000, random_goal=True)
    obs, _ = env.reset(seed=2)
    goal = torch.round(obs["desired_goal"] * 12).long().tolist()
    start = _cell(obs)
    assert len({tuple(g) for g in goal}) == 100  # all room cells, no hallway
    assert all(room_of(tuple(s)) == 3 - room_of(tuple(g)) for s, g in zip(start, goal))


def test_reward_and_termination_on_reaching_the_goal():
    env = FourRoomsEnv(num_envs=2, autoreset_mode="same_step")
    env.reset(seed=0)
    env.state = torch.tensor([[11, 10], [10, 10]])
    obs, reward, terminated, truncated, info = _act(env, RIGHT)
    assert reward.tolist() == [1.0, 0.0] and reward.dtype == torch.float32
    assert terminated.tolist() == [True, False] and not truncated.any()
    final = info["final_obs"]
    assert torch.equal(final["achieved_goal"][0], final["desired_goal"][0])
    assert info["_final_obs"].tolist() == [True, False]
    assert room_of(tuple(_cell(obs)[0])) == 0  # env 0 was reset into the top-left room
    # compute_reward reproduces the step reward, batched, on tensors and numpy arrays.
    ag, dg = final["achieved_goal"], final["desired_goal"]
    assert torch.equal(env.compute_reward(ag, dg, info), reward)
    assert env.compute_reward(ag.numpy(), dg.numpy(), {}).tolist() == [1.0, 0.0]
    assert env.compute_terminated(ag, dg, info).tolist() == [True, False]
    assert not env.compute_truncated(ag, dg, info).any()
    assert env.compute_reward(ag[None].expand(3, 2, 2), dg[None].expand(3, 2, 2)).shape == (3, 2)
    assert env.goal_space == env.single_observation_space["achieved_goal"]
    assert torch.equal(env.achieved_goal(obs), obs["achieved_goal"])


def test_time_limit_is_truncation():
    env = FourRoomsEnv(num_envs=3)
    env.reset(seed=0)
    for t in range(100):
        _, reward, terminated, truncated, _ = _act(env, UP)  # never reaches the bottom-right room
        assert not terminated.any() and reward.sum() == 0
        assert truncated.all() == (t == 99)
    obs, reward, terminated, truncated, _ = _act(env, UP)  # NEXT_STEP: the reset step
    assert not (terminated.any() or truncated.any()) and room_of(tuple(_cell(obs)[0])) == 0


def test_slip_moves_in_one_of_the_other_three_directions():
    env = FourRoomsEnv(num_envs=6000, slip_prob=1.0, max_episode_steps=None, compile=False)  # one step
    env.reset(seed=0)
    _set_pos(env, [3, 3])  # centre of the top-left room: every move is open
    cells = _cell(_act(env, UP)[0])
    moves = [(r - 3, c - 3) for r, c in cells]
    assert (-1, 0) not in moves
    counts = {m: moves.count(m) for m in set(moves)}
    assert set(counts) == {(0, 1), (1, 0), (0, -1)} and min(counts.values()) > 1800

    env = FourRoomsEnv(num_envs=6000, slip_prob=1 / 3, max_episode_steps=None, compile=False)
    env.reset(seed=0)
    _set_pos(env, [3, 3])
    intended = np.mean([c == [2, 3] for c in _cell(_act(env, UP)[0])])
    assert abs(intended - 2 / 3) < 0.03


def test_seeding_is_reproducible_and_independent_of_num_envs():
    def run(n, seed):
        env = FourRoomsEnv(num_envs=n, slip_prob=0.3, random_goal=True)
        obs, _ = env.reset(seed=seed)
        out = [obs["observation"][:4].clone(), obs["desired_goal"][:4].clone()]
        gen = torch.Generator().manual_seed(0)
        actions = torch.randint(0, 4, (30, 64), generator=gen)
        for t in range(30):
            obs, *_ = env.step(actions[t, :n])
            out.append(obs["observation"][:4].clone())
        return torch.stack(out)

    a, b, c, d = run(64, 5), run(64, 5), run(4, 5), run(64, 6)
    assert torch.equal(a, b) and torch.equal(a, c) and not torch.equal(a, d)


def test_get_and_set_state_continue_exactly():
    env = FourRoomsEnv(num_envs=32, slip_prob=0.5, random_goal=True)
    env.reset(seed=3)
    snap = env.get_state()
    actions = torch.randint(0, 4, (20, 32), generator=torch.Generator().manual_seed(1))
    first = [env.step(a)[0]["observation"].clone() for a in actions]
    env.set_state(snap)
    again = [env.step(a)[0]["observation"].clone() for a in actions]
    assert all(torch.equal(x, y) for x, y in zip(first, again))


def test_options_are_validated():
    with pytest.raises(ValueError, match="goal"):
        FourRoomsEnv(goal=(3, 6))  # a hallway
    with pytest.raises(ValueError, match="goal"):
        FourRoomsEnv(goal=(0, 0))  # a wall
    with pytest.raises(ValueError, match="slip_prob"):
        FourRoomsEnv(slip_prob=1.5)
    env = FourRoomsEnv(num_envs=2)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        env.step(torch.tensor([0, 4]))


def test_registered_id_and_float64():
    env = gym.make_vec("hrl_nested/FourRooms-v0", num_envs=4, dtype=torch.float64)
    assert isinstance(env, FourRoomsEnv) and env.max_episode_steps == 100
    obs, _ = env.reset(seed=0)
    assert obs["observation"].dtype == torch.float64
    assert env.single_observation_space["observation"].dtype == np.float64
    assert isinstance(envs.make("hrl_nested/FourRooms-v0", num_envs=2, random_goal=True), FourRoomsEnv)


# ---------------------------------------------------------------------------- success rates


def _bfs_policy_table(free: np.ndarray) -> torch.Tensor:
    """best[goal_cell * 169 + cell]: an action on a shortest path from cell to goal (BFS, from the layout)."""
    n = free.shape[0]
    best = np.zeros((n * n, n * n), dtype=np.int64)
    for gr, gc in np.argwhere(free):
        dist = np.full((n, n), -1)
        dist[gr, gc] = 0
        queue = deque([(gr, gc)])
        while queue:
            r, c = queue.popleft()
            for dr, dc in MOVES.values():
                if free[r + dr, c + dc] and dist[r + dr, c + dc] < 0:
                    dist[r + dr, c + dc] = dist[r, c] + 1
                    queue.append((r + dr, c + dc))
        for r, c in np.argwhere(free):
            options = [(dist[r + dr, c + dc], a) for a, (dr, dc) in MOVES.items() if free[r + dr, c + dc]]
            best[gr * n + gc, r * n + c] = min(options)[1]
    return torch.as_tensor(best.reshape(-1))


@pytest.mark.parametrize("random_goal", [False, True])
def test_random_policy_rarely_succeeds_and_bfs_follower_always_does(random_goal, one_thread):
    n = 10_000
    # compile=False: 10k envs would be compiled by compile="auto" (seconds cold), which this test is not about
    env = FourRoomsEnv(num_envs=n, autoreset_mode="same_step", random_goal=random_goal, compile=False)
    gen = torch.Generator().manual_seed(0)
    random_rate = first_episode_success_rate(env, lambda obs: torch.randint(0, 4, (n,), generator=gen))
    table = _bfs_policy_table(four_rooms_free())

    def follower(obs):
        cell = torch.round(obs["achieved_goal"] * 12).long()
        goal = torch.round(obs["desired_goal"] * 12).long()
        idx = (goal[:, 0] * 13 + goal[:, 1]) * 169 + cell[:, 0] * 13 + cell[:, 1]
        return table.index_select(0, idx)

    scripted_rate = first_episode_success_rate(env, follower)
    print(f"FourRooms random_goal={random_goal}: random {random_rate:.4f}, BFS follower {scripted_rate:.4f}")
    assert scripted_rate == 1.0
    if not random_goal:  # the default task
        assert random_rate < 0.02
