"""A template for writing your own `TorchVectorEnv`: copy this file and replace the corridor.

A `TorchVectorEnv` describes one environment as three pure functions of batched tensors; the base
class turns them into a Gymnasium ``VectorEnv`` with autoreset (NEXT_STEP or SAME_STEP), time limits
reported as truncation, counter-based seeding and ``get_state`` / ``set_state``. Rules of thumb:

- Every hook sees the whole batch: tensors of shape ``(num_envs, ...)``. Write it as tensor code
  with no Python loop over envs and no ``.item()`` / ``bool(tensor)`` (a host sync on CUDA, and a
  break in a captured CUDA graph). Choose with ``torch.where``, not ``if``.
- Take every random number from the ``draw`` argument (``draw.uniform(lanes)``,
  ``draw.integers(high)``), never from ``torch.rand``: then env ``i``'s trajectory depends only on
  the seed and ``i``, replays exactly, and does not change with ``num_envs`` or the device.
- Keep the time limit out of the hooks: pass ``max_episode_steps`` to the base class, which reports
  it as ``truncated``. ``terminated`` is for states where the task itself ends.
- Keep every per-env variable in the ``vars`` dict (physics under ``"state"``, plus goals, counters,
  ...), so that ``get_state`` / ``set_state`` capture all of it.

Register it to make it available to ``envs.make`` and ``gymnasium.make_vec``::

    gymnasium.register(id="my_pkg/Corridor-v0", vector_entry_point="envs.template:CorridorEnv",
                       max_episode_steps=50)
    env = envs.make("my_pkg/Corridor-v0", num_envs=1024, device="cuda")

or pass the entry point directly: ``envs.make("envs.template:CorridorEnv", num_envs=1024)``. Then run
``envs.check_vector_env(env)``: it reports shapes, dtypes, devices, bounds, autoreset, time-limit
and seeding mistakes by name.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch

from envs.core import Draw, TorchVectorEnv
from envs.options import EnvOptions, Unpack, numpy_dtype


class CorridorEnv(TorchVectorEnv):
    """A walk along a corridor of ``length`` cells, rewarded at its right end.

    Each episode starts on a random cell of the left half. Action 0 moves left, 1 moves right; with
    probability ``slip_prob`` the move goes the other way. Reaching the last cell gives reward 1 and
    terminates the episode; every other step gives 0. Observation: the position ``/ (length - 1)``.

    >>> env = CorridorEnv(num_envs=4, length=8)
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape
    torch.Size([4, 1])
    >>> obs, reward, terminated, truncated, info = env.step(torch.ones(4, dtype=torch.int64))
    """

    # Class-level metadata: the base class adds the instance's "autoreset_mode" to it.
    metadata: dict[str, Any] = {**TorchVectorEnv.metadata}
    # The time limit when max_episode_steps is not given (an explicit None means no limit).
    default_max_episode_steps = 50
    # To draw frames (render_mode="rgb_array"): list the mode in metadata["render_modes"] and define
    # _render_frame(env_index, v) (see envs.render).
    # The task's "do nothing" action (NaN Box actions are replaced by it; see envs.actions). Both
    # actions here move, so there is none; a Box task would give e.g. 0.0 (zero force).
    neutral_action = None

    def __init__(
        self, num_envs: int = 1, *, length: int = 10, slip_prob: float = 0.1, **options: Unpack[EnvOptions]
    ):
        # 0. The shared options (device, dtype, time limit, ...; envs.options.EnvOptions) with their
        #    defaults filled in; pass them on to super().__init__ untouched.
        opts = self.resolve_options(options)
        # 1. Validate options with messages that name them, and store them *before*
        #    super().__init__: the base class calls _sample_reset while it initializes.
        if not (isinstance(length, int) and length >= 2):
            raise ValueError(f"length: expected an int >= 2, got {length!r}")
        if not 0.0 <= slip_prob <= 1.0:
            raise ValueError(f"slip_prob: expected a probability in [0, 1], got {slip_prob!r}")
        self.length, self.slip_prob = length, float(slip_prob)
        # 2. Declare the spaces of ONE env; the numpy dtype must match the tensors you return.
        np_dtype = numpy_dtype(opts["dtype"])
        super().__init__(
            num_envs,
            single_observation_space=gym.spaces.Box(0.0, 1.0, (1,), dtype=np_dtype),
            single_action_space=gym.spaces.Discrete(2),
            **opts,
        )

    def _sample_reset(self, draw: Draw) -> dict[str, torch.Tensor]:
        """Fresh variables for EVERY env; the base keeps only the rows that are being reset.

        Returns the ``vars`` dict: ``"state"`` is required (``env.state`` reads it); add more keys
        for goals or counters. Shapes ``(num_envs, ...)``, on the env's device.
        """
        # draw.integers(high) -> (num_envs, 1) int64 in [0, high): cells 0 .. length // 2 - 1.
        cell = draw.integers(self.length // 2)
        return {"state": cell.to(self.dtype)}

    def _transition(
        self, vars: dict[str, torch.Tensor], action: torch.Tensor, draw: Draw
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """One step of every env: ``(new vars, reward (N,), terminated (N,) bool)``.

        ``action`` is already checked for shape, dtype and device, and is always a valid action: the
        base class raises on invalid ones (``validate=True``) or replaces them by the nearest valid one
        (``validate=False``: clamped into the space, NaN -> ``neutral_action``) before this hook.
        Return new tensors rather than writing into ``vars``: the base class copies them in place
        after deciding which envs to reset.
        """
        step = torch.where(action == 1, 1.0, -1.0).to(self.dtype)
        if self.slip_prob > 0:  # a Python branch on a constant is fine; on tensor values it is not
            slip = draw.uniform(1)[:, 0] < self.slip_prob
            step = torch.where(slip, -step, step)
        pos = (vars["state"][:, 0] + step).clamp(0, self.length - 1)
        terminated = pos == self.length - 1
        reward = terminated.to(self.dtype)
        return {"state": pos.unsqueeze(-1)}, reward, terminated

    def _observe(self, vars: dict[str, torch.Tensor]) -> torch.Tensor:
        """The observation from the variables: a tensor, or a dict of tensors for ``Dict`` spaces.

        Return a new tensor (not a view of ``vars``), since the variables are updated in place.
        """
        return vars["state"] / (self.length - 1)
