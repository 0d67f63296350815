"""The compiled rollout step as one region: no graph break, no op between steps, the eager rollout's numbers.

Kernel launches are what a CUDA-graph rollout pays per step. On this CPU the proxy is the torch profiler:
every compiled call shows as one ``Torch-Compiled Region`` event, and every aten op that runs outside
such a region (a buffer copy, a sum, an add between steps) is a kernel the fused step did not absorb.
One compile (a module fixture) serves the structural tests; the chi-square test checks the compiled
sampler against float64 categorical probabilities.
"""

import logging

import pytest
import torch
from scipy import stats
from torch.profiler import ProfilerActivity, profile

import envs
import hrl_nested.rollout as rollout_mod
from hrl_nested.distributions import Categorical
from hrl_nested.networks import ActorCritic, params_of
from hrl_nested.pytree import tree_leaves
from hrl_nested.rollout import actor_critic_policy, inductor_eager_rng, make_rollout

N, T = 16, 6
# Allocations and views launch no kernel; everything else outside a compiled region would.
NO_KERNEL = {
    "empty", "empty_strided", "as_strided", "view", "_unsafe_view", "alias", "detach", "t", "transpose",
    "unsqueeze", "squeeze", "select", "slice", "expand", "permute", "reshape", "_reshape_alias", "unbind",
    "lift_fresh", "resize_", "result_type", "empty_like", "view_as", "expand_as", "contiguous",
}  # fmt: skip


def cartpole(compile: bool, n: int = N):
    # A short time limit: terminations and truncations both happen within a few rollouts.
    opts = dict(autoreset_mode="same_step", validate=False, max_episode_steps=9)
    return envs.make("hrl_nested/CartPole-v1", n, compile=compile, **opts)


def counting_policy(ac):
    """The actor-critic's sampled step, plus a carry that counts steps (so the carry buffer is checked)."""
    base = actor_critic_policy(ac)

    def policy_fn(params, obs, carry):
        return base(params, obs, carry)._replace(carry={"k": carry["k"] + 1})

    return policy_fn


def setup(compiled: bool, capture: str = "static", compile_step=None):
    env = cartpole(compiled)
    torch.manual_seed(0)
    ac = ActorCritic(env.single_observation_space, env.single_action_space, hidden=(16, 16))
    params = {k: v.detach() for k, v in params_of(ac).items()}
    step = compiled if compile_step is None else compile_step
    collect = make_rollout(env, counting_policy(ac), T, capture=capture, compile_step=step)
    obs, _ = env.reset(seed=3)
    torch.manual_seed(11)  # the policy's sampling stream, the same for both
    return env, collect, params, obs


def rollouts(collect, params, obs, k=3):
    out, carry = [], {"k": torch.zeros(N, dtype=torch.int64)}
    for _ in range(k):
        res = collect(params, obs, carry)
        out.append(res)
        obs, carry = res.obs, res.carry
    return out


@pytest.fixture(scope="module")
def compiled_runs():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    env, collect, params, obs = setup(True)
    runs = rollouts(collect, params, obs)
    counters = {k: dict(v) for k, v in torch._dynamo.utils.counters.items()}
    return collect, params, runs, counters


def ops_outside_regions(fn) -> tuple[int, dict[str, int]]:
    """(compiled-region calls, {aten op: count} of the kernel-launching ops run outside any region)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    regions, outside = 0, {}
    for e in prof.events():
        if e.name.startswith("Torch-Compiled Region"):
            regions += 1
            continue
        if not e.name.startswith("aten::") or e.name[6:] in NO_KERNEL:
            continue
        p, nested = e.cpu_parent, False
        while p is not None and not nested:
            nested = p.name.startswith("aten::") or p.name.startswith("Torch-Compiled Region")
            p = p.cpu_parent
        if not nested:
            outside[e.name] = outside.get(e.name, 0) + 1
    return regions, outside


def test_one_compiled_region_per_step_and_no_graph_break(compiled_runs):
    collect, params, runs, counters = compiled_runs
    assert counters.get("stats", {}).get("unique_graphs") == 1, counters  # one graph: no break, no recompile
    assert not counters.get("graph_break"), counters["graph_break"]
    assert not counters.get("recompiles"), counters["recompiles"]
    regions, outside = ops_outside_regions(lambda: collect(params, runs[-1].obs, runs[-1].carry))
    assert regions == T, f"expected one compiled call per step, got {regions} for {T} steps"
    # Per call, not per step: the copies into the static inputs, the final sums and clones. Today's main
    # ran 9 buffer copies and 3 sum adds per step outside the compiled step (about 12 * T here).
    assert sum(outside.values()) <= 40, outside


def test_compiled_rollout_equals_eager(compiled_runs):
    """Same env seed and sampling stream: the compiled rollout takes the eager rollout's actions exactly
    (fallback_random); floats agree to 1e-5 (inductor's fused arithmetic changes low bits only)."""
    _, _, runs, _ = compiled_runs
    _, collect, params, obs = setup(False)
    eager = rollouts(collect, params, obs)
    ended = 0
    # batch.carry holds the carry each step returned: 1..T, then T+1..2T; every (t, env) row written
    assert torch.equal(runs[1].batch.carry["k"], T + 1 + torch.arange(T).view(T, 1).expand(T, N))
    for e, c in zip(eager, runs):
        assert torch.equal(e.batch.actions, c.batch.actions)
        assert torch.equal(e.batch.terminated, c.batch.terminated)
        assert torch.equal(e.batch.truncated, c.batch.truncated)
        for x, y in zip(tree_leaves(e), tree_leaves(c)):
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5)
        ended += int(e.episode_count)
    assert ended > 0  # the episode sums were exercised


