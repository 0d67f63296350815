"""Issue 13 items 1 and 5: ``gymnasium.make`` of one env; seeding, DISABLED autoreset, reset_mask."""

import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import envs
from envs.core import TorchVectorEnv
from envs.registration import _IDS

IDS = [f"hrl_nested/{name}" for name in _IDS]


def _count_wrappers(env, cls):
    n = 0
    while isinstance(env, gym.Wrapper):
        n += isinstance(env, cls)
        env = env.env
    return n


@pytest.mark.parametrize("env_id", IDS)
def test_make_gives_a_single_env_that_passes_check_env(env_id):
    env = gym.make(env_id)  # PassiveEnvChecker on by default
    assert _count_wrappers(env, gym.wrappers.PassiveEnvChecker) == 1
    assert _count_wrappers(env, gym.wrappers.TimeLimit) == 1
    assert env.unwrapped.vector_env.max_episode_steps is None  # the limit lives in TimeLimit only
    assert env.spec.max_episode_steps == _IDS[env_id.split("/")[1]][1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*(infinity|symmetric and normalized).*")
        check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and isinstance(info, dict)
    env.action_space.seed(0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)
    assert type(reward) is float and type(terminated) is bool and type(truncated) is bool
    env.spec.to_json()  # the spec stays serializable (string entry points)


def test_single_env_replays_env_zero_of_the_vector_env():
    """Independent reference: the batched env with the same seed and stream index."""
    single = gym.make("hrl_nested/Acrobot-v1")
    vec = envs.make("hrl_nested/Acrobot-v1", 1)
    o1, _ = single.reset(seed=5)
    o2, _ = vec.reset(seed=5)
    np.testing.assert_array_equal(o1, o2[0].numpy())
    for a in [0, 2, 1, 1, 0, 2, 2]:
        o1, r1, t1, _, _ = single.step(np.int64(a))
        o2, r2, t2, _, _ = vec.step(torch.tensor([a]))
        np.testing.assert_array_equal(o1, o2[0].numpy())
        assert r1 == float(r2[0]) and t1 == bool(t2[0])


@pytest.mark.parametrize("limit", [None, 7])
def test_time_limit_applied_once(limit):
    kwargs = {} if limit is None else {"max_episode_steps": limit}
    env = gym.make("hrl_nested/Pendulum-v1", **kwargs)  # Pendulum never terminates
    expected = 200 if limit is None else limit
    env.reset(seed=1)
    flags = [env.step(np.zeros(1, np.float32))[2:4] for _ in range(expected)]
    assert all(not term for term, _ in flags)
    assert [trunc for _, trunc in flags] == [False] * (expected - 1) + [True]
    # one more episode: the count restarts at reset, so the limit hits at exactly `expected` again
    env.reset()
    assert [env.step(np.zeros(1, np.float32))[3] for _ in range(expected)].count(True) == 1


def test_step_after_termination_needs_a_reset():
    env = gym.make("hrl_nested/CartPole-v1").unwrapped
    env.reset(seed=0)
    terminated = False
    while not terminated:
        terminated = env.step(np.int64(1))[2]
    with pytest.raises(AssertionError, match="reset"):
        env.step(np.int64(1))
    env.reset()
    env.step(np.int64(1))


def test_bad_single_actions_are_refused():
    env = gym.make("hrl_nested/Pendulum-v1").unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"expected shape \(1,\)"):
        env.step(np.zeros(2, np.float32))
    env.step(np.array([0.5]))  # float64, as Gymnasium's Pendulum takes it: cast to the space's dtype


def test_make_vec_sync_and_default_modes():
    sync = gym.make_vec("hrl_nested/PointMaze-U-v0", 3, vectorization_mode="sync")
    assert isinstance(sync, gym.vector.SyncVectorEnv)
    obs, _ = sync.reset(seed=0)
    assert isinstance(obs["observation"], np.ndarray) and obs["observation"].shape == (3, 4)
    sync.step(sync.action_space.sample())
    assert isinstance(gym.make_vec("hrl_nested/PointMaze-U-v0", 3), TorchVectorEnv)


