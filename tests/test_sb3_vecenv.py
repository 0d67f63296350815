"""`envs.SB3VecEnv` keeps Stable-Baselines3's VecEnv conventions, checked against SB3's own ``DummyVecEnv``
over Gymnasium's CartPole where a convention can be checked that way, and against closed forms or the
raw torch env elsewhere."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv, VecCheckNan, VecMonitor, VecNormalize

import envs
from envs.classic.cartpole import CartPoleEnv


def _dummy(n: int, **kwargs) -> DummyVecEnv:
    return DummyVecEnv([lambda: gym.make("CartPole-v1", **kwargs) for _ in range(n)])


def _actions(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2, size=n)


def test_wrapped_gymnasium_cartpole_matches_dummy_vec_env_step_for_step():
    """Same Gymnasium envs, same seeds and actions: obs, rewards, dones and infos equal DummyVecEnv's,
    across episode ends (terminal_observation, TimeLimit.truncated, the reset after a done)."""
    n = 3
    ours = envs.SB3VecEnv(envs.make("CartPole-v1", n))  # a NEXT_STEP adapter, switched to SAME_STEP
    ref = _dummy(n)
    assert ours.seed(5) == ref.seed(5) == [5, 6, 7]
    np.testing.assert_array_equal(ours.reset(), ref.reset())
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(120):
        a = _actions(rng, n)
        o1, r1, d1, i1 = ours.step(a)
        o2, r2, d2, i2 = ref.step(a)
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(r1, r2)
        assert r1.dtype == r2.dtype == np.float32 and d1.dtype == d2.dtype == np.bool_
        np.testing.assert_array_equal(d1, d2)
        for a_info, b_info in zip(i1, i2, strict=True):
            assert a_info["TimeLimit.truncated"] == b_info["TimeLimit.truncated"]
            assert ("terminal_observation" in a_info) == ("terminal_observation" in b_info)
            if "terminal_observation" in b_info:
                np.testing.assert_array_equal(a_info["terminal_observation"], b_info["terminal_observation"])
        ends += int(d2.sum())
    assert ends >= 5  # the comparison crossed several episode ends


def test_torch_cartpole_terminal_observation_is_the_true_last_state():
    """From identical states and actions, our batched CartPole ends with the same terminal observation as
    Gymnasium's, the next obs is a fresh reset, and TimeLimit.truncated is False on a termination."""
    n = 2
    env = envs.make("hrl_nested/CartPole-v1", n, autoreset_mode="same_step", dtype=torch.float64)
    ours = envs.SB3VecEnv(env)
    ref = _dummy(n)
    ref.seed(3)
    ref_obs = ref.reset()
    ours.reset()
    env.state = torch.as_tensor(np.stack([e.unwrapped.state for e in ref.envs]), dtype=torch.float64)
    for _ in range(60):
        a = np.ones(n, dtype=np.int64)  # always push right: terminates in a few dozen steps
        o1, r1, d1, i1 = ours.step(a)
        o2, r2, d2, i2 = ref.step(a)
        np.testing.assert_array_equal(d1, d2)
        if d2.any():
            i = int(np.argmax(d2))
            np.testing.assert_allclose(
                i1[i]["terminal_observation"], i2[i]["terminal_observation"], atol=1e-5
            )
            assert i1[i]["TimeLimit.truncated"] is False and i2[i]["TimeLimit.truncated"] is False
            assert np.abs(o1[i]).max() <= 0.05  # the reset observation, not the fallen pole
            break
        np.testing.assert_allclose(o1, o2, atol=1e-5)
        ref_obs = o2
    else:
        pytest.fail("no episode ended")
    assert ref_obs is not None


