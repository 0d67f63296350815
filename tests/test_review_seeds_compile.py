"""Review fixes of issue 11: distinct W&B run ids per seed of ``--num-seeds K`` (under ``wandb agent`` every
seed used to take ``$WANDB_RUN_ID``), and the ``compile="auto"`` fallback (never a second step after a failed
compile, never a silent fallback inside a CUDA graph capture)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import envs
import envs.compiled_step
from envs.compiled_step import fused_step
from hrl_nested.algos import ppo_multiseed
from tests._scripts import load_script

REPO = Path(__file__).resolve().parents[1]


def _train_module():
    return load_script("train.py", "review_seeds_train_script", reuse=True)


def test_seed_runs_under_wandb_agent_get_distinct_ids(monkeypatch):
    """``wandb agent`` sets ``$WANDB_RUN_ID``; K runs on that one id would all write into one W&B run."""
    monkeypatch.setenv("WANDB_RUN_ID", "sweep123")
    runs = ppo_multiseed.seed_runs(None, {}, algo="ppo", env="x", seeds=[4, 5, 6], total_steps=1)
    assert [r.run_id for r in runs] == ["sweep123-s4", "sweep123-s5", "sweep123-s6"]
    given = ppo_multiseed.seed_runs(None, {}, algo="ppo", env="x", seeds=[4, 5], total_steps=1, run_id="b")
    assert [r.run_id for r in given] == ["b-s4", "b-s5"]
    monkeypatch.delenv("WANDB_RUN_ID")
    fresh = ppo_multiseed.seed_runs(None, {}, algo="ppo", env="x", seeds=[0, 1], total_steps=1)
    assert len({r.run_id for r in fresh}) == 2


def test_cli_num_seeds_under_wandb_agent_checkpoints_distinct_ids(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("WANDB_RUN_ID", "agent42")
    train = _train_module()
    train.main(["--total-steps", "256", "--num-envs", "8", "--ppo.num-steps", "16", "--ppo.num-minibatches",
                "2", "--eval-episodes", "1", "--device", "cpu", "--wandb-mode", "disabled", "--seed", "3",
                "--num-seeds", "2", "--run-dir", str(tmp_path / "run")])  # fmt: skip
    ids = [
        torch.load(tmp_path / "run" / f"seed-{s}" / "checkpoint.pt", weights_only=False)["wandb_run_id"]
        for s in (3, 4)
    ]
    assert ids == ["agent42-s3", "agent42-s4"]


def _pair(n=8):
    def make(compile):
        env = envs.make("hrl_nested/CartPole-v1", n, dtype=torch.float64, compile=compile)
        env.reset(seed=1)
        return env

    return make


def test_failed_auto_compile_after_its_step_does_not_step_twice(monkeypatch):
    """A compile can fail after the traced step already wrote the env's buffers (the verification step
    raising, a graph break's second graph): the eager fallback must start from the state before it."""

    def compile_then_fail(self, key, actions, buffers):
        fused_step(self.env, actions, *buffers)  # the compiled step ran and wrote the buffers...
        raise RuntimeError("verification failed")  # ...then something after it raised

    monkeypatch.setattr(envs.compiled_step, "AUTO_COMPILE_MIN_ENVS_CPU", 8)
    monkeypatch.setattr(envs.compiled_step, "_notice_given", True)
    monkeypatch.setattr(envs.compiled_step.CompiledStep, "_compile", compile_then_fail)
    auto, eager = _pair()("auto"), _pair()(False)
    assert auto._compiled_step is not None
    a = torch.tensor([0, 1] * 4)
    for _ in range(5):
        got, want = auto.step(a), eager.step(a)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert isinstance(auto._compiled_step.failed, RuntimeError)
    assert torch.equal(auto._state().rng_counter, eager._state().rng_counter)


@pytest.mark.parametrize("compile", ["auto", True])
def test_first_compile_inside_a_cuda_graph_capture_is_a_clear_error(monkeypatch, compile):
    """A compile cannot run inside a CUDA graph capture (its verification reads the device); the auto
    fallback would otherwise run an eager step into an invalidated capture without a word."""

    def must_not_compile(self, key, actions, buffers):
        raise AssertionError("compiled inside a capture")

    monkeypatch.setattr(envs.compiled_step, "AUTO_COMPILE_MIN_ENVS_CPU", 8)
    monkeypatch.setattr(envs.compiled_step, "_notice_given", True)
    monkeypatch.setattr(envs.compiled_step.CompiledStep, "_compile", must_not_compile)
    monkeypatch.setattr(envs.compiled_step, "_stream_capturing", lambda device: True, raising=False)
    env = _pair()(compile)
    before = env._state()
    with pytest.raises(RuntimeError, match="CUDA graph capture"):
        env.step(torch.tensor([0, 1] * 4))
    assert env._compiled_step.failed is None  # not silently downgraded to eager for good
    assert all(torch.equal(a, b) for a, b in zip(before.tensors().values(), env._state().tensors().values()))


def test_seed_batch_steps_as_the_single_seed_batch_does(monkeypatch, one_thread):
    """``compile="auto"`` compiles a CPU batch from a size on: K x N envs can cross it where a single-seed
    run's N do not, and a compiled step's floats differ from the eager step's in the low bits (so would
    the actions). The K-seed batch must step as each single-seed run's batch does: here every seed's
    first rollout is the single run's, bit for bit, with the threshold between N and K x N."""
    from hrl_nested.algos import Task, ppo
    from hrl_nested.algos.ppo import PPOConfig

    n, k, t = 32, 3, 16
    # N eager, K x N would compile
    monkeypatch.setattr(envs.compiled_step, "AUTO_COMPILE_MIN_ENVS_CPU", 2 * n)
    made = []
    make_env = ppo._make_env

    def recording_make_env(*args, **kwargs):
        made.append(make_env(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(ppo, "_make_env", recording_make_env)
    first: dict = {}
    make_rollout = ppo.make_rollout

    def recording_rollout(*args, **kwargs):
        collect = make_rollout(*args, **kwargs)

        def recorded(*a, **kw):
            out = collect(*a, **kw)
            first.setdefault(len(made), out)
            return out

        recorded.state_dict, recorded.load_state_dict = collect.state_dict, collect.load_state_dict
        return recorded

    monkeypatch.setattr(ppo_multiseed, "make_rollout", recording_rollout)
    monkeypatch.setattr(ppo, "make_rollout", recording_rollout)
    task = Task(total_steps=n * t, num_envs=n, eval_episodes=1, seed=0, device="cpu")
    cfg = PPOConfig(num_steps=t, num_minibatches=2)
    ppo_multiseed.train_seeds(task, cfg, k)
    assert not made[0].compiled  # the K x N batch: eager, as the single runs' N
    multi = first[2].batch
    for s in range(k):
        ppo.train(Task(**{**task.__dict__, "seed": s}), cfg)
        single = first[len(made)].batch
        assert not made[-2].compiled
        cols = slice(s * n, (s + 1) * n)
        assert torch.equal(multi.obs[:, cols], single.obs), s
        assert torch.equal(multi.actions[:, cols], single.actions), s
