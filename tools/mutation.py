"""Mutation testing of the core modules with mutmut, one module group at a time.

mutmut plants one small bug (a mutant: ``-`` for ``+``, ``>=`` for ``>``, a dropped argument, ...) at
a time and runs the tests; a mutant that no test notices *survives* and points at an untested
behaviour. Each group below is mutated on its own and tested only with the test files that target
it (mutmut narrows further to the tests that call the mutated function), which keeps a run inside a
small machine's budget: the whole suite for every mutant would take days on 2 cores.

Usage, from the repository root (``pip install -e ".[dev]"`` brings mutmut)::

    nice -n 15 python tools/mutation.py distributions optim objective --max-children 1
    python tools/mutation.py                  # every group in GROUPS
    python tools/mutation.py optim --show     # also print the diff of each survivor

Each group runs in a fresh copy of the sources under ``--workdir`` (a temporary folder, removed
at the end unless ``--keep``), so the work tree gets no ``mutants/`` folder and edits made while it
runs do not leak in. The summary gives, per group, the mutants killed / survived / timed out and
the survival rate (mutants no selected test reaches, "no tests", count as survivors and are
also reported on their own), and lists the survivors (``mutmut show NAME`` inside the kept workdir
prints one).
A survivor is either killed by a new test or explained as equivalent (it cannot change behaviour);
see ``tests/test_mutation_survivors.py``.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# group -> (files to mutate, test files that target them). Globs, relative to the repository root.
# Every group also runs tests/test_mutation_survivors.py, where the tests that killed earlier survivors live.
_SURVIVORS = "tests/test_mutation_survivors.py"
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    "returns": (["hrl_nested/returns.py"], ["tests/test_returns.py", _SURVIVORS]),
    "losses": (["hrl_nested/losses.py"], ["tests/test_losses.py", _SURVIVORS]),
    "distributions": (
        ["hrl_nested/distributions.py"],
        ["tests/test_distributions.py", "tests/test_tanh_one_path.py", _SURVIVORS],
    ),
    "optim": (["hrl_nested/optim.py"], ["tests/test_optim.py", _SURVIVORS]),
    "hypergrad": (["hrl_nested/hypergrad/*.py"], ["tests/test_hypergrad*.py", _SURVIVORS]),
    "rollout": (["hrl_nested/rollout.py"], ["tests/test_rollout.py", _SURVIVORS]),
    # The PPO objective (clipped loss on one minibatch, advantage normalization), shared by every loop.
    "objective": (["hrl_nested/ppo_objective.py"], ["tests/test_ppo_wiring.py", _SURVIVORS]),
    # The nested loop's pieces: inner/outer objectives, goal segments, reward shaping.
    "nested": (
        ["hrl_nested/nested_objective.py", "hrl_nested/segments.py", "hrl_nested/shaping.py"],
        ["tests/test_nested_pieces.py", "tests/test_nested_hypergrad.py", _SURVIVORS],
    ),
    "algos": (
        ["hrl_nested/algos/*.py"],
        ["tests/test_ppo.py", "tests/test_ppo_wiring.py", _SURVIVORS],
    ),
}
# A mutant counts as a survivor when a test run did not kill it, and also when no selected test reaches
# its function ("no tests"): either way the suite would let that bug through.
_SURVIVED = ("survived", "no tests")
_TESTED = ("killed", "survived", "no tests", "timeout", "suspicious", "segfault")

# torch.compile tests are left out: one compile (~40 s) for every mutant of a function they call would take
# a group from minutes to hours, and the eager tests beside them check the same values.
_PYTEST_ARGS = ["-p", "no:cacheprovider", "-k", "not compile"]

_COPY = ["hrl_nested", "envs", "tests", "pyproject.toml"]
_MUTMUT = [sys.executable, "-m", "mutmut"]


def _mutmut_config(mutate: list[str], tests: list[str]) -> str:
    def toml_list(xs: list[str]) -> str:
        return "[" + ", ".join(f'"{x}"' for x in xs) + "]"

    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["hrl_nested"]\n'
        f"only_mutate = {toml_list(mutate)}\n"
        'also_copy = ["envs"]\n'
        f"pytest_add_cli_args_test_selection = {toml_list(tests)}\n"
        f"pytest_add_cli_args = {toml_list(_PYTEST_ARGS)}\n"
        "use_git_change_detection = false\n"
    )


def _prepare(workdir: Path, mutate: list[str], tests: list[str]) -> None:
    """A copy of the sources and tests with a ``[tool.mutmut]`` section for this group only."""
    workdir.mkdir(parents=True)
    for name in _COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, workdir / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, workdir / name)
    pyproject = (workdir / "pyproject.toml").read_text()
    # Drop the repository's own [tool.mutmut] section (up to the next table): this group's replaces it.
    pyproject = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", "", pyproject)
    (workdir / "pyproject.toml").write_text(pyproject + _mutmut_config(mutate, tests))


def _single_threaded() -> dict[str, str]:
    """The environment for ``mutmut run``: one OpenMP / MKL thread.

    mutmut forks a child per mutant from a process that has already run torch; a child forked while
    OpenMP's thread pool exists can spin forever in its first parallel op, and every such mutant then
    ends as a CPU-time "timeout" (seen: 17 s each) instead of being killed or surviving."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _expand(patterns: list[str]) -> list[str]:
    return sorted({p for pat in patterns for p in glob.glob(pat, root_dir=ROOT)})


