"""``torchrun --standalone --nproc-per-node 2 experiments/train.py ...`` for the end-to-end tests (gloo on the
CPU), and the run directory's metrics rows read back strictly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = ["checkpoint.pt", "config.json", "metrics.jsonl", "summary.json"]
"""What a finished run directory holds, sorted: one of each, written by rank 0 alone."""


def torchrun(*args: str, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``experiments/train.py *args`` on ``nproc`` processes through ``torch.distributed.run`` (this
    interpreter, the repository first on ``PYTHONPATH``); stdout and stderr are captured as text, and the
    exit code is the caller's to check."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    cmd += [str(ROOT / "experiments" / "train.py"), *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def metrics_rows(run_dir: Path) -> list[dict]:
    """Every row of ``run_dir/metrics.jsonl`` (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
