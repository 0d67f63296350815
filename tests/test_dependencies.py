"""pyproject.toml's dependencies can be installed together: no declared version range contradicts what
another declared dependency requires of the same package (as its installed metadata states).

`pip install -e ".[dev]"` in a fresh venv fails with ResolutionImpossible on such a pair (e.g. ``arch>=8``
beside rliable 1.2's ``arch<8``), which no test that imports the already-installed packages would see.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+ (the project supports 3.10)
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _declared() -> dict[str, Requirement]:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return {canonicalize_name(r.name): r for r in map(Requirement, deps)}


def _candidates(*specs: SpecifierSet) -> list[Version]:
    """Versions at and just around every bound the specifiers name (enough to find an overlap of ranges)."""
    out = [Version("0")]
    for spec in specs:
        for clause in spec:
            v = Version(clause.version.replace(".*", ""))
            r = list(v.release) + [0] * (3 - len(v.release))
            out += [v, Version(f"{r[0]}.{r[1]}.{r[2] + 1}"), Version(f"{r[0]}.{r[1] + 1}")]
            out.append(Version(f"{r[0] + 1}"))
            if r[0] > 0:
                out.append(Version(f"{r[0] - 1}.999"))
    return out


def ranges_overlap(a: SpecifierSet, b: SpecifierSet) -> bool:
    """Whether some version satisfies both ``a`` and ``b`` (checked at the versions their bounds name)."""
    return any(a.contains(v, prereleases=True) and b.contains(v, prereleases=True) for v in _candidates(a, b))


def test_ranges_overlap_helper():
    assert not ranges_overlap(SpecifierSet(">=8"), SpecifierSet("<8.0,>=5.3.1"))
    assert ranges_overlap(SpecifierSet("<3"), SpecifierSet(">=1.0"))
    assert ranges_overlap(SpecifierSet(""), SpecifierSet("<8,>=5.3.1"))
    assert not ranges_overlap(SpecifierSet("==5.3.0"), SpecifierSet(">=5.3.1"))


@pytest.mark.parametrize("name", sorted(_declared()))
def test_declared_ranges_agree_with_what_other_dependencies_require(name):
    declared = _declared()
    try:
        requires = importlib.metadata.requires(declared[name].name) or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{name} is not installed here")
    for req in map(Requirement, requires):
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an extra's or another platform's requirement
        ours = declared.get(canonicalize_name(req.name))
        if ours is None:
            continue
        assert ranges_overlap(ours.specifier, req.specifier), (
            f"pyproject.toml declares {ours}, but {name} requires {req}: pip cannot install both"
        )
