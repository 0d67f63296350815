"""The options of each hypergradient method: one frozen dataclass per method, checked when built.

:func:`~hrl_nested.hypergrad.hypergrad` takes either a method name and its options as keywords
(``method="cg", iters=20``) or one of these objects (``method=CGOptions(iters=20)``); both become
the same object through :func:`options_for`, which is what the estimators read. The fields of a
class are its options (``dataclasses.fields(CGOptions)``), so a CLI can list them, and
:data:`METHOD_OPTIONS` maps each method name to its class. Public here: the five classes, their
base :class:`HypergradOptions`, :data:`METHOD_OPTIONS`, :data:`METHODS` and :func:`options_for`
(all re-exported by :mod:`hrl_nested.hypergrad`).

Example:
    >>> from dataclasses import fields
    >>> [f.name for f in fields(NeumannOptions)]
    ['on_nonfinite', 'max_norm', 'stationary_loss', 'hvp', 'terms', 'alpha']
    >>> options_for("cg", iters=5) == CGOptions(iters=5)
    True
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from hrl_nested.optim import Params


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= low), f"an int >= {low}"


def _nonnegative_float() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_real(v) and v >= 0), "a float >= 0"


def _positive_float(optional: bool = False) -> tuple[Callable[[Any], bool], str]:
    if optional:
        return (lambda v: v is None or (_is_real(v) and v > 0)), "None or a float > 0"
    return (lambda v: _is_real(v) and v > 0), "a float > 0"


@dataclass(frozen=True)
class HypergradOptions:
    """The options every method takes; the base of the per-method classes (not a method itself).

    Attributes:
        on_nonfinite: ``"raise"`` (a :class:`~hrl_nested.hypergrad.NonFiniteHypergradError`) or
            ``"zero"`` (a warning, ``result.nonfinite`` and a zero hypergradient) when the
            hypergradient has a NaN or inf entry.
        max_norm: clip the global L2 norm of the hypergradient to this (None: no clipping).
    """

    method: ClassVar[str] = ""

    # Keyword-only, so that a method's own options come first: CGOptions(iters, tol, damping).
    on_nonfinite: Literal["raise", "zero"] = field(default="raise", kw_only=True)
    max_norm: float | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if not self.method:
            raise TypeError(
                "HypergradOptions is the base of the per-method options; build one of "
                f"{[cls.__name__ for cls in METHOD_OPTIONS.values()]}"
            )
        self._check("on_nonfinite", (lambda v: v in ("raise", "zero")), "'raise' or 'zero'")
        self._check("max_norm", *_positive_float(optional=True))

    def _check(self, name: str, ok: Callable[[Any], bool], expected: str) -> None:
        value = getattr(self, name)
        if not ok(value):
            raise ValueError(
                f"hypergrad(method={self.method!r}): option {name} must be {expected}, got {value!r}"
            )


@dataclass(frozen=True)
class UnrolledOptions(HypergradOptions):
    """``method="unrolled"``: exact reverse-mode through all K inner steps; no options of its own."""

    method: ClassVar[str] = "unrolled"


@dataclass(frozen=True)
class TruncatedOptions(HypergradOptions):
    """``method="truncated"``: reverse-mode through the last ``truncate`` = T inner steps (Shaban et al.
    2019).

    Attributes:
        truncate: ``T >= 0`` (required); ``T >= K`` is the unrolled hypergradient.
    """

    method: ClassVar[str] = "truncated"

    truncate: int

    def __post_init__(self) -> None:
        self._check("truncate", *_int_at_least(0))
        super().__post_init__()


@dataclass(frozen=True)
class _ImplicitOptions(HypergradOptions):
    """The options cg and neumann share (implicit function theorem at ``w_K``)."""

    stationary_loss: Callable[[Params, Params], Tensor] | None = field(default=None, kw_only=True)
    hvp: Literal["jvp", "vjp"] = field(default="vjp", kw_only=True)

    def __post_init__(self) -> None:
        self._check(
            "stationary_loss", (lambda v: v is None or callable(v)), "None or a callable (params, hparams)"
        )
        self._check("hvp", (lambda v: v in ("jvp", "vjp")), "'jvp' or 'vjp'")
        super().__post_init__()


@dataclass(frozen=True)
class CGOptions(_ImplicitOptions):
    r"""``method="cg"``: ``H⁻¹ ∂F/∂w`` by conjugate gradient on ``H + δI``.

    Attributes:
        stationary_loss: ``L(params, hparams)``, the loss ``w_K`` is stationary for; None: the
            inner loss plus the inner optimizer's L2 term (see :func:`~hrl_nested.hypergrad.hypergrad`).
        hvp: Hessian-vector products by ``"vjp"`` (reverse-over-reverse) or ``"jvp"``.
        iters: at most this many CG iterations (Hessian-vector products), ``>= 1``.
        tol: stop when ``‖r‖ <= tol·‖b‖``, ``>= 0`` (0 runs all ``iters``).
        damping: ``δ >= 0`` added to the Hessian's diagonal.
    """

    method: ClassVar[str] = "cg"

    iters: int = 20
    tol: float = 1e-10
    damping: float = 0.0

    def __post_init__(self) -> None:
        self._check("iters", *_int_at_least(1))
        self._check("tol", *_nonnegative_float())
        self._check("damping", *_nonnegative_float())
        super().__post_init__()


@dataclass(frozen=True)
class NeumannOptions(_ImplicitOptions):
    r"""``method="neumann"``: ``H⁻¹ ≈ α Σ_{j<M} (I − αH)^j`` (Lorraine et al. 2020).

    Attributes:
        stationary_loss: as in :class:`CGOptions`.
        hvp: as in :class:`CGOptions`.
        terms: ``M >= 1`` (``M − 1`` Hessian-vector products).
        alpha: ``α > 0``; None: the inner step size (a callable ``inner_lr`` at the given hparams).
    """

    method: ClassVar[str] = "neumann"

    terms: int = 20
    alpha: float | None = None

    def __post_init__(self) -> None:
        self._check("terms", *_int_at_least(1))
        self._check("alpha", *_positive_float(optional=True))
        super().__post_init__()


@dataclass(frozen=True)
class ESOptions(HypergradOptions):
    r"""``method="es"``: antithetic evolution strategies over ``λ`` (Salimans et al. 2017).

    Attributes:
        samples: ``S >= 1`` antithetic pairs (``2S`` perturbed inner runs).
        sigma: ``σ > 0``, the perturbation scale in the units of the hparams.
        seed: seed of the directions (the same on every device and dtype), or None.
        generator: a ``torch.Generator`` for the directions instead of ``seed``.
        chunk_size: ``torch.func.vmap``'s ``chunk_size`` (None: all ``2S`` runs at once), ``>= 1``.
        vectorize: False runs the ``2S`` inner runs in a Python loop instead of one vmap.
    """

    method: ClassVar[str] = "es"

    samples: int = 16
    sigma: float = 0.01
    seed: int | None = None
    generator: torch.Generator | None = None
    chunk_size: int | None = None
    vectorize: bool = True

    def __post_init__(self) -> None:
        self._check("samples", *_int_at_least(1))
        self._check("sigma", *_positive_float())
        self._check("seed", (lambda v: v is None or _is_int(v)), "None or an int")
        self._check(
            "generator", (lambda v: v is None or isinstance(v, torch.Generator)), "None or a torch.Generator"
        )
        self._check("chunk_size", (lambda v: v is None or (_is_int(v) and v >= 1)), "None or an int >= 1")
        self._check("vectorize", (lambda v: isinstance(v, bool)), "a bool")
        super().__post_init__()
        if self.seed is not None and self.generator is not None:
            raise ValueError("hypergrad(method='es'): pass seed or generator, not both")


METHOD_OPTIONS: dict[str, type[HypergradOptions]] = {
    cls.method: cls for cls in (UnrolledOptions, TruncatedOptions, CGOptions, NeumannOptions, ESOptions)
}
METHODS = tuple(METHOD_OPTIONS)


@functools.cache
def _names(cls: type[HypergradOptions]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The option names of ``cls``, and those without a default."""
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    return tuple(f.name for f in fields(cls)), tuple(required)


