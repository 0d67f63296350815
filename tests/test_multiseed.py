"""``--num-seeds K``: K PPO seeds in one process match K single-seed runs (hrl_nested.algos.ppo_multiseed)."""

import dataclasses
import json
import math
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import envs
from hrl_nested.algos import ConfigError, Task, ppo, ppo_multiseed
from hrl_nested.algos.ppo import PPOConfig
from hrl_nested.networks import ActorCritic
from hrl_nested.obs_norm import ObsNormalizer
from hrl_nested.tracking import Run
from tests._scripts import load_script

REPO = Path(__file__).resolve().parents[1]
FIRST, K, N, T = 3, 3, 32, 16
TASK = Task(total_steps=N * T, num_envs=N, eval_episodes=4, seed=FIRST, device="cpu")
CFG = PPOConfig(num_steps=T, num_minibatches=4)
# Parameters after one iteration (2 epochs x 4 minibatches = 8 Adam steps) agree to this, not bit for
# bit: the vmapped critic head (one output column: MKL picks another kernel for the batched product)
# rounds V differently in the last float32 bit, and the functional Adam is not torch's fused kernel
# (another order of the same float32 operations). Measured: at most 2.1e-7 (a few float32 ulps of
# weights of size ~1); a real mismatch (another minibatch, seed, clipping or normalization) moves them
# by ~1e-3 (Adam's step, lr 2e-3), and the test checks the iteration moved them > 100x the tolerance.
PARAM_ATOL = 5e-6


def _train_module():
    """``experiments/train.py`` as a module, loaded once (its dataclasses need it in ``sys.modules``)."""
    return load_script("train.py", "multiseed_train_script", reuse=True)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _recording(rollouts: list):
    """`make_rollout` that records every `RolloutResult` its collector returns."""
    make = ppo.make_rollout

    def make_rollout(*args, **kwargs):
        collect = make(*args, **kwargs)

        def recorded(*a, **kw):
            out = collect(*a, **kw)
            rollouts.append(out)
            return out

        recorded.state_dict, recorded.load_state_dict = collect.state_dict, collect.load_state_dict
        return recorded

    return make_rollout


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One K-seed run and the K single-seed runs of the same seeds, each with its run directory and its
    first rollout recorded."""
    root = tmp_path_factory.mktemp("multiseed")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        multi_rollouts: list = []
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ppo_multiseed, "make_rollout", _recording(multi_rollouts))
            seeds = list(range(FIRST, FIRST + K))
            group = ppo_multiseed.seed_runs(
                root / "multi", {"note": "test"}, algo="ppo", env=TASK.env, seeds=seeds, total_steps=N * T
            )
            summaries = ppo_multiseed.train_seeds(TASK, CFG, K, group)
        single: dict[int, tuple] = {}
        for s in seeds:
            rollouts: list = []
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(ppo, "make_rollout", _recording(rollouts))
                run = Run(
                    root / f"single-{s}", config={}, algo="ppo", env=TASK.env, seed=s, total_steps=N * T
                )
                task = Task(**{**TASK.__dict__, "seed": s})
                summary = ppo.train(task, CFG, run)
            single[s] = (rollouts[0], summary)
    finally:
        torch.set_num_threads(before)
    return {"root": root, "multi": (multi_rollouts[0], summaries), "single": single}


def _seed_columns(x, k):
    return x[:, k * N : (k + 1) * N]


def test_first_rollout_actions_match_single_seed_runs(runs):
    """Seed s's actions (and log-probs) in a K-seed run are the single-seed run's, bit for bit."""
    multi, _ = runs["multi"]
    for k, s in enumerate(range(FIRST, FIRST + K)):
        single = runs["single"][s][0].batch
        assert torch.equal(_seed_columns(multi.batch.actions, k), single.actions), s
        assert torch.equal(_seed_columns(multi.batch.logprobs, k), single.logprobs), s
        torch.testing.assert_close(_seed_columns(multi.batch.values, k), single.values, rtol=0, atol=1e-5)
    # Different seeds really act differently (the comparison above can fail).
    assert not torch.equal(_seed_columns(multi.batch.actions, 0), _seed_columns(multi.batch.actions, 1))


def test_first_rollout_env_streams_match_single_seed_runs(runs):
    multi, _ = runs["multi"]
    for k, s in enumerate(range(FIRST, FIRST + K)):
        single = runs["single"][s][0].batch
        for name in ("obs", "next_obs", "rewards", "terminated", "truncated"):
            assert torch.equal(_seed_columns(getattr(multi.batch, name), k), getattr(single, name)), (s, name)


def test_env_index_reset_gives_each_seed_its_own_stream(one_thread):
    """The env batch alone: seed s's N envs inside a K x N batch step exactly as a batch of N reset with s."""
    big = envs.make("hrl_nested/CartPole-v1", K * N, autoreset_mode="same_step")
    seeds = [FIRST + k for k in range(K)]
    obs, _ = big.reset(seed=[s for s in seeds for _ in range(N)], options={"env_index": list(range(N)) * K})
    smalls = [envs.make("hrl_nested/CartPole-v1", N, autoreset_mode="same_step") for _ in seeds]
    small_obs = [e.reset(seed=s)[0] for e, s in zip(smalls, seeds)]
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):  # past the first episode ends: the reset draws come from the streams too
        for k in range(K):
            assert torch.equal(obs[k * N : (k + 1) * N], small_obs[k])
        actions = torch.randint(0, 2, (K * N,), generator=gen)
        obs = big.step(actions)[0]
        small_obs = [e.step(actions[k * N : (k + 1) * N])[0] for k, e in enumerate(smalls)]


