"""The tqdm progress bar over env steps (shown only on a terminal unless asked)."""

from __future__ import annotations

import sys


def progress_bar(total: int, initial: int, enabled: bool | None):
    """A tqdm bar from ``initial`` to ``total`` env steps, or None when off (``enabled=None``: on only when
    stderr is a terminal, so logs written to files stay free of carriage returns)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", unit_scale=True, dynamic_ncols=True, leave=True)
