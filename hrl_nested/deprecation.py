"""Old names kept working after a rename: each use warns once per call site with a `DeprecationWarning`.

Three shapes of rename, one helper each:

- a function or method: `deprecated_alias` wraps the new one under the old name;
- an attribute: `renamed_attribute` is a property that reads and writes the new attribute;
- a keyword argument: `renamed_kwargs` maps the old keyword onto the new one.

The warning names the old and the new spelling, so that ``python -W error::DeprecationWarning`` points
at every line still to change. Behaviour is otherwise the new name's, exactly.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["deprecated_alias", "renamed_attribute", "renamed_kwargs", "warn_renamed"]


def warn_renamed(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new`` (a `DeprecationWarning` at the caller's line)."""
    if torch.compiler.is_compiling():  # a warning would break the graph; the eager call warns
        return
    warnings.warn(
        f"{old} is deprecated; use {new} (same behaviour)", DeprecationWarning, stacklevel=stacklevel
    )


def deprecated_alias(new: F, old: str, new_name: str | None = None) -> F:
    """``new`` under the deprecated name ``old``: calls ``new`` after warning.

    >>> def double(x):
    ...     return 2 * x
    >>> twice = deprecated_alias(double, "twice")
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     twice(3), w[0].category.__name__
    (6, 'DeprecationWarning')
    """
    target = new_name or new.__name__

    @functools.wraps(new)
    def alias(*args: Any, **kwargs: Any) -> Any:
        warn_renamed(old, target)
        return new(*args, **kwargs)

    alias.__name__ = old.rsplit(".", 1)[-1]
    alias.__doc__ = f"Deprecated alias of ``{target}``."
    return alias  # type: ignore[return-value]


def renamed_attribute(old: str, new: str) -> property:
    """A property ``old`` that reads, writes and deletes attribute ``new``, warning on each use.

    >>> class Box:
    ...     rms = renamed_attribute("rms", "obs_normalizer")
    >>> b = Box()
    >>> b.obs_normalizer = 1
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     b.rms
    1
    """

    def fget(self: Any) -> Any:
        warn_renamed(f"{type(self).__name__}.{old}", f"{type(self).__name__}.{new}")
        return getattr(self, new)

    def fset(self: Any, value: Any) -> None:
        warn_renamed(f"{type(self).__name__}.{old}", f"{type(self).__name__}.{new}")
        setattr(self, new, value)

    def fdel(self: Any) -> None:
        warn_renamed(f"{type(self).__name__}.{old}", f"{type(self).__name__}.{new}")
        delattr(self, new)

    return property(fget, fset, fdel, doc=f"Deprecated alias of ``{new}``.")


def renamed_kwargs(**old_to_new: str) -> Callable[[F], F]:
    """Decorator: keyword ``old=`` still works as ``new=`` (warning); giving both raises ``TypeError``.

    >>> @renamed_kwargs(rms="obs_normalizer")
    ... def evaluate(agent, obs_normalizer=None):
    ...     return obs_normalizer
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     evaluate("agent", rms=5)
    5
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(
                            f"{fn.__qualname__}(): expected {new}= alone, "
                            f"got both {new}= and its old name {old}="
                        )
                    warn_renamed(f"{fn.__qualname__}({old}=...)", f"{new}=")
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