def test_time_limit_truncated_as_dummy_vec_env():
    n = 2
    ours = envs.SB3VecEnv(envs.make("hrl_nested/CartPole-v1", n, max_episode_steps=3))
    ref = _dummy(n, max_episode_steps=3)
    ours.seed(0)
    ref.seed(0)
    ours.reset()
    ref.reset()
    a = np.zeros(n, dtype=np.int64)
    for t in range(3):
        _, _, d1, i1 = ours.step(a)
        _, _, d2, i2 = ref.step(a)
        np.testing.assert_array_equal(d1, d2)
        assert (
            [x["TimeLimit.truncated"] for x in i1] == [x["TimeLimit.truncated"] for x in i2] == [t == 2] * n
        )
    assert all("terminal_observation" in x for x in i1)


def test_goal_env_terminal_observation_is_a_dict_and_vecnormalize_normalizes_it():
    n = 3
    raw = envs.make("hrl_nested/PointMaze-U-v0", n, autoreset_mode="same_step", max_episode_steps=4)
    twin = envs.make("hrl_nested/PointMaze-U-v0", n, autoreset_mode="same_step", max_episode_steps=4)
    venv = envs.SB3VecEnv(raw)
    venv.seed(1)
    obs = venv.reset()
    twin_obs, _ = twin.reset(seed=[1, 2, 3])
    assert set(obs) == {"observation", "achieved_goal", "desired_goal"}
    rng = np.random.default_rng(0)
    for _ in range(4):
        a = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
        obs, _, dones, infos = venv.step(a)
        _, _, term, trunc, twin_info = twin.step(torch.as_tensor(a))
    assert dones.all() and not term.any() and trunc.all()
    for i, info in enumerate(infos):
        assert info["TimeLimit.truncated"] is True
        term_obs = info["terminal_observation"]
        assert isinstance(term_obs, dict) and set(term_obs) == set(obs)
        for k in term_obs:
            np.testing.assert_array_equal(term_obs[k], twin_info["final_obs"][k][i].numpy())
        assert info["is_success"] is False  # compute_terminated of the final obs: far from the goal

    norm = VecNormalize(
        envs.SB3VecEnv.make("hrl_nested/PointMaze-U-v0", n, max_episode_steps=4), norm_reward=False
    )
    norm.reset()
    for _ in range(4):
        _, _, dones, infos = norm.step(rng.uniform(-1, 1, size=(n, 2)).astype(np.float32))
    assert dones.all()
    term_obs = infos[0]["terminal_observation"]
    assert isinstance(term_obs, dict)
    # VecNormalize normalized it with its running statistics: (x - mean) / sqrt(var + eps), clipped.
    rms = norm.obs_rms["desired_goal"]
    goal = np.array([-1.0, 1.0])  # U-maze's fixed goal
    expected = np.clip((goal - rms.mean) / np.sqrt(rms.var + norm.epsilon), -norm.clip_obs, norm.clip_obs)
    np.testing.assert_allclose(term_obs["desired_goal"], expected, rtol=1e-5, atol=1e-6)


def test_seed_is_used_by_the_next_reset_only_as_seed_plus_i():
    n = 3
    venv = envs.SB3VecEnv(envs.make("hrl_nested/CartPole-v1", n))
    ref = envs.make("hrl_nested/CartPole-v1", n)
    assert venv.seed(7) == [7, 8, 9]
    first = venv.reset()
    np.testing.assert_array_equal(first, ref.reset(seed=[7, 8, 9])[0].numpy())
    assert venv._seeds == [None] * n  # used once, then cleared (SB3's DummyVecEnv.reset)
    second = venv.reset()  # no seed: the envs continue their streams
    np.testing.assert_array_equal(second, ref.reset()[0].numpy())
    assert not np.array_equal(first, second)
    # DummyVecEnv does the same with Gymnasium's CartPole: env i gets seed s + i at the next reset only.
    dummy = _dummy(n)
    dummy.seed(7)
    got = dummy.reset()
    for i in range(n):
        np.testing.assert_array_equal(got[i], gym.make("CartPole-v1").reset(seed=7 + i)[0])
    assert dummy._seeds == [None] * n

    # Some envs seeded, some not: the seeded ones draw exactly what a seeded batch draws.
    venv._seeds = [3, None, 5]
    mixed = venv.reset()
    want = envs.make("hrl_nested/CartPole-v1", n).reset(seed=[3, 0, 5])[0].numpy()
    np.testing.assert_array_equal(mixed[[0, 2]], want[[0, 2]])


