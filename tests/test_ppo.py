"""Flat PPO: learning on CartPole, exact resume from a checkpoint, evaluation, observation normalization."""

import dataclasses
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs
from envs.core import Draw, TorchVectorEnv
from hrl_nested.algos import Task, get_algorithm
from hrl_nested.algos.ppo import PPOConfig, evaluate, train
from hrl_nested.networks import ActorCritic
from hrl_nested.obs_norm import ObsNormalizer, RunningMeanStd
from hrl_nested.tracking import Run, read_metrics
from tests._ppo_runs import crash_after_iteration, ppo_run

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread


# Timing-dependent columns: everything else must match bit for bit between runs.
_TIMING = {"wall_s", "sps", "eval_s"}


def _run(run_dir, task, resume=False, **kwargs):
    return ppo_run(run_dir, task, resume, checkpoint_every_s=0.0, **kwargs)


def test_ppo_solves_cartpole():
    """The default hyperparameters reach the CartPole-v1 threshold (475 over 20 deterministic episodes)."""
    task = Task(device="cpu", seed=0)
    summary = train(task, PPOConfig(eval_every=1, stop_at_return=475.0))
    assert summary["solved"], summary
    assert summary["eval_return_mean"] >= 475.0
    assert summary["env_steps"] <= task.total_steps


def test_registry_exposes_ppo():
    algo = get_algorithm("ppo")
    assert algo.Config is PPOConfig and algo.train is train
    with pytest.raises(ValueError, match="expected one of"):
        get_algorithm("nope")


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    task = Task(total_steps=6 * 512, num_envs=32, seed=3, device="cpu", eval_episodes=4)
    cfg = PPOConfig(num_steps=16, eval_every=2, norm_obs=True)
    straight = train(task, cfg, _run(tmp_path / "straight", task))

    # Crash right after the 4th iteration's metrics row, before its checkpoint is written: the
    # checkpoint on disk is the 3rd iteration's, and metrics.jsonl has one row too many.
    real_log = crash_after_iteration(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt), _run(tmp_path / "crashed", task) as run:
        train(task, cfg, run)
    assert len(read_metrics(tmp_path / "crashed" / "metrics.jsonl")) == 4
    monkeypatch.setattr(Run, "log", real_log)

    resumed = train(task, cfg, _run(tmp_path / "crashed", task, resume=True))
    rows_a = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    rows_b = read_metrics(tmp_path / "crashed" / "metrics.jsonl")
    assert [r["env_steps"] for r in rows_b] == [512 * i for i in range(1, 7)]

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in _TIMING} for r in rows]

    assert strip(rows_b) == strip(rows_a)  # same losses, returns and evaluations, bit for bit
    assert resumed["eval_return_mean"] == straight["eval_return_mean"]
    assert resumed["env_steps"] == straight["env_steps"] == 6 * 512


def test_checkpoint_holds_everything_needed(tmp_path):
    task = Task(total_steps=1024, num_envs=32, seed=0, device="cpu", eval_episodes=2)
    train(task, PPOConfig(num_steps=16, norm_obs=True), _run(tmp_path / "run", task, wandb_mode="disabled"))
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["env_steps"] == 1024 and state["iteration"] == 2
    for key in ("agent", "optimizer", "obs_norm", "env", "obs", "rollout", "rng", "wandb_run_id", "wall_s"):
        assert key in state, key
    assert state["obs_norm"]["obs"]["count"] > 1000  # updated from both batches
    assert state["optimizer"]["state"]  # Adam moments, not a fresh optimizer


def test_stop_at_return_stops_early():
    task = Task(total_steps=10_000, num_envs=16, seed=0, device="cpu", eval_episodes=2)
    summary = train(task, PPOConfig(num_steps=8, eval_every=1, stop_at_return=0.0))
    assert summary["solved"] and summary["iterations"] == 1 and summary["env_steps"] == 128
    assert summary["time_to_solve_s"] > 0


class _LineGoalEnv(TorchVectorEnv):
    """A goal env on a line: position, achieved and desired goal in ``[low, 10]``, actions 0 / 1, at most
    5 steps."""

    low = 0.0

    def __init__(self, num_envs=1, *, device="cpu", autoreset_mode="next_step", validate=True, **kw):
        box = gym.spaces.Box(self.low, 10.0, (1,), np.float32)
        super().__init__(
            num_envs,
            single_observation_space=gym.spaces.Dict(
                {"observation": box, "achieved_goal": box, "desired_goal": box}
            ),
            single_action_space=gym.spaces.Discrete(2),
            max_episode_steps=5,
            device=device,
            autoreset_mode=autoreset_mode,
            validate=validate,
        )


