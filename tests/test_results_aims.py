"""The results script checks the issue's aims against its own table (experiments/nested_results.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import trim_mean

from tests._scripts import load_script

nr = load_script("nested_results.py", "nested_results_aims")


def _row(finals, solved=None, planned=None):
    curves = {100 + i: ([1000, 2000], [0.0, f]) for i, f in enumerate(finals)}
    n_solved = sum(f >= 0.9 for f in finals) if solved is None else solved
    return {"curves": curves, "seeds": len(finals), "planned": planned or len(finals), "solved": n_solved}


def test_iqm_is_rliables_trimmed_mean():
    x = np.array([0.0, 0.1, 0.2, 0.5, 0.9, 1.0, 1.0, 0.3, 0.7, 0.4])
    assert nr.iqm(x) == pytest.approx(trim_mean(x, 0.25))
    assert nr.iqm(np.arange(8.0)) == pytest.approx(np.mean([2, 3, 4, 5]))  # the middle half by hand


def test_aims_met_missed_and_incomplete():
    table = {
        "hrl_nested/FourRooms-v0": {"nested-hrl": _row([1.0] * 9 + [0.0])},  # 9 of 10: met
        "hrl_nested/PointMaze-Medium-v0": {"nested-hrl": _row([1.0] * 6 + [0.0] * 2)},  # 6 of 8: missed
        "hrl_nested/PointMaze-Large-v0": {"nested-hrl": _row([1.0], planned=8)},  # 1 of 8 planned
        "hrl_nested/PointMaze-U-v0": {
            "nested-hrl": _row([1.0] * 10),
            "ppo": _row([1.0] * 9 + [0.0]),
            "hrl": _row([1.0] * 10),  # a tie: nested-hrl does not beat it
        },
    }
    got = {(a["task"], a["against"]): a["met"] for a in nr.aims(table)}
    assert got[("hrl_nested/FourRooms-v0", None)] is True
    assert got[("hrl_nested/PointMaze-Medium-v0", None)] is False
    assert got[("hrl_nested/PointMaze-Large-v0", None)] is None
    assert got[("hrl_nested/PointMaze-U-v0", "ppo")] is True
    assert got[("hrl_nested/PointMaze-U-v0", "hrl")] is False
    md = "\n".join(nr.aims_markdown(nr.aims(table)))
    assert "| hrl_nested/PointMaze-U-v0 | nested-hrl beats hrl | 10/10 vs 10/10 solved" in md
    assert "not yet (rows incomplete)" in md


def test_beats_through_the_iqm_interval_alone():
    # the same number of seeds solved, but every final success of one row far above the other's
    a, b = _row([0.95] * 10, solved=5), _row([0.1] * 10, solved=5)
    lo, hi = nr.iqm_difference_ci(nr._finals(a), nr._finals(b))
    assert lo == pytest.approx(0.85) and hi == pytest.approx(0.85)
    table = {"hrl_nested/PointMaze-U-v0": {"nested-hrl": a, "hrl": b, "ppo": b}}
    got = {a["against"]: a["met"] for a in nr.aims(table) if a["task"] == "hrl_nested/PointMaze-U-v0"}
    assert got == {"ppo": True, "hrl": True}
    table["hrl_nested/PointMaze-U-v0"]["nested-hrl"], table["hrl_nested/PointMaze-U-v0"]["hrl"] = b, a
    got = {a["against"]: a["met"] for a in nr.aims(table) if a["task"] == "hrl_nested/PointMaze-U-v0"}
    assert got == {"ppo": True, "hrl": False}  # as many solved as ppo; far below hrl
