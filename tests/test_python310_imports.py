"""The project supports Python 3.10 (``requires-python = ">=3.10"``): no module imports, unguarded at its top
level, a name the standard library gained only in 3.11 or later (``typing.Unpack``, ``typing.Self``, ...).

Such an import fails with ``ImportError`` on 3.10 before anything runs, so the whole package would be
unusable there, which no test run on a newer Python sees. The project's pattern (`envs.options`) takes the
name from ``typing_extensions`` under ``if sys.version_info < (3, 11)``; an import inside an ``if`` or a
``try`` counts as guarded.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hrl_nested", "envs", "experiments", "tests")

# Standard-library names added after 3.10 (the "What's New" of 3.11, 3.12 and 3.13).
NEWER = {
    "typing": {
        "Self", "LiteralString", "Never", "assert_never", "assert_type", "reveal_type", "TypeVarTuple",
        "Unpack", "Required", "NotRequired", "dataclass_transform", "get_overloads", "clear_overloads",
        "override", "TypeAliasType", "TypeIs", "ReadOnly", "NoDefault", "get_protocol_members", "is_protocol",
    },
    "enum": {"StrEnum", "ReprEnum", "verify", "EnumCheck", "FlagBoundary", "global_enum"},
    "datetime": {"UTC"},
}  # fmt: skip
NEWER_MODULES = {"tomllib"}


def unguarded_newer_imports(source: str) -> list[str]:
    """``"<line>: <import>"`` for each module-level import of a name in `NEWER` / `NEWER_MODULES`."""
    found = []
    for node in ast.parse(source).body:  # module level only: an import under ``if`` / ``try`` is guarded
        if isinstance(node, ast.ImportFrom) and node.module in NEWER:
            names = sorted(a.name for a in node.names if a.name in NEWER[node.module])
            found += [f"{node.lineno}: from {node.module} import {n}" for n in names]
        elif isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names if a.name in NEWER_MODULES]
    return found


def test_the_check_sees_an_unguarded_import_and_passes_a_guarded_one():
    assert unguarded_newer_imports("from typing import Any, Unpack\nimport tomllib\n") == [
        "1: from typing import Unpack",
        "2: import tomllib",
    ]
    guarded = (
        "import sys\nif sys.version_info >= (3, 11):\n    from typing import Unpack\n"
        "else:\n    from typing_extensions import Unpack\n"
        "try:\n    import tomllib\nexcept ImportError:\n    tomllib = None\n"
    )
    assert unguarded_newer_imports(guarded) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_imports_a_name_python_3_10_lacks(package):
    bad = {
        str(path.relative_to(ROOT)): hits
        for path in sorted((ROOT / package).rglob("*.py"))
        if (hits := unguarded_newer_imports(path.read_text()))
    }
    assert bad == {}, f"imports that fail on Python 3.10 (guard them as envs/options.py does): {bad}"
