"""``metrics.jsonl``: one JSON object per log step; reading it back and cutting it back on resume."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hrl_nested.tracking.files import replace_atomically


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
    replace_atomically(path, lambda f: f.write(data))
    return len(kept)