def test_compile_step_auto_resolution_and_bad_values():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert rollout_mod.resolve_compile_step("auto", "cuda_graph", cuda) is True
    assert rollout_mod.resolve_compile_step("auto", "none", cpu) is False
    assert rollout_mod.resolve_compile_step("auto", "static", cpu) is False
    assert rollout_mod.resolve_compile_step(False, "cuda_graph", cuda) is False
    env = cartpole(False, 2)
    policy = actor_critic_policy(ActorCritic(env.single_observation_space, env.single_action_space))
    with pytest.raises(ValueError, match=r"^compile_step: expected True, False or 'auto', got 'yes'$"):
        make_rollout(env, policy, 2, compile_step="yes")
    assert make_rollout(env, policy, 2).compiled is False  # CPU default: eager, as before


def test_failed_auto_compile_runs_the_eager_rollout(monkeypatch, caplog):
    def broken(gm, example_inputs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(rollout_mod, "resolve_compile_step", lambda *a: True)
    monkeypatch.setattr(rollout_mod, "inductor_eager_rng", broken)
    monkeypatch.setattr(rollout_mod, "_notice_given", False)
    _, collect, params, obs = setup(False, compile_step="auto")
    with caplog.at_level(logging.WARNING, logger="hrl_nested"):
        got = rollouts(collect, params, obs, k=2)
    messages = [r.getMessage() for r in caplog.records if r.name == "hrl_nested"]
    assert any("is compiling the rollout step" in m for m in messages)
    assert any("could not compile" in m and "no C++ compiler here" in m for m in messages)
    assert collect.compiled is False
    monkeypatch.undo()
    _, ref_collect, ref_params, ref_obs = setup(False)
    for e, c in zip(rollouts(ref_collect, ref_params, ref_obs, k=2), got):  # nothing ran twice
        for x, y in zip(tree_leaves(e), tree_leaves(c)):
            assert torch.equal(x, y)


def test_compiled_sampler_matches_the_categorical_probabilities():
    """Pearson chi-square of the compiled rollout step's sampler (`inductor_eager_rng`: Gumbel-max on torch's
    uniforms, compiled) against float64 softmax probabilities, 400k draws over 5 actions."""
    logits = torch.tensor([[0.3, -1.2, 2.0, 0.0, -3.0]])
    n, draws = 4096, 100
    sample = torch.compile(
        lambda lg: Categorical(lg.expand(n, -1)).sample(), dynamic=False, backend=inductor_eager_rng
    )
    torch.manual_seed(0)
    counts = torch.zeros(5, dtype=torch.float64)
    for _ in range(draws):
        counts += torch.bincount(sample(logits), minlength=5).double()
    p = torch.softmax(logits.double(), -1)[0]
    expected = p * n * draws
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < stats.chi2.ppf(1 - 1e-4, df=4), (chi2, counts.tolist(), expected.tolist())
    # The test has power: counts drawn from a slightly wrong distribution (one logit off by 0.05) fail it.
    q = torch.softmax(logits.double() + torch.tensor([0.05, 0, 0, 0, 0]), -1)[0]
    chi2_wrong = float(((q * n * draws - expected) ** 2 / expected).sum())
    assert chi2_wrong > stats.chi2.ppf(1 - 1e-4, df=4)
