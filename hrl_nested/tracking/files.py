"""Atomic file writes and JSON-safe values: what every file of a run directory is written with."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

_PLAIN = frozenset((int, float, str, bool, type(None)))


def jsonable(x: Any) -> Any:
    """Tensors, numpy scalars, paths and tuples as plain JSON values."""
    if type(x) in _PLAIN:  # a metrics row's values: skip the isinstance chain (K rows per iteration)
        return x
    if isinstance(x, torch.Tensor):
        return x.item() if x.numel() == 1 else x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def replace_atomically(path: Path, write) -> None:
    """Write to ``path.tmp``, fsync, then rename over ``path``: a reader sees the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: str | Path, obj: Any, *, exclusive: bool = False) -> None:
    """Write ``obj`` as indented JSON, atomically.

    Args:
        exclusive: fail with `FileExistsError` if ``path`` exists, atomically (the file is written
            under a private name and hard-linked into place), so that of two processes claiming the
            same path exactly one succeeds and nothing is overwritten.
    """
    data = (json.dumps(jsonable(obj), indent=2, sort_keys=False) + "\n").encode()
    path = Path(path)
    if not exclusive:
        replace_atomically(path, lambda f: f.write(data))
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # unlike rename, link refuses to replace an existing file
        except FileExistsError:
            raise
        except OSError:  # a filesystem without hard links: exclusive create, still never overwrites
            with open(path, "xb") as f:
                f.write(data)
    finally:
        tmp.unlink(missing_ok=True)