def options_for(method: str | HypergradOptions, **options: Any) -> HypergradOptions:
    """The checked options object for ``method``: a method name with its options as keywords, or an
    options object, whose fields the keywords replace (``dataclasses.replace``).

    Raises:
        ValueError: an unknown method, an unknown or missing option, or an invalid value (the
            message names the option, the method, what was expected and what came).

    Example:
        >>> options_for("truncated", truncate=3)
        TruncatedOptions(on_nonfinite='raise', max_norm=None, truncate=3)
        >>> options_for(CGOptions(iters=5), on_nonfinite="zero").iters
        5
    """
    if isinstance(method, HypergradOptions):
        cls = type(method)
    elif isinstance(method, str) and method in METHOD_OPTIONS:
        cls = METHOD_OPTIONS[method]
    else:
        raise ValueError(
            f"hypergrad: method must be one of {list(METHODS)} or an options object such as "
            f"CGOptions(iters=20), got {method!r}"
        )
    allowed, required = _names(cls)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"hypergrad(method={cls.method!r}): unknown option(s) {unknown}; "
            f"expected a subset of {sorted(allowed)}"
        )
    if isinstance(method, HypergradOptions):
        return replace(method, **options) if options else method
    missing = [name for name in required if name not in options]
    if missing:
        raise ValueError(f"hypergrad(method={cls.method!r}): missing required option(s) {missing}")
    return cls(**options)