def run_group(name: str, workdir: Path, max_children: int, show: bool) -> collections.Counter:
    """Run mutmut on one group; returns the count of mutants per status (``killed``, ``survived``, ...)."""
    mutate, tests = (_expand(x) for x in GROUPS[name])
    if not mutate or not tests:
        raise SystemExit(f"group {name!r}: no files match {GROUPS[name]}")
    _prepare(workdir, mutate, tests)
    t0 = time.perf_counter()
    print(f"== {name}: mutating {', '.join(mutate)}; tests {', '.join(tests)}", flush=True)
    run_cmd = [*_MUTMUT, "run", "--max-children", str(max_children)]
    proc = subprocess.run(run_cmd, cwd=workdir, capture_output=True, text=True, env=_single_threaded())
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit(f"group {name!r}: mutmut run failed with exit code {proc.returncode}")
    res = subprocess.run(
        [*_MUTMUT, "results", "--all", "true"],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    )
    statuses = dict(re.findall(r"^\s*(\S+__mutmut_\d+): (.+)$", res.stdout, flags=re.M))
    counts = collections.Counter(statuses.values())
    print(
        f"   {len(statuses)} mutants in {time.perf_counter() - t0:.0f} s: {dict(counts)}; "
        + survival_line(counts)
    )
    for mutant, status in sorted(statuses.items()):
        if status not in ("killed", "caught by type check"):
            print(f"   {status:>10}  {mutant}")
            if show:
                out = subprocess.run([*_MUTMUT, "show", mutant], cwd=workdir, capture_output=True, text=True)
                print("".join(f"       {line}\n" for line in out.stdout.splitlines() if line[:1] in "+-"))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="*", help=f"module groups, of {', '.join(GROUPS)} (default: all)")
    parser.add_argument("--max-children", type=int, default=2, help="parallel test processes (cores)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the copies go (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (for `mutmut show` / `browse`)")
    parser.add_argument("--show", action="store_true", help="print the diff of each surviving mutant")
    args = parser.parse_args(argv)
    groups = args.groups or list(GROUPS)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        parser.error(f"groups: expected some of {', '.join(GROUPS)}, got {', '.join(unknown)}")
    if args.max_children < 1:
        parser.error(f"--max-children: expected a positive int, got {args.max_children}")
    base = args.workdir or Path(tempfile.mkdtemp(prefix="hrl-mutation-"))
    total: collections.Counter = collections.Counter()
    try:
        for name in groups:
            total += run_group(name, base / name, args.max_children, args.show)
    finally:
        if args.keep or args.workdir is not None:
            print(f"workdir kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print(f"total: {sum(total.values())} mutants, {dict(total)}; {survival_line(total)}")
    return 0


def survival_rate(counts: collections.Counter) -> float:
    """``(survived + no tests) / (killed + survived + no tests + timeout + suspicious + segfault)``.

    A mutant no selected test reaches ("no tests") is a bug the suite lets through, so it counts as a
    survivor; "caught by type check", "skipped" and "not checked" ones are left out of both sides.
    """
    tested = sum(counts[s] for s in _TESTED)
    return sum(counts[s] for s in _SURVIVED) / tested if tested else 0.0


def survival_line(counts: collections.Counter) -> str:
    """``survival rate 12.3% (10 survived + 2 with no tests, of 97)``."""
    tested = sum(counts[s] for s in _TESTED)
    return (
        f"survival rate {survival_rate(counts):.1%} ({counts['survived']} survived + "
        f"{counts['no tests']} with no tests, of {tested})"
    )


if __name__ == "__main__":
    raise SystemExit(main())
