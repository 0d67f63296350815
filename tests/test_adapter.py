"""GymnasiumVectorAdapter: any Gymnasium env behind the torch vector interface."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv
from gymnasium.vector import AutoresetMode, VectorEnv

import envs
from envs.adapter import GymnasiumVectorAdapter


class MixedSpacesEnv(gym.Env):
    """Every supported space, in a Dict observation and a Dict action; ends after 3 steps."""

    metadata = {"render_modes": []}

    def __init__(self, extra_space: gym.Space | None = None):
        spaces = {
            "image": gym.spaces.Box(0, 255, (3, 4), dtype=np.uint8),
            "pos": gym.spaces.Box(-1.0, 1.0, (2,), dtype=np.float64),
            "door": gym.spaces.Discrete(3),
            "keys": gym.spaces.MultiBinary(4),
            "inventory": gym.spaces.MultiDiscrete([2, 5]),
            "pair": gym.spaces.Tuple(
                (gym.spaces.Discrete(2), gym.spaces.Box(0.0, 1.0, (1,), dtype=np.float32))
            ),
        }
        if extra_space is not None:
            spaces["mission"] = extra_space
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Dict(
            {"move": gym.spaces.Box(-1.0, 1.0, (2,), dtype=np.float32), "pick": gym.spaces.Discrete(2)}
        )
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample() if seed is None else self._obs(), {"level": 7}

    def _obs(self):
        self.observation_space.seed(int(self.np_random.integers(1 << 30)))
        return self.observation_space.sample()

    def step(self, action):
        assert self.action_space.contains(action), action
        self.t += 1
        return self._obs(), float(action["pick"]), self.t >= 3, False, {"t": self.t}


class GoalEnv(gym.Env):
    """A tiny Gymnasium-Robotics-style goal env: move a point on a line towards a goal."""

    metadata = {"render_modes": []}
    observation_space = gym.spaces.Dict(
        {
            k: gym.spaces.Box(-10.0, 10.0, (1,), dtype=np.float64)
            for k in ("observation", "achieved_goal", "desired_goal")
        }
    )
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.goal = np.zeros(1), np.array([3.0])
        return self._obs(), {}

    def _obs(self):
        return {
            "observation": self.x.copy(),
            "achieved_goal": self.x.copy(),
            "desired_goal": self.goal.copy(),
        }

    def compute_reward(self, achieved_goal, desired_goal, info):
        return -(np.abs(achieved_goal - desired_goal) > 0.5).astype(np.float64)[..., 0]

    def step(self, action):
        self.x = np.clip(self.x + action.astype(np.float64), -10, 10)
        obs = self._obs()
        return (
            obs,
            float(self.compute_reward(obs["achieved_goal"], obs["desired_goal"], {})),
            False,
            False,
            {},
        )


def test_plain_gymnasium_id_matches_sync_vector_env():
    env = envs.make("CartPole-v1", num_envs=4)
    assert isinstance(env, GymnasiumVectorAdapter) and isinstance(env, VectorEnv)
    assert env.num_envs == 4 and env.device == torch.device("cpu") and env.dtype == torch.float32
    assert env.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP and env.max_episode_steps == 500
    assert env.observation_space.shape == (4, 4) and env.single_action_space == gym.spaces.Discrete(2)
    ref = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
    obs, info = env.reset(seed=3)
    ref_obs, _ = ref.reset(seed=3)
    assert obs.dtype == torch.float32 and np.array_equal(obs.numpy(), ref_obs)
    rng = np.random.default_rng(0)
    for _ in range(60):
        a = rng.integers(0, 2, size=4)
        obs, reward, terminated, truncated, info = env.step(torch.as_tensor(a))
        ref_obs, ref_r, ref_te, ref_tr, _ = ref.step(a)
        assert np.array_equal(obs.numpy(), ref_obs) and np.array_equal(reward.numpy(), ref_r)
        assert terminated.dtype == torch.bool and np.array_equal(terminated.numpy(), ref_te)
        assert np.array_equal(truncated.numpy(), ref_tr)
    env.close()


def test_same_step_gives_full_final_obs_tensors():
    env = envs.make("CartPole-v1", num_envs=3, autoreset_mode="same_step", dtype=torch.float64)
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    obs, _ = env.reset(seed=0)
    seen_end = False
    for _ in range(60):
        prev = obs
        obs, reward, terminated, truncated, info = env.step(torch.ones(3, dtype=torch.int64))
        final, mask = info["final_obs"], info["_final_obs"]
        assert final.shape == (3, 4) and final.dtype == torch.float64 and mask.dtype == torch.bool
        assert torch.equal(mask, terminated | truncated)
        assert torch.equal(final[~mask], obs[~mask])  # rows of envs that did not end: the observation
        if mask.any():
            seen_end = True
            # Rows of envs that ended: their true last state (one push past the previous one), not the reset.
            assert (final[mask, 0] - prev[mask, 0]).abs().max() < 0.1 and obs[mask].abs().max() <= 0.05
    assert seen_end


def test_next_step_reset_step_has_reward_zero():
    env = envs.make("CartPole-v1", num_envs=2)
    env.reset(seed=0)
    pending = torch.zeros(2, dtype=torch.bool)
    reset_steps = 0
    for _ in range(40):
        obs, reward, terminated, truncated, _ = env.step(torch.zeros(2, dtype=torch.int64))
        assert (reward[pending] == 0).all() and not (terminated | truncated)[pending].any()
        reset_steps += int(pending.sum())
        pending = terminated | truncated
    assert reset_steps >= 2  # pushing left ends an episode in ~10 steps: the check above really ran


def test_every_supported_space_converts_both_ways():
    env = GymnasiumVectorAdapter.from_creator(MixedSpacesEnv, num_envs=3, max_episode_steps=10)
    space = env.single_observation_space
    assert space["pos"].dtype == np.float32 and space["image"].dtype == np.uint8  # float Boxes follow dtype
    obs, info = env.reset(seed=1)
    assert obs["image"].dtype == torch.uint8 and obs["image"].shape == (3, 3, 4)
    assert (
        obs["pos"].dtype == torch.float32 and obs["door"].dtype == torch.int64 and obs["door"].shape == (3,)
    )
    assert obs["keys"].dtype == torch.int8 and obs["inventory"].shape == (3, 2)
    assert isinstance(obs["pair"], tuple) and obs["pair"][1].shape == (3, 1)
    assert info["level"].tolist() == [7, 7, 7] and info["_level"].all()
    action = {"move": torch.zeros(3, 2), "pick": torch.tensor([0, 1, 1])}
    obs, reward, *_, info = env.step(action)
    assert reward.tolist() == [0.0, 1.0, 1.0] and info["t"].tolist() == [1, 1, 1]
    assert envs.check_vector_env(env) == []


@pytest.mark.parametrize(
    "space",
    [
        gym.spaces.Text(20),
        gym.spaces.Sequence(gym.spaces.Discrete(3)),
        gym.spaces.Graph(gym.spaces.Discrete(2), None),
    ],
)
def test_unsupported_spaces_name_the_space_the_key_and_the_way_out(space):
    with pytest.raises(ValueError) as err:
        GymnasiumVectorAdapter.from_creator(MixedSpacesEnv, num_envs=2, extra_space=space)
    msg = str(err.value)
    assert type(space).__name__ in msg and "'mission'" in msg and "FilterObservation" in msg


def test_entry_point_of_a_gym_env_class_is_wrapped():
    env = envs.make("gymnasium.envs.classic_control.cartpole:CartPoleEnv", num_envs=2, max_episode_steps=9)
    assert isinstance(env, GymnasiumVectorAdapter) and env.max_episode_steps == 9
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, 4)


def test_the_way_out_works_filter_observation():
    keep = ["image", "pos", "door"]
    env = GymnasiumVectorAdapter.from_creator(
        MixedSpacesEnv,
        num_envs=2,
        extra_space=gym.spaces.Text(10),
        wrappers=[lambda e: gym.wrappers.FilterObservation(e, filter_keys=keep)],
    )
    assert sorted(env.single_observation_space.spaces) == sorted(keep)
    obs, _ = env.reset(seed=0)
    assert sorted(obs) == sorted(keep)


def test_unsupported_action_space_is_named():
    class TextAction(MixedSpacesEnv):
        def __init__(self):
            super().__init__()
            self.action_space = gym.spaces.Text(5)

    with pytest.raises(ValueError, match=r"action space: Text.*ActionWrapper"):
        GymnasiumVectorAdapter.from_creator(TextAction, num_envs=1)


def test_goal_env_through_the_adapter():
    env = GymnasiumVectorAdapter.from_creator(
        GoalEnv, num_envs=2, max_episode_steps=5, autoreset_mode="same_step"
    )
    obs, _ = env.reset(seed=0)
    assert env.goal_space == env.single_observation_space["achieved_goal"]
    assert torch.equal(env.achieved_goal(obs), obs["achieved_goal"])
    obs, reward, *_ = env.step(torch.tensor([[1.0], [-1.0]]))
    assert torch.equal(env.compute_reward(obs["achieved_goal"], obs["desired_goal"], {}), reward)
    assert env.compute_reward(torch.tensor([[3.0], [0.0]]), torch.tensor([[3.0], [3.0]])).tolist() == [
        0.0,
        -1.0,
    ]
    assert envs.check_vector_env(env) == []


def test_actions_are_checked():
    env = envs.make("CartPole-v1", num_envs=2)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        env.step(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="integer"):
        env.step(torch.zeros(2))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        env.step(torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="on cpu"):
        env.step(torch.zeros(2, dtype=torch.int64, device="meta"))
    pend = envs.make("Pendulum-v1", num_envs=2)
    pend.reset(seed=0)
    with pytest.raises(ValueError, match="NaN"):
        pend.step(torch.tensor([[0.0], [float("nan")]]))


def test_reset_mask_seeds_and_kwargs():
    env = envs.make("CartPole-v1", num_envs=3, max_episode_steps=7)
    assert env.max_episode_steps == 7
    first, _ = env.reset(seed=5)
    again, _ = env.reset(seed=5)
    assert torch.equal(first, again)
    env.step(torch.ones(3, dtype=torch.int64))
    moved = env.step(torch.ones(3, dtype=torch.int64))[0]
    obs, _ = env.reset(options={"reset_mask": torch.tensor([True, False, False])})
    assert torch.equal(obs[1:], moved[1:]) and not torch.equal(obs[0], moved[0])
    truncated = torch.zeros(3, dtype=torch.bool)
    env.reset(seed=0)
    for _ in range(7):
        *_, truncated, _ = env.step(torch.tensor([0, 1, 0]))
    assert truncated.all()


def test_vector_env_classes_and_bad_inputs():
    env = envs.make("gymnasium.envs.classic_control.cartpole:CartPoleVectorEnv", num_envs=4)
    assert isinstance(env, GymnasiumVectorAdapter) and env.autoreset_mode == AutoresetMode.NEXT_STEP
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 4) and obs.dtype == torch.float32
    with pytest.raises(ValueError, match="declares"):
        GymnasiumVectorAdapter.from_creator(CartPoleVectorEnv, num_envs=2, autoreset_mode="same_step")
    with pytest.raises(ValueError, match="gymnasium.Env"):
        GymnasiumVectorAdapter.from_creator(lambda: object(), num_envs=1)
    with pytest.raises(ValueError, match="not a registered"):
        envs.make("NoSuchEnv-v0", num_envs=1)
    with pytest.raises(NotImplementedError, match="get_state"):
        env.get_state()
    with pytest.raises(ValueError, match="autoreset_mode"):
        GymnasiumVectorAdapter(gym.vector.SyncVectorEnv([MixedSpacesEnv], autoreset_mode="Disabled"))


def test_id_with_only_a_numpy_vector_entry_point_is_wrapped():
    env_id = "my_project/CartPoleVectorOnly-v0"
    gym.register(
        id=env_id,
        vector_entry_point="gymnasium.envs.classic_control.cartpole:CartPoleVectorEnv",
        max_episode_steps=500,
    )
    try:
        env = envs.make(env_id, num_envs=3)
        assert isinstance(env, GymnasiumVectorAdapter) and env.max_episode_steps == 500
        assert envs.check_vector_env(env, num_steps=64) == []
        with pytest.raises(ValueError, match="declares"):
            envs.make(env_id, num_envs=3, autoreset_mode="same_step")
    finally:
        gym.registry.pop(env_id, None)
