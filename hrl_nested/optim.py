"""Differentiable functional optimizers: ``init`` / ``update`` on parameter dicts.

The optax / TorchOpt functional style in PyTorch: an optimizer is a pair of pure functions,

    state = opt.init(params)
    new_params, new_state = opt.update(grads, state, params)

that never write in place, so a chain of updates stays on the autograd tape and a
hypergradient can be back-propagated through it (the inner loop of nested learning).
The learning rate (and the other coefficients) may be tensors that require grad, or
the learning rate a schedule ``lr(count)`` of the number of updates already applied.
Both functions also run under ``torch.func.vmap`` (batched inner runs).

The update rules reproduce ``torch.optim.SGD`` and ``torch.optim.Adam`` (with their
coupled L2 ``weight_decay``), which the tests check step by step.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

Params = dict[str, Tensor]
Scalar = float | Tensor
# A learning rate: a constant, a tensor (possibly requiring grad, to be meta-learned), or a
# schedule called with the number of updates applied so far (an int64 scalar tensor).
LearningRate = Scalar | Callable[[Tensor], Scalar]

__all__ = [
    "AdamState",
    "LearningRate",
    "Optimizer",
    "Params",
    "SGDState",
    "adam",
    "sgd",
]


class _OptimizerFields(NamedTuple):
    init: Callable[[Params], Any]
    update: Callable[[Params, Any, Params], tuple[Params, Any]]


class Optimizer(_OptimizerFields):
    """A functional optimizer: ``init(params) -> state``; ``update(grads, state, params) -> (params, state)``.

    Both are pure: ``update`` returns new dicts and never writes into its arguments.

    It is still the 2-tuple ``(init, update)`` (``init, update = opt`` works), and it also carries
    ``weight_decay``: the coefficient ``wd`` of the coupled L2 term the update adds to the gradient
    (``g = ∇L + wd·θ``, as :func:`sgd` and :func:`adam` do; 0 for none). The implicit
    hypergradients need it: a fixed point of such an update solves ``∇L(θ) + wd·θ = 0``, i.e. it is
    stationary for ``L + wd/2·‖θ‖²``, not for ``L``. Decoupled (AdamW-style) decay has a different
    fixed point and is not what this attribute means. A plain ``(init, update)`` tuple, or an
    ``Optimizer`` built without the argument, has ``weight_decay = 0``.

    Tuple equality and hashing compare ``(init, update)`` only.

    Example:
        >>> opt = sgd(0.1, weight_decay=0.5)
        >>> init, update = opt
        >>> opt.weight_decay
        0.5
    """

    # The class default covers instances made by tuple machinery that bypasses __new__.
    weight_decay: Scalar = 0.0

    def __new__(
        cls,
        init: Callable[[Params], Any],
        update: Callable[[Params, Any, Params], tuple[Params, Any]],
        weight_decay: Scalar = 0.0,
    ) -> Optimizer:
        _check_weight_decay(weight_decay)
        self = super().__new__(cls, init, update)
        # Stored outside the tuple's fields so that it keeps unpacking as (init, update).
        self.weight_decay = weight_decay
        return self

    def _replace(self, **kwargs: Any) -> Optimizer:
        fields = {"init": self.init, "update": self.update, "weight_decay": self.weight_decay, **kwargs}
        return type(self)(**fields)

    def __repr__(self) -> str:
        return f"Optimizer(init={self.init!r}, update={self.update!r}, weight_decay={self.weight_decay!r})"


class SGDState(NamedTuple):
    """State of :func:`sgd`.

    Attributes:
        count: int64 scalar tensor, the number of updates applied.
        momentum: the momentum buffers ``b_t``, keyed like the params (empty without momentum).
    """

    count: Tensor
    momentum: dict[str, Tensor]


class AdamState(NamedTuple):
    """State of :func:`adam`.

    Attributes:
        count: int64 scalar tensor, the number of updates applied.
        mu: first-moment estimates ``m_t``, keyed like the params.
        nu: second-moment estimates ``v_t``, keyed like the params.
    """

    count: Tensor
    mu: dict[str, Tensor]
    nu: dict[str, Tensor]


def _count_like(params: Params) -> Tensor:
    device = next(iter(params.values())).device if params else torch.device("cpu")
    return torch.zeros((), dtype=torch.int64, device=device)


def _lr_at(lr: LearningRate, count: Tensor) -> Scalar:
    return lr(count) if callable(lr) else lr


def _is_zero(x: Scalar) -> bool:
    # Only a Python number is known to be zero without a host sync; a tensor coefficient
    # is always applied (it may be a meta-learned value that is zero right now).
    return not isinstance(x, Tensor) and x == 0


def _check_weight_decay(wd: Any) -> None:
    # A tensor's sign is not checked: that would cost a host sync (and it may be meta-learned).
    if isinstance(wd, Tensor):
        if wd.numel() != 1 or not wd.is_floating_point():
            raise ValueError(
                f"weight_decay must be a float >= 0 or a floating-point scalar tensor, "
                f"got a {wd.dtype} tensor of shape {tuple(wd.shape)}"
            )
    elif isinstance(wd, bool) or not isinstance(wd, numbers.Real) or not wd >= 0:
        raise ValueError(f"weight_decay must be a float >= 0 or a floating-point scalar tensor, got {wd!r}")


def _check_keys(grads: Params, params: Params) -> None:
    if grads.keys() != params.keys():
        raise ValueError(f"grads keys {sorted(grads)} differ from params keys {sorted(params)}")


def sgd(
    lr: LearningRate,
    momentum: Scalar = 0.0,
    nesterov: bool = False,
    weight_decay: Scalar = 0.0,
) -> Optimizer:
    r"""Stochastic gradient descent with optional (Nesterov) momentum, as ``torch.optim.SGD``.

    With ``g_t = \nabla_\theta L + wd\,\theta_t``, momentum ``\mu`` and buffers ``b_0 = 0``:

    .. math::
        b_{t+1} = \mu b_t + g_t, \qquad
        d_t = g_t + \mu b_{t+1} \ \text{(Nesterov)} \ \text{or} \ b_{t+1}, \qquad
        \theta_{t+1} = \theta_t - \eta_t d_t

    (``d_t = g_t`` without momentum). Sutskever et al., 2013, in PyTorch's formulation.

    Args:
        lr: step size ``eta``: a float, a tensor (may require grad), or a schedule
            ``lr(count) -> float | Tensor`` of the number of updates applied so far.
        momentum: momentum coefficient ``mu`` (0 disables the buffers).
        nesterov: use Nesterov momentum (needs ``momentum > 0``).
        weight_decay: coefficient of the L2 term added to the gradient (exposed as
            ``opt.weight_decay``).

    Returns:
        An :class:`Optimizer` whose state is an :class:`SGDState`.

    Example:
        >>> opt = sgd(0.1, momentum=0.9)
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> state = opt.init(params)
        >>> params, state = opt.update({"w": 2 * params["w"]}, state, params)
        >>> params["w"]
        tensor([ 0.8000, -1.6000])
    """
    if nesterov and _is_zero(momentum):
        raise ValueError("sgd: nesterov=True needs momentum > 0")
    use_momentum = not _is_zero(momentum)

    def init(params: Params) -> SGDState:
        buffers = {k: torch.zeros_like(p) for k, p in params.items()} if use_momentum else {}
        return SGDState(count=_count_like(params), momentum=buffers)

    def update(grads: Params, state: SGDState, params: Params) -> tuple[Params, SGDState]:
        _check_keys(grads, params)
        eta = _lr_at(lr, state.count)
        new_params, new_buffers = {}, {}
        for k, p in params.items():
            g = grads[k] if _is_zero(weight_decay) else grads[k] + weight_decay * p
            if use_momentum:
                # b_0 = 0 makes the first buffer exactly g_0, as torch's clone(g) does.
                b = momentum * state.momentum[k] + g
                new_buffers[k] = b
                g = g + momentum * b if nesterov else b
            new_params[k] = p - eta * g
        return new_params, SGDState(count=state.count + 1, momentum=new_buffers)

    return Optimizer(init, update, weight_decay)


def adam(
    lr: LearningRate,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: Scalar = 0.0,
) -> Optimizer:
    r"""Adam (Kingma & Ba, 2015) as ``torch.optim.Adam``, with optax's ``eps_root``.

    With ``g_t = \nabla_\theta L + wd\,\theta_t`` (coupled L2, as ``torch.optim.Adam``), ``t`` counted from 1:

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
        \hat m_t = \frac{m_t}{1-\beta_1^t}, \quad \hat v_t = \frac{v_t}{1-\beta_2^t},

    .. math::
        \theta_t = \theta_{t-1} - \eta_t \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}.

    Why ``eps_root``: where a gradient entry is exactly zero (a subpolicy that no env chose
    in this batch), ``v = 0`` and ``d\sqrt{v}/dv = \infty`` meets ``dv/dg = 2(1-\beta_2) g = 0``;
    back-propagating through the update gives ``\infty \cdot 0 = \mathrm{NaN}``. A small
    ``eps_root > 0`` (e.g. ``1e-16 = eps**2``, which moves the step no more than ``eps``
    already does) keeps the derivative finite. ``eps_root = 0`` reproduces torch exactly.

    Args:
        lr: step size ``eta``: a float, a tensor (may require grad), or a schedule
            ``lr(count) -> float | Tensor`` of the number of updates applied so far.
        b1: decay of the first moment ``beta_1``.
        b2: decay of the second moment ``beta_2``.
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root; set it > 0 to differentiate through updates.
        weight_decay: coefficient of the L2 term added to the gradient (coupled, as
            ``torch.optim.Adam``, not AdamW's decoupled decay; exposed as ``opt.weight_decay``).

    Returns:
        An :class:`Optimizer` whose state is an :class:`AdamState`.

    Example:
        >>> opt = adam(0.1)
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> state = opt.init(params)
        >>> params, state = opt.update({"w": 2 * params["w"]}, state, params)
        >>> params["w"]
        tensor([ 0.9000, -1.9000])
    """

    def init(params: Params) -> AdamState:
        return AdamState(
            count=_count_like(params),
            mu={k: torch.zeros_like(p) for k, p in params.items()},
            nu={k: torch.zeros_like(p) for k, p in params.items()},
        )

    def update(grads: Params, state: AdamState, params: Params) -> tuple[Params, AdamState]:
        _check_keys(grads, params)
        eta = _lr_at(lr, state.count)
        count = state.count + 1
        new_params, mu, nu = {}, {}, {}
        for k, p in params.items():
            g = grads[k] if _is_zero(weight_decay) else grads[k] + weight_decay * p
            mu[k] = b1 * state.mu[k] + (1 - b1) * g
            nu[k] = b2 * state.nu[k] + (1 - b2) * (g * g)
            t = count.to(p.dtype)  # bias corrections in the params' precision
            m_hat = mu[k] / (1 - b1**t)
            v_hat = nu[k] / (1 - b2**t)
            new_params[k] = p - eta * m_hat / (torch.sqrt(v_hat + eps_root) + eps)
        return new_params, AdamState(count=count, mu=mu, nu=nu)

    return Optimizer(init, update, weight_decay)
