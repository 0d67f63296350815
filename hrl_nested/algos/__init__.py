"""Training algorithms, one readable module each, and the registry `experiments/train.py` dispatches on.

Every algorithm module defines

- ``Config``: a dataclass of its hyperparameters (a docstring under each field; tyro shows them as
  ``--<algo>.<field>`` in ``experiments/train.py --help``), and
- ``train(task: Task, cfg: Config, run: Run | None = None) -> dict``: the whole loop, written out top
  to bottom; it logs through ``run`` and returns the final summary (``eval_return_mean``, ...).

Every config validates itself: ``cfg.validate(task)`` raises a `ConfigError` naming the field, what was
expected and what came (``experiments/train.py`` turns the field into the flag as typed, e.g.
``--ppo.num-minibatches``). ``Config.state_shaping_fields`` names the fields that shape a checkpoint
(network sizes, batch shape, normalization switches): a resumed run may not change them.

Adding an algorithm is one line in `ALGORITHMS` (its modules are imported only when chosen).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from types import ModuleType
from typing import Any, ClassVar

import torch

# name on the command line -> module
ALGORITHMS: dict[str, str] = {
    "ppo": "hrl_nested.algos.ppo",
    "nested-hrl": "hrl_nested.algos.nested_hrl",
    "hrl": "hrl_nested.algos.hrl",
    "lirpg": "hrl_nested.algos.lirpg",
    "sb3-ppo": "hrl_nested.algos.sb3_ppo",  # Stable-Baselines3 baselines (SB3 imported when run)
    "sb3-sac": "hrl_nested.algos.sb3_sac",
}


class ConfigError(ValueError):
    """A config value is out of its range: names the field, what was expected and what came.

    Args:
        field: the field's name in its dataclass (``num_minibatches``).
        expected: what a good value is (``"a positive int"``).
        got: the value given.
        section: the nested config it belongs to (``"ppo"``), or "" for the shared `Task` fields.
        note: an optional explanation appended to the message.

    ``flag`` is the command-line spelling (``--ppo.num-minibatches``), used by ``experiments/train.py``.

    >>> str(ConfigError("num_minibatches", "a positive int", 0, section="ppo"))
    '--ppo.num-minibatches: expected a positive int, got 0'
    """

    def __init__(self, field: str, expected: str, got: Any, *, section: str = "", note: str = ""):
        self.field, self.expected, self.got, self.section, self.note = field, expected, got, section, note
        super().__init__(self.message())

    @property
    def flag(self) -> str:
        name = self.field.replace("_", "-")
        section = self.section.replace("_", "-")  # tyro spells nested_hrl as --nested-hrl
        return f"--{section}.{name}" if section else f"--{name}"

    def message(self) -> str:
        got = " ".join(map(str, self.got)) if isinstance(self.got, tuple) else self.got
        text = f"{self.flag}: expected {self.expected}, got {got}"
        return f"{text} ({self.note})" if self.note else text

    def __str__(self) -> str:
        return self.message()


def check(ok: bool, field: str, expected: str, got: Any, *, section: str = "", note: str = "") -> None:
    """Raise `ConfigError` unless ``ok``."""
    if not ok:
        raise ConfigError(field, expected, got, section=section, note=note)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def positive_int(value: Any, field: str, *, section: str = "", minimum: int = 1) -> None:
    """Check that ``value`` is an int ``>= minimum``."""
    what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
    check(_is_int(value) and value >= minimum, field, what, value, section=section)


def layer_sizes(value: Any, field: str, *, section: str = "") -> None:
    """Check that ``value`` is one or more positive layer sizes (a network's hidden widths)."""
    ok = len(value) > 0 and all(_is_int(h) and h >= 1 for h in value)
    check(ok, field, "one or more positive layer sizes", tuple(value), section=section)


def batch_split(task: Task, num_steps: int, num_minibatches: int, *, section: str) -> None:
    """Check that ``num_minibatches`` divides the batch ``task.num_envs * num_steps`` (the cross-field rule
    every on-policy loop shares); the message names both flags that make the batch."""
    batch = task.num_envs * num_steps
    steps_flag = ConfigError("num_steps", "", None, section=section).flag
    check(
        batch % num_minibatches == 0 and num_minibatches <= batch,
        "num_minibatches",
        f"a divisor of the batch size --num-envs x {steps_flag} = {task.num_envs} x {num_steps} = {batch}",
        num_minibatches,
        section=section,
    )


def finite_float(
    value: Any,
    field: str,
    *,
    section: str = "",
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    what: str | None = None,
) -> None:
    """Check that ``value`` is a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if what is None:
        lo = "" if low == -math.inf else (f"> {low:g}" if low_open else f">= {low:g}")
        hi = "" if high == math.inf else f"<= {high:g}"
        what = "a finite number" + (" " + " and ".join(x for x in (lo, hi) if x) if lo or hi else "")
    check(ok, field, what, value, section=section)


@dataclasses.dataclass(frozen=True)
class Task:
    """What to train on, and for how long: the part of a run's config every algorithm shares."""

    env: str = "hrl_nested/CartPole-v1"
    """Env id (``hrl_nested/CartPole-v1``, any Gymnasium id) or ``package.module:ClassName``."""
    total_steps: int = 100_000
    """Environment steps to train for (rounded up to whole iterations)."""
    num_envs: int = 128
    """Parallel environments."""
    seed: int = 0
    """Seeds the envs, the network init, the sampling and the evaluations."""
    device: str = "auto"
    """``cpu``, ``cuda``, ``cuda:1``, ... or ``auto`` (CUDA when available)."""
    eval_episodes: int = 20
    """Episodes per evaluation (deterministic policy, run in parallel, one per eval env)."""
    capture_video: bool = False
    """Record eval env 0's episode of every evaluation to ``RUN_DIR/videos/eval-<env_steps>.mp4`` (and W&B
    as ``eval/video``); nested HRL draws the manager's subgoals (`hrl_nested.video`)."""

    state_shaping_fields: ClassVar[tuple[str, ...]] = ("env", "num_envs")
    """Fields a resumed run may not change: they shape the checkpointed env state and batch."""

    def validate(self) -> None:
        """Raise `ConfigError` for a value no run can use (checked before any file is written)."""
        check(isinstance(self.env, str) and self.env.strip() != "", "env", "an env id", repr(self.env))
        positive_int(self.total_steps, "total_steps")
        positive_int(self.num_envs, "num_envs")
        positive_int(self.seed, "seed", minimum=0)
        positive_int(self.eval_episodes, "eval_episodes")
        check(isinstance(self.device, str), "device", "a device name", self.device)
        resolve_device(self.device)  # the check the algorithms make when they start, made early


def get_algorithm(name: str) -> ModuleType:
    """The module registered under ``name`` (with its ``Config`` and ``train``).

    >>> get_algorithm("ppo").Config.__name__
    'PPOConfig'
    """
    if name not in ALGORITHMS:
        raise ValueError(f"algo: expected one of {sorted(ALGORITHMS)}, got {name!r}")
    return importlib.import_module(ALGORITHMS[name])


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; anything else as given, if this machine has it.

    Raises:
        ConfigError: (a ValueError) on ``--device``: a name torch cannot parse, or a CUDA device this
            machine does not have.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError("device", "cpu, cuda, cuda:<index> or auto", device) from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        there = "use --device cpu" if count == 0 else f"cuda:0 to cuda:{count - 1}"
        check(
            count > (dev.index or 0),
            "device",
            "a device this machine has",
            device,
            note=f"{count} CUDA device(s) here; {there}",
        )
    return dev


__all__ = ["ALGORITHMS", "ConfigError", "Task", "check", "get_algorithm", "resolve_device"]
