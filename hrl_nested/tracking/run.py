"""`Run`: one training run's directory, metrics, checkpoints, W&B run and progress bar, behind one object."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hrl_nested.tracking.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from hrl_nested.tracking.files import jsonable, write_json
from hrl_nested.tracking.metrics import truncate_metrics
from hrl_nested.tracking.progress import progress_bar
from hrl_nested.tracking.rng_state import rng_state
from hrl_nested.tracking.run_dir import RunDirError, check_run_dir, choose_run_id, prepare_run_dir
from hrl_nested.tracking.wandb_logger import WandbLogger


class Run:
    """One training run's files, W&B run, progress bar and checkpoint timer.

    Args:
        run_dir: where the files go; None keeps everything in memory (benchmarks, tests).
        config: the full config, written to ``config.json`` and logged to W&B.
        algo, env, seed: copied into ``summary.json``.
        total_steps: the progress bar's length.
        resume: continue the run in ``run_dir``: load its last checkpoint (``resume_state``, read only);
            `start` then cuts ``metrics.jsonl`` back to that checkpoint's ``env_steps``.
        wandb_mode, wandb_project: see `WandbLogger`.
        checkpoint_every_s: `checkpoint_due` turns true this many seconds after the last checkpoint.
        progress: show a tqdm bar; None: only when stderr is a terminal.
        run_id: the W&B run id of a fresh run (default: `choose_run_id`, i.e. ``$WANDB_RUN_ID`` when
            ``wandb agent`` set it, else a new id). A resumed run keeps the id its checkpoint holds.
        writer: False for a rank other than 0 of a ``torchrun`` run (`hrl_nested.distributed`): it reads
            the checkpoint on resume (``resume_state``) but writes nothing: no directory, metrics, W&B,
            progress bar, checkpoint or summary; rank 0 writes them for the whole run.

    Each checkpoint is also logged to W&B as a version of the artifact ``checkpoint-<run_id>`` (type
    ``checkpoint``, alias ``step-<env_steps>``), and `finish` logs the last checkpoint as the artifact
    ``model-<run_id>`` (type ``model``, alias ``final``); offline runs keep them for ``wandb sync``.
    """

    def __init__(
        self,
        run_dir: str | Path | None,
        *,
        config: Mapping[str, Any],
        algo: str,
        env: str,
        seed: int,
        total_steps: int,
        resume: bool = False,
        wandb_mode: str = "disabled",
        wandb_project: str = "hrl_nested",
        checkpoint_every_s: float = 300.0,
        progress: bool | None = None,
        run_id: str | None = None,
        writer: bool = True,
    ):
        self._t0 = time.perf_counter()
        self.dir = None if run_dir is None else Path(run_dir)
        self._checkpoint_file = None if self.dir is None else self.dir / CHECKPOINT_NAME
        if not writer:
            wandb_mode, progress = "disabled", False
        self.resume = bool(resume)
        self.info = {"algo": algo, "env": env, "seed": seed}
        self.config = dict(config)
        self.checkpoint_every_s = float(checkpoint_every_s)
        self.last_row: dict[str, Any] = {}
        self.resume_state: dict[str, Any] | None = None
        self._wall_offset = 0.0
        self._wandb_args = (wandb_mode, wandb_project, f"{algo}-{env}-{seed}")
        self._progress = (total_steps, progress)
        self._metrics = None
        self._bar = None
        self._wandb: WandbLogger | None = None
        self.started = False
        if self.dir is not None and writer:  # checked now, created in `start`: a failed run leaves nothing
            check_run_dir(self.dir, resume=self.resume)
        run_id = run_id or choose_run_id()
        if self.resume:
            if self.dir is None:
                raise RunDirError("resume: needs a run directory")
            # Read only: the directory changes in `start`, once the algorithm has loaded this state.
            self.resume_state = load_checkpoint(self.checkpoint_path)
            self._wall_offset = float(self.resume_state.get("wall_s", 0.0))
            run_id = self.resume_state.get("wandb_run_id") or run_id
        self.run_id = run_id
        if not writer:  # every write below is conditioned on a directory
            self.dir = None
        self._last_ckpt = time.perf_counter()

    @property
    def checkpoint_path(self) -> Path | None:
        """``run_dir/checkpoint.pt`` (None for an in-memory run)."""
        return self._checkpoint_file

    def start(self) -> Run:
        """Open the run: create the directory, write ``config.json``, cut ``metrics.jsonl`` back to the
        checkpoint (on resume), open W&B and the progress bar. Idempotent.

        An algorithm calls it once its setup is done and ``resume_state`` is loaded into its objects, so
        that a run that fails before (a bad flag or env, a checkpoint that does not fit) leaves the run
        directory exactly as it was (a fresh run's does not exist until now). `log`, `save_checkpoint`
        and `finish` call it if it was not.
        """
        if self.started:
            return self
        if self.dir is not None:
            prepare_run_dir(self.dir, resume=self.resume)  # checked again: it may have filled up since
            if self.resume_state is not None:
                truncate_metrics(self.dir / "metrics.jsonl", int(self.resume_state["env_steps"]))
            try:  # a fresh run claims its directory: of two runs started on it at once, one gets it
                write_json(self.dir / "config.json", self.config, exclusive=not self.resume)
            except FileExistsError:
                raise RunDirError(
                    f"run dir {self.dir}: another run started in it at the same time; choose another "
                    "--run-dir"
                ) from None
        self.started = True
        if self.dir is not None:
            self._metrics = open(self.dir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in finish)
        mode, project, name = self._wandb_args
        self._wandb = WandbLogger(
            mode,
            project=project,
            run_id=self.run_id,
            name=name,
            config=self.config,
            directory=self.dir if self.dir is not None else Path.cwd(),
        )
        self._bar = progress_bar(self._progress[0], self.env_steps_at_start, self._progress[1])
        return self

    @property
    def wandb(self) -> WandbLogger:
        """The run's `WandbLogger` (opens the run, see `start`)."""
        self.start()
        assert self._wandb is not None
        return self._wandb

    @property
    def env_steps_at_start(self) -> int:
        return 0 if self.resume_state is None else int(self.resume_state["env_steps"])

    @property
    def wall_s(self) -> float:
        """Seconds of training so far, across resumes."""
        return self._wall_offset + time.perf_counter() - self._t0

    def log(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Record one iteration: ``metrics.jsonl``, W&B and the progress bar. Adds ``wall_s``."""
        if "env_steps" not in row:
            raise ValueError(f"log: every row needs 'env_steps', got keys {sorted(row)}")
        self.start()
        out = {k: jsonable(v) for k, v in row.items()}
        out["env_steps"] = int(out["env_steps"])
        out["wall_s"] = round(self.wall_s, 4)
        self.last_row = out
        if self._metrics is not None:
            self._metrics.write(json.dumps(out) + "\n")
            self._metrics.flush()  # a crash loses at most the line being written
        self.wandb.log(out)
        if self._bar is not None:
            self._bar.update(out["env_steps"] - self._bar.n)
            ret = out.get("episode_return_mean", out.get("eval_return_mean"))
            if ret is not None:
                self._bar.set_postfix(ret=f"{ret:.1f}", refresh=False)
        return out

    def checkpoint_due(self) -> bool:
        return self.dir is not None and time.perf_counter() - self._last_ckpt >= self.checkpoint_every_s

    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        """Write ``state`` plus RNG states, wall time and W&B run id to ``checkpoint.pt``, atomically."""
        self._last_ckpt = time.perf_counter()
        if self.dir is None:
            return
        self.start()
        for k in ("env_steps", "iteration"):
            if k not in state:
                raise ValueError(f"save_checkpoint: state needs {k!r}")
        full = {**state, "wall_s": self.wall_s, "wandb_run_id": self.run_id, "rng": rng_state()}
        save_checkpoint(self.dir / CHECKPOINT_NAME, full)
        steps, iteration = int(state["env_steps"]), int(state["iteration"])
        self.wandb.log_artifact(
            self.dir / CHECKPOINT_NAME,
            name=f"checkpoint-{self.run_id}",
            type="checkpoint",
            aliases=(f"step-{steps}",),
            metadata={**self.info, "env_steps": steps, "iteration": iteration},
        )

    def finish(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``summary.json`` (info, ``env_steps``, ``wall_s`` and ``summary``), close W&B and files."""
        self.start()
        out = {**self.info, "env_steps": self.last_row.get("env_steps", self.env_steps_at_start)}
        out.update({k: jsonable(v) for k, v in summary.items()})
        out["wall_s"] = round(self.wall_s, 4)
        if self.dir is not None:
            write_json(self.dir / "summary.json", out)
            if self.checkpoint_path.is_file():  # the algorithms write their final state just before
                self.wandb.log_artifact(
                    self.checkpoint_path,
                    name=f"model-{self.run_id}",
                    type="model",
                    aliases=("final",),
                    metadata=out,
                )
        self.wandb.finish(out)
        self.close()
        return out

    def close(self, exit_code: int = 0) -> None:
        """Release files, the bar and W&B (idempotent; `finish` calls it)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._wandb is not None:
            self._wandb.finish(exit_code=exit_code)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exit_code=0 if exc_type is None else 1)
