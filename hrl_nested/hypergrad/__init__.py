"""Hypergradients: d outer_loss(params_K(λ), λ) / dλ through an inner optimization.

One entry point, :func:`hypergrad`, with five estimators (``"unrolled"``, ``"truncated"``,
``"cg"``, ``"neumann"``, ``"es"``), the options of each as a frozen dataclass
(:class:`UnrolledOptions`, :class:`TruncatedOptions`, :class:`CGOptions`, :class:`NeumannOptions`,
:class:`ESOptions`; ``method=CGOptions(iters=10)`` is ``method="cg", iters=10``), and the pieces
they are made of: the inner problem and its loop (:class:`InnerProblem`, :func:`run_inner`),
Hessian-vector products (:func:`make_hvp`), the linear solvers (:func:`conjugate_gradient`,
:func:`neumann_series`) and the per-method functions.

Example:
    >>> import torch
    >>> from hrl_nested.hypergrad import hypergrad
    >>> inner = lambda w, h: ((w["x"] - h["c"]) ** 2).sum()
    >>> outer = lambda w, h: w["x"].sum()
    >>> hypergrad(inner, outer, {"x": torch.zeros(1)}, {"c": torch.ones(1)},
    ...           method="unrolled", inner_steps=2, inner_lr=0.25).grads["c"]
    tensor([0.7500])
"""

from hrl_nested.hypergrad.core import (
    HypergradResult,
    NonFiniteHypergradError,
    NonFiniteHypergradWarning,
    hypergrad,
)
from hrl_nested.hypergrad.es import es_hypergrad, es_noise
from hrl_nested.hypergrad.implicit import (
    conjugate_gradient,
    implicit_hypergrad,
    make_hvp,
    neumann_series,
    with_weight_decay,
)
from hrl_nested.hypergrad.options import (
    METHOD_OPTIONS,
    METHODS,
    CGOptions,
    ESOptions,
    HypergradOptions,
    NeumannOptions,
    TruncatedOptions,
    UnrolledOptions,
    options_for,
)
from hrl_nested.hypergrad.unrolled import InnerProblem, MethodOutput, run_inner, unrolled_hypergrad

__all__ = [
    "METHODS",
    "METHOD_OPTIONS",
    "CGOptions",
    "ESOptions",
    "HypergradOptions",
    "HypergradResult",
    "InnerProblem",
    "MethodOutput",
    "NeumannOptions",
    "NonFiniteHypergradError",
    "NonFiniteHypergradWarning",
    "TruncatedOptions",
    "UnrolledOptions",
    "conjugate_gradient",
    "es_hypergrad",
    "es_noise",
    "hypergrad",
    "implicit_hypergrad",
    "make_hvp",
    "neumann_series",
    "options_for",
    "run_inner",
    "unrolled_hypergrad",
    "with_weight_decay",
]
