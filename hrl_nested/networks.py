"""Policy and value networks, used functionally, and stacks of them.

Networks are ordinary ``nn.Module`` s with CleanRL's initialisation (orthogonal weights, zero biases);
learners drive them with ``torch.func.functional_call(module, params, (obs,))`` so that parameters
are plain dicts of tensors (differentiable optimizers return new dicts, never write in place).
Several subpolicies form a *stack*: ``torch.func.stack_module_state`` gives one dict whose tensors
have a leading member dim ``K``, driven with ``torch.func.vmap``; `select_member` then picks member
``index[n]`` for env ``n``, so a different subpolicy per env needs no fork of the rollout.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from hrl_nested.distributions import Categorical, DiagGaussian, Distribution, make_distribution
from hrl_nested.pytree import Obs, tree_map


class FastTanh(nn.Tanh):
    """``nn.Tanh`` under its old name, so that modules saved whole (``torch.save(module)``) still load.

    It used to switch to ``2 sigmoid(2x) - 1`` on CPU above 4096 elements, which made a network's output
    for one row depend on the batch size; with torch 2.13's vectorized CPU ``tanh`` that form is not
    faster anyway (2 threads, min of repeats: ``(128, 64)`` forward 4 us vs 19 us, ``(1024, 64)`` 23 us
    vs 73 us). It adds nothing to ``nn.Tanh``.
    """


# MKL's CPU sgemm picks kernels by the number of rows M (gemv for M = 1, small-M paths below 16, an
# M-dependent blocking when there is one output column), and they round differently: the same row gave
# different bits at batch 1, 2, 20 or 4095 than at 4096. With M a multiple of 16 (measured up to 6016,
# 1 and 2 threads, in and out dims 1 to 256) every row comes out bit-identical and independent of its
# position. So on CPU an MLP's input rows are zero-padded to a multiple of 16 once, at its input (its
# layers act row by row), and the padding rows dropped at its output. Typical batches (128 envs,
# minibatches of 1024) need no padding; a 20-env evaluation pays one small copy per call.
_ROW_MULTIPLE = 16


def _padded_rows(x: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """``(rows, m)``: ``x`` as ``(M', d)`` rows zero-padded to a multiple of 16, and the true ``M``; or
    None when nothing is to be padded (not on CPU, or ``M`` already a multiple)."""
    if x.device.type != "cpu" or x.dim() == 0:
        return None
    rows = x.reshape(-1, x.shape[-1])
    m = rows.shape[0]
    pad = -m % _ROW_MULTIPLE
    if pad == 0:
        return None
    return nn.functional.pad(rows, (0, 0, 0, pad)), m


def _row_invariant(fn, x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` for a row-wise ``fn`` (an MLP), computed on rows padded by `_padded_rows`."""
    padded = _padded_rows(x)
    if padded is None:
        return fn(x)
    rows, m = padded
    out = fn(rows)[:m]
    return out.reshape(*x.shape[:-1], out.shape[-1])


def batch_invariant_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias) = x W^T + b`` whose value for a row does not depend on the batch size.

    On CPU the leading dims are flattened to M rows and zero-padded to a multiple of 16 rows before
    the matrix product (MKL's kernel choice, and so its rounding, depends on M); the padding rows are
    dropped. Same values and gradients as ``F.linear`` up to float rounding. On other devices this is
    ``F.linear``: cuBLAS also picks kernels by shape, and padding does not make that go away, so a
    row's bits may still depend on the batch size there.

    >>> w, b = torch.randn(3, 4), torch.randn(3)
    >>> x = torch.randn(20, 4)
    >>> bool(torch.equal(batch_invariant_linear(x[:1], w, b), batch_invariant_linear(x, w, b)[:1]))
    True
    """
    return _row_invariant(lambda t: nn.functional.linear(t, weight, bias), x)


class MLP(nn.Sequential):
    """A multilayer perceptron with orthogonal init (gain ``sqrt(2)`` hidden, ``out_gain`` output, zero bias).

    The init is CleanRL's ``layer_init`` (Huang et al. 2022, "The 37 implementation details of PPO").
    ``nn.Tanh`` layers are built as `FastTanh` (the same class under its old name). Within one execution
    path a row's output is bit-identical whatever the batch size: on CPU the input rows are padded to a
    multiple of 16 for the matrix products (see `batch_invariant_linear`); ``activation`` must act row
    by row (any elementwise one does).

    >>> MLP(4, 2)(torch.zeros(3, 4)).shape
    torch.Size([3, 2])
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.Tanh,
        out_gain: float = 1.0,
    ):
        layers: list[nn.Module] = []
        dims = [int(in_dim), *(int(h) for h in hidden)]
        act = FastTanh if activation is nn.Tanh else activation
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [_init(nn.Linear(a, b), math.sqrt(2.0)), act()]
        layers.append(_init(nn.Linear(dims[-1], int(out_dim)), out_gain))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _row_invariant(super().forward, x)


