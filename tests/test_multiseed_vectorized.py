"""The batched ops of a K-seed PPO run (hrl_nested.algos.ppo_multiseed_parts) against per-seed references:
torch's own clip_grad_norm_ and Adam, K ObsNormalizers, K generators' draws, a step-by-step episode count;
the counter-based stream's independence of K; the rollout's capturability; the bench script."""

import json
import math

import gymnasium as gym
import pytest
import torch

import envs
from hrl_nested.algos import Task, ppo_multiseed
from hrl_nested.algos import ppo_multiseed_parts as parts
from hrl_nested.algos.ppo import PPOConfig
from hrl_nested.networks import ActorCritic
from hrl_nested.obs_norm import ObsNormalizer
from hrl_nested.rollout import make_rollout
from hrl_nested.tracking import Run
from tests._scripts import load_script

K = 4
SHAPES = {"a.weight": (3, 5), "a.bias": (3,), "b": (7,)}


def _stacked(gen, dtype=torch.float64):
    return {n: torch.randn(K, *s, generator=gen, dtype=dtype) for n, s in SHAPES.items()}


def test_flat_params_views_and_dense_are_the_stacked_dict():
    stacked = _stacked(torch.Generator().manual_seed(0))
    layout = parts.FlatParams(stacked)
    assert layout.flat.shape == (K, 15 + 3 + 7)
    for name, value in stacked.items():
        assert torch.equal(layout.views(layout.flat)[name], value)
        assert layout.dense(layout.flat)[name].is_contiguous()
    layout.flat.mul_(2)  # the views see in-place updates of the buffer
    assert torch.equal(layout.views(layout.flat)["b"], 2 * stacked["b"])
    assert torch.equal(layout.cat([stacked[n] for n in layout.names]), layout.flat / 2)
    with pytest.raises(ValueError, match="expected a leading dim of 4"):
        parts.FlatParams({"a": torch.zeros(4, 2), "b": torch.zeros(3, 2)})


