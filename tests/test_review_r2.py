"""Review R2's checks of the fused rollout step's probe-and-rewind and of old nested-hrl checkpoints.

- The fused loop (`Collector._fused_loop`: an eager probe step that is rewound, then each step writes its
  row of the T-step buffers and per-env episode sums) is run with the eager step in place of the compiled
  one, so that it costs no compile: on a goal env with the nested-hrl hierarchy's manager carry and
  ``reset_carry`` it must reproduce the plain eager collector exactly, rollout after rollout (the probe
  leaves no trace: env state, RNG counters, pending resets, episode accumulators, torch's RNG).
- A nested-hrl run directory from before ``outer_batch`` / ``prox: None`` (no ``outer_pending`` in the
  checkpoint, ``prox: 0.0`` and no ``outer_batch`` in config.json) resumes with ``--resume``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import envs
from hrl_nested.hierarchy import goal_bounds
from hrl_nested.pytree import tree_leaves
from hrl_nested.rollout import make_rollout
from hrl_nested.tracking.checkpoint import load_checkpoint, save_checkpoint
from tests._hierarchies import small_hierarchy
from tests._scripts import load_script

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread


def _nested_collector(fused: bool, num_envs: int = 4, num_steps: int = 7):
    env = envs.make(
        "hrl_nested/PointMaze-U-v0", num_envs, autoreset_mode="same_step", validate=False, max_episode_steps=5
    )
    torch.manual_seed(0)
    h = small_hierarchy(
        env.single_observation_space, env.single_action_space, goal_bounds(env.goal_space, 1.0, CPU)
    )
    collect = make_rollout(
        env, h.policy_fn(), num_steps, capture="none", reset_carry=h.reset_carry, compile_step=fused
    )
    if fused:
        assert collect._fused
        collect._step_fn = collect._step  # the fused loop with the eager step: no compile, same numbers
    obs, _ = env.reset(seed=4)
    zero = torch.zeros(num_envs, *env.single_action_space.shape)
    for _ in range(4):  # the probe step then ends every episode: an autoreset draws from the env's RNG
        obs = env.step(zero)[0]
    torch.manual_seed(7)
    return env, h, collect, obs


def test_fused_loop_probe_rewinds_everything_on_a_goal_env_with_the_manager_carry():
    runs = {}
    for fused in (False, True):
        env, h, collect, obs = _nested_collector(fused)
        params = h.rollout_params(h.theta0, h.stats())
        carry, out = h.initial_carry(obs), []
        for _ in range(3):
            res = collect(params, obs, carry)
            out.append(res)
            obs, carry = res.obs, res.carry
        runs[fused] = (out, env.get_state(), torch.get_rng_state(), collect.state_dict())
    (eager, e_state, e_rng, e_acc), (fused, f_state, f_rng, f_acc) = runs[False], runs[True]
    ended = 0
    for e, f in zip(eager, fused, strict=True):
        ended += int(e.episode_count)
        assert torch.equal(e.episode_count, f.episode_count)
        assert torch.equal(e.episode_length_sum, f.episode_length_sum)
        # summed per env first in the fused loop: another order of the float additions
        torch.testing.assert_close(f.episode_return_sum, e.episode_return_sum, rtol=1e-6, atol=1e-6)
        for x, y in zip(tree_leaves((e.batch, e.obs, e.carry)), tree_leaves((f.batch, f.obs, f.carry))):
            assert torch.equal(x, y)
    assert ended > 0
    for x, y in zip(tree_leaves(e_state), tree_leaves(f_state), strict=True):
        assert torch.equal(x, y)
    assert torch.equal(e_rng, f_rng)
    for k in e_acc:
        assert torch.equal(e_acc[k], f_acc[k])


@pytest.fixture()
def main(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    before = torch.get_num_threads()
    yield load_script("train.py", "train_script_review_r2").main
    torch.set_num_threads(before)


def test_a_run_from_before_outer_batch_and_prox_none_resumes(main, tmp_path):
    run_dir = tmp_path / "old"
    flags = ["--num-envs", "4", "--eval-episodes", "2", "--device", "cpu", "--wandb-mode", "disabled"]
    opts = {"num-steps": 8, "n-inner": 2, "num-minibatches": 2, "hidden": 8, "goal-horizon": 3}
    opts["hypergrad"] = "cg"
    algo = [x for k, v in opts.items() for x in (f"--nested-hrl.{k}", str(v))]
    env = ["--algo", "nested-hrl", "--env", "hrl_nested/PointMaze-U-v0"]
    main([*env, "--total-steps", "32", "--run-dir", str(run_dir), *flags, *algo])
    # Make it look like a run of before: config.json with prox 0.0 and no outer_batch, no outer_pending.
    cfg_path = run_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["nested_hrl"]["prox"] is None
    cfg["nested_hrl"]["prox"] = 0.0
    del cfg["nested_hrl"]["outer_batch"]
    cfg_path.write_text(json.dumps(cfg))
    ckpt = run_dir / "checkpoint.pt"
    state = load_checkpoint(ckpt)
    holder = state if "outer_pending" in state else next(v for v in state.values() if "outer_pending" in v)
    assert holder.pop("outer_pending") is None  # an outer_batch="same" run: nothing pending
    save_checkpoint(ckpt, state)
    main(["--resume", str(run_dir), "--total-steps", "64"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]  # 4 envs x 8 steps a batch
    assert json.loads(cfg_path.read_text())["nested_hrl"]["prox"] == 0.0


def test_a_gymnasium_simulator_keeps_the_unfused_path():
    """A wrapped Gymnasium env cannot rewind a probe step: never the fused loop, whatever compile_step;
    on CPU the default compiles nothing."""
    from hrl_nested.networks import ActorCritic, params_of
    from hrl_nested.rollout import actor_critic_policy

    env = envs.make("CartPole-v1", 2, autoreset_mode="same_step")
    assert not envs.supports_state(env)
    ac = ActorCritic(env.single_observation_space, env.single_action_space)
    default = make_rollout(env, actor_critic_policy(ac), 3)
    assert default.compiled is False and default._fused is False and default.mode == "none"
    assert make_rollout(env, actor_critic_policy(ac), 3, compile_step=True)._fused is False
    obs, _ = env.reset(seed=0)
    res = default({k: v.detach() for k, v in params_of(ac).items()}, obs, None)
    assert res.batch.actions.shape == (3, 2)
    env.close()
