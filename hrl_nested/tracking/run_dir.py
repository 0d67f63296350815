"""The run directory: its default name, and the checks that a fresh run never overwrites another."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


class RunDirError(ValueError):
    """The run directory cannot be used (it holds another run, or a resumed one is incomplete)."""


def new_run_id() -> str:
    """A fresh 8-character run id (W&B's own format: lowercase letters and digits)."""
    # Generated here rather than by W&B so that a run started with W&B disabled can still be resumed
    # into a W&B run later under a stable id; seeded from the OS so that seeding `random` (as every
    # training script does) cannot make two runs draw the same id.
    return "".join(random.Random(os.urandom(16)).choices(_ID_ALPHABET, k=8))


def choose_run_id(environ: Mapping[str, str] | None = None) -> str:
    """The run id a new run takes: ``$WANDB_RUN_ID`` when set (``wandb agent`` sets it for each run of a
    sweep), else `new_run_id`."""
    environ = os.environ if environ is None else environ
    return environ.get("WANDB_RUN_ID", "").strip() or new_run_id()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def default_run_dir(
    algo: str, env: str, seed: int, root: str | Path = "runs", run_id: str | None = None
) -> Path:
    """``root/<algo>-<env>-<seed>-<YYYYmmdd-HHMMSS>-<run_id>``, filesystem-safe, that does not exist yet.

    The time stamp alone is not unique: two ``wandb agent`` processes (or ``--num-seeds`` launches)
    starting in the same second would get the same directory. The run id (`choose_run_id` when not
    given) separates them; should the path still exist, ``-2``, ``-3``, ... is appended, so a default
    directory never points at an existing run. (`Run.start` also claims a fresh directory exclusively.)
    """
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{algo}-{_slug(env)}-{seed}-{stamp}-{_slug(run_id or choose_run_id())}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def prepare_run_dir(run_dir: str | Path, *, resume: bool) -> Path:
    """Create a fresh run directory, or check that a resumed one exists.

    Raises:
        RunDirError: a fresh run would write into a non-empty directory (never overwrite a run), or
            a resumed directory does not exist.
    """
    path = check_run_dir(run_dir, resume=resume)
    if not resume:
        path.mkdir(parents=True, exist_ok=True)
    return path


def check_run_dir(run_dir: str | Path, *, resume: bool) -> Path:
    """`prepare_run_dir`'s checks without creating anything (a run checks first, writes later)."""
    path = Path(run_dir)
    if resume:
        if not path.is_dir():
            raise RunDirError(f"--resume {path}: no such run directory")
        return path
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RunDirError(
            f"run dir {path} already exists and is not empty; pass --resume {path} to continue that run, "
            "or choose another --run-dir"
        )
    return path