def test_clip_grad_norm_rows_is_torch_clip_per_seed_float64():
    gen = torch.Generator().manual_seed(1)
    grads = _stacked(gen)
    for g in grads.values():
        g[2] *= 1e-3  # seed 2 under the threshold: left as it is
    layout = parts.FlatParams(grads)
    clipped, norms = parts.clip_grad_norm_rows(layout.flat, 0.5)
    clipped = layout.views(clipped)
    for k in range(K):
        ref = [torch.nn.Parameter(grads[n][k].clone()) for n in layout.names]
        for p in ref:
            p.grad = p.detach().clone()
        norm = torch.nn.utils.clip_grad_norm_(ref, 0.5)
        torch.testing.assert_close(norms[k], norm, rtol=1e-13, atol=0)
        for p, n in zip(ref, layout.names):
            torch.testing.assert_close(clipped[n][k], p.grad, rtol=1e-13, atol=0)
    assert torch.equal(clipped["b"][2], grads["b"][2])
    assert norms[0] > 0.5  # the others were really clipped
    with pytest.raises(ValueError, match=r"expected a \(K, P\) tensor"):
        parts.clip_grad_norm_rows(torch.zeros(3), 1.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_adam_step_rows_is_each_seeds_torch_adam(dtype):
    """Row k after 3 steps (annealed lr) is seed k's own ``torch.optim.Adam(eps=1e-5, fused=True)``."""
    gen = torch.Generator().manual_seed(2)
    start = _stacked(gen, dtype)
    grads = [_stacked(gen, dtype) for _ in range(3)]
    layout = parts.FlatParams(start)
    flat, mu, nu = layout.flat.clone(), torch.zeros_like(layout.flat), torch.zeros_like(layout.flat)
    count = torch.zeros((), dtype=torch.float32)
    lrs = [2e-3, 1.5e-3, 1e-3]
    for g, lr in zip(grads, lrs):
        parts.adam_step_rows(flat, layout.cat([g[n] for n in layout.names]), mu, nu, count, lr=lr)
    got = layout.views(flat)
    for k in range(K):
        params = [torch.nn.Parameter(start[n][k].clone()) for n in layout.names]
        opt = torch.optim.Adam(params, lr=lrs[0], eps=1e-5, fused=True)
        for g, lr in zip(grads, lrs):
            opt.param_groups[0]["lr"] = lr
            for p, n in zip(params, layout.names):
                p.grad = g[n][k].clone()
            opt.step()
        for p, n in zip(params, layout.names):
            torch.testing.assert_close(
                got[n][k], p.detach(), rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-15
            )
            assert not torch.equal(got[n][k], start[n][k])
    assert count.item() == 3


@pytest.mark.parametrize("kind", ["box", "goal-dict"])
def test_stacked_obs_normalizer_is_k_obs_normalizers(kind):
    gen = torch.Generator().manual_seed(3)
    if kind == "box":
        space = gym.spaces.Box(-1, 1, (3,))
        batches = [torch.randn(K, 16, 5, 3, generator=gen) * (k + 1) for k in range(3)]
    else:
        box = gym.spaces.Box(-1, 1, (2,))
        space = gym.spaces.Dict({"observation": box, "desired_goal": box, "task": gym.spaces.Discrete(3)})
        batches = [
            {"observation": torch.randn(K, 8, 2, generator=gen) + k,
             "desired_goal": torch.randn(K, 8, 2, generator=gen),
             "task": torch.randint(0, 3, (K, 8), generator=gen)}
            for k in range(3)
        ]  # fmt: skip
    stacked = parts.StackedObsNormalizer(space, K)
    singles = [ObsNormalizer(space) for _ in range(K)]
    for b in batches:
        stacked.update(b)
        for k, rms in enumerate(singles):
            rms.update({n: v[k] for n, v in b.items()} if isinstance(b, dict) else b[k])
    stats = stacked.stats()
    host = stacked.host_state_dicts()
    for k, rms in enumerate(singles):
        for name, value in rms.stats().items():
            assert stats[name].dtype == value.dtype == torch.float32
            torch.testing.assert_close(stats[name][k], value, rtol=1e-6, atol=0)
        for leaf, state in rms.state_dict().items():
            for name in ("mean", "var", "count"):
                torch.testing.assert_close(host[k][leaf][name], state[name], rtol=1e-12, atol=0)
    assert set(host[0]) == set(singles[0].state_dict())  # a Discrete leaf has no statistics
    bad = (
        torch.zeros(K + 1, 3)
        if kind == "box"
        else {n: torch.zeros(K + 1, 2) for n in ("observation", "desired_goal")}
    )
    with pytest.raises(ValueError, match=r"expected \(4, \.\.\., "):
        stacked.update(bad)


def test_rollout_noise_is_each_generators_own_per_step_draws():
    """Seed k's noise of step t is the t-th ``torch.rand`` / ``torch.randn`` of a single run's generator."""
    T, shape = 6, (5, 3)
    for gaussian, draw in ((False, torch.rand), (True, torch.randn)):
        gens = [torch.Generator().manual_seed(10 + k) for k in range(K)]
        noise = parts.rollout_noise(
            gens, T, shape, gaussian=gaussian, dtype=torch.float32, device=torch.device("cpu")
        )
        assert noise.shape == (T, K, *shape)
        for k in range(K):
            ref = torch.Generator().manual_seed(10 + k)
            for t in range(T):
                assert torch.equal(noise[t, k], draw(shape, generator=ref)), (gaussian, k, t)
            # and the generator continues from where the single run's would
            assert torch.equal(torch.rand(3, generator=gens[k]), torch.rand(3, generator=ref))


def test_seed_permutations_are_each_generators_randperms():
    gens = [torch.Generator().manual_seed(20 + k) for k in range(K)]
    perms = parts.seed_permutations(gens, 2, 64, torch.device("cpu"))
    assert perms.shape == (2, K, 64)
    for k in range(K):
        ref = torch.Generator().manual_seed(20 + k)
        for e in range(2):
            assert torch.equal(perms[e, k], torch.randperm(64, generator=ref))


def test_counter_stream_depends_on_the_seed_not_on_k_or_its_place():
    seeds = [3, 4, 5, 2**40 + 4]
    keys = parts.seed_key_words(seeds, torch.device("cpu"))
    alone = parts.seed_key_words([4], torch.device("cpu"))
    # not the envs' keys (envs.rng keys a stream on the seed itself, below 2**63): the top bit is flipped
    assert keys.tolist()[0] == [3, 2**31] and keys.tolist()[3] == [4, 2**31 + 2**8]
    for gaussian in (False, True):
        noise = parts.counter_noise(keys, 7, 5, (4, 2), gaussian=gaussian, dtype=torch.float32)
        assert noise.shape == (5, 4, 4, 2)
        assert torch.equal(
            noise[:, 1],
            parts.counter_noise(alone, 7, 5, (4, 2), gaussian=gaussian, dtype=torch.float32)[:, 0],
        )
        assert not torch.equal(noise[:, 1], noise[:, 3])  # seeds 4 and 2**40 + 4: other keys
        assert not torch.equal(
            noise, parts.counter_noise(keys, 8, 5, (4, 2), gaussian=gaussian, dtype=torch.float32)
        )
    perms = parts.counter_permutations(keys, 7, 2, 512)
    assert torch.equal(perms.sort(-1).values, torch.arange(512).expand(2, 4, 512))
    assert torch.equal(perms[:, 1], parts.counter_permutations(alone, 7, 2, 512)[:, 0])
    assert not torch.equal(perms[0], perms[1])  # each epoch its own
    # Moments of many draws: uniform [0, 1) and standard normal.
    u = parts.counter_noise(keys, 0, 2000, (64,), gaussian=False, dtype=torch.float32)
    z = parts.counter_noise(keys, 0, 2000, (64,), gaussian=True, dtype=torch.float64)
    assert (
        0 <= u.min()
        and u.max() < 1
        and abs(u.mean().item() - 0.5) < 0.01
        and abs(u.var().item() - 1 / 12) < 0.002
    )
    assert (
        abs(z.mean().item()) < 0.01
        and abs(z.std().item() - 1) < 0.01
        and abs((z**4).mean().item() - 3) < 0.05
    )


def _episode_reference(rewards, done, ep_ret, ep_len, K):
    ret_sum, len_sum = torch.zeros_like(ep_ret), torch.zeros_like(ep_len)
    for t in range(rewards.shape[0]):
        ep_ret, ep_len = ep_ret + rewards[t], ep_len + 1
        ret_sum += torch.where(done[t], ep_ret, 0)
        len_sum += torch.where(done[t], ep_len, 0)
        ep_ret, ep_len = torch.where(done[t], 0, ep_ret), torch.where(done[t], 0, ep_len)
    per = torch.stack([ret_sum, len_sum.to(ret_sum.dtype), done.sum(0).to(ret_sum.dtype)], 1)
    return ep_ret, ep_len, per.reshape(K, -1, 3).sum(1)


def test_episode_stats_equal_the_step_by_step_count():
    from types import SimpleNamespace

    gen = torch.Generator().manual_seed(4)
    T, M = 40, K * 6
    rewards = torch.randn(T, M, generator=gen, dtype=torch.float64)
    term = torch.rand(T, M, generator=gen) < 0.08
    trunc = torch.rand(T, M, generator=gen) < 0.03
    term[:, 0] = trunc[:, 0] = False  # an env whose episode runs through the whole rollout
    batch = SimpleNamespace(rewards=rewards, terminated=term, truncated=trunc)
    ep_ret = torch.randn(M, generator=gen, dtype=torch.float64)
    ep_len = torch.randint(0, 50, (M,), generator=gen)
    got = ppo_multiseed._episode_stats(batch, ep_ret, ep_len, K)
    want = _episode_reference(rewards, term | trunc, ep_ret, ep_len, K)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-12)
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[2], want[2].float(), rtol=1e-6, atol=1e-5)
    assert (want[2][:, 2] > 0).all() and ((term | trunc).sum(0) == 0).any()  # some envs end none


