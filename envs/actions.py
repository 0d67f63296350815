"""What a `TorchVectorEnv` does with the actions it is given: one rule for every env.

An action is *invalid* when it lies outside the env's action space:

- ``Discrete(n, start)``: an integer outside ``[start, start + n - 1]``;
- ``Box``: NaN or +-inf in any coordinate, or a value outside ``[low, high]``. Exception: a task whose
  Gymnasium original accepts out-of-bounds ``Box`` actions and clips them itself declares
  ``clip_actions = True`` (Pendulum, MountainCarContinuous); there every finite value is valid and
  the task applies Gymnasium's own clip, so its results (MountainCarContinuous's action cost, charged
  on the action as given, included) equal Gymnasium's.

``validate=False`` (the fast path learners use): before the transition, every invalid action is
replaced by the nearest valid one, the same way in every env:

- ``Discrete``: clamped into ``[start, start + n - 1]`` (Acrobot's action 7 is action 2);
- ``Box``: each NaN coordinate becomes the env's ``neutral_action`` in that coordinate (the task's
  "do nothing": zero torque, zero force, zero acceleration), then every coordinate is clamped into
  ``[low, high]`` (+-inf becomes the bound); in ``clip_actions`` tasks only +-inf is clamped.

Valid actions pass unchanged, so for an action that ``validate=True`` accepts the results never depend
on ``validate``.

``validate=True``:

- an eager step on CPU raises ``ValueError`` at once, naming the env and the value, before anything
  changes;
- on CUDA, or with ``compile=True``, checking at once would cost a host sync per step (and cannot be
  captured in a CUDA graph). The step instead sanitises as above and records on the device which envs
  got an invalid action, and the first such action of each. The ``ValueError`` comes from the next
  ``reset()``, ``get_state()`` or ``env.raise_pending()``; that call raises before doing anything
  else and clears the record, so repeating it runs normally. Code that drives a ``validate=True`` env
  through CUDA or compiled steps calls ``env.raise_pending()`` once per iteration, at its one host
  sync (free when nothing can be pending). The learners in ``hrl_nested`` make their envs with
  ``validate=False`` (sanitised, nothing to raise), so they need no such call.

Dtypes: ``Discrete`` actions are integer tensors of any integer dtype, ``Box`` actions floating-point
tensors. With ``validate=True`` a ``Box`` action must have the env's dtype exactly: float16, bfloat16
or float64 actions for a float32 env raise (a silent cast would hide a policy computed at another
precision, or drop bits); with ``validate=False`` any floating dtype is cast to the env's dtype.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch

_SHOWN = 8  # envs named in a deferred error; the rest are counted


def default_neutral(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The middle of ``[low, high]`` per coordinate; 0 clipped into the bounds where one is infinite."""
    finite = np.isfinite(low) & np.isfinite(high)
    mid = np.where(finite, (np.where(finite, low, 0) + np.where(finite, high, 0)) / 2, 0.0)
    return np.clip(mid, low, high)


