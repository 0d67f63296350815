"""Stable-Baselines3 on our envs: PPO learns CartPole through `envs.SB3VecEnv`, SAC with HER runs on
PointMaze-U and relabels, and ``--algo sb3-ppo`` / ``sb3-sac`` write our run directory and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO, SAC, HerReplayBuffer
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecMonitor

import envs
from experiments.train import main
from hrl_nested.algos import Task
from hrl_nested.algos.sb3_ppo import SB3PPOConfig
from hrl_nested.algos.sb3_ppo import train as train_sb3_ppo
from hrl_nested.tracking import Run, read_metrics


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """SB3's small networks: one torch thread (see conftest)."""


def test_sb3_ppo_learns_cartpole_through_the_wrapper():
    """RL Zoo's CartPole hyperparameters, 10k steps, seed 0: the deterministic policy's mean return over
    10 episodes beats 120 (a random policy scores about 22; seeds 0-2 scored 176, 280, 500 here)."""
    venv = VecMonitor(envs.SB3VecEnv.make("hrl_nested/CartPole-v1", 8))
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        learning_rate=1e-3,
        seed=0,
        device="cpu",
    )
    model.learn(10_000)
    eval_env = envs.SB3VecEnv.make("hrl_nested/CartPole-v1", 10)
    eval_env.seed(100)
    mean, _ = evaluate_policy(model, VecMonitor(eval_env), n_eval_episodes=10, deterministic=True)
    assert mean >= 120


def test_sac_her_relabels_on_point_maze():
    """HER's samples: 4 of 5 relabelled goals (n_sampled_goal=4), rewards recomputed by the env's
    compute_reward (the closed form 1[||ag' - g|| <= 0.45]), and positive rewards from relabelling
    although no real episode reached the goal."""
    venv = VecMonitor(envs.SB3VecEnv.make("hrl_nested/PointMaze-U-v0", 2))
    model = SAC(
        "MultiInputPolicy",
        venv,
        replay_buffer_class=HerReplayBuffer,
        replay_buffer_kwargs={"n_sampled_goal": 4, "goal_selection_strategy": "future"},
        learning_starts=120,
        buffer_size=2_000,
        batch_size=32,
        policy_kwargs={"net_arch": [32, 32]},
        seed=0,
        device="cpu",
    )
    model.learn(300)
    buf = model.replay_buffer
    stored = buf.rewards[: buf.pos].ravel()
    assert stored.sum() == 0  # no real success in 300 random-ish steps of the U-maze
    samples = buf.sample(2000)
    goal = np.array([-1.0, 1.0])  # U-maze's fixed goal: an unrelabelled sample keeps it
    dg = samples.observations["desired_goal"].numpy()
    relabelled = np.abs(dg - goal).max(axis=1) > 1e-6
    assert 0.7 < relabelled.mean() < 0.9
    next_ag = samples.next_observations["achieved_goal"].numpy().astype(np.float64)
    want = (np.linalg.norm(next_ag - dg, axis=1) <= 0.45).astype(np.float32)
    np.testing.assert_array_equal(samples.rewards.numpy().ravel(), want)
    assert want.sum() > 0


def _run_dir_files(run_dir) -> tuple[list[dict], dict]:
    for name in ("config.json", "metrics.jsonl", "summary.json", "checkpoint.pt", "sb3_model.zip"):
        assert (run_dir / name).is_file(), name
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert rows and all("env_steps" in r and "wall_s" in r for r in rows)
    return rows, json.loads((run_dir / "summary.json").read_text())


def test_train_sb3_sac_her_writes_the_run_directory(tmp_path):
    run_dir = tmp_path / "sac"
    argv = ["--algo", "sb3-sac", "--env", "hrl_nested/PointMaze-U-v0", "--num-envs", "2"]
    argv += [
        "--total-steps",
        "300",
        "--eval-episodes",
        "2",
        "--run-dir",
        str(run_dir),
        "--wandb-mode",
        "disabled",
    ]
    argv += ["--sb3-sac.her", "--sb3-sac.buffer-size", "2000", "--sb3-sac.batch-size", "32"]
    argv += ["--sb3-sac.net-arch", "32", "32", "--sb3-sac.log-every", "100", "--capture-video"]
    summary = main(argv)
    rows, saved = _run_dir_files(run_dir)
    assert (run_dir / "sb3_replay_buffer.pkl").is_file()
    assert len(list((run_dir / "videos").glob("*.mp4"))) == 1  # --capture-video: the final evaluation
    assert saved["algo"] == "sb3-sac" and saved["env_steps"] == 300 == rows[-1]["env_steps"]
    assert 0.0 <= saved["eval_success_rate"] <= 1.0 and "eval_return_mean" in saved
    assert rows[-1]["eval_return_mean"] == saved["eval_return_mean"] == summary["eval_return_mean"]
    assert [r["env_steps"] for r in rows] == [100, 200, 300]
    assert any("train/critic_loss" in r for r in rows)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["algo"] == "sb3-sac" and config["sb3_sac"]["her"] is True

    resumed = main(["--resume", str(run_dir), "--total-steps", "400"])
    rows, saved = _run_dir_files(run_dir)
    assert [r["env_steps"] for r in rows] == [100, 200, 300, 400]
    assert saved["env_steps"] == 400 and resumed["env_state_restored"] is True


def _task(total: int) -> Task:
    return Task(total_steps=total, num_envs=4, eval_episodes=2, device="cpu")


def _train(run_dir, total: int, *, resume: bool = False) -> dict:
    cfg = SB3PPOConfig(n_steps=16, batch_size=32, n_epochs=2, eval_every=64)
    run = Run(
        run_dir, config={}, algo="sb3-ppo", env=_task(total).env, seed=0, total_steps=total, resume=resume
    )
    with run:
        return train_sb3_ppo(_task(total), cfg, run)


def test_sb3_ppo_resume_continues_exactly(tmp_path):
    """128 steps, then --resume to 256, ends with the parameters of one 256-step run (the env state, the
    model's last observation, Adam's state and the RNG states all restored)."""
    straight = _train(tmp_path / "a", 256)
    _train(tmp_path / "b", 128)
    resumed = _train(tmp_path / "b", 256, resume=True)
    a = PPO.load(tmp_path / "a" / "sb3_model.zip").policy.state_dict()
    b = PPO.load(tmp_path / "b" / "sb3_model.zip").policy.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert resumed["env_state_restored"] is True and resumed["env_steps"] == straight["env_steps"] == 256
    rows, _ = _run_dir_files(tmp_path / "b")
    assert [r["env_steps"] for r in rows] == [64, 128, 192, 256]  # no row twice after the resume
    assert all("eval_return_mean" in r for r in rows)  # eval_every=64


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--algo", "sb3-sac", "--env", "hrl_nested/CartPole-v1"], "--env"),
        (["--algo", "sb3-sac", "--env", "hrl_nested/Pendulum-v1", "--sb3-sac.her"], "--sb3-sac.her"),
        (["--algo", "sb3-ppo", "--sb3-ppo.batch-size", "1"], "--sb3-ppo.batch-size"),
        (["--algo", "sb3-sac", "--sb3-sac.ent-coef", "lots"], "--sb3-sac.ent-coef"),
    ],
)
def test_bad_sb3_flags_exit_2_and_write_nothing(tmp_path, capsys, argv, flag):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main([*argv, "--total-steps", "64", "--run-dir", str(run_dir), "--wandb-mode", "disabled"])
    assert e.value.code == 2
    assert flag in capsys.readouterr().err
    assert not run_dir.exists()
