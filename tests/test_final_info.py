"""Issue 13 item 4: SAME_STEP ``final_info`` / ``_final_info`` beside ``final_obs`` / ``_final_obs``."""

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

import envs

LIMIT = 6


def _ours(compile=False):
    return envs.make(
        "hrl_nested/Pendulum-v1", 3, autoreset_mode="same_step", max_episode_steps=LIMIT, compile=compile
    )


def test_final_info_on_every_step_with_the_ended_mask():
    env = _ours()
    env.reset(seed=0)
    ended_steps = 0
    for _ in range(2 * LIMIT + 1):
        _, _, term, trunc, info = env.step(torch.zeros(3, 1))
        assert {"final_obs", "_final_obs", "final_info", "_final_info"} <= set(info)
        assert info["final_info"] == {}  # the tasks report no per-step info
        assert info["_final_info"].dtype == torch.bool and info["_final_info"].shape == (3,)
        torch.testing.assert_close(info["_final_info"], term | trunc, rtol=0, atol=0)
        torch.testing.assert_close(info["_final_info"], info["_final_obs"], rtol=0, atol=0)
        assert info["final_obs"].shape == (3, 3)  # full batch on every step
        ended_steps += bool(info["_final_info"].any())
    assert ended_steps == 2


def test_final_info_matches_gymnasium_sync_vector_env():
    """Reference: Gymnasium's SyncVectorEnv in SAME_STEP mode over our single envs (same seeds and
    stream index 0): the same masks and final_info contents where an env ended, and the same final_obs
    (the episodes are identical up to the first reset)."""
    ref = gym.make_vec(
        "hrl_nested/Pendulum-v1",
        3,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
        max_episode_steps=LIMIT,
    )
    ours = _ours()
    ref.reset(seed=[4, 5, 6])
    ours.reset(seed=[4, 5, 6], options={"env_index": [0, 0, 0]})
    for t in range(LIMIT):
        a = np.full((3, 1), 0.3 * (t % 3) - 0.3, dtype=np.float32)
        _, _, _, _, want = ref.step(a)
        _, _, _, _, got = ours.step(torch.as_tensor(a))
        if "_final_info" not in want:
            assert not got["_final_info"].any()
            continue
        np.testing.assert_array_equal(got["_final_info"].numpy(), want["_final_info"])
        np.testing.assert_array_equal(got["_final_obs"].numpy(), want["_final_obs"])
        assert set(got["final_info"]) == set(want["final_info"])
        ended = want["_final_obs"]
        np.testing.assert_allclose(
            got["final_obs"].numpy()[ended], np.stack(want["final_obs"][ended]), rtol=1e-6
        )
    assert want["_final_info"].all()  # the last step ended every env (time limit)


def test_dict_info_to_list_reads_final_info_like_gymnasium():
    from gymnasium.wrappers.vector import DictInfoToList

    env = DictInfoToList(envs.numpy_vector_env(_ours()))
    env.reset(seed=0)
    for t in range(LIMIT):
        _, _, _, _, infos = env.step(np.zeros((3, 1), np.float32))
        assert len(infos) == 3
        for info in infos:
            assert ("final_info" in info) == (t == LIMIT - 1)
            assert ("final_obs" in info) == (t == LIMIT - 1)


def test_adapter_same_step_has_the_same_keys_on_every_step():
    env = envs.make("CartPole-v1", 2, autoreset_mode="same_step")  # a Gymnasium id, wrapped
    env.reset(seed=0)
    for _ in range(30):
        _, _, term, trunc, info = env.step(torch.ones(2, dtype=torch.long))
        assert {"final_obs", "_final_obs", "final_info", "_final_info"} <= set(info)
        torch.testing.assert_close(info["_final_info"], term | trunc, rtol=0, atol=0)