class _Corridor(_LineGoalEnv):
    """A goal env: walk right (action 1) three times to reach the goal; max 5 steps."""

    def _sample_reset(self, draw: Draw):
        return {"state": torch.zeros(self.num_envs, 1, device=self.device)}

    def _transition(self, vars, action, draw):
        x = vars["state"] + action.unsqueeze(-1).to(vars["state"].dtype)
        reached = (x >= 3).squeeze(-1)
        return {"state": x}, reached.to(x.dtype), reached

    def _observe(self, vars):
        x = vars["state"].clone()
        return {"observation": x, "achieved_goal": x.clone(), "desired_goal": torch.full_like(x, 3.0)}

    def compute_terminated(self, achieved_goal, desired_goal, info=None):
        return (achieved_goal >= desired_goal).all(-1)


def test_evaluate_reports_success_rate_on_goal_envs():
    env = _Corridor(4, autoreset_mode="same_step")
    agent = ActorCritic(env.single_observation_space, env.single_action_space)
    with torch.no_grad():  # a policy that always goes right: every episode succeeds in 3 steps
        agent.actor[-1].bias.copy_(torch.tensor([-5.0, 5.0]))
    out = evaluate(agent, env, None, seed=0)
    assert out == {"eval_return_mean": 1.0, "eval_length_mean": 3.0, "eval_success_rate": 1.0}
    with torch.no_grad():  # always left: never reaches the goal, truncated after 5 steps
        agent.actor[-1].bias.copy_(torch.tensor([5.0, -5.0]))
    out = evaluate(agent, env, None, seed=1)
    assert out == {"eval_return_mean": 0.0, "eval_length_mean": 5.0, "eval_success_rate": 0.0}


def test_evaluate_counts_one_episode_per_env_on_cartpole():
    env = envs.make("hrl_nested/CartPole-v1", 8, autoreset_mode="same_step", validate=False)
    agent = ActorCritic(env.single_observation_space, env.single_action_space)
    out = evaluate(agent, env, None, seed=0)
    assert set(out) == {"eval_return_mean", "eval_length_mean"}  # CartPole has no success notion
    assert 8 <= out["eval_return_mean"] <= 500 and out["eval_return_mean"] == out["eval_length_mean"]


class _GoalLine(_LineGoalEnv):
    """A goal env where the way to go depends on the goal: env ``i`` starts at ``x0`` and must reach ``g``,
    ``(x0, g) = PAIRS[i % 8]``, by steps of -1 / +1 (actions 0 / 1) within 5 steps; reaching it gives
    reward 1 and terminates. Positions 0, +-2 and +-3 each need opposite directions for different
    goals, so a policy that ignores the goal cannot solve every pair; a constant one solves exactly 4 of
    the 8, and a uniformly random one 7/32 of episodes."""

    PAIRS = ((0, 3), (0, -3), (5, 2), (-5, -2), (2, 5), (-2, -5), (3, 0), (-3, 0))
    low = -10.0

    def _sample_reset(self, draw: Draw):
        pairs = torch.tensor(self.PAIRS, dtype=torch.float32, device=self.device)
        p = pairs[torch.arange(self.num_envs, device=self.device) % len(self.PAIRS)]
        return {"state": p[:, :1].clone(), "goal": p[:, 1:].clone()}

    def _transition(self, vars, action, draw):
        x = vars["state"] + (2 * action.unsqueeze(-1) - 1).to(vars["state"].dtype)
        reached = (x == vars["goal"]).squeeze(-1)
        return {"state": x, "goal": vars["goal"]}, reached.to(x.dtype), reached

    def _observe(self, vars):
        x = vars["state"].clone()
        return {"observation": x, "achieved_goal": x.clone(), "desired_goal": vars["goal"].clone()}

    def compute_terminated(self, achieved_goal, desired_goal, info=None):
        return (achieved_goal == desired_goal).all(-1)


def test_ppo_trains_on_a_goal_env_and_logs_success(tmp_path):
    """PPO learns a goal-conditioned policy: success on (nearly) every (start, goal) pair, where no
    policy that ignores the goal solves them all and a constant one gets exactly 1/2."""
    probe = _GoalLine(16, autoreset_mode="same_step", validate=False)
    agent = ActorCritic(probe.single_observation_space, probe.single_action_space)
    constant = []
    for bias in ((5.0, -5.0), (-5.0, 5.0)):  # always left, always right
        with torch.no_grad():
            agent.actor[-1].weight.zero_()
            agent.actor[-1].bias.copy_(torch.tensor(bias))
        constant.append(evaluate(agent, probe, None, seed=0)["eval_success_rate"])
    assert constant == [0.5, 0.5]

    env_id = f"{__name__}:_GoalLine"
    task = Task(env=env_id, total_steps=8192, num_envs=32, seed=0, device="cpu", eval_episodes=16)
    summary = train(task, PPOConfig(num_steps=16), _run(tmp_path / "run", task))
    assert summary["eval_success_rate"] >= 0.9, summary
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert rows[-1]["eval_success_rate"] == summary["eval_success_rate"]
    assert (
        json.loads((tmp_path / "run" / "summary.json").read_text())["eval_success_rate"]
        == summary["eval_success_rate"]
    )