def test_seed_policy_rollout_is_capturable():
    """The K-seed policy has no generator call and no branch on data inside the rollout: the static-buffer
    path a CUDA graph captures (warm-up, rewind, replay from the buffers) gives the eager rollout."""
    K_, N, T = 3, 4, 8
    results = []
    for capture in ("none", "static"):
        env = envs.make("hrl_nested/CartPole-v1", K_ * N, autoreset_mode="same_step", validate=False)
        torch.manual_seed(0)
        agents = [ActorCritic(env.single_observation_space, env.single_action_space) for _ in range(K_)]
        params = {
            n: torch.stack([dict(a.named_parameters())[n].detach() for a in agents])
            for n in agents[0].state_dict()
        }
        collect = make_rollout(env, ppo_multiseed._SeedPolicy(agents[0], K_), T, capture=capture)
        obs, _ = env.reset(
            seed=[s for s in range(K_) for _ in range(N)], options={"env_index": list(range(N)) * K_}
        )
        keys = parts.seed_key_words(range(K_), torch.device("cpu"))
        out = []
        for it in range(2):
            noise = parts.counter_noise(keys, it, T, (N, 2), gaussian=False, dtype=torch.float32)
            res = collect({**params, "sampling_noise": noise}, obs, torch.zeros(1, dtype=torch.int64))
            obs = res.obs
            out.append(res.batch)
        results.append(out)
    for eager, static in zip(*results):
        assert torch.equal(eager.actions, static.actions) and torch.equal(eager.obs, static.obs)
    assert not torch.equal(results[0][0].actions, results[0][1].actions)


