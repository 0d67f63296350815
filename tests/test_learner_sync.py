"""The learners' one per-iteration sync also surfaces deferred invalid actions (DESIGN.md, Invalid actions):
with ``validate=True`` on CUDA or a compiled step, an invalid action is recorded on the device and raised
at the next ``reset``, ``get_state``, ``env.raise_pending()`` *or the learner's per-iteration sync*.

Training makes its envs with ``validate=False`` (no deferred record on any path), so what is checked here
is the wiring: each iteration's loop calls the training env's ``raise_pending`` once, at its host copy,
and an error raised there stops training.
"""

from __future__ import annotations

import sys

import pytest
import torch

from envs.core import TorchVectorEnv
from hrl_nested.algos import Task
from hrl_nested.algos.nested_hrl import NestedHRLConfig
from hrl_nested.algos.nested_hrl import train as nested_train
from hrl_nested.algos.ppo import PPOConfig
from hrl_nested.algos.ppo import train as ppo_train

NUM_ENVS, ITERATIONS = 4, 3


def _counting(monkeypatch, loop: str, fail_at: int | None = None) -> list[int]:
    """Patch `TorchVectorEnv.raise_pending` to record the ``num_envs`` of each call made directly from the
    function named ``loop`` (calls from ``reset`` / ``get_state`` / evaluation are not the loop's sync);
    with ``fail_at``, that call raises as a recorded invalid action would."""
    calls: list[int] = []
    real = TorchVectorEnv.raise_pending

    def raise_pending(self):
        if sys._getframe(1).f_code.co_name == loop:
            calls.append(self.num_envs)
            if fail_at is not None and len(calls) == fail_at:
                raise ValueError("invalid action recorded by a deferred check")
        return real(self)

    monkeypatch.setattr(TorchVectorEnv, "raise_pending", raise_pending)
    return calls


def _ppo(steps: int = NUM_ENVS * 8 * ITERATIONS):
    task = Task(
        env="hrl_nested/CartPole-v1", total_steps=steps, num_envs=NUM_ENVS, eval_episodes=2, device="cpu"
    )
    cfg = PPOConfig(
        num_steps=8, num_minibatches=2, update_epochs=1, hidden=(8,), eval_every=0, capture="none"
    )
    return ppo_train(task, cfg)


def test_ppo_calls_raise_pending_once_per_iteration(monkeypatch):
    torch.manual_seed(0)
    calls = _counting(monkeypatch, "train")
    assert _ppo()["env_steps"] == NUM_ENVS * 8 * ITERATIONS
    assert calls == [NUM_ENVS] * ITERATIONS  # the training env (not the 2-env eval env), once each


def test_ppo_stops_at_a_recorded_invalid_action(monkeypatch):
    _counting(monkeypatch, "train", fail_at=2)
    with pytest.raises(ValueError, match="invalid action recorded"):
        _ppo()


def test_nested_hrl_calls_raise_pending_once_per_iteration(monkeypatch):
    torch.manual_seed(0)
    calls = _counting(monkeypatch, "run_nested")
    task = Task(
        env="hrl_nested/FourRooms-v0", total_steps=NUM_ENVS * 8 * ITERATIONS, num_envs=NUM_ENVS,
        eval_episodes=2, device="cpu",
    )  # fmt: skip
    cfg = NestedHRLConfig(
        num_steps=8, n_inner=1, num_minibatches=2, hidden=(8,), eval_every=0, capture="none"
    )
    nested_train(task, cfg)
    assert calls == [NUM_ENVS] * ITERATIONS
