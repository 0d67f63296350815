"""Deprecated module name: the fused (and compiled) env step lives in `envs.compiled_step`.

``envs.fused`` was renamed because "fused" also names torch's fused Adam in the PPO loop; this module
re-exports the new one's names and warns once on import.
"""

import warnings

from envs.compiled_step import *  # noqa: F403  (the whole public surface, unchanged)
from envs.compiled_step import (  # noqa: F401  (names old callers reached for that ``*`` skips)
    AUTO_COMPILE_MIN_ENVS_CPU,
    RESET_STREAM,
    STEP_STREAM,
    CompiledStep,
    compile_failure,
    fused_step,
    resolve_compile,
    uncompiled_steps,
)

warnings.warn(
    "envs.fused is deprecated; use envs.compiled_step (same behaviour)", DeprecationWarning, stacklevel=2
)
