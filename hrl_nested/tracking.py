"""Run bookkeeping for the experiment scripts: run directory, metrics, checkpoints, W&B, progress bar.

A `Run` owns everything an algorithm's loop should not have to think about::

    run_dir/
      config.json      the full config, written when training starts (after a resumed checkpoint loaded)
      metrics.jsonl    one JSON object per iteration, always with ``env_steps`` and ``wall_s``
      summary.json     final numbers (``algo``, ``env``, ``seed``, ``env_steps``, ``wall_s``, eval results)
      checkpoint.pt    the last checkpoint, replaced atomically (tmp file + rename)
      wandb/           W&B's own files (offline runs can be uploaded later with ``wandb sync``)

The loop calls ``run.start()`` once its setup is done (on resume: once ``run.resume_state`` is loaded;
until then the run directory is untouched, so a failed start changes nothing), ``run.log(row)`` once
per iteration, ``run.save_checkpoint(state)`` when
``run.checkpoint_due()`` and at the end, and ``run.finish(summary)``. Logging never stops training:
any W&B error is reported once and W&B is switched off, while the local files stay complete.
"""

from __future__ import annotations

import contextlib
import json
import math
import netrc
import os
import random
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

WANDB_MODES = ("online", "offline", "disabled")
CHECKPOINT_NAME = "checkpoint.pt"
_CHECKPOINT_VERSION = 1


class RunDirError(ValueError):
    """The run directory cannot be used (it holds another run, or a resumed one is incomplete)."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or not one of ours."""


# ---------------------------------------------------------------------------- files
def default_run_dir(algo: str, env: str, seed: int, root: str | Path = "runs") -> Path:
    """``root/<algo>-<env>-<seed>-<YYYYmmdd-HHMMSS>`` with the env id made filesystem-safe."""
    env_slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", env).strip("_")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{algo}-{env_slug}-{seed}-{stamp}"


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


def _jsonable(x: Any) -> Any:
    """Tensors, numpy scalars, paths and tuples as plain JSON values."""
    if isinstance(x, torch.Tensor):
        return x.item() if x.numel() == 1 else x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def _replace_atomically(path: Path, write) -> None:
    """Write to ``path.tmp``, fsync, then rename over ``path``: a reader sees the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    data = (json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n").encode()
    _replace_atomically(Path(path), lambda f: f.write(data))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (a torn last line, from a crash mid-write, is skipped)."""
    rows = []
    path = Path(path)
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_metrics(path: str | Path, env_steps: int) -> int:
    """Keep only the rows with ``env_steps <= env_steps`` (those a checkpoint already covers).

    A resumed run repeats the iterations after its checkpoint, so their rows would otherwise appear
    twice. Rewritten atomically. Returns the number of rows kept.
    """
    path = Path(path)
    kept = [r for r in read_metrics(path) if r.get("env_steps", math.inf) <= env_steps]
    data = "".join(json.dumps(r) + "\n" for r in kept).encode()
    _replace_atomically(path, lambda f: f.write(data))
    return len(kept)


