"""results.md keeps its main table in one piece: the estimator ablation (one task only) comes after it,
not between the rows of two tasks, where a markdown renderer would cut the table in two."""

from __future__ import annotations

import sys
from types import SimpleNamespace

from tests._scripts import load_script


def _row(solved: int, **extra) -> dict:
    return {
        "median_steps_to_0.9": 1000.0,
        "final_success_mean": 1.0,
        "final_success_ci95": (1.0, 1.0),
        "budget": 2000,
        "seeds": 2,
        "planned": 2,
        "solved": solved,
        **extra,
    }


def test_the_ablation_follows_the_main_table(tmp_path):
    results = load_script("nested_results.py", "nested_results_markdown")
    try:
        table = {
            "A-v0": {
                "ppo": _row(1),
                "nested-hrl/cg": _row(2, s_per_iteration=0.5, hypergrad_cosine_mean=0.9),
            },
            "B-v0": {"ppo": _row(2)},
        }
        out = tmp_path / "results.md"
        results.write_markdown(out, table, SimpleNamespace(first_seed=100))
        lines = out.read_text().splitlines()
    finally:
        sys.modules.pop("nested_results_markdown", None)
    header = next(i for i, line in enumerate(lines) if line.startswith("| task | algorithm"))
    end = next(i for i in range(header, len(lines)) if not lines[i].startswith("|"))
    main = lines[header + 2 : end]
    assert [line.split(" | ")[0:2] for line in main] == [
        ["| A-v0", "ppo"],
        ["| A-v0", "nested-hrl/cg"],
        ["| B-v0", "ppo"],
    ]
    ablation = next(i for i, line in enumerate(lines) if line.startswith("Estimator ablation on A-v0"))
    assert ablation > end
    assert "| nested-hrl/cg | 0.500 | 0.900 |" in lines[ablation:]
