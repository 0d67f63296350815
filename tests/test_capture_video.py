"""``--capture-video``: evaluation episodes as mp4 in the run directory (and W&B), subgoals drawn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import envs
from envs.render import SUBGOAL_COLOR
from hrl_nested.algos import ConfigError, Task
from hrl_nested.algos.ppo import PPOConfig
from hrl_nested.algos.ppo import train as ppo_train
from hrl_nested.evaluation import run_eval_episodes
from hrl_nested.video import VideoCapture, write_mp4

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "train.py"


def _train(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    (tmp_path / "home").mkdir(exist_ok=True)
    env.update(HOME=str(tmp_path / "home"), WANDB_DIR=str(tmp_path / "wandb_dir"), WANDB_SILENT="true",
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))  # fmt: skip
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _eval_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "eval_length_mean" in r]


def _near(frames: np.ndarray, color, tol: int = 60) -> np.ndarray:
    """Pixels within ``tol`` (L1) of ``color``: H.264 changes colours a little."""
    return np.abs(frames.astype(np.int64) - np.asarray(color)).sum(-1) < tol


def test_train_capture_video_writes_one_mp4_per_evaluation(tmp_path):
    run_dir = tmp_path / "run"
    out = _train(
        tmp_path, "--env", "hrl_nested/CartPole-v1", "--total-steps", "256", "--num-envs", "8",
        "--ppo.num-steps", "16", "--ppo.num-minibatches", "2", "--ppo.eval-every", "1",
        "--eval-episodes", "1", "--device", "cpu", "--run-dir", str(run_dir), "--wandb-mode", "disabled",
        "--capture-video",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = _eval_rows(run_dir)
    assert len(rows) == 2  # 256 steps = 2 iterations of 8 x 16, evaluated after each
    for row in rows:
        path = run_dir / "videos" / f"eval-{row['env_steps']:09d}.mp4"
        frames = iio.imread(path)
        # One episode (--eval-episodes 1) of L steps: the reset frame and one per step, 600 x 400.
        assert frames.shape == (int(row["eval_length_mean"]) + 1, 400, 600, 3)
        meta = iio.immeta(path)
        assert meta["fps"] == envs.make("hrl_nested/CartPole-v1", 1).metadata["render_fps"] == 50
    assert sorted(p.name for p in (run_dir / "videos").iterdir()) == [
        f"eval-{r['env_steps']:09d}.mp4" for r in rows
    ]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["capture_video"] is True


def test_nested_hrl_video_shows_subgoals_and_goes_to_wandb(tmp_path):
    run_dir = tmp_path / "run"
    out = _train(
        tmp_path, "--algo", "nested-hrl", "--env", "hrl_nested/PointMaze-U-v0", "--total-steps", "64",
        "--num-envs", "4", "--nested-hrl.num-steps", "16", "--eval-episodes", "1", "--device", "cpu",
        "--run-dir", str(run_dir), "--wandb-mode", "offline", "--capture-video",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (row,) = _eval_rows(run_dir)
    frames = iio.imread(run_dir / "videos" / f"eval-{row['env_steps']:09d}.mp4")
    assert frames.shape == (int(row["eval_length_mean"]) + 1, 320, 320, 3)
    subgoal = _near(frames, SUBGOAL_COLOR).sum((1, 2))
    # The reset frame comes before the manager's first subgoal; every later frame shows one.
    assert subgoal[0] == 0
    assert (subgoal[1:] > 100).all()
    logged = list((tmp_path / "wandb_dir").rglob("media/videos/eval/video_*.mp4"))
    assert len(logged) == 1
    np.testing.assert_array_equal(iio.imread(logged[0]).shape, frames.shape)


def test_clip_without_a_manager_draws_no_subgoal(tmp_path):
    """Flat policies never call ``set_render_goals``; a clip clears goals left over from before."""
    env = envs.make("hrl_nested/PointMaze-U-v0", 2, autoreset_mode="same_step", render_mode="rgb_array")
    env.set_render_goals(np.zeros((2, 2)))  # stale goals, e.g. from an earlier evaluation
    clip = VideoCapture(tmp_path).clip(0)
    run_eval_episodes(env, lambda obs, c: (torch.zeros(2, 2), c), seed=0, video=clip)
    frames = iio.imread(clip.path)
    assert clip.num_frames == 61
    assert frames.shape == (61, 320, 320, 3)  # the time limit: a still agent never reaches the goal
    assert not _near(frames, SUBGOAL_COLOR).any()


def test_clip_frames_are_the_episode_seen_through_render(tmp_path):
    env = envs.make("hrl_nested/CartPole-v1", 3, autoreset_mode="same_step", render_mode="rgb_array")
    capture = VideoCapture(tmp_path)
    clip = capture.clip(7)
    first = {}

    def act(obs, carry):
        if not first:
            first["frame"] = env.render()
        return torch.ones(3, dtype=torch.int64), carry  # always push right: a short episode

    run_eval_episodes(env, act, seed=3, video=clip)
    assert capture.paths == [tmp_path / "eval-000000007.mp4"]
    # Env 0's length, read independently: replay the same seed without a clip.
    env2 = envs.make("hrl_nested/CartPole-v1", 1, autoreset_mode="same_step")
    env2.reset(seed=3)
    length = 0
    while True:
        length += 1
        _, _, term, trunc, info = env2.step(torch.ones(1, dtype=torch.int64))
        if bool(term[0] | trunc[0]):
            final_x = float(info["final_obs"][0, 0])  # where the episode ended (the env has reset)
            break
    assert clip.num_frames == length + 1
    frames = iio.imread(capture.paths[0])
    assert frames.shape == (length + 1, 400, 600, 3)
    # The first frame is the reset state as render() drew it (H.264 is lossy: compare the cart's place).
    cart_x = lambda f: np.flatnonzero(f[310].astype(int).sum(-1) < 200).mean()  # noqa: E731 (dark pixels)
    assert abs(cart_x(frames[0]) - cart_x(first["frame"])) < 1
    assert cart_x(frames[-1]) > cart_x(frames[0]) + 2  # always pushed right: the cart has moved right
    assert abs(cart_x(frames[-1]) + 0.5 - (final_x * 125 + 300)) < 1.5  # the last frame: the final state


def test_write_mp4_round_trip_and_errors(tmp_path):
    frames = [np.zeros((33, 47, 3), dtype=np.uint8) for _ in range(5)]
    for k, f in enumerate(frames):
        f[:, : 8 * (k + 1)] = (255, 255, 255)  # a white band that grows
    path = write_mp4(tmp_path / "a" / "clip.mp4", frames, fps=10)
    back = iio.imread(path)
    assert back.shape == (5, 34, 48, 3)  # odd sizes padded by one row and column, never rescaled
    white = (back[:, :33, :47].astype(int).sum(-1) > 600).sum((1, 2))
    np.testing.assert_allclose(white, [33 * 8 * (k + 1) for k in range(5)], rtol=0.1)
    with pytest.raises(ValueError, match="at least one frame"):
        write_mp4(tmp_path / "b.mp4", [], fps=10)
    with pytest.raises(ValueError, match=r"frame 1 is uint8 \(8, 8, 3\); expected uint8 \(4, 4, 3\)"):
        write_mp4(tmp_path / "b.mp4", [np.zeros((4, 4, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)], fps=10)
    with pytest.raises(ValueError, match=r"frame 0 is float64"):
        write_mp4(tmp_path / "b.mp4", [np.zeros((4, 4, 3))], fps=10)
    with pytest.raises(ValueError, match="fps > 0"):
        write_mp4(tmp_path / "b.mp4", frames, fps=0)


def test_capture_needs_an_rgb_array_env_and_a_run_dir(tmp_path):
    env = envs.make("hrl_nested/CartPole-v1", 2, autoreset_mode="same_step")
    clip = VideoCapture(tmp_path).clip(0)
    with pytest.raises(ValueError, match="render_mode='rgb_array', got render_mode=None"):
        run_eval_episodes(env, lambda obs, c: (torch.zeros(2, dtype=torch.int64), c), seed=0, video=clip)
    task = Task(num_envs=4, total_steps=64, eval_episodes=1, device="cpu", capture_video=True)
    with pytest.raises(ConfigError, match="--capture-video: expected a run with a run directory"):
        ppo_train(task, PPOConfig(num_steps=16, num_minibatches=2))
    assert VideoCapture.for_run(Task(), None) is None  # off by default