def test_set_options_are_used_by_the_next_reset_only():
    n = 2
    venv = envs.SB3VecEnv(envs.make("hrl_nested/CartPole-v1", n))
    venv.seed(4)
    venv.set_options([{"env_index": 10}, {"env_index": 11}])
    obs = venv.reset()
    ref = envs.make("hrl_nested/CartPole-v1", n).reset(seed=[4, 5], options={"env_index": [10, 11]})[0]
    np.testing.assert_array_equal(obs, ref.numpy())
    assert venv._options == [{}, {}]
    venv.set_options([{"reset_mask": [True, False]}, {"other": 1}])
    with pytest.raises(ValueError, match="same for every env"):
        venv.reset()


class _FramedCartPole(CartPoleEnv):
    """CartPole with an rgb_array render mode whose frame says which env it shows."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.render_mode = "rgb_array"

    def render(self, env_index: int = 0) -> np.ndarray:
        return np.full((4, 6, 3), 10 * (env_index + 1), dtype=np.uint8)


def test_get_attr_render_mode_and_get_images():
    plain = envs.SB3VecEnv(envs.make("hrl_nested/CartPole-v1", 2))
    assert plain.get_attr("render_mode") == [None, None] == _dummy(2).get_attr("render_mode")
    assert plain.render_mode is None
    with pytest.warns(UserWarning, match="rgb_array"):
        assert plain.get_images() == [None, None]
    framed = envs.SB3VecEnv(_FramedCartPole(3, autoreset_mode="same_step"))
    assert framed.get_attr("render_mode") == ["rgb_array"] * 3
    assert _dummy(1, render_mode="rgb_array").get_attr("render_mode") == ["rgb_array"]
    images = framed.get_images()
    assert [int(im[0, 0, 0]) for im in images] == [10, 20, 30] and images[0].shape == (4, 6, 3)
    tiled = framed.render(mode="rgb_array")  # SB3's tiling of get_images: a 2 x 2 grid
    assert tiled.shape == (8, 12, 3)


def test_get_images_gives_each_envs_own_frame():
    env = envs.make("hrl_nested/PointMaze-U-v0", 2, autoreset_mode="same_step", render_mode="rgb_array")
    venv = envs.SB3VecEnv(env)
    venv.reset()
    venv.step(np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32))  # the two envs now differ
    images = venv.get_images()
    assert len(images) == 2 and images[0].ndim == 3 and images[0].shape[-1] == 3
    for i in range(2):
        np.testing.assert_array_equal(images[i], env.render(env_index=i))
    assert not np.array_equal(images[0], images[1])


def test_get_attr_set_attr_env_method_env_is_wrapped():
    n = 3
    env = envs.make("hrl_nested/CartPole-v1", n)
    venv = envs.SB3VecEnv(env)
    assert venv.get_attr("max_episode_steps") == [500] * n
    assert venv.get_attr("max_episode_steps", indices=[1]) == [500]
    assert not venv.has_attr("no_such_attribute")
    with pytest.raises(AttributeError):
        venv.get_attr("no_such_attribute")
    venv.set_attr("max_episode_steps", 9)
    assert env.max_episode_steps == 9
    with pytest.raises(ValueError, match="indices must be None or all"):
        venv.set_attr("max_episode_steps", 5, indices=[0])
    assert venv.env_is_wrapped(gym.wrappers.TimeLimit) == [False] * n  # no gym wrappers on a torch env
    wrapped = envs.SB3VecEnv(envs.make("CartPole-v1", 2))
    assert wrapped.env_is_wrapped(gym.wrappers.TimeLimit) == _dummy(2).env_is_wrapped(gym.wrappers.TimeLimit)
    assert wrapped.env_is_wrapped(gym.wrappers.TimeLimit) == [True, True]


@pytest.mark.parametrize("batch", [1, 5, 17])
def test_env_method_compute_reward_shapes_for_her(batch):
    """HER's call: a batch of B goals unrelated to num_envs, ``indices=[0]``, one (B,) array back, equal
    to the sparse reward's closed form 1[||ag - dg|| <= 0.45]; also through SB3's wrappers."""
    n = 3
    venv = VecNormalize(VecMonitor(envs.SB3VecEnv.make("hrl_nested/PointMaze-U-v0", n)))
    rng = np.random.default_rng(batch)
    ag = rng.uniform(-1.5, 1.5, size=(batch, 2)).astype(np.float32)
    dg = (ag + rng.normal(scale=0.4, size=(batch, 2))).astype(np.float32)
    out = venv.env_method("compute_reward", ag, dg, [{} for _ in range(batch)], indices=[0])
    assert isinstance(out, list) and len(out) == 1
    rewards = out[0]
    assert isinstance(rewards, np.ndarray) and rewards.shape == (batch,)
    dist = np.linalg.norm(ag.astype(np.float64) - dg.astype(np.float64), axis=-1)
    np.testing.assert_array_equal(rewards.astype(np.float64), (dist <= 0.45).astype(np.float64))
    assert 0 < (dist <= 0.45).sum() < batch or batch == 1
    assert len(venv.env_method("compute_reward", ag, dg, None)) == n  # one result per env


def test_vec_monitor_normalize_check_nan_stack():
    n = 4
    base = envs.SB3VecEnv.make("hrl_nested/CartPole-v1", n)
    stack = VecCheckNan(VecNormalize(VecMonitor(base), gamma=0.99), raise_exception=True)
    stack.seed(0)
    obs = stack.reset()
    rng = np.random.default_rng(0)
    lengths, returns = np.zeros(n), np.zeros(n)
    episodes = 0
    for _ in range(200):
        obs, _, dones, infos = stack.step(_actions(rng, n))
        raw = stack.venv.get_original_obs()
        raw_rew = stack.venv.get_original_reward()
        norm = stack.venv
        expected = np.clip((raw - norm.obs_rms.mean) / np.sqrt(norm.obs_rms.var + norm.epsilon), -10, 10)
        np.testing.assert_allclose(obs, expected, rtol=1e-5, atol=1e-5)
        lengths += 1
        returns += raw_rew
        for i in np.flatnonzero(dones):
            assert infos[i]["episode"]["l"] == lengths[i]  # VecMonitor counted the same episode
            assert infos[i]["episode"]["r"] == pytest.approx(returns[i], rel=1e-6)
            assert "terminal_observation" in infos[i]
            lengths[i] = returns[i] = 0
            episodes += 1
    assert episodes >= 10
    with pytest.raises(ValueError, match="nan"):
        stack.step(np.array([np.nan, 0, 0, 0]))


def test_same_step_required_or_switched():
    next_step = envs.make("hrl_nested/CartPole-v1", 2)
    envs.SB3VecEnv(next_step)
    assert next_step.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    with pytest.raises(ValueError, match="expected a gymnasium.vector.VectorEnv"):
        envs.SB3VecEnv(gym.make("CartPole-v1"))


def test_numpy_actions_reach_a_float64_box_env():
    env = envs.make("hrl_nested/Pendulum-v1", 2, autoreset_mode="same_step", dtype=torch.float64)
    venv = envs.SB3VecEnv(env)
    venv.reset()
    obs, rew, dones, infos = venv.step(np.zeros((2, 1), dtype=np.float32))  # SB3 gives float32
    assert obs.shape == (2, 3) and rew.shape == (2,) and rew.dtype == np.float32 and len(infos) == 2
