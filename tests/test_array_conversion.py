"""Issue 13 item 2: Gymnasium's numpy vector wrappers over our torch envs via `envs.numpy_vector_env`.

Reference: the same wrapper over Gymnasium's own ``SyncVectorEnv`` of our single envs
(``make_vec(..., vectorization_mode="sync")``), reset with the same seeds and stream index 0, so that both
runs draw the same numbers. NEXT_STEP: the whole run matches. SAME_STEP: Gymnasium's single envs reset
one counter later than the batched step, so the runs match up to the first episode end
(its final observation included, not the reset one).
Where Gymnasium refuses a wrapper (observation wrappers over SAME_STEP, a Box-only wrapper over a Dict
observation), ours must refuse it with the same exception type.
"""

import functools

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers import vector as vw

import envs

N, LIMIT, STEPS = 3, 8, 20
SEEDS = [7, 8, 9]


def _wrappers(env_id):
    single = gym.make(env_id).unwrapped
    act = single.action_space
    return {
        "RecordEpisodeStatistics": vw.RecordEpisodeStatistics,
        "NormalizeObservation": vw.NormalizeObservation,
        "NormalizeReward": vw.NormalizeReward,
        "DictInfoToList": vw.DictInfoToList,
        "FlattenObservation": vw.FlattenObservation,
        "RescaleObservation": functools.partial(vw.RescaleObservation, min_obs=-1.0, max_obs=1.0),
        "RescaleAction": functools.partial(
            vw.RescaleAction,
            min_action=2.0 * act.low,
            max_action=2.0 * act.high,  # sampled actions fit
        ),
    }


def _row(x, i):
    return {k: _row(v, i) for k, v in x.items()} if isinstance(x, dict) else x[i]


def _close(a, b, path="out"):
    if isinstance(b, dict):
        assert isinstance(a, dict) and set(a) == set(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in b:
            if k != "t":  # RecordEpisodeStatistics' wall time
                _close(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(b, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(b, np.ndarray) and b.dtype == object:  # Gymnasium's final_obs: None where not ended
        for i, y in enumerate(b):
            if y is not None:
                _close(_row(a, i), y, f"{path}[{i}]")
    else:
        assert isinstance(a, np.ndarray | np.generic | bool | int | float), f"{path}: {type(a)}"
        np.testing.assert_allclose(
            np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-5, atol=1e-6, err_msg=path
        )


def _run(make, actions):
    """The outputs of reset and every step, or the exception that stopped them."""
    try:
        env = make()
        out = [env.reset(seed=SEEDS)]
        for a in actions:
            out.append(env.step(a))
        return out
    except Exception as e:  # noqa: BLE001 - compared with the reference's exception below
        return e


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
@pytest.mark.parametrize("env_id", ["hrl_nested/Pendulum-v1", "hrl_nested/PointMaze-U-v0"])
def test_gymnasium_wrappers_through_numpy_vector_env(env_id, mode):
    wrappers = _wrappers(env_id)
    space = gym.vector.utils.batch_space(gym.make(env_id).unwrapped.action_space, N)
    space.seed(0)
    actions = [space.sample() for _ in range(STEPS)]
    worked = []
    for name, wrap in wrappers.items():

        def ours(wrap=wrap):
            env = envs.make(env_id, N, autoreset_mode=mode, max_episode_steps=LIMIT)
            env.reset(seed=0, options={"env_index": [0] * N})  # stream index 0, as each single env has
            return wrap(envs.numpy_vector_env(env))

        def ref(wrap=wrap):
            return wrap(
                gym.make_vec(
                    env_id,
                    N,
                    vectorization_mode="sync",
                    vector_kwargs={"autoreset_mode": mode},
                    max_episode_steps=LIMIT,
                )
            )

        got, want = _run(ours, actions), _run(ref, actions)
        if isinstance(want, Exception):
            assert isinstance(got, Exception), f"{name}: Gymnasium raised {want!r}, ours ran"
            assert type(got) is type(want), f"{name}: {got!r} vs Gymnasium's {want!r}"
            print(f"{env_id} {mode.name} {name}: refused by Gymnasium and ours alike: {want!r}"[:200])
            continue
        assert not isinstance(got, Exception), f"{name}: ours raised {got!r}, Gymnasium's ran"
        compare = len(want) if mode == AutoresetMode.NEXT_STEP else LIMIT + 1
        for t in range(compare):
            g, w = list(got[t]), list(want[t])
            if mode == AutoresetMode.SAME_STEP and isinstance(w[-1], dict) and "final_obs" not in w[-1]:
                # Gymnasium adds the final_* keys only where an env ended; ours always (documented)
                g[-1] = {k: v for k, v in g[-1].items() if not k.lstrip("_").startswith("final_")}
            if mode == AutoresetMode.SAME_STEP and t == LIMIT:  # the reset observations differ (see top)
                g, w = g[1:], w[1:]
            _close(g, w, f"{name} step {t}")
        worked.append(name)
    # the wrappers Gymnasium supports on any vector env did run (and match) through ours
    assert {"RecordEpisodeStatistics", "NormalizeReward", "DictInfoToList"} <= set(worked), worked
    assert "RescaleAction" in worked
    if mode == AutoresetMode.NEXT_STEP:
        assert "FlattenObservation" in worked
    if env_id.endswith("Pendulum-v1") and mode == AutoresetMode.NEXT_STEP:  # Box obs, NEXT_STEP: all of them
        assert set(worked) == set(wrappers), worked


def test_numpy_vector_env_types_and_reset_mask():
    env = envs.numpy_vector_env(envs.make("hrl_nested/PointMaze-U-v0", 2, autoreset_mode="same_step"))
    obs, info = env.reset(seed=0)
    assert all(isinstance(v, np.ndarray) for v in obs.values())
    obs, reward, term, trunc, info = env.step(np.zeros((2, 2), np.float32))
    assert reward.dtype == np.float32 and term.dtype == np.bool_ and trunc.dtype == np.bool_
    assert isinstance(info["final_obs"]["observation"], np.ndarray) and info["final_info"] == {}
    before = obs["observation"].copy()
    obs, _ = env.reset(options={"reset_mask": np.array([False, True])})  # numpy mask, converted
    np.testing.assert_array_equal(obs["observation"][0], before[0])
    with pytest.raises(ValueError, match="torch vector env"):
        envs.numpy_vector_env(gym.make_vec("CartPole-v1", 2, vectorization_mode="sync"))


def test_numpy_to_torch_on_top_comes_back_to_tensors():
    env = vw.NumpyToTorch(vw.NormalizeReward(envs.numpy_vector_env(envs.make("hrl_nested/Pendulum-v1", 2))))
    obs, _ = env.reset(seed=0)
    assert isinstance(obs, torch.Tensor)
    obs, reward, *_ = env.step(torch.zeros(2, 1))
    assert isinstance(reward, torch.Tensor) and obs.shape == (2, 3)