def test_make_vec_async_runs_in_a_fresh_process():
    """In a subprocess: the forked workers must not hang after the parent ran multi-threaded torch."""
    code = """
import faulthandler, gymnasium as gym, torch, envs
faulthandler.dump_traceback_later(60, exit=True)
torch.set_num_threads(2)
torch.randn(2000, 2000) @ torch.randn(2000, 2000)  # parallel work in the parent before the fork
env = gym.make_vec("hrl_nested/CartPole-v1", 2, vectorization_mode="async")
obs, _ = env.reset(seed=0)
assert obs.shape == (2, 4), obs.shape
for _ in range(30):
    obs, r, term, trunc, info = env.step(env.action_space.sample())
env.close()
print("async ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "async ok" in out.stdout, out.stderr[-2000:]


# ---------------------------------------------------------------- item 5


def test_np_random_seed_follows_reset_seed():
    """An entropy seed is reported and replays the run. ``np_random_seed`` after ``reset(seed=...)``
    (kept by a seedless reset, -1 for per-env seeds) is checked in test_gym_citizen_review.py, on this
    env and on a wrapped Gymnasium one."""
    fresh = envs.make("hrl_nested/CartPole-v1", 4)
    o1, _ = fresh.reset()  # an entropy seed, reported so that the run can be replayed
    again = envs.make("hrl_nested/CartPole-v1", 4)
    o2, _ = again.reset(seed=fresh.np_random_seed)
    torch.testing.assert_close(o1, o2, rtol=0, atol=0)


def test_metadata_torch():
    for env_id in IDS:
        assert envs.make(env_id, 2).metadata["torch"] is True


def test_all_false_reset_mask_raises_like_gymnasium():
    ref = gym.make_vec("hrl_nested/CartPole-v1", 3, vectorization_mode="sync")
    ref.reset(seed=0)
    with pytest.raises(ValueError):
        ref.reset(options={"reset_mask": np.zeros(3, dtype=bool)})
    env = envs.make("hrl_nested/CartPole-v1", 3)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="reset_mask: expected at least one True"):
        env.reset(options={"reset_mask": torch.zeros(3, dtype=torch.bool)})


@pytest.mark.parametrize("mode", [AutoresetMode.DISABLED, "disabled"])
def test_disabled_mode_accepted_by_make_and_make_vec(mode):
    for env in (
        envs.make("hrl_nested/CartPole-v1", 2, autoreset_mode=mode),
        gym.make_vec("hrl_nested/CartPole-v1", 2, autoreset_mode=mode),
    ):
        assert env.autoreset_mode == AutoresetMode.DISABLED
        assert env.metadata["autoreset_mode"] == AutoresetMode.DISABLED


def _run_disabled(env, to_backend, n_steps=60):
    """Step with action 1; reset ended envs by mask; record (obs, reward, term, trunc) as numpy."""
    out = []
    obs, _ = env.reset(seed=[10, 11, 12])
    for _ in range(n_steps):
        obs, r, term, trunc, info = env.step(to_backend(np.ones(3, dtype=np.int64)))
        out.append(tuple(np.asarray(x) for x in (obs, r, term, trunc)))
        ended = np.asarray(term) | np.asarray(trunc)
        if ended.any():
            obs, _ = env.reset(options={"reset_mask": to_backend(ended)})
            out.append((np.asarray(obs),))
    return out


def test_disabled_mode_matches_gymnasium_sync_vector_env():
    """Reference: Gymnasium's SyncVectorEnv in DISABLED mode over the same single envs (stream index 0
    each, seeds 10, 11, 12), so that both runs draw the same numbers."""
    ref = gym.make_vec(
        "hrl_nested/CartPole-v1",
        3,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.DISABLED},
        max_episode_steps=25,
    )
    ours = envs.make("hrl_nested/CartPole-v1", 3, autoreset_mode="disabled", max_episode_steps=25)
    ours.reset(seed=0, options={"env_index": [0, 0, 0]})
    got = _run_disabled(ours, torch.as_tensor)
    want = _run_disabled(ref, lambda x: x)
    assert len(got) == len(want) and any(len(x) == 1 for x in want)  # some resets happened
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            np.testing.assert_allclose(a, b, rtol=1e-6)


def test_disabled_mode_refuses_to_step_an_ended_env_and_changes_nothing():
    env = envs.make("hrl_nested/Pendulum-v1", 2, autoreset_mode="disabled", max_episode_steps=3)
    env.reset(seed=0)
    for _ in range(3):
        env.step(torch.zeros(2, 1))
    before = env.get_state()
    with pytest.raises(AssertionError, match=r"envs \[0, 1\] have ended"):  # as Gymnasium asserts
        env.step(torch.zeros(2, 1))
    with pytest.raises(ValueError):  # and a ValueError, for callers that catch bad input
        env.step(torch.zeros(2, 1))
    for k, v in env.get_state().tensors().items():
        torch.testing.assert_close(v, before.tensors()[k], rtol=0, atol=0)
    env.reset(options={"reset_mask": torch.tensor([True, False])})
    with pytest.raises(AssertionError, match=r"envs \[1\]"):
        env.step(torch.zeros(2, 1))
    env.reset(options={"reset_mask": torch.tensor([False, True])})
    _, _, term, trunc, info = env.step(torch.zeros(2, 1))
    assert info == {} and not (term | trunc).any()


def test_env_match_and_pickle():
    import pickle

    from gymnasium.utils.env_match import check_environments_match

    a, b = gym.make("hrl_nested/CartPole-v1"), gym.make("hrl_nested/CartPole-v1")
    check_environments_match(a, b, num_steps=100, seed=3)
    copy = pickle.loads(pickle.dumps(a))  # the per-id class pickles by name
    assert type(copy.unwrapped) is type(a.unwrapped)
    o1, _ = a.reset(seed=9)
    o2, _ = copy.reset(seed=9)
    np.testing.assert_array_equal(o1, o2)


def test_single_env_render_passes_check_env():
    env = gym.make("hrl_nested/PointMaze-U-v0", render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    np.testing.assert_array_equal(frame, env.unwrapped.vector_env.render())  # its one env's frame
    check_env(env.unwrapped)  # with Gymnasium's render checks
    plain = gym.make("hrl_nested/CartPole-v1")
    plain.reset(seed=0)
    assert plain.render() is None  # no render_mode: None, as Gymnasium's envs


def test_readme_gymnasium_snippets_run_as_written():
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("\n## Gymnasium\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for code in blocks:  # later blocks use the names of earlier ones, as a reader runs them
            exec(compile(code, "README.md", "exec"), namespace)
