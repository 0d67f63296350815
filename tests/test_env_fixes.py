"""Review fixes of the env suite: sticky stream indices, the adapter under the one invalid-action rule,
unversioned ids, the internal state copy, the deferred error message, and the rollout's capture checks."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs
from envs import rng
from envs.adapter import GymnasiumVectorAdapter
from envs.classic.cartpole import CartPoleEnv
from hrl_nested.networks import ActorCritic, params_of
from hrl_nested.rollout import actor_critic_policy, make_rollout

IDX = [5, 0, 12, 9]


# ---------------------------------------------------------------- 1. the env_index stays with the env
def test_env_index_stays_with_the_env_across_a_reseed_and_a_state_round_trip():
    ref = CartPoleEnv(num_envs=16).reset(seed=4)[0]
    env = CartPoleEnv(num_envs=4)
    env.reset(seed=3, options={"env_index": IDX})
    assert torch.equal(env.reset(seed=4)[0], ref[IDX])  # reseeded without env_index: same indices
    env.reset(seed=3, options={"env_index": IDX})
    fresh = CartPoleEnv(num_envs=4)
    fresh.set_state(env.get_state())
    assert torch.equal(fresh.reset(seed=4)[0], ref[IDX])
    # A list of per-env seeds keeps the indices too.
    assert torch.equal(fresh.reset(seed=[4] * 4)[0], ref[IDX])


# ---------------------------------------------------------------- 2. the adapter's actions and seeds
def _steps(env, actions):
    return [env.step(a) for a in actions]


def _same_outputs(a, b):
    for (o1, r1, te1, tr1, _), (o2, r2, te2, tr2, _) in zip(a, b):
        for x, y in ((o1, o2), (r1, r2), (te1, te2), (tr1, tr2)):
            assert torch.equal(x, y)


def test_adapter_without_validate_clamps_discrete_actions_like_the_torch_envs():
    env, ref = (envs.make("CartPole-v1", 4, validate=False) for _ in range(2))
    env.reset(seed=0)
    ref.reset(seed=0)
    bad = [torch.tensor([0, 5, -3, 1]), torch.tensor([2**40, 1, 0, -1])]
    _same_outputs(_steps(env, bad), _steps(ref, [a.clamp(0, 1) for a in bad]))


def test_adapter_without_validate_sanitises_box_actions_like_the_torch_envs():
    env, ref = (envs.make("MountainCarContinuous-v0", 3, validate=False) for _ in range(2))
    env.reset(seed=0)
    ref.reset(seed=0)
    nan, inf = float("nan"), float("inf")
    bad = torch.tensor([[nan], [7.0], [-inf]])
    good = torch.tensor([[0.0], [1.0], [-1.0]])  # NaN -> middle of [-1, 1]; clamped into the bounds
    out, want = _steps(env, [bad] * 5), _steps(ref, [good] * 5)
    _same_outputs(out, want)
    assert torch.isfinite(out[-1][0]).all()  # no env poisoned
    # The same rule as the torch env's (ActionRule.sanitize), for a task without clip_actions.
    rule = envs.actions.ActionRule(
        env.single_action_space, 3, torch.float32, torch.device("cpu"), False, None
    )
    assert torch.equal(rule.sanitize(bad), good)


def test_adapter_uses_the_neutral_action_the_env_declares():
    class Declares(gym.Env):
        observation_space = gym.spaces.Box(-10, 10, (1,), np.float32)
        action_space = gym.spaces.Box(-1, 3, (1,), np.float32)
        neutral_action = 0.5

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros(1, np.float32), {}

        def step(self, action):
            return np.asarray(action, np.float32), 0.0, False, False, {}

    env = GymnasiumVectorAdapter.from_creator(Declares, num_envs=2, validate=False)
    env.reset(seed=0)
    obs = env.step(torch.tensor([[float("nan")], [9.0]]))[0]
    assert obs.tolist() == [[0.5], [3.0]]


def test_adapter_with_validate_raises_at_once_like_eager_torch_envs():
    env = envs.make("CartPole-v1", 4)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"expected integers in \[0, 2\).*got 5 at env 1"):
        env.step(torch.tensor([0, 5, 1, 0]))
    box = envs.make("MountainCarContinuous-v0", 2)
    box.reset(seed=0)
    with pytest.raises(ValueError, match=r"expected finite values.*NaN/inf\) at env 1"):
        box.step(torch.tensor([[0.0], [float("nan")]]))
    with pytest.raises(ValueError, match=r"within the bounds.*got \[2.0\] at env 0"):
        box.step(torch.tensor([[2.0], [0.0]]))
    with pytest.raises(ValueError, match="expected torch.float32"):
        box.step(torch.zeros(2, 1, dtype=torch.float64))
    box.raise_pending()  # never deferred: a no-op
    env.raise_pending()


@pytest.mark.parametrize("seed", [True, 1.5, -1, 2**64, "3", [1, 2]])
def test_adapter_validates_seeds_like_torch_envs(seed):
    env = envs.make("CartPole-v1", 4)
    with pytest.raises(ValueError, match=r"seed: expected an int in \[0, 2\*\*64\).*got"):
        env.reset(seed=seed)
    with pytest.raises(ValueError, match=r"seed: expected an int in \[0, 2\*\*64\).*got"):
        CartPoleEnv(num_envs=4).reset(seed=seed)


def test_adapter_accepts_the_seeds_torch_envs_accept():
    env = envs.make("CartPole-v1", 2)
    ref = gym.make_vec("CartPole-v1", 2, vectorization_mode="sync")
    for seed in (np.int64(7), torch.tensor(7), 2**64 - 1, [3, 9], np.array([3, 9])):
        obs = env.reset(seed=seed)[0]
        want = ref.reset(seed=int(seed) if np.ndim(seed) == 0 else [int(s) for s in seed])[0]
        assert np.array_equal(obs.numpy(), want)


def test_adapter_refuses_env_index():
    env = envs.make("CartPole-v1", 4)
    with pytest.raises(ValueError, match="env_index.*GymnasiumVectorAdapter"):
        env.reset(seed=0, options={"env_index": IDX})


# ---------------------------------------------------------------- 3. unversioned ids
def test_unversioned_ids_resolve_to_the_latest_version_as_gymnasium_make_does():
    with pytest.warns(UserWarning, match="CartPole-v1"):
        env = envs.make("CartPole", 4)
    with pytest.warns(UserWarning, match="CartPole-v1"):
        want = gym.make("CartPole").spec.id
    assert isinstance(env, GymnasiumVectorAdapter) and env.spec.id == want
    with pytest.warns(UserWarning, match="hrl_nested/CartPole-v1"):
        ours = envs.make("hrl_nested/CartPole", 4)
    assert isinstance(ours, CartPoleEnv)
    with pytest.warns(UserWarning, match="CartPole-v1"):
        colon = envs.make("gymnasium.envs.classic_control:CartPole", 2)
    assert colon.spec.id == "CartPole-v1"
    with pytest.raises(ValueError, match="not a registered"):
        envs.make("NoSuchEnv", 1)
    with pytest.warns(UserWarning, match="Pendulum-v1"):
        assert GymnasiumVectorAdapter.from_id("Pendulum", 2).spec.id == "Pendulum-v1"


# ---------------------------------------------------------------- 4. the internal state copy
def test_internal_state_copy_leaves_recorded_invalid_actions_for_the_next_sync_point():
    env = CartPoleEnv(num_envs=4, validate=True)
    env._defer_checks = True  # as on CUDA
    env.reset(seed=0)
    env.step(torch.tensor([0, 5, 1, 0]))
    s = env._state()  # no raise
    with pytest.raises(ValueError, match=r"envs \[1\]"):
        env.get_state()
    assert all(torch.equal(a, b) for a, b in zip(s.tensors().values(), env.get_state().tensors().values()))


# ---------------------------------------------------------------- 6. the deferred error message
def test_deferred_error_names_the_count_of_further_envs_once():
    env = CartPoleEnv(num_envs=11, validate=True)
    env._defer_checks = True
    env.reset(seed=0)
    env.step(torch.full((11,), 5))
    with pytest.raises(ValueError) as err:
        env.raise_pending()
    msg = str(err.value)
    assert msg.count("3 more") == 1, msg
    assert msg.startswith("actions: envs [0, 1, 2, 3, 4, 5, 6, 7] (and 3 more) got 5, 5, 5, 5, 5, 5, 5, 5 ")


# ---------------------------------------------------------------- 7. the rollout's capture checks
class _NoState:
    """A vector env that declares nothing and has no get_state / set_state."""

    def __init__(self, env):
        self._env = env
        for name in ("num_envs", "device", "dtype", "metadata", "autoreset_mode", "single_action_space"):
            setattr(self, name, getattr(env, name))

    def step(self, a):
        return self._env.step(a)


def test_collector_asks_envs_supports_state():
    env = _NoState(envs.make("hrl_nested/CartPole-v1", 2, autoreset_mode="same_step", validate=False))
    assert not envs.supports_state(env)
    ac = ActorCritic(env._env.single_observation_space, env.single_action_space)
    with pytest.raises(ValueError, match="get_state/set_state"):
        make_rollout(env, actor_critic_policy(ac), 4, capture="static")


_SYNCS = ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero")


def test_deferred_checks_step_without_a_host_sync(monkeypatch):
    """The CUDA path on CPU: branch-free, deferred checks, torch RNG; any host read raises."""
    env = envs.make(
        "hrl_nested/CartPole-v1", 4, autoreset_mode="same_step", validate=True, max_episode_steps=3
    )
    env._defer_checks = env._branch_free = True
    ac = ActorCritic(env.single_observation_space, env.single_action_space)
    collect = make_rollout(env, actor_critic_policy(ac), 5, capture="none")
    obs, _ = env.reset(seed=0)
    monkeypatch.setattr(rng, "_eager_cpu", lambda t: False)

    def sync(*args, **kwargs):
        raise AssertionError("host sync inside a step")

    with monkeypatch.context() as m:
        for name in _SYNCS:
            m.setattr(torch.Tensor, name, sync)
        m.setattr(torch, "nonzero", sync)
        env.step(torch.tensor([0, 5, 1, -2]))
        res = collect._run(params_of(ac), obs, None)  # the loop a capture records
    assert res.batch.rewards.shape == (5, 4)
    with pytest.raises(ValueError, match=r"envs \[1, 3\] got 5, -2"):
        env.raise_pending()


def test_collector_surfaces_deferred_invalid_actions_once_per_collect():
    env = envs.make("hrl_nested/CartPole-v1", 4, autoreset_mode="same_step", validate=True)
    env._defer_checks = True
    ac = ActorCritic(env.single_observation_space, env.single_action_space)

    def bad_policy(params, obs, carry):
        out = actor_critic_policy(ac)(params, obs, carry)
        return out._replace(action=out.action + 7)

    collect = make_rollout(env, bad_policy, 3, capture="static")
    obs, _ = env.reset(seed=0)
    with pytest.raises(ValueError, match=r"envs \[0, 1, 2, 3\]"):
        collect(params_of(ac), obs, None)
