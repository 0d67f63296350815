"""check_vector_env: passes on every env we ship, and names each kind of deliberately broken env."""

import gymnasium as gym
import pytest
import torch
from gymnasium.vector import AutoresetMode

import envs
from envs.checker import EnvCheckError, check_vector_env
from envs.registration import _IDS, NAMESPACE
from envs.tasks.four_rooms import FourRoomsEnv
from envs.template import CorridorEnv


@pytest.mark.parametrize("mode", ["next_step", "same_step"])
@pytest.mark.parametrize("name", sorted(_IDS))
def test_passes_on_every_registered_env(name, mode):
    env = envs.make(f"{NAMESPACE}/{name}", num_envs=8, autoreset_mode=mode)
    assert check_vector_env(env) == []


@pytest.mark.parametrize(
    ("make", "kwargs"),
    [
        ("envs.template:CorridorEnv", {}),
        ("envs.template:CorridorEnv", {"dtype": torch.float64, "autoreset_mode": "same_step"}),
        ("hrl_nested/FourRooms-v0", {"random_goal": True, "slip_prob": 0.3, "dtype": torch.float64}),
        (
            "hrl_nested/PointMaze-Large-v0",
            {"random_start": True, "random_goal": True, "position_noise": 0.25},
        ),
        ("CartPole-v1", {}),
        ("CartPole-v1", {"autoreset_mode": "same_step"}),
        ("Pendulum-v1", {"max_episode_steps": 20, "autoreset_mode": "same_step"}),
    ],
)
def test_passes_on_options_the_template_and_the_adapter(make, kwargs):
    assert check_vector_env(envs.make(make, num_envs=4, **kwargs)) == []


# ---------------------------------------------------------------------------- broken envs
class Corridor(CorridorEnv):
    """The template corridor with a short time limit, so that every check sees truncations."""

    def __init__(self, num_envs: int = 16, **kwargs):
        kwargs.setdefault("max_episode_steps", 5)
        super().__init__(num_envs, **kwargs)


class WrongShape(Corridor):
    def _observe(self, vars):
        return vars["state"].expand(-1, 3) / 9


class WrongDtype(Corridor):
    def _observe(self, vars):
        return super()._observe(vars).double()


class WrongDevice(Corridor):
    def _observe(self, vars):
        return super()._observe(vars).to("meta")


class OutsideSpace(Corridor):
    def _observe(self, vars):
        return super()._observe(vars) * 2 + 0.5


class NumpyObs(Corridor):
    def reset(self, **kwargs):
        obs, info = super().reset(**kwargs)
        return obs.numpy(), info


class MissingAutoreset(Corridor):
    def __init__(self):
        super().__init__()
        self.metadata = {"render_modes": []}


class StringAutoreset(Corridor):
    def __init__(self):
        super().__init__()
        self.metadata = {**self.metadata, "autoreset_mode": "same_step"}


class DisabledAutoreset(Corridor):
    def __init__(self):
        super().__init__()
        self.metadata = {**self.metadata, "autoreset_mode": AutoresetMode.DISABLED}


class TimeLimitAsTerminated(Corridor):
    def step(self, actions):
        obs, reward, terminated, truncated, info = super().step(actions)
        return obs, reward, terminated | truncated, torch.zeros_like(truncated), info


class FlagsEqual(Corridor):
    def step(self, actions):
        obs, reward, terminated, truncated, info = super().step(actions)
        done = terminated | truncated
        return obs, reward, done, done.clone(), info


class LimitNotReported(Corridor):
    def step(self, actions):
        obs, reward, terminated, truncated, info = super().step(actions)
        return obs, reward, terminated, torch.zeros_like(truncated), info