def test_parameters_after_one_iteration_match_single_seed_runs(runs):
    root = runs["root"]
    for s in range(FIRST, FIRST + K):
        multi = torch.load(root / "multi" / f"seed-{s}" / "checkpoint.pt", weights_only=True)["agent"]
        single = torch.load(root / f"single-{s}" / "checkpoint.pt", weights_only=True)["agent"]
        assert set(multi) == set(single)
        moved = 0.0
        for name, value in single.items():
            torch.testing.assert_close(multi[name], value, rtol=0, atol=PARAM_ATOL, msg=f"seed {s}: {name}")
            moved = max(moved, (value - _initial_params(s)[name]).abs().max().item())
        assert moved > 100 * PARAM_ATOL  # the iteration moved the parameters well beyond the tolerance


def _initial_params(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    obs_space = gym.spaces.Box(-math.inf, math.inf, (4,))  # CartPole's, as flat PPO builds its agent
    agent = ActorCritic(obs_space, gym.spaces.Discrete(2), hidden=CFG.hidden)
    return {k: v.detach() for k, v in agent.state_dict().items()}


def test_each_seed_writes_the_usual_files(runs):
    root = runs["root"] / "multi"
    _, summaries = runs["multi"]
    assert sorted(p.name for p in root.iterdir()) == [f"seed-{s}" for s in range(FIRST, FIRST + K)]
    for s, summary in zip(range(FIRST, FIRST + K), summaries):
        d = root / f"seed-{s}"
        assert {p.name for p in d.iterdir()} >= {
            "config.json",
            "metrics.jsonl",
            "summary.json",
            "checkpoint.pt",
        }
        config = json.loads((d / "config.json").read_text())
        assert config["seed"] == s and config["run_dir"] == str(d)
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        assert [r["env_steps"] for r in rows] == [N * T] and "wall_s" in rows[0]
        on_disk = json.loads((d / "summary.json").read_text())
        assert on_disk["seed"] == s == summary["seed"] and on_disk["env_steps"] == N * T
        assert {"algo", "env", "wall_s", "eval_return_mean"} <= on_disk.keys()
        # The update statistics are seed s's own: close to its single-seed run's, unlike its neighbour's.
        single = runs["single"][s][1]
        assert summary["eval_return_mean"] > 0 and single["env_steps"] == summary["env_steps"]
        want = _metrics(runs["root"] / f"single-{s}")[0]
        other = _metrics(runs["root"] / f"single-{FIRST + (s - FIRST + 1) % K}")[0]
        for name in ("policy_loss", "value_loss", "entropy", "grad_norm", "episode_return_mean"):
            assert rows[0][name] == pytest.approx(want[name], rel=1e-4, abs=1e-6), (s, name)
        assert rows[0]["value_loss"] != pytest.approx(other["value_loss"], rel=1e-3), s


def test_evaluate_seeds_matches_single_seed_evaluate(one_thread):
    """Batched evaluation of K agents equals `ppo.evaluate` of each (also when cut short as hopeless)."""
    env_id, E = "hrl_nested/CartPole-v1", 5
    big = envs.make(env_id, K * E, autoreset_mode="same_step")
    small = envs.make(env_id, E, autoreset_mode="same_step")
    agents, rmss = [], []
    for s in range(K):
        torch.manual_seed(s)
        agents.append(ActorCritic(big.single_observation_space, big.single_action_space))
        rms = ObsNormalizer(big.single_observation_space)
        rms.update(torch.randn(64, 4) * (s + 1))
        rmss.append(rms)
    params = {
        k: torch.stack([dict(a.named_parameters())[k].detach() for a in agents])
        for k in agents[0].state_dict()
    }
    seeds = [11, 12, 13]
    cut = PPOConfig(stop_at_return=475.0, eval_max_return=500.0)
    results = {}
    for cfg, hopeless in ((CFG, None), (cut, (475.0, 500.0))):
        got = ppo_multiseed.evaluate_seeds(agents[0], params, big, rmss, seeds, live=[True] * K, cfg=cfg)
        for k in range(K):
            want = ppo.evaluate(agents[k], small, rmss[k], seed=seeds[k], stop_if_below=hopeless)
            assert got[k] == want, (k, got[k], want)
        results[hopeless] = got
    assert results[(475.0, 500.0)][0].get("eval_stopped_early") == 1.0  # an untrained agent is hopeless
    assert "eval_stopped_early" not in results[None][0]
    live = [True, False, True]
    skipped = ppo_multiseed.evaluate_seeds(agents[0], params, big, rmss, seeds, live=live, cfg=CFG)
    assert skipped[1] == {} and skipped[0] == results[None][0] and skipped[2] == results[None][2]


def test_clip_grad_norm_per_seed_matches_torch():
    """Each seed's gradients clipped as ``torch.nn.utils.clip_grad_norm_`` clips that seed's alone."""
    gen = torch.Generator().manual_seed(0)
    grads = {"a": torch.randn(4, 3, 5, generator=gen), "b": torch.randn(4, 7, generator=gen)}
    grads["a"][2] *= 1e-2  # one seed under the threshold: left unscaled
    grads["b"][2] *= 1e-2
    clipped, norms = ppo_multiseed.clip_grad_norm_per_seed(grads, 0.5)
    for k in range(4):
        ref = [torch.nn.Parameter(grads[n][k].clone()) for n in ("a", "b")]
        for p in ref:
            p.grad = p.detach().clone()
        norm = torch.nn.utils.clip_grad_norm_(ref, 0.5)
        torch.testing.assert_close(norms[k], norm)
        for p, n in zip(ref, ("a", "b")):
            torch.testing.assert_close(clipped[n][k], p.grad)
    torch.testing.assert_close(clipped["a"][2], grads["a"][2])


def test_num_seeds_1_is_todays_run_exactly(tmp_path):
    """``--num-seeds 1`` writes the same metrics as a run without the flag (timings aside)."""
    train = _train_module()
    before = torch.get_num_threads()
    tiny = ["--total-steps", "1024", "--num-envs", "32", "--ppo.num-steps", "16", "--eval-episodes", "2",
            "--device", "cpu", "--wandb-mode", "disabled", "--seed", "7"]  # fmt: skip
    try:
        train.main([*tiny, "--run-dir", str(tmp_path / "plain")])
        train.main([*tiny, "--num-seeds", "1", "--run-dir", str(tmp_path / "one")])
    finally:
        torch.set_num_threads(before)
    timing = {"wall_s", "sps", "eval_s", "eval_time_s", "warmup_s"}

    def rows(d):
        lines = (tmp_path / d / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in lines]

    assert len(rows("plain")) == 2 and rows("one") == rows("plain")
    assert not (tmp_path / "one" / "seed-7").exists()  # K = 1: the plain run directory

    with pytest.raises(SystemExit) as exc:  # a resumed run continues one seed
        train.main(["--resume", str(tmp_path / "plain"), "--num-seeds", "2"])
    assert exc.value.code == 2


def test_cli_num_seeds_writes_one_dir_per_seed(tmp_path):
    train = _train_module()
    before = torch.get_num_threads()
    try:
        out = train.main(["--total-steps", "512", "--num-envs", "16", "--ppo.num-steps", "16",
                          "--ppo.num-minibatches", "2", "--eval-episodes", "2", "--device", "cpu",
                          "--wandb-mode", "disabled", "--seed", "10", "--num-seeds", "2",
                          "--run-dir", str(tmp_path / "run")])  # fmt: skip
    finally:
        torch.set_num_threads(before)
    assert [s["seed"] for s in out] == [10, 11]
    for s in (10, 11):
        d = tmp_path / "run" / f"seed-{s}"
        assert json.loads((d / "summary.json").read_text())["seed"] == s
        assert json.loads((d / "config.json").read_text())["seed"] == s
        assert (d / "checkpoint.pt").is_file() and (d / "metrics.jsonl").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-seeds", "0"], "--num-seeds: expected a positive int, got 0"),
        (["--num-seeds", "-2"], "--num-seeds: expected a positive int, got -2"),
        (["--num-seeds", "2", "--algo", "nested-hrl"], "--num-seeds: expected 1 with --algo nested-hrl"),
    ],
)
def test_bad_num_seeds_is_a_clear_error(tmp_path, capsys, args, message):
    train = _train_module()
    with pytest.raises(SystemExit) as exc:
        train.main([*args, "--run-dir", str(tmp_path / "run"), "--wandb-mode", "disabled"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_unsupported_options_with_many_seeds_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="--num-seeds: expected a positive int, got True"):
        ppo_multiseed.train_seeds(TASK, CFG, True)
    with pytest.raises(ConfigError, match="--ppo.capture: expected auto or none, got static"):
        ppo_multiseed.train_seeds(TASK, PPOConfig(num_steps=T, capture="static"), 2)
    with pytest.raises(ConfigError, match="--ppo.explore: expected none, got ez-greedy"):
        ppo_multiseed.train_seeds(TASK, dataclasses.replace(CFG, explore="ez-greedy"), 2)
    with pytest.raises(ConfigError, match="--ppo.compile"):
        ppo_multiseed.train_seeds(TASK, PPOConfig(num_steps=T, compile=True), 2)
    with pytest.raises(ConfigError, match="--env: expected a torch env"):
        ppo_multiseed.train_seeds(Task(env="CartPole-v1", total_steps=64, num_envs=4, device="cpu"), CFG, 2)
    with pytest.raises(ValueError, match="one Run per seed"):
        ppo_multiseed.train_seeds(
            TASK, CFG, 2, [Run(None, config={}, algo="ppo", env="x", seed=0, total_steps=1)]
        )


def test_seeds_that_solve_early_stop_while_the_others_train_on(tmp_path, one_thread):
    """With ``stop_at_return``, seed 4 solves at iteration 5 and its run finishes there; seeds 3 and 5
    train on (updated as a subset of the stack) and still log what their single-seed runs log."""
    cfg = PPOConfig(num_steps=16, num_minibatches=4, eval_every=1, stop_at_return=100.0)
    task = Task(total_steps=32 * 16 * 8, num_envs=32, eval_episodes=4, seed=3, device="cpu")
    seeds = [3, 4, 5]
    group = ppo_multiseed.seed_runs(
        tmp_path / "multi", {}, algo="ppo", env=task.env, seeds=seeds, total_steps=1
    )
    summaries = ppo_multiseed.train_seeds(task, cfg, 3, group)
    iterations = {}
    for s, summary in zip(seeds, summaries):
        run = Run(tmp_path / f"single-{s}", config={}, algo="ppo", env=task.env, seed=s, total_steps=1)
        single = ppo.train(Task(**{**task.__dict__, "seed": s}), cfg, run)
        assert (summary["solved"], summary["iterations"]) == (single["solved"], single["iterations"]), s
        assert summary["eval_return_mean"] == single["eval_return_mean"], s
        got = [
            json.loads(x)
            for x in (tmp_path / "multi" / f"seed-{s}" / "metrics.jsonl").read_text().splitlines()
        ]
        want = [json.loads(x) for x in (tmp_path / f"single-{s}" / "metrics.jsonl").read_text().splitlines()]
        assert [r["episode_return_mean"] for r in got] == [r["episode_return_mean"] for r in want], s
        assert [r["eval_return_mean"] for r in got] == [r["eval_return_mean"] for r in want], s
        for a, b in zip(got, want):
            assert a["value_loss"] == pytest.approx(b["value_loss"], rel=1e-3), s
        iterations[s] = summary["iterations"]
    assert iterations[4] < iterations[3] == iterations[5] == 8  # seed 4 stopped early, the others did not


@pytest.mark.parametrize("kind", ["discrete", "gaussian-goal"])
def test_stacked_apply_is_each_members_own_forward(kind):
    """`stacked_actor_critic_apply` gives member k exactly ``actor_critic_apply`` of member k's actor (bit
    for bit, at a row count that needs padding), for logits and for a Gaussian's mean and log-std on a
    goal ``Dict`` observation, and its value to rounding; gradients reach every member's parameters."""
    from hrl_nested.networks import actor_critic_apply
    from hrl_nested.stacked import stacked_actor_critic_apply

    if kind == "discrete":
        obs_space, act_space = gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(3)
        obs = torch.randn(K, 2, 10, 4)
    else:
        box = gym.spaces.Box(-1, 1, (2,))
        obs_space = gym.spaces.Dict({"observation": box, "achieved_goal": box, "desired_goal": box})
        act_space = gym.spaces.Box(-1, 1, (2,))
        obs = {k: torch.randn(K, 2, 10, 2) for k in ("observation", "achieved_goal", "desired_goal")}
    nets = []
    for k in range(K):
        torch.manual_seed(k)
        nets.append(ActorCritic(obs_space, act_space))
    params = {
        n: torch.stack([dict(m.named_parameters())[n].detach() for m in nets]) for n in nets[0].state_dict()
    }
    leaves = {n: v.clone().requires_grad_() for n, v in params.items()}
    out, value = stacked_actor_critic_apply(nets[0], leaves, obs)
    for k, net in enumerate(nets):
        x = obs[k] if isinstance(obs, torch.Tensor) else {n: v[k] for n, v in obs.items()}
        want_out, want_v = actor_critic_apply(net, dict(net.named_parameters()), x)
        assert torch.equal(out[k], want_out), k
        # the one-column value head: MKL's batched product rounds it differently in the last bit
        torch.testing.assert_close(value[k], want_v, rtol=0, atol=1e-6)
    (out * torch.randn_like(out)).sum().add(value.sum()).backward()
    assert all(bool((p.grad.reshape(K, -1).abs().sum(1) > 0).all()) for p in leaves.values())
