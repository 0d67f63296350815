"""Run-directory helpers shared by the PPO resume tests: a quiet `Run`, and a crash at a chosen iteration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hrl_nested.algos import Task
from hrl_nested.tracking import Run


def ppo_run(run_dir: Path, task: Task, resume: bool = False, **kwargs: Any) -> Run:
    """A `Run` for training PPO on ``task`` in ``run_dir``: no progress bar, ``config={}`` unless given."""
    kwargs = {"config": {}, "progress": False, **kwargs}
    return Run(
        run_dir,
        algo="ppo",
        env=task.env,
        seed=task.seed,
        total_steps=task.total_steps,
        resume=resume,
        **kwargs,
    )


def crash_after_iteration(monkeypatch: pytest.MonkeyPatch, iteration: int) -> Callable:
    """Make `Run.log` raise ``KeyboardInterrupt`` right after it writes the metrics row of ``iteration``,
    before that iteration's checkpoint: the checkpoint on disk is the one before, and ``metrics.jsonl``
    holds one row too many. Returns the real `Run.log`, to put back with ``monkeypatch.setattr``."""
    real_log = Run.log

    def crashing_log(self, row):
        out = real_log(self, row)
        if out["iteration"] == iteration:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(Run, "log", crashing_log)
    return real_log
