"""``envs.fused`` was renamed ``envs.compiled_step`` (issue 9: "fused" also named torch's fused Adam);
the old module keeps working with a DeprecationWarning."""

import importlib
import sys

import pytest

import envs.compiled_step


def test_old_module_name_warns_and_exports_the_same_objects():
    sys.modules.pop("envs.fused", None)
    with pytest.warns(DeprecationWarning, match="envs.compiled_step"):
        old = importlib.import_module("envs.fused")
    for name in (
        "fused_step",
        "CompiledStep",
        "resolve_compile",
        "compile_failure",
        "AUTO_COMPILE_MIN_ENVS_CPU",
    ):
        assert getattr(old, name) is getattr(envs.compiled_step, name)