def _rollouts(k, rng):
    """Every rollout of a ``k``-seed run (3 iterations, first seed 5) and its summaries."""
    rollouts = []
    make = ppo_multiseed.make_rollout

    def recording(*args, **kwargs):
        collect = make(*args, **kwargs)

        def recorded(*a, **kw):
            rollouts.append(collect(*a, **kw))
            return rollouts[-1]

        return recorded

    task = Task(total_steps=16 * 8 * 3, num_envs=16, eval_episodes=2, seed=5, device="cpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ppo_multiseed, "make_rollout", recording)
        out = ppo_multiseed.train_seeds(
            task, PPOConfig(num_steps=8, num_minibatches=2, eval_every=0), k, rng=rng
        )
    return rollouts, out


def test_counter_rng_gives_each_seed_the_same_run_for_any_k(one_thread):
    """With ``rng="counter"`` seed 5's rollouts (after the first, each after an update) are the same in a
    2-seed and a 3-seed run, and differ from the generator stream's."""
    two, out2 = _rollouts(2, "counter")
    three, out3 = _rollouts(3, "counter")
    gen, _ = _rollouts(2, "generator")
    assert len(two) == len(three) == 3
    for a, b in zip(two, three):
        assert torch.equal(a.batch.actions[:, :16], b.batch.actions[:, :16])
        assert torch.equal(a.batch.obs[:, 16:32], b.batch.obs[:, 16:32])
        torch.testing.assert_close(a.batch.values[:, :32], b.batch.values[:, :32], rtol=0, atol=1e-5)
    assert not torch.equal(two[0].batch.actions, gen[0].batch.actions)
    assert [o["seed"] for o in out3] == [5, 6, 7] and out2[1]["eval_return_mean"] == out3[1][
        "eval_return_mean"
    ]
    with pytest.raises(ValueError, match="rng: expected one of auto, generator, counter, got 'philox'"):
        ppo_multiseed.train_seeds(Task(device="cpu"), PPOConfig(), 2, rng="philox")


def test_captured_update_path_trains_as_the_eager_update(one_thread):
    """The update's capture logic (static input buffers, a warm-up whose in-place updates are undone, then
    the step on the buffers; a CUDA graph on CUDA) on the CPU without the graph: after two updates the
    third rollout is the eager run's (the captured path takes the learning rate as a float32 tensor)."""
    eager, _ = _rollouts(3, "generator")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ppo_multiseed, "_update_capture", lambda device, cfg: "static")
        static, _ = _rollouts(3, "generator")
    for a, b in zip(eager, static):
        assert torch.equal(a.batch.actions, b.batch.actions)
        torch.testing.assert_close(a.batch.values, b.batch.values, rtol=0, atol=1e-6)
    assert not torch.equal(eager[0].batch.values, eager[1].batch.values)  # the update moved the critic


def test_for_each_run_keeps_the_order():
    runs = [
        Run(None, config={}, algo="ppo", env="x", seed=s, total_steps=1, progress=False) for s in range(20)
    ]
    rows = [{"env_steps": s, "value": float(s)} for s in range(20)]
    out = parts.for_each_run(runs, "log", rows)
    assert [r["value"] for r in out] == [float(s) for s in range(20)]
    assert [r.last_row["env_steps"] for r in runs] == list(range(20))


def test_row_writer_writes_each_seeds_rows_in_order_in_the_background(tmp_path):
    runs = [
        Run(tmp_path / f"s{s}", config={}, algo="ppo", env="x", seed=s, total_steps=1, progress=False)
        for s in range(3)
    ]
    writer = parts.RowWriter(runs)
    assert writer._pool is not None  # files only (W&B disabled): a background thread
    for it in range(5):
        logged = writer.log({k: {"env_steps": it, "seed_value": 10 * k + it} for k in range(3)}, wait=it == 4)
        assert (logged is None) == (it < 4)
    assert logged[2]["seed_value"] == 24 and "wall_s" in logged[2]
    writer.close()
    for k in range(3):
        rows = [json.loads(x) for x in (tmp_path / f"s{k}" / "metrics.jsonl").read_text().splitlines()]
        assert [r["seed_value"] for r in rows] == [10 * k + it for it in range(5)]
    bad = parts.RowWriter(runs)
    bad.log({0: {"no_env_steps": 1}, 1: {"env_steps": 1}}, wait=False)
    with pytest.raises(ValueError, match="every row needs 'env_steps'"):  # raised at the next wait
        bad.close()


