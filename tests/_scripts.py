"""Load a script of ``experiments/`` as a module, for tests that call its ``main`` in process."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load_script(file: str, name: str, *, reuse: bool = False) -> ModuleType:
    """``experiments/<file>`` executed as module ``name`` (registered in ``sys.modules``: the script's
    dataclasses look their module up there while they are built), with ``experiments/`` on ``sys.path``
    while it runs, for the script's imports of its siblings. ``reuse``: return the module already
    loaded under ``name`` instead of executing the script again."""
    if reuse and name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(EXPERIMENTS))  # as when run: a script imports its siblings (bench_machine)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXPERIMENTS))
    return module