def _init(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def flat_dim(space: gym.Space) -> int:
    """Width of a Box (product of its shape) or Discrete (one-hot: ``n``) leaf once encoded."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape))
    raise ValueError(f"observation space: expected a Box or Discrete, got {space}")


def encode_leaf(x: torch.Tensor, start: int | None, n: int, dtype: torch.dtype) -> torch.Tensor:
    """One observation leaf as flat float features: a Discrete (``start`` an int) one-hot over its ``n``
    values, a Box (``start`` None) with its ``n`` trailing (space) dims flattened."""
    if start is not None:
        return nn.functional.one_hot(x.long() - start, n).to(dtype)
    return x.reshape(*x.shape[: x.dim() - n], -1).to(dtype)


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs (CleanRL's PPO agent) for Discrete and 1-D Box action spaces.

    Observations: a flat Box, a Discrete (one-hot encoded), or a goal ``Dict`` whose ``observation``
    and ``desired_goal`` are concatenated. The actor's output ``dist_params`` is the logits
    (Discrete) or ``(mean, log_std)`` concatenated on the last dim (Box; ``log_std`` is a
    state-independent parameter), so it is always one tensor.

    Args:
        observation_space: single-env observation space.
        action_space: single-env action space.
        hidden: hidden layer sizes of both MLPs.
        activation: hidden activation.
        squash: Box actions only: ``None``, ``"tanh"``, ``"clip"`` or ``"auto"`` (see
            `hrl_nested.distributions.DiagGaussian`).
        log_std_init: initial log standard deviation for Box actions.

    >>> ac = ActorCritic(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2))
    >>> dist_params, value = ac(torch.zeros(8, 4))
    >>> dist_params.shape, value.shape
    (torch.Size([8, 2]), torch.Size([8]))
    """

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        hidden: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.Tanh,
        squash: str | None = "auto",
        log_std_init: float = 0.0,
    ):
        super().__init__()
        self.observation_space, self.action_space, self.squash = observation_space, action_space, squash
        if isinstance(observation_space, gym.spaces.Dict):
            if "observation" not in observation_space.spaces:
                raise ValueError(
                    f"observation_space: a Dict needs an 'observation' key, got {observation_space}"
                )
            self.obs_keys = tuple(k for k in ("observation", "desired_goal") if k in observation_space.spaces)
            obs_dim = sum(flat_dim(observation_space[k]) for k in self.obs_keys)
        else:
            self.obs_keys = ()
            obs_dim = flat_dim(observation_space)
        if isinstance(action_space, gym.spaces.Discrete):
            act_dim, self.log_std = int(action_space.n), None
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            act_dim = int(action_space.shape[0])
            self.log_std = nn.Parameter(torch.full((act_dim,), float(log_std_init)))
        else:
            raise ValueError(f"action_space: expected Discrete or a 1-D Box, got {action_space}")
        self.obs_dim = obs_dim
        self.actor = MLP(obs_dim, act_dim, hidden, activation, out_gain=0.01)
        self.critic = MLP(obs_dim, 1, hidden, activation, out_gain=1.0)
        # Validates squash against the space and resolves "auto".
        probe = make_distribution(
            action_space, torch.zeros(act_dim * (2 if self.log_std is not None else 1)), squash
        )
        self.squash = getattr(probe, "squash", None)
        self._head_dim = int(probe.logits.shape[-1]) if self.log_std is None else 2 * act_dim
        self._bounds_np = (
            None if getattr(probe, "low", None) is None else (action_space.low, action_space.high)
        )
        self._bounds: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        spaces = [(k, observation_space[k]) for k in self.obs_keys] or [(None, observation_space)]
        # (key, discrete start or None, n or number of flattened dims) as Python ints: trace-friendly
        self._encoding = [
            (k, int(sp.start), int(sp.n)) if isinstance(sp, gym.spaces.Discrete) else (k, None, len(sp.shape))
            for k, sp in spaces
        ]

    def encode(self, obs: Obs) -> torch.Tensor:
        """The flat float input ``(..., obs_dim)`` of both MLPs."""
        if self.obs_keys and not isinstance(obs, Mapping):
            raise ValueError(f"obs: expected a dict with keys {self.obs_keys}, got {type(obs).__name__}")
        dtype = self.actor[0].weight.dtype
        parts = []
        for key, start, n in self._encoding:
            x = obs if key is None else obs[key]
            parts.append(encode_leaf(x, start, n, dtype))
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)

    def forward(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor]:
        """``(dist_params, value)``: ``(..., n)`` logits or ``(..., 2 d)`` mean and log-std, and ``(...)``."""
        x = self.encode(obs)
        out = self.actor(x)
        if self.log_std is not None:
            out = torch.cat([out, self.log_std.expand_as(out)], -1)
        return out, self.critic(x).squeeze(-1)

    def distribution(self, dist_params: torch.Tensor) -> Distribution:
        """The action distribution for ``dist_params``.

        Only Python ints and cached device tensors are touched here (no numpy), so the call traces
        into one ``torch.compile`` graph and is safe inside a CUDA-graph capture.
        """
        if dist_params.shape[-1] != self._head_dim:
            raise ValueError(
                f"dist_params: expected last dim {self._head_dim}, got {tuple(dist_params.shape)}"
            )
        if self.log_std is None:
            return Categorical(dist_params)
        low = high = None
        if self._bounds_np is not None:
            key = (dist_params.device, dist_params.dtype)
            if key not in self._bounds:
                self._bounds[key] = tuple(
                    torch.as_tensor(b, dtype=key[1], device=key[0]) for b in self._bounds_np
                )
            low, high = self._bounds[key]
        mean, log_std = dist_params.split(self._head_dim // 2, dim=-1)
        return DiagGaussian(mean, log_std, squash=self.squash, low=low, high=high)

    def value(self, obs: Obs) -> torch.Tensor:
        """``V(obs)`` alone, shape ``(...)``."""
        return self.critic(self.encode(obs)).squeeze(-1)


def _mlp_plan(mlp: nn.Sequential, prefix: str) -> list[tuple[str, Any, Any]] | None:
    """How to run ``mlp`` from a parameter dict without `functional_call`: per layer, ``("linear",
    weight key, bias key or None)`` or ``("fn", f, None)`` for a parameterless layer; None when some
    layer is neither (or has hooks), so the caller falls back to `functional_call`."""
    plan: list[tuple[str, Any, Any]] = []
    for i, layer in enumerate(mlp):
        if layer._forward_hooks or layer._forward_pre_hooks:
            return None
        if type(layer) is nn.Linear:
            bias = None if layer.bias is None else f"{prefix}.{i}.bias"
            plan.append(("linear", f"{prefix}.{i}.weight", bias))
        elif type(layer) in (nn.Tanh, FastTanh):
            plan.append(("fn", torch.tanh, None))
        elif not any(True for _ in layer.parameters()) and not any(True for _ in layer.buffers()):
            plan.append(("fn", layer, None))
        else:
            return None
    return plan


def _run_plan(plan: list[tuple[str, Any, Any]], params: Mapping[str, torch.Tensor], x: torch.Tensor):
    linear = nn.functional.linear
    for kind, a, b in plan:
        if kind == "linear":
            x = linear(x, params[a], None if b is None else params[b])
        else:
            x = a(x)
    return x


def _plans(module: ActorCritic) -> tuple[Any, Any] | None:
    """The cached (actor, critic) plans of ``module`` (None: use `functional_call`)."""
    plans = module.__dict__.get("_apply_plans")
    if plans is None:
        if (
            module._forward_hooks
            or module._forward_pre_hooks
            or type(module).forward is not ActorCritic.forward
        ):
            plans = (None, None)
        else:
            plans = (_mlp_plan(module.actor, "actor"), _mlp_plan(module.critic, "critic"))
        module.__dict__["_apply_plans"] = plans
    return None if plans[0] is None or plans[1] is None else plans


def actor_critic_apply(
    module: ActorCritic, params: Mapping[str, torch.Tensor], obs: Obs, *, critic: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``functional_call(module, params, (obs,))`` for an `ActorCritic`, minus its overhead.

    ``functional_call`` swaps every parameter into the module and back on each call, which costs more
    than the small MLP itself on a CPU. Here the layers read ``params`` directly (the same ops, so the
    same values and gradients). With ``critic=False`` only the actor runs and the value is None.
    A module whose layers are not plain ``Linear`` / parameterless ones, or that carries hooks, goes
    through ``functional_call``.

    >>> ac = ActorCritic(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2))
    >>> out, v = actor_critic_apply(ac, params_of(ac), torch.zeros(3, 4))
    >>> out.shape, v.shape
    (torch.Size([3, 2]), torch.Size([3]))
    """
    plans = _plans(module) if isinstance(module, ActorCritic) else None
    if plans is None or "actor.0.weight" not in params:
        out, value = functional_call(module, dict(params), (obs,))
        return out, (value if critic else None)
    x = module.encode(obs)
    padded = _padded_rows(x)  # as `MLP.forward` pads, once for both MLPs: the same rows, the same bits
    rows = x if padded is None else padded[0]
    out = _run_plan(plans[0], params, rows)
    value = _run_plan(plans[1], params, rows) if critic else None
    if padded is not None:
        lead, m = x.shape[:-1], padded[1]
        out = out[:m].reshape(*lead, out.shape[-1])
        value = None if value is None else value[:m].reshape(*lead, value.shape[-1])
    if module.log_std is not None:
        out = torch.cat([out, params["log_std"].expand_as(out)], -1)
    return out, (value.squeeze(-1) if critic else None)


def params_of(module: nn.Module) -> dict[str, torch.Tensor]:
    """``{name: parameter}`` for ``functional_call``; the live parameters (gradients reach the module).

    >>> sorted(params_of(nn.Linear(2, 1)))
    ['bias', 'weight']
    """
    return dict(module.named_parameters())


def stack_modules(modules: Sequence[nn.Module]) -> tuple[dict[str, torch.Tensor], nn.Module]:
    """Stack K same-architecture modules: ``({name: (K, ...) tensor}, base_module)``.

    The stacked tensors are fresh leaves that require grad (``torch.func.stack_module_state``); the base
    module is a structural copy on the ``meta`` device, to be called only through `vmap_apply` (or
    ``functional_call``) with real parameters.

    >>> params, base = stack_modules([MLP(4, 2) for _ in range(3)])
    >>> params["0.weight"].shape
    torch.Size([3, 64, 4])
    """
    if len(modules) == 0:
        raise ValueError("modules: expected at least one module")
    params, buffers = stack_module_state(list(modules))
    if buffers:
        raise ValueError(f"stack_modules: modules with buffers are not supported, got {sorted(buffers)}")
    base = copy.deepcopy(modules[0]).to("meta")
    return params, base


def vmap_apply(
    base: nn.Module, stacked_params: Mapping[str, torch.Tensor], obs: Any, per_member_obs: bool = False
) -> Any:
    """Call every member of a stack: outputs with a leading member dim ``K``.

    Args:
        base: the module giving the architecture (e.g. from `stack_modules`).
        stacked_params: ``{name: (K, ...)}``.
        obs: the input, shared by every member, or with ``per_member_obs=True`` a leading ``K`` dim
            (member k sees ``obs[k]``). Any pytree of tensors (a goal ``dict`` is fine).
        per_member_obs: whether ``obs`` has the leading member dim.

    Returns:
        The module's output pytree, each tensor with a leading ``K`` dim.

    >>> params, base = stack_modules([MLP(4, 2) for _ in range(3)])
    >>> vmap_apply(base, params, torch.zeros(5, 4)).shape
    torch.Size([3, 5, 2])
    """
    k = {int(v.shape[0]) for v in stacked_params.values()}
    if len(k) != 1:
        raise ValueError(f"stacked_params: expected one leading member dim, got sizes {sorted(k)}")
    in_dims = (0, 0 if per_member_obs else None)
    return vmap(lambda p, o: functional_call(base, p, (o,)), in_dims=in_dims)(dict(stacked_params), obs)


def select_member(outputs: Any, index: torch.Tensor) -> Any:
    """Pick member ``index[n]`` for env ``n``: ``out[index[n], n]`` for every tensor of ``outputs``.

    Args:
        outputs: a pytree of ``(K, N, ...)`` tensors (e.g. from `vmap_apply`).
        index: int ``(N,)`` member per env.

    Returns:
        The same pytree with ``(N, ...)`` tensors.

    >>> out = torch.arange(6.0).reshape(3, 2)  # K=3 members, N=2 envs
    >>> select_member(out, torch.tensor([2, 0])).tolist()
    [4.0, 1.0]
    """
    if index.dim() != 1 or index.dtype.is_floating_point or index.dtype == torch.bool:
        raise ValueError(
            f"index: expected an int tensor of shape (N,), got {index.dtype} {tuple(index.shape)}"
        )
    n = index.shape[0]
    env = torch.arange(n, device=index.device)

    def pick(x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != n:
            raise ValueError(f"outputs: expected (K, N={n}, ...) tensors, got {tuple(x.shape)}")
        return x[index.long(), env]

    return tree_map(pick, outputs)