def test_bench_num_seeds_script_writes_its_table(tmp_path, one_thread):
    bench = load_script("bench_num_seeds.py", "bench_num_seeds_test")
    out = tmp_path / "b.json"
    cfg = bench.BenchConfig(num_seeds=(2,), num_envs=4, num_steps=16, iterations=4, total_steps=4 * 16 * 10,
                            device="cpu", out=str(out))  # fmt: skip
    report = bench.main(cfg)
    on_disk = json.loads(out.read_text())
    (row,) = on_disk["rows"]
    assert row["num_seeds"] == 2 and row["iterations"] == 4 and row["projected_iterations"] == 10
    assert row["s_per_iteration"] > 0 and math.isclose(
        row["env_steps_per_s"], 2 * 64 / row["s_per_iteration"]
    )
    assert row["projected_s"] == pytest.approx(row["total_s"] + 6 * row["s_per_iteration"])
    assert "| 2 | 4 |" in report["table"]


@pytest.mark.cuda
def test_k_seed_run_on_cuda_captures_its_rollout_and_draws_the_cpu_counter_stream():
    """On CUDA: the counter stream's bits are the CPU's (Philox is device-independent), and a K-seed run
    (counter and generator streams) trains with its rollout replayed as one CUDA graph."""
    cuda = torch.device("cuda")
    keys = parts.seed_key_words([3, 4, 5], torch.device("cpu"))
    u = parts.counter_noise(keys, 2, 8, (4, 2), gaussian=False, dtype=torch.float32)
    assert torch.equal(
        parts.counter_noise(keys.to(cuda), 2, 8, (4, 2), gaussian=False, dtype=torch.float32).cpu(), u
    )
    z = parts.counter_noise(keys, 2, 8, (4, 2), gaussian=True, dtype=torch.float32)
    z_cuda = parts.counter_noise(keys.to(cuda), 2, 8, (4, 2), gaussian=True, dtype=torch.float32).cpu()
    torch.testing.assert_close(z_cuda, z, rtol=1e-5, atol=1e-5)
    assert torch.equal(
        parts.counter_permutations(keys.to(cuda), 2, 2, 512).cpu(),
        parts.counter_permutations(keys, 2, 2, 512),
    )
    modes = []
    make = ppo_multiseed.make_rollout

    def recording(*args, **kwargs):
        collect = make(*args, **kwargs)
        modes.append(collect)
        return collect

    task = Task(total_steps=16 * 8 * 3, num_envs=16, eval_episodes=2, seed=5, device="cuda")
    for rng in ("counter", "generator"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ppo_multiseed, "make_rollout", recording)
            out = ppo_multiseed.train_seeds(task, PPOConfig(num_steps=8, num_minibatches=2), 3, rng=rng)
        assert modes[-1].mode == "cuda_graph"
        assert [o["seed"] for o in out] == [5, 6, 7] and all(
            math.isfinite(o["eval_return_mean"]) for o in out
        )


def test_stacked_apply_critic_alone_is_the_full_calls_value():
    from hrl_nested.stacked import stacked_actor_critic_apply

    nets = []
    for k in range(K):
        torch.manual_seed(k)
        nets.append(ActorCritic(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2)))
    params = {
        n: torch.stack([dict(m.named_parameters())[n].detach() for m in nets]) for n in nets[0].state_dict()
    }
    obs = torch.randn(K, 3, 7, 4)
    out, value = stacked_actor_critic_apply(nets[0], params, obs)
    none, alone = stacked_actor_critic_apply(nets[0], params, obs, actor=False)
    assert none is None and out.shape == (K, 3, 7, 2) and torch.equal(alone, value)


def test_evaluate_seeds_with_no_live_seed_returns_at_once(one_thread):
    env = envs.make("hrl_nested/CartPole-v1", 2 * 3, autoreset_mode="same_step")
    torch.manual_seed(0)
    agent = ActorCritic(env.single_observation_space, env.single_action_space)
    params = {n: torch.stack([p.detach()] * 2) for n, p in agent.named_parameters()}
    calls = []
    step = env.step
    env.step = lambda a: (calls.append(1), step(a))[1]
    out = ppo_multiseed.evaluate_seeds(agent, params, env, None, [1, 2], live=[False, False], cfg=PPOConfig())
    assert out == [{}, {}] and calls == []
    both = ppo_multiseed.evaluate_seeds(agent, params, env, None, [1, 2], live=[True, True], cfg=PPOConfig())
    assert calls and all(r["eval_return_mean"] > 0 for r in both)
