"""Evaluation videos (``--capture-video``): mp4 files in the run directory, logged to W&B.

`VideoCapture` belongs to a run; each evaluation gets an `EpisodeClip` (``capture.clip(env_steps)``)
that `hrl_nested.evaluation.run_eval_episodes` drives: it records env 0's first evaluation episode from
the eval env's ``render()`` (the env must be made with ``render_mode="rgb_array"``), then writes
``RUN_DIR/videos/eval-<env_steps>.mp4`` with imageio's ffmpeg plugin (H.264, ``yuv420p``, at the env's
``metadata["render_fps"]``) and logs it to W&B as ``eval/video`` (a ``wandb.Video``) when W&B is on.

A hierarchical agent hands its manager's current subgoals to the env each step through
`EpisodeClip.set_goals` (``env.set_render_goals``, on goal tasks), so the video shows them.

Frames go to the file as they are drawn (`Mp4Writer`), never all in memory. The clip holds the
reset frame and the frame after every step of the episode: ``L + 1`` frames for an episode of ``L``
steps, as Gymnasium's ``RecordVideo`` records. In SAME_STEP mode the env has already reset itself when
the last ``step`` returns, so that frame is drawn from ``info["final_obs"]`` (``env.render_obs``); an
env without ``render_obs`` (a wrapped Gymnasium env) gives ``L`` frames.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from hrl_nested.algos import ConfigError

__all__ = ["EpisodeClip", "Mp4Writer", "VideoCapture", "eval_env_kwargs", "write_mp4"]

DEFAULT_FPS = 30


def eval_env_kwargs(task: Any) -> dict[str, Any]:
    """The eval env's extra constructor arguments: ``render_mode="rgb_array"`` with ``capture_video``
    (only then, so that envs without a ``render_mode`` keyword still train)."""
    return {"render_mode": "rgb_array"} if getattr(task, "capture_video", False) else {}


class Mp4Writer:
    """Frames to an H.264 mp4 (imageio's ffmpeg plugin, ``yuv420p``), one at a time, so that a long
    episode never sits in memory (500 CartPole frames are 360 MB).

    Odd sizes are padded by one black row / column (``yuv420p``, which every player reads, needs even
    sizes); frames are never rescaled. Use as a context manager or call `close`.

    Raises:
        ValueError: ``fps`` not > 0; a frame that is not uint8 ``(H, W, 3)`` of the first frame's shape.
    """

    def __init__(self, path: str | Path, fps: float):
        if not (isinstance(fps, int | float) and not isinstance(fps, bool) and fps > 0):
            raise ValueError(f"write_mp4: expected fps > 0, got {fps!r}")
        self.path, self.fps = Path(path), fps
        self.num_frames = 0
        self._shape: tuple[int, ...] | None = None
        self._writer: Any = None

    def append(self, frame: np.ndarray) -> None:
        f = np.asarray(frame)
        expected = "(H, W, 3)" if self._shape is None else str(self._shape)
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3 or self._shape not in (None, f.shape):
            raise ValueError(
                f"write_mp4: frame {self.num_frames} is {f.dtype} {f.shape}; expected uint8 {expected} "
                f"(uint8 (H, W, 3) frames, all of one shape)"
            )
        if self._writer is None:
            import imageio.v2 as imageio  # imported lazily: only runs with --capture-video need it

            self._shape = f.shape
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = imageio.get_writer(
                self.path,
                fps=self.fps,
                codec="libx264",
                pixelformat="yuv420p",
                macro_block_size=1,
                ffmpeg_log_level="error",
            )
        if f.shape[0] % 2 or f.shape[1] % 2:
            f = np.pad(f, ((0, f.shape[0] % 2), (0, f.shape[1] % 2), (0, 0)))
        self._writer.append_data(f)
        self.num_frames += 1

    def close(self) -> Path:
        """Finish the file (idempotent); returns its path."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self.path

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def write_mp4(path: str | Path, frames: Sequence[np.ndarray], fps: float) -> Path:
    """Write uint8 ``(H, W, 3)`` frames to an H.264 mp4 at ``fps`` (`Mp4Writer`); returns the path.

    Raises:
        ValueError: no frames, frames of different shapes, or not uint8 ``(H, W, 3)``; ``fps`` not > 0.
    """
    if len(frames) == 0:
        raise ValueError("write_mp4: expected at least one frame, got none")
    with Mp4Writer(path, fps) as writer:
        for f in frames:
            writer.append(f)
    return Path(path)


class VideoCapture:
    """A run's evaluation videos: one `EpisodeClip` per evaluation, written under ``directory``.

    Args:
        directory: where the mp4 files go (``RUN_DIR/videos``).
        wandb: a ``hrl_nested.tracking`` W&B logger (anything with ``.log(row)`` and ``.run``), or None.
        env_index: the eval env whose episode is recorded.

    >>> capture = VideoCapture("runs/x/videos")  # doctest: +SKIP
    >>> metrics = run_eval_episodes(env, act, seed=0, video=capture.clip(env_steps))  # doctest: +SKIP
    """

    def __init__(self, directory: str | Path, *, wandb: Any = None, env_index: int = 0):
        self.directory = Path(directory)
        self.wandb = wandb
        self.env_index = int(env_index)
        self.paths: list[Path] = []

    @classmethod
    def for_run(cls, task: Any, run: Any) -> VideoCapture | None:
        """The capture of a training run: None unless ``task.capture_video``; else one writing to
        ``run.dir / "videos"`` and logging to the run's W&B.

        Raises:
            ConfigError: ``capture_video`` on a run without a directory (nowhere to write).
        """
        if not getattr(task, "capture_video", False):
            return None
        if run is None or getattr(run, "dir", None) is None:
            raise ConfigError("capture_video", "a run with a run directory to write videos to", "none")
        return cls(Path(run.dir) / "videos", wandb=_LazyWandb(run))

    def clip(self, env_steps: int) -> EpisodeClip:
        """The clip of the evaluation at ``env_steps`` (its file: ``eval-<env_steps>.mp4``)."""
        return EpisodeClip(self, self.directory / f"eval-{int(env_steps):09d}.mp4", int(env_steps))


class _LazyWandb:
    """The run's W&B logger, looked up when a clip is written (the run has started by then)."""

    def __init__(self, run: Any):
        self._run = run

    def log(self, row: dict[str, Any]) -> None:
        self._run.wandb.log(row)

    @property
    def run(self) -> Any:
        return self._run.wandb.run


class EpisodeClip:
    """One evaluation episode, streamed to its mp4 as it runs; see the module docstring for the frames.

    Attributes:
        num_frames: frames written so far.
    """

    def __init__(self, capture: VideoCapture, path: Path, env_steps: int):
        self.capture, self.path, self.env_steps = capture, path, env_steps
        self.done = False
        self._writer: Mp4Writer | None = None

    @property
    def num_frames(self) -> int:
        return 0 if self._writer is None else self._writer.num_frames

    def begin(self, env: Any) -> None:
        """After the evaluation's reset: the first frame (without subgoals).

        Raises:
            ValueError: the env was not made with ``render_mode="rgb_array"``.
        """
        if getattr(env, "render_mode", None) != "rgb_array":
            raise ValueError(
                f"capture_video: expected an eval env made with render_mode='rgb_array', got render_mode="
                f"{getattr(env, 'render_mode', None)!r}"
            )
        self.done = False
        self.set_goals(env, None)
        self._writer = Mp4Writer(self.path, env.metadata.get("render_fps", DEFAULT_FPS))
        self._writer.append(self._frame(env))

    def set_goals(self, env: Any, goals: torch.Tensor | None) -> None:
        """Show ``goals`` (``(num_envs, goal_dim)``, a manager's current subgoals) in the next frames, on
        envs that draw them (``set_render_goals``); None clears them. Only while the episode is on."""
        if not self.done and hasattr(env, "set_render_goals"):
            env.set_render_goals(goals)

    def after_step(self, env: Any, ended: torch.Tensor, info: dict[str, Any] | None = None) -> None:
        """After each step: the frame (one host read). The step that ends the recorded env's episode
        gives its last frame, drawn from ``info["final_obs"]`` (SAME_STEP) with ``env.render_obs``, or
        from the env itself in NEXT_STEP mode (which resets it only at the next step)."""
        if self.done or self._writer is None:
            return
        i = self.capture.env_index
        if not bool(ended[i]):
            self._writer.append(self._frame(env))
            return
        self.done = True
        final = None if info is None else info.get("final_obs")
        if final is not None and hasattr(env, "render_obs"):
            self._writer.append(env.render_obs(final, env_index=i))
        elif getattr(env, "metadata", {}).get("autoreset_mode") == AutoresetMode.NEXT_STEP:
            self._writer.append(self._frame(env))

    def finish(self, env: Any) -> Path:
        """Close the mp4 and log it to W&B (``eval/video`` at ``env_steps``); returns its path. Clears
        the env's subgoals.

        Raises:
            ValueError: `begin` was never called (no frame to write).
        """
        if hasattr(env, "set_render_goals"):
            env.set_render_goals(None)
        self.done = True
        if self._writer is None:
            raise ValueError("EpisodeClip.finish: expected begin(env) first, got no frames")
        self._writer.close()
        self.capture.paths.append(self.path)
        wandb = self.capture.wandb
        if wandb is not None and getattr(wandb, "run", None) is not None:
            try:
                import wandb as wandb_lib

                video = wandb_lib.Video(str(self.path), format="mp4")
                wandb.log({"env_steps": self.env_steps, "eval/video": video})
            except Exception as e:  # training never dies because logging failed
                print(f"W&B: video logging failed ({type(e).__name__}: {e})", flush=True)
        return self.path

    def _frame(self, env: Any) -> np.ndarray:
        i = self.capture.env_index
        if "env_index" in inspect.signature(env.render).parameters:
            return env.render(env_index=i)
        frames = env.render()  # a Gymnasium vector env (the adapter): every env's frame
        return frames[i] if isinstance(frames, tuple | list) else frames
