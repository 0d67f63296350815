"""Checkpoints: atomic save, safe load with clear errors, and the helpers a resumed loop uses."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from hrl_nested.tracking.files import replace_atomically

CHECKPOINT_NAME = "checkpoint.pt"
_CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or not one of ours."""


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    payload = {"format_version": _CHECKPOINT_VERSION, **state}
    replace_atomically(Path(path), lambda f: torch.save(payload, f))


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


def reset_for_resume(env: Any, env_id: str, seed: int, iteration: int, reset: Any = None) -> Any:
    """Reset ``env`` for a resumed run whose env state could not be checkpointed (a simulator's), with
    a reset seed of its own, ``seed + 1_000_003 * iteration``, and say so; returns the observation.
    ``reset``: optional ``reset(seed) -> (obs, info)`` in place of ``env.reset(seed=...)`` (a torchrun
    rank resets its envs with their global indices, `hrl_nested.distributed.reset_shard`)."""
    reset_seed = seed + 1_000_003 * iteration
    obs, _ = env.reset(seed=reset_seed) if reset is None else reset(reset_seed)
    if _is_other_rank():  # torchrun: rank 0 says it once for the run
        return obs
    print(
        f"resume: {env_id} keeps its state in a simulator, which a checkpoint cannot hold; the learner "
        f"(networks, optimizers, obs statistics, RNG, counters) is restored and the envs start fresh "
        f"episodes (reset seed {reset_seed})",
        flush=True,
    )
    return obs


def _is_other_rank() -> bool:
    """A rank other than 0 of an initialized ``torch.distributed`` process group (it prints no notices)."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_rank() != 0


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