def test_running_mean_std_matches_numpy():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(3.0, 2.0, size=(n, 3)) for n in (5, 17, 64)]
    rms = RunningMeanStd((3,), eps=1e-12)
    for c in chunks:
        rms.update(torch.as_tensor(c))
    allx = np.concatenate(chunks)
    np.testing.assert_allclose(rms.mean.numpy(), allx.mean(0), rtol=1e-9)
    np.testing.assert_allclose(rms.var.numpy(), allx.var(0), rtol=1e-9)
    z = rms.normalize(torch.as_tensor(allx, dtype=torch.float32))
    assert z.dtype == torch.float32
    np.testing.assert_allclose(z.mean(0).numpy(), 0.0, atol=1e-5)
    state = rms.state_dict()
    other = RunningMeanStd((3,))
    other.load_state_dict(state)
    assert torch.equal(other.mean, rms.mean) and torch.equal(other.count, rms.count)
    with pytest.raises(ValueError, match="trailing shape"):
        rms.update(torch.zeros(4, 2))


def test_obs_normalizer_on_goal_observations():
    box = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    space = gym.spaces.Dict({"observation": box, "desired_goal": box, "cell": gym.spaces.Discrete(4)})
    norm = ObsNormalizer(space)
    obs = {
        "observation": torch.randn(64, 2) * 5 + 3,
        "desired_goal": torch.randn(64, 2),
        "cell": torch.zeros(64),
    }
    norm.update(obs)
    out = norm.normalize(obs)
    assert torch.equal(out["cell"], obs["cell"])  # Discrete leaves pass through
    torch.testing.assert_close(out["observation"].mean(0), torch.zeros(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(out["observation"].std(0, unbiased=False), torch.ones(2), atol=1e-3, rtol=0)
    other = ObsNormalizer(space)
    other.load_state_dict(norm.state_dict())
    torch.testing.assert_close(other.normalize(obs)["desired_goal"], out["desired_goal"])


def test_config_is_frozen_and_documented():
    cfg = PPOConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]
    assert cfg.num_steps * Task().num_envs % cfg.num_minibatches == 0


def test_evaluate_equals_a_slow_reference_loop():
    # The lean loop (raw-logit argmax, actor from the parameter dict, stats read once) gives exactly the
    # returns of the obvious loop through the module, its distribution's mode and rms.normalize.
    env = envs.make("hrl_nested/CartPole-v1", 6, autoreset_mode="same_step", validate=False)
    torch.manual_seed(3)
    agent = ActorCritic(env.single_observation_space, env.single_action_space)
    rms = ObsNormalizer(env.single_observation_space)
    rms.update(torch.randn(64, 4) * torch.tensor([1.0, 0.5, 0.1, 0.5]))
    with torch.no_grad():
        agent.actor[-1].weight.mul_(100.0)  # a policy that balances for a while
    out = evaluate(agent, env, rms, seed=5)
    obs, _ = env.reset(seed=5)
    ret, length, done = torch.zeros(6), torch.zeros(6), torch.zeros(6, dtype=torch.bool)
    with torch.no_grad():
        for _ in range(500):
            action = agent.distribution(agent(rms.normalize(obs))[0]).mode()
            obs, reward, term, trunc, _ = env.step(action)
            ret += reward * ~done
            length += ~done
            done |= term | trunc
            if done.all():
                break
    assert out == {"eval_return_mean": float(ret.mean()), "eval_length_mean": float(length.mean())}


def test_evaluate_early_stop_only_when_the_target_is_out_of_reach():
    env = envs.make("hrl_nested/CartPole-v1", 8, autoreset_mode="same_step", validate=False)
    torch.manual_seed(0)
    agent = ActorCritic(env.single_observation_space, env.single_action_space)  # a poor policy
    full = evaluate(agent, env, None, seed=0)
    assert full["eval_return_mean"] < 475
    # Out of reach: stops early, flagged, and the partial mean is still below the target.
    cut = evaluate(agent, env, None, seed=0, stop_if_below=(475.0, 500.0))
    assert cut["eval_stopped_early"] == 1.0 and cut["eval_return_mean"] < 475
    assert cut["eval_length_mean"] <= full["eval_length_mean"]
    # A target the policy meets is never cut short: the full result, unflagged.
    assert evaluate(agent, env, None, seed=0, stop_if_below=(1.0, 500.0)) == full
    # The rule never fires while the target is reachable: even a target just below the final mean
    # (the best case at every step is at least the final sum) runs in full.
    target = full["eval_return_mean"] - 1e-3
    assert "eval_stopped_early" not in evaluate(agent, env, None, seed=0, stop_if_below=(target, 500.0))