# ---------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    payload = {"format_version": _CHECKPOINT_VERSION, **state}
    _replace_atomically(Path(path), lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` (tensors, numbers, strings, dicts and lists only).

    Raises:
        CheckpointError: the file is missing, unreadable, or lacks ``env_steps`` / ``iteration``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: the run stopped before its first checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # zip / pickle / EOF errors all mean the same thing to the user
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({_load_failure_reason(e)}); resume from an intact "
            "copy or start a new run"
        ) from None
    if not isinstance(state, dict) or state.get("format_version") != _CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} is not an hrl_nested checkpoint (version {_CHECKPOINT_VERSION})"
        )
    require_keys(state, ("env_steps", "iteration"), path)
    return state


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Lines of torch's message that tell how to load the file anyway: weights_only=False or allowlisting its
# classes both run code from the file, which a corrupt or foreign checkpoint must never get.
_UNSAFE_ADVICE = ("weights_only", "can still be loaded", "safe_globals", "check the documentation")


def _load_failure_reason(e: BaseException) -> str:
    """``"<ExceptionType>: <what is wrong with the file>"`` from a failed ``torch.load``, on one line.

    Keeps torch's diagnosis (``Unsupported global: GLOBAL pkg.Cls ...``, ``Unsupported operand 95``,
    ``failed finding central directory``) and drops colour codes, empty lines and advice on loading the
    file unsafely; when nothing is left, says what the exception type means.
    """
    text = _ANSI_ESCAPE.sub("", str(e))
    kept = []
    for line in text.splitlines():
        line = line.strip()
        if "WeightsUnpickler error:" in line:  # torch's diagnosis follows this prefix (maybe on later lines)
            line = line.split("WeightsUnpickler error:", 1)[1].strip()
        elif any(a in line.lower() for a in _UNSAFE_ADVICE):
            continue
        line = line.split(". Please use", 1)[0].removeprefix("Weights only load failed.").strip()
        if line:
            kept.append(line)
    reason = "; ".join(kept)
    if reason.startswith("Unsupported operand"):  # bytes that are not a pickle at all
        reason = f"not a torch checkpoint, unsupported pickle o{reason[13:]}"
    if len(reason) > 200:  # whole sentences: torch's zip errors go on about miniz internals
        reason = reason[: reason.rfind(". ", 0, 200) + 1 or 200]
    if reason:
        return f"{type(e).__name__}: {reason}"
    fallback = "the file is empty or cut short" if isinstance(e, EOFError) else "not a torch checkpoint"
    return f"{type(e).__name__}: {fallback}"


def require_keys(state: Mapping[str, Any], keys: Sequence[str], path: str | Path | None) -> None:
    """Raise `CheckpointError` naming the first of ``keys`` missing from a checkpoint and its file."""
    for key in keys:
        if key not in state:
            raise CheckpointError(
                f"checkpoint {path} has no {key!r} entry (it holds {sorted(state)}); it was written by "
                "another version or algorithm, or edited"
            )


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and every CUDA device) random states, checkpoint-safe types only."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `rng_state` saved (CUDA states only when the device count matches)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].cpu())
    if torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ---------------------------------------------------------------------------- W&B
def has_wandb_api_key(environ: Mapping[str, str] | None = None, netrc_path: str | Path | None = None) -> bool:
    """Whether W&B would find an API key without prompting: ``WANDB_API_KEY`` or a netrc entry.

    The netrc entry is looked up for the host of ``WANDB_BASE_URL`` (default ``api.wandb.ai``), in
    ``netrc_path``, else ``$NETRC``, else ``~/.netrc``.
    """
    environ = os.environ if environ is None else environ
    if environ.get("WANDB_API_KEY", "").strip():
        return True
    host = urlparse(environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(netrc_path or environ.get("NETRC") or Path.home() / ".netrc")
    try:
        auth = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def resolve_wandb_mode(
    requested: str, *, environ: Mapping[str, str] | None = None, netrc_path: str | Path | None = None
) -> tuple[str, str | None]:
    """Decide the W&B mode before ``wandb.init`` so that it never prompts for a key.

    Returns:
        ``(mode, notice)``: ``online`` without an API key becomes ``offline`` with a one-line notice
        to print; other requests pass through with no notice.
    """
    if requested not in WANDB_MODES:
        raise ValueError(f"wandb mode: expected one of {WANDB_MODES}, got {requested!r}")
    if requested == "online" and not has_wandb_api_key(environ, netrc_path):
        return "offline", (
            "W&B: no API key (WANDB_API_KEY or `wandb login`), logging offline instead; "
            "upload later with `wandb sync`"
        )
    return requested, None


class WandbLogger:
    """A W&B run that can fail without taking training down.

    Args:
        mode: ``online``, ``offline`` or ``disabled`` (resolved with `resolve_wandb_mode`).
        project: W&B project.
        run_id: the run's id; reusing it with ``resume="allow"`` continues the same W&B run.
        name: display name.
        config: logged as the run's config.
        directory: where W&B writes its files (``$WANDB_DIR`` wins when set).
        init_timeout: seconds to wait for the server before falling back to offline.
    """

    def __init__(
        self,
        mode: str,
        *,
        project: str,
        run_id: str,
        name: str,
        config: Mapping[str, Any],
        directory: str | Path,
        init_timeout: float = 20.0,
    ):
        self.run: Any = None
        self.mode, notice = resolve_wandb_mode(mode)
        if notice:
            print(notice, flush=True)
        if self.mode == "disabled":
            return
        kwargs = dict(project=project, id=run_id, name=name, config=_jsonable(dict(config)), resume="allow")
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
        run = wandb.init(mode=mode, dir=directory, settings=settings, **kwargs)
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


# ---------------------------------------------------------------------------- the run
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
    ):
        self._t0 = time.perf_counter()
        self.dir = None if run_dir is None else Path(run_dir)
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
        if self.dir is not None:  # checked now, created in `start`: a run that fails before leaves nothing
            check_run_dir(self.dir, resume=self.resume)
        run_id = _new_run_id()
        if self.resume:
            if self.dir is None:
                raise RunDirError("resume: needs a run directory")
            # Read only: the directory changes in `start`, once the algorithm has loaded this state.
            self.resume_state = load_checkpoint(self.checkpoint_path)
            self._wall_offset = float(self.resume_state.get("wall_s", 0.0))
            run_id = self.resume_state.get("wandb_run_id") or run_id
        self.run_id = run_id
        self._last_ckpt = time.perf_counter()

    @property
    def checkpoint_path(self) -> Path | None:
        """``run_dir/checkpoint.pt`` (None for an in-memory run)."""
        return None if self.dir is None else self.dir / CHECKPOINT_NAME

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
        self.started = True
        if self.dir is not None:
            if self.resume_state is not None:
                truncate_metrics(self.dir / "metrics.jsonl", int(self.resume_state["env_steps"]))
            write_json(self.dir / "config.json", self.config)
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
        self._bar = _progress_bar(self._progress[0], self.env_steps_at_start, self._progress[1])
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
        out = {k: _jsonable(v) for k, v in row.items()}
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

    def finish(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``summary.json`` (info, ``env_steps``, ``wall_s`` and ``summary``), close W&B and files."""
        self.start()
        out = {**self.info, "env_steps": self.last_row.get("env_steps", self.env_steps_at_start)}
        out.update({k: _jsonable(v) for k, v in summary.items()})
        out["wall_s"] = round(self.wall_s, 4)
        if self.dir is not None:
            write_json(self.dir / "summary.json", out)
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


def _new_run_id() -> str:
    # Generated here rather than by W&B so that a run started with W&B disabled can still be resumed
    # into a W&B run later under a stable id.
    return "".join(random.Random(os.urandom(16)).choices("abcdefghijklmnopqrstuvwxyz0123456789", k=8))


def _progress_bar(total: int, initial: int, enabled: bool | None):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", unit_scale=True, dynamic_ncols=True, leave=True)


# ---------------------------------------------------------------------------- resuming a loop
def reset_for_resume(env: Any, env_id: str, seed: int, iteration: int) -> Any:
    """Reset ``env`` for a resumed run whose env state could not be checkpointed (a simulator's), with
    a reset seed of its own, ``seed + 1_000_003 * iteration``, and say so; returns the observation."""
    reset_seed = seed + 1_000_003 * iteration
    obs, _ = env.reset(seed=reset_seed)
    print(
        f"resume: {env_id} keeps its state in a simulator, which a checkpoint cannot hold; the learner "
        f"(networks, optimizers, obs statistics, RNG, counters) is restored and the envs start fresh "
        f"episodes (reset seed {reset_seed})",
        flush=True,
    )
    return obs


@contextlib.contextmanager
def checkpoint_fits(path: str | Path | None, hint: str = "") -> Iterator[None]:
    """Turn an error raised while loading a checkpoint into live objects (a tensor of another shape, a
    missing entry) into `CheckpointError` naming the file and the first line of the cause, plus ``hint``.

    >>> with checkpoint_fits("ck.pt"):  # doctest: +SKIP
    ...     agent.load_state_dict(state["agent"])
    """
    try:
        yield
    except CheckpointError:
        raise
    except (RuntimeError, ValueError, TypeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(
            f"checkpoint {path} does not fit this run ({type(e).__name__}: {first[:300]}){hint}"
        ) from None
