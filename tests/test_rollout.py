"""Fused rollouts: batch layout, a slow reference loop, episode ends, carry, resume, static buffers."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs
from envs.core import Draw, TorchVectorEnv
from hrl_nested.batch import tree_map
from hrl_nested.distributions import Categorical
from hrl_nested.networks import ActorCritic, params_of, select_member, stack_modules, vmap_apply
from hrl_nested.rollout import PolicyOutput, RolloutResult, actor_critic_policy, make_rollout

N, T = 6, 30


def cartpole(n=N, device="cpu", max_steps=20, **kw):
    # A short time limit so that both terminations and truncations happen within T steps.
    return envs.make(
        "hrl_nested/CartPole-v1",
        n,
        device=device,
        autoreset_mode="same_step",
        validate=False,
        max_episode_steps=max_steps,
        **kw,
    )


def agent(seed=0):
    torch.manual_seed(seed)
    env = cartpole(1)
    return ActorCritic(env.single_observation_space, env.single_action_space)


def greedy_policy(module):
    def policy_fn(params, obs, carry):
        logits, value = torch.func.functional_call(module, params, (obs,))
        d = Categorical(logits)
        a = d.mode()
        return PolicyOutput(a, d.log_prob(a), value, carry)

    return policy_fn


def collect_once(capture="none", seed=0, steps=T, collects=1, n=N):
    ac = agent()
    env = cartpole(n)
    collect = make_rollout(env, actor_critic_policy(ac), steps, capture=capture)
    obs, _ = env.reset(seed=seed)
    torch.manual_seed(123)
    out = []
    carry = None
    for _ in range(collects):
        res = collect(params_of(ac), obs, carry)
        obs, carry = res.obs, res.carry
        out.append(res)
    return out


def test_batch_shapes_and_dtypes():
    (res,) = collect_once()
    assert isinstance(res, RolloutResult)
    b = res.batch
    assert b.obs.shape == (T, N, 4) and b.next_obs.shape == (T, N, 4) and b.obs.dtype == torch.float32
    assert b.actions.shape == (T, N) and b.actions.dtype == torch.int64
    for x in (b.logprobs, b.values, b.rewards):
        assert x.shape == (T, N) and x.dtype == torch.float32
    assert b.terminated.dtype == torch.bool and b.truncated.dtype == torch.bool
    assert b.next_values is None and b.carry is None
    assert res.obs.shape == (N, 4)
    assert res.episode_return_sum.shape == () and res.episode_count.dtype == torch.int64
    assert b.terminated.any() and b.truncated.any()  # both kinds of episode end occur


def slow_reference(seed=0):
    """The same rollout written as a plain loop over t and over envs, with Python accumulators."""
    ac = agent()
    env = cartpole()
    policy = actor_critic_policy(ac)
    params = params_of(ac)
    obs, _ = env.reset(seed=seed)
    torch.manual_seed(123)
    rows = {k: [] for k in ("obs", "act", "logp", "v", "r", "next", "term", "trunc")}
    ep_ret, ep_len = [0.0] * N, [0] * N
    ret_sum, len_sum, count = 0.0, 0, 0
    with torch.no_grad():
        for _ in range(T):
            out = policy(params, obs, None)
            nxt, r, te, tr, info = env.step(out.action)
            true_next = nxt.clone()
            for n in range(N):
                ep_ret[n] += float(r[n])
                ep_len[n] += 1
                if bool(te[n]) or bool(tr[n]):
                    true_next[n] = info["final_obs"][n]
                    ret_sum, len_sum, count = ret_sum + ep_ret[n], len_sum + ep_len[n], count + 1
                    ep_ret[n], ep_len[n] = 0.0, 0
            for k, x in zip(rows, (obs, out.action, out.logprob, out.value, r, true_next, te, tr)):
                rows[k].append(x)
            obs = nxt
    return {k: torch.stack(v) for k, v in rows.items()}, (ret_sum, len_sum, count), obs


def test_equals_slow_reference_loop():
    (res,) = collect_once()
    ref, (ret_sum, len_sum, count), last_obs = slow_reference()
    b = res.batch
    for name, ours in zip(
        ref, (b.obs, b.actions, b.logprobs, b.values, b.rewards, b.next_obs, b.terminated, b.truncated)
    ):
        torch.testing.assert_close(ours, ref[name], msg=name)
    torch.testing.assert_close(res.obs, last_obs)
    assert res.episode_return_sum.item() == pytest.approx(ret_sum)
    assert res.episode_length_sum.item() == len_sum and res.episode_count.item() == count > 0


def test_next_obs_is_true_final_obs_and_no_dummy_transition():
    (res,) = collect_once()
    b = res.batch
    done = b.terminated | b.truncated
    # inside an episode the next row continues from next_obs; at its end the next row is a fresh reset
    cont = ~done[:-1]
    torch.testing.assert_close(b.next_obs[:-1][cont], b.obs[1:][cont])
    assert (b.obs[1:][done[:-1]].abs() <= 0.05).all()
    assert not torch.equal(b.next_obs[:-1][done[:-1]], b.obs[1:][done[:-1]])
    assert (b.rewards == 1).all()  # a NEXT_STEP dummy reset transition would carry reward 0
    # every transition is a real CartPole step: re-simulate each (obs_t, a_t) from its state
    chk = envs.make("hrl_nested/CartPole-v1", N, max_episode_steps=None)
    chk.reset(seed=0)
    for t in range(T):
        s = chk.get_state()
        s.vars["state"] = b.obs[t].clone()
        s.needs_reset.zero_()
        chk.set_state(s)
        o, _, te, _, _ = chk.step(b.actions[t])
        torch.testing.assert_close(o, b.next_obs[t])
        assert torch.equal(te, b.terminated[t])
    # terminated final observations are outside the bounds, truncated ones inside
    x, th = b.next_obs[..., 0], b.next_obs[..., 2]
    outside = (x.abs() > 2.4) | (th.abs() > 12 * 2 * np.pi / 360)
    assert torch.equal(outside, b.terminated)


def test_resume_two_collects_equal_one_long():
    a1, a2 = collect_once(steps=T // 2, collects=2)
    (b,) = collect_once(steps=T)
    for name in ("obs", "actions", "logprobs", "values", "rewards", "next_obs", "terminated", "truncated"):
        cat = torch.cat([getattr(a1.batch, name), getattr(a2.batch, name)])
        torch.testing.assert_close(cat, getattr(b.batch, name), msg=name)
    torch.testing.assert_close(a2.obs, b.obs)
    total = a1.episode_return_sum + a2.episode_return_sum
    assert total.item() == pytest.approx(b.episode_return_sum.item())
    assert (a1.episode_count + a2.episode_count).item() == b.episode_count.item()
    assert (a1.episode_length_sum + a2.episode_length_sum).item() == b.episode_length_sum.item()


def test_accumulators_state_dict_roundtrip():
    ac = agent()
    env = cartpole()
    collect = make_rollout(env, greedy_policy(ac), 7)
    obs, _ = env.reset(seed=0)
    res = collect(params_of(ac), obs)
    sd, env_state = collect.state_dict(), env.get_state()
    assert sd["episode_length"].shape == (N,) and sd["episode_length"].dtype == torch.int64
    res2 = collect(params_of(ac), res.obs)
    sd2 = collect.state_dict()
    collect.load_state_dict(sd)
    env.set_state(env_state)
    res3 = collect(params_of(ac), res.obs)
    for x, y in zip(tree_leaves(res2), tree_leaves(res3)):
        assert torch.equal(x, y)
    for k in sd2:
        assert torch.equal(sd2[k], collect.state_dict()[k])
    # an episode that spans both collects is counted once, with its full length
    long = make_rollout(cartpole(), greedy_policy(ac), 14)
    obs, _ = long.env.reset(seed=0)
    full = long(params_of(ac), obs)
    assert (res.episode_length_sum + res2.episode_length_sum).item() == full.episode_length_sum.item()
    with pytest.raises(ValueError, match="keys"):
        collect.load_state_dict({"x": torch.zeros(N)})


def test_error_on_next_step_env_and_bad_args():
    env = envs.make("hrl_nested/CartPole-v1", 2)
    ac = agent()
    with pytest.raises(ValueError, match="SAME_STEP"):
        make_rollout(env, actor_critic_policy(ac), 4)
    with pytest.raises(ValueError, match="capture"):
        make_rollout(cartpole(2), actor_critic_policy(ac), 4, capture="graph")
    with pytest.raises(ValueError, match="num_steps"):
        make_rollout(cartpole(2), actor_critic_policy(ac), 0)
    with pytest.raises(ValueError, match="CUDA"):
        make_rollout(cartpole(2), actor_critic_policy(ac), 4, capture="cuda_graph")


def run_with_update(capture, policy_factory, seed=0, device="cpu", **rollout_kw):
    """Three collects, with an in-place and then a functional parameter update in between."""
    ac = agent()
    env = cartpole(16, device=device)
    ac = ac.to(env.device)
    collect = make_rollout(env, policy_factory(ac), 12, capture=capture, **rollout_kw)
    obs, _ = env.reset(seed=seed)
    torch.manual_seed(7)
    params = {k: v.detach().clone() for k, v in params_of(ac).items()}
    out = [collect(params, obs)]
    with torch.no_grad():
        for v in params.values():
            v.mul_(-3.0)  # in place: the static copy must not alias the caller's tensors
    out.append(collect(params, out[-1].obs))
    params = {k: v * 0.5 + 0.1 for k, v in params.items()}  # a new dict, as functional optimizers return
    out.append(collect(params, out[-1].obs))
    return out, collect


@pytest.mark.parametrize("policy_factory", [actor_critic_policy, greedy_policy])
def test_static_buffers_equal_eager_after_param_update(policy_factory):
    eager, _ = run_with_update("none", policy_factory)
    static, collect = run_with_update("static", policy_factory)
    ptrs = [t.data_ptr() for t in collect._static[0].values()]
    for e, s in zip(eager, static):
        for x, y in zip(tree_leaves(e), tree_leaves(s)):
            torch.testing.assert_close(x, y)
    assert [t.data_ptr() for t in collect._static[0].values()] == ptrs  # copied into, never replaced
    assert not torch.equal(eager[0].batch.actions, eager[1].batch.actions)  # the update changed behaviour
    with pytest.raises(ValueError, match="params"):
        collect({"w": torch.zeros(1)}, static[-1].obs)


def test_static_output_not_aliased():
    _, collect = run_with_update("static", greedy_policy)
    obs = torch.zeros(16, 4)
    params = {k: v.detach() for k, v in params_of(agent()).items()}
    r1 = collect(params, obs)
    keep = r1.batch.obs.clone()
    collect(params, r1.obs)
    assert torch.equal(r1.batch.obs, keep)


def tree_leaves(res):
    out = []
    tree_map(lambda t: out.append(t) or t, res)
    return out


class LineGoalEnv(TorchVectorEnv):
    """A 1-D goal task with a Dict observation and a Box action the env does NOT clip itself."""

    def __init__(self, num_envs=4, device="cpu", **kw):
        box = gym.spaces.Box(-10.0, 10.0, (1,), np.float32)
        super().__init__(
            num_envs,
            single_observation_space=gym.spaces.Dict(
                {"observation": box, "achieved_goal": box, "desired_goal": box}
            ),
            single_action_space=gym.spaces.Box(-1.0, 1.0, (1,), np.float32),
            max_episode_steps=6,
            device=device,
            **kw,
        )

    def _sample_reset(self, draw: Draw):
        return {"state": draw.uniform(1, -1.0, 1.0), "goal": draw.uniform(1, 2.0, 3.0)}

    def _transition(self, vars, action, draw):
        pos = vars["state"] + action
        return {"state": pos, "goal": vars["goal"]}, action[:, 0], (pos - vars["goal"]).abs()[:, 0] < 0.5

    def _observe(self, vars):
        return {
            "observation": vars["state"].clone(),
            "achieved_goal": vars["state"].clone(),
            "desired_goal": vars["goal"].clone(),
        }


def test_dict_obs_and_box_actions_clipped_for_env_only():
    env = LineGoalEnv(8, autoreset_mode="same_step", validate=False)
    torch.manual_seed(0)
    ac = ActorCritic(env.single_observation_space, env.single_action_space, log_std_init=1.0)
    collect = make_rollout(env, actor_critic_policy(ac), 20)
    obs, _ = env.reset(seed=3)
    res = collect(params_of(ac), obs)
    b = res.batch
    assert set(b.obs) == {"observation", "achieved_goal", "desired_goal"} and b.obs["observation"].shape == (
        20,
        8,
        1,
    )
    assert b.actions.abs().max() > 1.0  # the batch keeps the unclipped Gaussian action ...
    torch.testing.assert_close(b.rewards, b.actions[..., 0].clamp(-1, 1))  # ... the env got the clipped one
    done = b.terminated | b.truncated
    assert b.terminated.any() and b.truncated.any()
    for k in b.obs:
        cont = ~done[:-1]
        torch.testing.assert_close(b.next_obs[k][:-1][cont], b.obs[k][1:][cont])
    pos = b.next_obs["observation"][..., 0]
    torch.testing.assert_close(pos, b.obs["observation"][..., 0] + b.actions[..., 0].clamp(-1, 1))
    assert torch.equal((pos - b.obs["desired_goal"][..., 0]).abs() < 0.5, b.terminated)


# ---------------------------------------------------------------- a manager-like carry over a policy stack
K, C = 3, 4


def manager_policy(base):
    """Every C steps (and at every episode start) pick a member per env; act with that member."""

    def policy_fn(params, obs, carry):
        new_segment = carry["steps_left"] <= 0
        draw = torch.randint(0, K, carry["member"].shape, device=obs.device)
        member = torch.where(new_segment, draw, carry["member"])
        steps_left = (
            torch.where(new_segment, torch.full_like(carry["steps_left"], C), carry["steps_left"]) - 1
        )
        logits, value = select_member(vmap_apply(base, params, obs), member)
        d = Categorical(logits)
        a = d.mode()
        return PolicyOutput(a, d.log_prob(a), value, {"member": member, "steps_left": steps_left})

    return policy_fn


def end_segment_at_episode_end(carry, done):
    return {
        **carry,
        "steps_left": torch.where(done, torch.zeros_like(carry["steps_left"]), carry["steps_left"]),
    }


def run_manager(capture="none", steps=24, collects=1, n=16):
    torch.manual_seed(0)
    members = [ActorCritic(gym.spaces.Box(-5, 5, (4,)), gym.spaces.Discrete(2)) for _ in range(K)]
    stacked, base = stack_modules(members)
    stacked = {k: v.detach() for k, v in stacked.items()}
    env = cartpole(n)
    collect = make_rollout(
        env, manager_policy(base), steps, capture=capture, reset_carry=end_segment_at_episode_end
    )
    obs, _ = env.reset(seed=5)
    carry = {"member": torch.zeros(n, dtype=torch.long), "steps_left": torch.zeros(n, dtype=torch.long)}
    torch.manual_seed(11)
    out = []
    for _ in range(collects):
        res = collect(stacked, obs, carry)
        obs, carry = res.obs, res.carry
        out.append(res)
    return out, members


def test_manager_carry_over_policy_stack():
    (res,), members = run_manager()
    b = res.batch
    member, left = b.carry["member"], b.carry["steps_left"]
    assert member.shape == (24, 16) and left.shape == (24, 16) and member.dtype == torch.long
    done = b.terminated | b.truncated
    # a segment keeps its member; a new one starts after C steps or at an episode start
    new_seg = torch.ones_like(done)
    new_seg[1:] = (left[:-1] == 0) | done[:-1]
    assert torch.equal(left, torch.where(new_seg, C - 1, torch.cat([left[:1], left[:-1] - 1])))
    assert torch.equal(member[1:][~new_seg[1:]], member[:-1][~new_seg[1:]])
    assert set(member.unique().tolist()) == set(range(K))  # different members per env and over time
    # each env's action is its chosen member's greedy action, with that member's value
    for k, m in enumerate(members):
        logits, value = m(b.obs)
        sel = member == k
        assert torch.equal(b.actions[sel], logits.argmax(-1)[sel])
        torch.testing.assert_close(b.values[sel], value[sel])
    # resumable: carry threaded through two collects equals one long collect
    (r1, r2), _ = run_manager(steps=12, collects=2)
    for name in ("actions", "values", "obs"):
        torch.testing.assert_close(
            torch.cat([getattr(r1.batch, name), getattr(r2.batch, name)]), getattr(b, name)
        )
    for key in ("member", "steps_left"):
        torch.testing.assert_close(torch.cat([r1.batch.carry[key], r2.batch.carry[key]]), b.carry[key])
        torch.testing.assert_close(r2.carry[key], res.carry[key])
    # the static-buffer path (the CUDA-graph logic) threads the carry identically
    (rs,), _ = run_manager(capture="static")
    for x, y in zip(tree_leaves(rs), tree_leaves(res)):
        torch.testing.assert_close(x, y)


@pytest.mark.cuda
@pytest.mark.parametrize("policy_factory", [greedy_policy, actor_critic_policy])
def test_cuda_graph_equals_eager_after_param_update(policy_factory):
    # the graph replays the same eager kernels: equal up to float noise (the compiled step: the next test)
    eager, _ = run_with_update("none", policy_factory, device="cuda", compile_step=False)
    graph, collect = run_with_update("cuda_graph", policy_factory, device="cuda", compile_step=False)
    assert collect._graph is not None
    for e, g in zip(eager, graph):
        for x, y in zip(tree_leaves(e), tree_leaves(g)):
            torch.testing.assert_close(x, y, msg="graph replay differs from eager")
    assert not torch.equal(eager[0].batch.actions, eager[1].batch.actions)


@pytest.mark.cuda
@pytest.mark.parametrize("policy_factory", [actor_critic_policy, greedy_policy])
def test_compiled_cuda_graph_equals_eager_after_param_update(policy_factory):
    """The CUDA default (compile_step="auto": the whole step compiled, then captured): the same actions and
    episode ends as eager, floats within the compiled path's documented low-bit tolerance."""
    eager, _ = run_with_update("none", policy_factory, device="cuda", compile_step=False)
    graph, collect = run_with_update("cuda_graph", policy_factory, device="cuda")
    assert collect._graph is not None
    for e, g in zip(eager, graph):
        assert torch.equal(e.batch.actions, g.batch.actions)
        for x, y in zip(tree_leaves(e), tree_leaves(g)):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5, msg="compiled graph differs from eager")


def test_compiled_step_equals_eager():
    def run(compiled):
        ac = agent()
        env = cartpole(16, compile=compiled)
        collect = make_rollout(env, greedy_policy(ac), 10, compile_step=compiled)
        obs, _ = env.reset(seed=0)
        params = {k: v.detach() for k, v in params_of(ac).items()}
        first = collect(params, obs)
        return [first, collect(params, first.obs)]

    for x, y in zip(tree_leaves(run(False)), tree_leaves(run(True))):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