class ActionRule:
    """The checks and the sanitising of one env's actions (see the module docstring).

    Args:
        space: the single-env action space.
        num_envs: batch size N.
        dtype: the env's float dtype (``Box`` actions are computed in it).
        device: the env's device; the record of invalid actions lives there.
        clip_actions: the task clips out-of-bounds finite ``Box`` actions itself (Gymnasium's original does).
        neutral_action: replaces NaN ``Box`` coordinates; ``None``: `default_neutral`. For a ``Discrete``
            space it only documents the task's no-op (an integer cannot be NaN); it must be valid.
    """

    def __init__(
        self,
        space: gym.Space,
        num_envs: int,
        dtype: torch.dtype,
        device: torch.device,
        clip_actions: bool,
        neutral_action: Any,
    ):
        self.space, self.dtype, self.device = space, dtype, device
        self.discrete = isinstance(space, gym.spaces.Discrete)
        self.box = isinstance(space, gym.spaces.Box)
        self.clip = bool(clip_actions) and self.box
        self.shape = torch.Size((num_envs, *space.shape)) if space.shape is not None else None
        if self.discrete:
            self.lo, self.hi = int(space.start), int(space.start + space.n - 1)
            bad = neutral_action is not None and (
                not isinstance(neutral_action, int | np.integer)
                or isinstance(neutral_action, bool)
                or not self.lo <= neutral_action <= self.hi
            )
            if bad:
                raise ValueError(
                    f"neutral_action: expected None or an int in [{self.lo}, {self.hi}] for {space}, "
                    f"got {neutral_action!r}"
                )
        if self.box:
            low = np.broadcast_to(space.low, space.shape).astype(np.float64)
            high = np.broadcast_to(space.high, space.shape).astype(np.float64)
            if neutral_action is None:
                neutral = default_neutral(low, high)
            else:
                try:
                    neutral = np.broadcast_to(np.asarray(neutral_action, dtype=np.float64), space.shape)
                except (TypeError, ValueError):
                    neutral = None
                if (
                    neutral is None
                    or not (np.isfinite(neutral).all() and (low <= neutral).all())
                    or not (neutral <= high).all()
                ):
                    raise ValueError(
                        f"neutral_action: expected None or finite values within the bounds of {space} "
                        f"(shape {space.shape}), got {neutral_action!r}"
                    )
            self.low = torch.as_tensor(low, dtype=dtype, device=device)
            self.high = torch.as_tensor(high, dtype=dtype, device=device)
            self.neutral = torch.as_tensor(np.array(neutral), dtype=dtype, device=device)
            # The bounds as the env's dtype holds them, so that `check_now` and `invalid` agree.
            self.low_list, self.high_list = self.low.reshape(-1).tolist(), self.high.reshape(-1).tolist()
        # The on-device record of deferred checks: which envs got an invalid action, and the first one.
        checked = self.discrete or self.box
        self.seen = torch.zeros(num_envs, dtype=torch.bool, device=device) if checked else None
        self.first = (
            torch.zeros(self.shape, dtype=torch.int64 if self.discrete else dtype, device=device)
            if checked
            else None
        )
        self.used = False  # a deferred check has run at least once (else the record is all False)

    # ------------------------------------------------------------------ structure (always checked)
    def check(self, a: Any, validate: bool) -> torch.Tensor:
        """Device, shape and dtype of a batch of actions; NumPy arrays are converted. Returns the tensor
        the step uses (``Box`` actions cast to the env's dtype when ``validate`` is off)."""
        if not isinstance(a, torch.Tensor):
            a = torch.as_tensor(np.asarray(a), device=self.device)
        if a.device != self.device:
            raise ValueError(f"actions: expected a tensor on {self.device}, got one on {a.device}")
        if self.shape is not None and a.shape != self.shape:
            raise ValueError(
                f"actions: expected shape {tuple(self.shape)} (num_envs={self.shape[0]} x single "
                f"action {tuple(self.space.shape)}), got {tuple(a.shape)}"
            )
        if self.discrete:
            if a.is_floating_point() or a.is_complex() or a.dtype == torch.bool:
                raise ValueError(f"actions: expected an integer tensor for {self.space}, got {a.dtype}")
        elif self.box:
            if not a.is_floating_point():
                raise ValueError(f"actions: expected a floating-point tensor for {self.space}, got {a.dtype}")
            if a.dtype != self.dtype:
                if validate:
                    raise ValueError(
                        f"actions: expected {self.dtype} for {self.space} (the env's dtype; with "
                        f"validate=False other float dtypes are cast), got {a.dtype}"
                    )
                a = a.to(self.dtype)
        return a

    # ------------------------------------------------------------------ values
    def invalid(self, a: torch.Tensor) -> torch.Tensor:
        """bool ``(N,)``: the envs whose action is invalid."""
        if self.discrete:
            return (a < self.lo) | (a > self.hi)
        bad = ~torch.isfinite(a)
        if not self.clip:
            bad = bad | (a < self.low) | (a > self.high)
        return bad.reshape(bad.shape[0], -1).any(-1)

    def sanitize(self, a: torch.Tensor) -> torch.Tensor:
        """The nearest valid action (NaN -> ``neutral_action``); valid actions are returned unchanged."""
        if self.discrete:
            return a.clamp(self.lo, self.hi)
        if not self.box:
            return a
        a = torch.where(torch.isnan(a), self.neutral, a)
        clamped = torch.clamp(a, self.low, self.high)
        return torch.where(torch.isinf(a), clamped, a) if self.clip else clamped

    def record(self, a: torch.Tensor) -> None:
        """Add this step's invalid actions to the on-device record (no host sync)."""
        bad = self.invalid(a)
        new = (bad & ~self.seen).view(-1, *([1] * (a.dim() - 1)))
        self.first.copy_(torch.where(new, a.to(self.first.dtype), self.first))
        self.seen.logical_or_(bad)

    def expected(self) -> str:
        if self.discrete:
            return f"integers in [{self.lo}, {self.hi + 1}) for {self.space}"
        if self.clip:
            return f"finite values for {self.space}"
        return f"finite values within the bounds of {self.space}"

    def check_now(self, a: torch.Tensor) -> None:
        """Raise at once if any action is invalid: one reduction and one host read when all are valid."""
        if self.discrete:
            mn, mx = (int(v) for v in torch.aminmax(a))
            if self.lo <= mn and mx <= self.hi:
                return
        elif self.box:
            mn, mx = (t.tolist() for t in torch.aminmax(a.reshape(a.shape[0], -1), dim=0))
            finite = all(math.isfinite(v) for v in mn + mx)  # aminmax propagates NaN
            if finite and (
                self.clip
                or (
                    all(m >= b for m, b in zip(mn, self.low_list))
                    and all(m <= b for m, b in zip(mx, self.high_list))
                )
            ):
                return
        else:
            return
        bad = self.invalid(a).nonzero()
        if bad.numel() == 0:
            return
        i = int(bad[0, 0])
        if self.discrete:
            raise ValueError(
                f"actions: expected integers in [{self.lo}, {self.hi + 1}) for {self.space}, "
                f"got {int(a[i])} at env {i}"
            )
        if not bool(torch.isfinite(a[i]).all()):
            raise ValueError(
                f"actions: expected finite values for {self.space}, got {a[i].tolist()} (NaN/inf) at env {i}"
            )
        raise ValueError(
            f"actions: expected values within the bounds of {self.space} (low={self.space.low.tolist()}, "
            f"high={self.space.high.tolist()}), got {a[i].tolist()} at env {i}"
        )

    def raise_recorded(self) -> None:
        """Raise the recorded invalid actions, if any, and clear the record (one host read)."""
        if not self.used or self.seen is None:
            return
        if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return  # no host read may happen inside a CUDA graph capture; the next sync point reports it
        ids = self.seen.nonzero().squeeze(1).tolist()
        if not ids:
            return
        got = self.first[ids[:_SHOWN]].tolist()
        self.seen.zero_()
        more = f" (and {len(ids) - _SHOWN} more)" if len(ids) > _SHOWN else ""
        raise ValueError(
            f"actions: envs {ids[:_SHOWN]}{more} got {', '.join(str(g) for g in got)} (the first "
            f"invalid action of each, recorded on {self.device} by a CUDA or compiled step with "
            f"validate=True); expected {self.expected()}. Those steps ran with the actions sanitised "
            f"as with validate=False."
        )