class Unseeded(Corridor):
    def _sample_reset(self, draw):
        return {"state": torch.randint(0, self.length // 2, (draw.key.shape[0], 1)).to(self.dtype)}


class RewardShape(Corridor):
    def step(self, actions):
        obs, reward, *rest = super().step(actions)
        return (obs, reward[:, None], *rest)


class RewardInt(Corridor):
    def step(self, actions):
        obs, reward, *rest = super().step(actions)
        return (obs, reward.long(), *rest)


class BoolAsFloat(Corridor):
    def step(self, actions):
        obs, reward, terminated, truncated, info = super().step(actions)
        return obs, reward, terminated.float(), truncated, info


class SameStepWithoutFinalObs(Corridor):
    def __init__(self):
        super().__init__(autoreset_mode="same_step")

    def step(self, actions):
        *out, info = super().step(actions)
        return (*out, {})


class SameStepClaimsNextStep(SameStepWithoutFinalObs):
    """Resets on the same step but says NEXT_STEP; a step cost makes every post-reset step visible."""

    def __init__(self):
        super().__init__()
        self.metadata = {**self.metadata, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def _transition(self, vars, action, draw):
        new, reward, terminated = super()._transition(vars, action, draw)
        return new, reward - 0.1, terminated


class WrongMask(Corridor):
    def __init__(self):
        super().__init__(autoreset_mode="same_step")

    def step(self, actions):
        *out, info = super().step(actions)
        info["_final_obs"] = torch.zeros_like(info["_final_obs"])
        return (*out, info)


class UnbatchedSpace(Corridor):
    def __init__(self):
        super().__init__()
        self.observation_space = self.single_observation_space


class Raises(Corridor):
    def step(self, actions):
        raise RuntimeError("boom")


class BadComputeReward(FourRoomsEnv):
    def compute_reward(self, achieved_goal, desired_goal, info=None):
        return super().compute_reward(achieved_goal, desired_goal, info) - 1.0


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (WrongShape, r"step observation has shape \(16, 3\), expected \(16, 1\)"),
        (WrongDtype, r"observation has dtype torch.float64, expected torch.float32"),
        (WrongDevice, r"observation is on meta, expected env.device = cpu"),
        (OutsideSpace, r"observation is outside the declared space Box\(0.0, 1.0"),
        (NumpyObs, r"reset observation is a ndarray, expected a torch.Tensor"),
        (MissingAutoreset, r"metadata\['autoreset_mode'\] is missing"),
        (StringAutoreset, r"metadata\['autoreset_mode'\] is 'same_step', expected AutoresetMode"),
        (DisabledAutoreset, r"AutoresetMode.DISABLED.*expected AutoresetMode.NEXT_STEP"),
        (TimeLimitAsTerminated, r"ended at the time limit \(max_episode_steps=5\) with truncated=False"),
        (FlagsEqual, r"terminated and truncated were equal at all \d+ episode ends"),
        (LimitNotReported, r"ran 6 steps, past max_episode_steps=5, without truncated=True"),
        (Unseeded, r"two resets with seed=0 .* differ .*seeding is not reproducible"),
        (RewardShape, r"reward has shape \(16, 1\), expected \(16,\)"),
        (RewardInt, r"reward has dtype torch.int64, expected a floating-point dtype"),
        (BoolAsFloat, r"terminated has dtype torch.float32, expected torch.bool"),
        (SameStepWithoutFinalObs, r"SAME_STEP, but info lacks 'final_obs'"),
        (SameStepClaimsNextStep, r"metadata says NEXT_STEP, but .*did you mean SAME_STEP"),
        (WrongMask, r"info\['_final_obs'\]\[\d+\] is False but terminated \| truncated is True"),
        (UnbatchedSpace, r"env.observation_space is Box\(0.0, 1.0, \(1,\), float32\), expected batch_space"),
        (Raises, r"reset/step raised RuntimeError: boom"),
        (
            lambda: BadComputeReward(num_envs=8),
            r"compute_reward\(.*\) = -1.0 disagrees with the step reward 0.0",
        ),
        (lambda: gym.make("CartPole-v1"), r"expected a gymnasium.vector.VectorEnv"),
        (lambda: gym.make_vec("CartPole-v1", 2, vectorization_mode="sync"), r"env.device is None"),
    ],
)
def test_catches_each_kind_of_broken_env(make, match):
    with pytest.raises(EnvCheckError, match=match):
        check_vector_env(make())


def test_reports_every_problem_at_once_and_can_only_warn():
    class TwoBugs(Unseeded, RewardInt):
        pass

    with pytest.raises(ValueError) as err:  # EnvCheckError is a ValueError
        check_vector_env(TwoBugs())
    assert "2 problem(s)" in str(err.value) and "seeding" in str(err.value) and "reward" in str(err.value)
    with pytest.warns(UserWarning, match="seeding is not reproducible"):
        problems = check_vector_env(Unseeded(), warn_only=True)
    assert len(problems) == 1 and "seed=0" in problems[0]


def test_checker_is_exported():
    assert envs.check_vector_env is check_vector_env and "check_vector_env" in envs.__all__
