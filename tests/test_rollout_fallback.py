"""``compile_step="auto"`` / ``compile="auto"`` fall back to eager on a compiler failure only.

A user's error (a policy that returns the wrong action shape, a bug in a policy or an env) must reach the
caller unchanged, with no "could not compile ... running it eagerly" notice that blames the compiler;
a failure of the compiler itself (a backend error) still falls back, as `test_rollout_fusion` checks.
On CPU ``"auto"`` does not compile a rollout (nor an env under 4096 envs): the tests force the attempt.
"""

import logging

import pytest
import torch

import envs
import envs.compiled_step as compiled_step_mod
import hrl_nested.rollout as rollout_mod
from hrl_nested.networks import ActorCritic, params_of
from hrl_nested.rollout import actor_critic_policy, make_rollout

N, T = 8, 3


@pytest.fixture
def auto_compiles(monkeypatch):
    """``compile_step="auto"`` compiles here (as it does under a CUDA graph), notice included."""
    monkeypatch.setattr(rollout_mod, "resolve_compile_step", lambda *a: True)
    monkeypatch.setattr(rollout_mod, "_notice_given", False)


def setup(policy_of):
    env = envs.make("hrl_nested/CartPole-v1", N, autoreset_mode="same_step", validate=False)
    torch.manual_seed(0)
    ac = ActorCritic(env.single_observation_space, env.single_action_space, hidden=(8,))
    params = {k: v.detach() for k, v in params_of(ac).items()}
    collect = make_rollout(env, policy_of(actor_critic_policy(ac)), T, compile_step="auto")
    obs, _ = env.reset(seed=1)
    return env, collect, params, obs


def fallback_notices(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "could not compile" in r.getMessage()]


def test_wrong_action_shape_propagates_without_a_fallback_notice(auto_compiles, caplog):
    def policy_of(base):
        def policy(params, obs, carry):
            out = base(params, obs, carry)
            return out._replace(action=out.action[: N // 2])

        return policy

    env, collect, params, obs = setup(policy_of)
    before = env.get_state()
    with caplog.at_level(logging.WARNING):
        with pytest.raises(ValueError, match=r"^actions: expected shape \(8,\).*got \(4,\)"):
            collect(params, obs, None)
    assert fallback_notices(caplog) == []
    assert collect.compiled is True  # nothing was learned about the compiler: the next call tries again
    after = env.get_state()
    for k in before.vars:  # rewound: the env is where the call found it
        assert torch.equal(before.vars[k], after.vars[k])


def test_a_bug_in_the_policy_raised_while_compiling_propagates_unchanged(auto_compiles, caplog):
    """The bug only shows under tracing (so the eager probe step passes): dynamo meets it first, and the
    user's own exception, not a fallback to the eager loop, is the answer."""
    bug = KeyError("policy_head.weight")

    def policy_of(base):
        def policy(params, obs, carry):
            if torch.compiler.is_compiling():
                out = base(params, obs, carry)
                return out._replace(action=out.action[: N // 2])  # a wrong shape, met by env.step
            return base(params, obs, carry)

        return policy

    def raising_policy_of(base):
        def policy(params, obs, carry):
            raise bug

        return policy

    _, collect, params, obs = setup(policy_of)
    with caplog.at_level(logging.WARNING):
        with pytest.raises(ValueError, match=r"^actions: expected shape \(8,\)"):
            collect(params, obs, None)
        _, collect, params, obs = setup(raising_policy_of)
        with pytest.raises(KeyError) as info:
            collect(params, obs, None)
    assert info.value is bug
    assert fallback_notices(caplog) == []


def test_eager_error_after_a_compile_failure_is_the_users_error(auto_compiles, monkeypatch, caplog):
    """The compiler fails AND the policy is broken: the policy's error is raised (not the backend's, and
    not chained to it), with no notice, and the collector still means to compile next time."""

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(rollout_mod, "inductor_eager_rng", broken_backend)
    calls = []

    def policy_of(base):
        def policy(params, obs, carry):
            if not torch.compiler.is_compiling():
                calls.append(1)
                if len(calls) > 2:  # the probe step passes; the eager loop's second step fails
                    raise IndexError("policy bug at step 2")
            return base(params, obs, carry)

        return policy

    _, collect, params, obs = setup(policy_of)
    with caplog.at_level(logging.WARNING):
        with pytest.raises(IndexError, match="^policy bug at step 2$") as info:
            collect(params, obs, None)
    assert info.value.__context__ is None and info.value.__cause__ is None
    assert fallback_notices(caplog) == []
    assert collect.compiled is True


def test_compiler_failures_still_fall_back(auto_compiles, monkeypatch, caplog):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(rollout_mod, "inductor_eager_rng", broken_backend)
    _, collect, params, obs = setup(lambda base: base)
    with caplog.at_level(logging.WARNING):
        res = collect(params, obs, None)
    assert res.batch.rewards.shape == (T, N)
    assert collect.compiled is False
    assert len(fallback_notices(caplog)) == 1 and "no C++ compiler here" in fallback_notices(caplog)[0]


def test_is_compile_failure_tells_compiler_errors_from_user_errors():
    from envs.compiled_step import is_compile_failure

    def broken_backend(gm, example_inputs):
        raise RuntimeError("backend died")

    with pytest.raises(Exception) as info:
        torch.compile(lambda x: x.sin() + 1, backend=broken_backend)(torch.ones(3))
    assert is_compile_failure(info.value)
    for user_error in (ValueError("shape"), KeyError("k"), RuntimeError("mat1 and mat2 shapes")):
        assert not is_compile_failure(user_error)


def test_env_auto_compile_passes_on_a_bug_in_the_env(monkeypatch, caplog):
    """The same rule for an env's own ``compile="auto"`` step: an error of the env's transition (which the
    eager step reproduces) is not a compiler failure: raised as itself, no notice, the compile tried again."""
    monkeypatch.setattr(compiled_step_mod, "AUTO_COMPILE_MIN_ENVS_CPU", 1)
    env = envs.make("hrl_nested/CartPole-v1", N)
    assert env.compiled
    env.reset(seed=0)

    def transition(vars, actions, draw):
        raise ZeroDivisionError("a bug in the env's dynamics")

    monkeypatch.setattr(env, "_transition", transition)
    with caplog.at_level(logging.WARNING):
        with pytest.raises(ZeroDivisionError, match="^a bug in the env's dynamics$"):
            env.step(torch.zeros(N, dtype=torch.int64))
    assert fallback_notices(caplog) == []
    assert env._compiled_step.failed is None
