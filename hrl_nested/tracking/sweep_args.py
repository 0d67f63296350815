"""Command-line arguments as ``wandb agent`` writes them, turned into the forms tyro parses.

A W&B sweep's ``${args}`` expands to one ``--<name>=<value>`` token per parameter, with Python's
``str(value)``: ``--ppo.lr=0.001``, ``--ppo.anneal-lr=False``, ``--ppo.hidden=[64, 64]``. tyro (like
argparse) rejects the last two: a bool field is a pair of flags (``--ppo.anneal-lr`` /
``--ppo.no-anneal-lr``) and a sequence field takes its items as separate tokens (``--ppo.hidden 64 64``).
`normalize_agent_args` rewrites exactly those two forms, for fields of the config being parsed, and
leaves every other token as it came, so that ordinary command lines parse as before.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Sequence
from typing import Annotated, Any

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


class SweepArgError(ValueError):
    """A ``--flag=value`` token whose value cannot be one of the field's (``--ppo.anneal-lr=maybe``)."""


def config_flags(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every leaf field of the (nested) config dataclass ``cls`` by its tyro flag name, without the
    leading ``--`` (``ppo.anneal-lr``), mapped to its type hint (``Annotated`` stripped).

    tyro spells a field ``a_b`` as ``a-b`` and a nested dataclass field ``x_y`` as the prefix ``x-y.``.
    """
    flags: dict[str, Any] = {}
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        hint = _strip_annotated(hints[f.name])
        name = prefix + f.name.replace("_", "-")
        if dataclasses.is_dataclass(hint):
            flags.update(config_flags(hint, name + "."))
        else:
            flags[name] = hint
    return flags


def normalize_agent_args(argv: Sequence[str], cls: type) -> list[str]:
    """``argv`` with W&B agent forms rewritten for tyro, for the fields of config dataclass ``cls``.

    - ``--flag=True`` / ``--flag=False`` (also ``true``, ``1``, ``yes``; ``false``, ``0``, ``no``) on a
      bool field becomes ``--flag`` / ``--no-flag`` (``--ppo.no-anneal-lr``); so does ``--flag False``
      (the agent's ``${args_no_equals}`` form).
    - ``--flag=[64, 64]``, ``--flag=(64, 64)``, ``--flag=64,64`` or ``--flag="64 64"`` on a tuple or
      list field becomes ``--flag 64 64`` (``[]`` gives no items); so does ``--flag "[64, 64]"`` (the
      agent's ``${args_no_equals}``: one bracketed token after the flag).
    - Flag names written with underscores (``--ppo.anneal_lr=False``) are matched too.

    Every other token passes through unchanged.

    >>> normalize_agent_args(["--ppo.anneal-lr=False", "--ppo.hidden=[32, 32]"], Cfg)  # doctest: +SKIP
    ['--ppo.no-anneal-lr', '--ppo.hidden', '32', '32']

    Raises:
        SweepArgError: a bool flag with a value that is not a boolean, naming the flag and the value.
    """
    flags = config_flags(cls)
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        name, eq, value = token[2:].partition("=")
        canonical = name.replace("_", "-")
        hint = flags.get(canonical) if token.startswith("--") else None
        if hint is bool and eq:
            out.append(_bool_flag(canonical, value))
        elif hint is bool and i < len(argv) and argv[i].strip().lower() in _TRUE + _FALSE:
            out.append(_bool_flag(canonical, argv[i]))  # "--flag False", the agent's ${args_no_equals}
            i += 1
        elif eq and hint is not None and _is_sequence(hint):
            out += [f"--{canonical}", *_split_items(value)]
        elif hint is not None and _is_sequence(hint) and i < len(argv) and argv[i].strip()[:1] in ("[", "("):
            out += [f"--{canonical}", *_split_items(argv[i])]  # "--flag [64, 64]": ${args_no_equals}
            i += 1
        else:
            out.append(token)
    return out


def _bool_flag(name: str, value: str) -> str:
    word = value.strip().lower()
    if word in _TRUE:
        return f"--{name}"
    if word in _FALSE:
        head, _, last = name.rpartition(".")
        return f"--{head + '.' if head else ''}no-{last}"
    raise SweepArgError(f"--{name}: expected True or False, got {value!r}")


def _split_items(value: str) -> list[str]:
    """``"[64, 64]"``, ``"(64,64)"``, ``"64,64"``, ``"64 64"`` -> ``["64", "64"]``; quotes around items go."""
    text = value.strip()
    if len(text) >= 2 and text[0] + text[-1] in ("[]", "()"):
        text = text[1:-1]
    return [item.strip("'\"") for item in re.split(r"[,\s]+", text) if item.strip("'\"")]


def _strip_annotated(hint: Any) -> Any:
    while typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    return hint


def _is_sequence(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # tuple[int, ...] | None: the sequence arm decides
        return any(_is_sequence(a) for a in typing.get_args(hint) if a is not type(None))
    return origin in (tuple, list) or hint in (tuple, list)
