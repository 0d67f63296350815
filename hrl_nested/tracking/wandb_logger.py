"""A W&B run that can fail without taking training down: metrics against ``env_steps``, the run's config
and summary (the same values as ``config.json`` and ``summary.json``), and files as artifacts."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hrl_nested.tracking.files import jsonable
from hrl_nested.tracking.wandb_mode import resolve_wandb_mode


class WandbLogger:
    """A W&B run that can fail without taking training down.

    Args:
        mode: ``online``, ``offline`` or ``disabled`` (resolved with `resolve_wandb_mode`).
        project: W&B project.
        run_id: the run's id; reusing it with ``resume="allow"`` continues the same W&B run.
        name: display name (under ``wandb agent``, W&B's own: every run of a sweep has the same algo, env
            and seed, and the sweep's table needs names that differ).
        config: logged as the run's config.
        directory: where W&B writes its files (``$WANDB_DIR`` wins when set).
        init_timeout: seconds to wait for the server before falling back to offline.

    Every metric is plotted against ``env_steps`` (``define_metric("*", step_metric="env_steps")``), so
    runs with different batch sizes or resumed runs line up on one axis.
    """

    def __init__(
        self,
        mode: str,
        *,
        project: str,
        run_id: str,
        name: str | None,
        config: Mapping[str, Any],
        directory: str | Path,
        init_timeout: float = 20.0,
    ):
        self.run: Any = None
        self._artifacts_on = True
        self.mode, notice = resolve_wandb_mode(mode)
        if notice:
            print(notice, flush=True)
        if self.mode == "disabled":
            return
        if os.environ.get("WANDB_SWEEP_ID"):  # under `wandb agent`: W&B's generated names tell runs apart
            name = None
        kwargs = dict(project=project, id=run_id, name=name, config=jsonable(dict(config)), resume="allow")
        directory = os.environ.get("WANDB_DIR") or str(directory)
        try:
            self.run = self._init(self.mode, directory, init_timeout, kwargs)
        except Exception as e:
            if self.mode != "online":
                self._disable("init", e)
                return
            print(f"W&B: cannot reach the server ({_short(e)}); logging offline instead", flush=True)
            self.mode = "offline"
            try:
                self.run = self._init("offline", directory, init_timeout, kwargs)
            except Exception as e2:
                self._disable("init", e2)

    @staticmethod
    def _init(mode: str, directory: str, timeout: float, kwargs: dict[str, Any]) -> Any:
        import wandb  # imported lazily: ~1 s, paid only when W&B is on

        Path(directory).mkdir(parents=True, exist_ok=True)
        # console="off": W&B would otherwise wrap stdout, which fights with the progress bar.
        settings = wandb.Settings(init_timeout=timeout, console="off", silent=True)
        # create_new: several runs may be open in one process (train.py --num-seeds: one per seed)
        run = wandb.init(mode=mode, dir=directory, settings=settings, reinit="create_new", **kwargs)
        run.define_metric("env_steps")
        run.define_metric("*", step_metric="env_steps")
        return run

    def _disable(self, what: str, e: BaseException) -> None:
        print(f"W&B: {what} failed ({_short(e)}); W&B logging is off, local files continue", flush=True)
        self.mode, self.run = "disabled", None

    def log(self, row: Mapping[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.log(dict(row))
        except Exception as e:
            self._disable("log", e)

    def log_artifact(
        self,
        path: str | Path,
        *,
        name: str,
        type: str,
        aliases: Sequence[str] = (),
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        """Log the file ``path`` as a new version of artifact ``name`` (W&B copies it to its staging area
        at once, so the file may be replaced afterwards). Offline, the version waits in the run's
        ``.wandb`` file for ``wandb sync``. A failure is reported once and turns artifacts off, while
        metrics continue. Returns whether the artifact was logged.
        """
        if self.run is None or not self._artifacts_on:
            return False
        try:
            import wandb

            artifact = wandb.Artifact(name, type=type, metadata=jsonable(dict(metadata or {})))
            artifact.add_file(str(path), name=Path(path).name)
            self.run.log_artifact(artifact, aliases=list(aliases))
            return True
        except Exception as e:
            print(f"W&B: artifact {name} failed ({_short(e)}); artifacts off, metrics continue", flush=True)
            self._artifacts_on = False
            return False

    def finish(self, summary: Mapping[str, Any] | None = None, exit_code: int = 0) -> None:
        if self.run is None:
            return
        try:
            if summary:
                self.run.summary.update(dict(summary))
            self.run.finish(exit_code=exit_code)
        except Exception as e:
            self._disable("finish", e)
        self.run = None


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__
