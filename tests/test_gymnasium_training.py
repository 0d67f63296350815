"""Training on Gymnasium envs end to end: plain ids, Discrete observations, ``module:EnvId``, goal success
read from Gymnasium-Robotics' info keys, and what ``--resume`` means for an env that lives in a simulator."""

import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs
from envs.adapter import GymnasiumVectorAdapter
from hrl_nested.algos.ppo import _success, evaluate
from hrl_nested.networks import ActorCritic
from hrl_nested.rollout import actor_critic_policy, make_rollout
from hrl_nested.tracking import read_metrics
from tests._scripts import load_script

REPO = Path(__file__).resolve().parents[1]
TINY = ["--total-steps", "1024", "--num-envs", "8", "--ppo.num-steps", "64", "--eval-episodes", "2",
        "--device", "cpu", "--wandb-mode", "disabled"]  # fmt: skip
REGISTERING_MODULE = "_registers_an_id_on_import"  # tests/_registers_an_id_on_import.py


def _train_main():
    return load_script("train.py", "train_script").main


@pytest.fixture(scope="module")
def main():
    return _train_main()


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # train.py sets 1 thread


@pytest.mark.parametrize("env_id", ["CartPole-v1", "FrozenLake-v1"])
def test_a_plain_gymnasium_id_trains_checkpoints_and_resumes(main, tmp_path, capsys, env_id):
    """The README's promise: any Gymnasium id trains, evaluates, checkpoints and logs to the end
    (FrozenLake has a Discrete observation); a resume restores the learner, starts fresh episodes
    and says so once."""
    run_dir = tmp_path / "run"
    summary = main(["--env", env_id, *TINY, "--run-dir", str(run_dir)])
    assert summary["env_steps"] == 1024 and np.isfinite(summary["eval_return_mean"])
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["env"] == env_id and on_disk["env_steps"] == 1024
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["env_steps"] == 1024 and state["env"] is None  # nothing of the simulator is pretended
    assert state["agent"] and state["optimizer"]["state"]
    assert [r["env_steps"] for r in read_metrics(run_dir / "metrics.jsonl")] == [512, 1024]
    capsys.readouterr()

    resumed = main(["--resume", str(run_dir), "--total-steps", "2048", "--wandb-mode", "disabled"])
    out = capsys.readouterr().out
    assert out.count("start fresh episodes") == 1, out
    assert resumed["env_steps"] == 2048 and resumed["env_state_restored"] is False
    assert json.loads((run_dir / "summary.json").read_text())["env_state_restored"] is False
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["env_steps"] for r in rows] == [512, 1024, 1536, 2048]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]


def test_a_torch_env_resume_says_its_state_was_restored(main, tmp_path):
    run_dir = tmp_path / "run"
    main(["--env", "hrl_nested/CartPole-v1", *TINY, "--run-dir", str(run_dir)])
    resumed = main(["--resume", str(run_dir), "--total-steps", "1536", "--wandb-mode", "disabled"])
    assert resumed["env_state_restored"] is True and resumed["env_steps"] == 1536


def test_an_adapter_env_has_no_state_and_gets_an_eager_rollout():
    env = envs.make("CartPole-v1", 4, autoreset_mode="same_step", validate=False)
    assert not envs.supports_state(env)
    assert envs.supports_state(envs.make("hrl_nested/CartPole-v1", 4))
    agent = ActorCritic(env.single_observation_space, env.single_action_space)
    assert make_rollout(env, actor_critic_policy(agent), 4, capture="auto").mode == "none"


@pytest.mark.cuda
def test_auto_capture_on_cuda_is_eager_for_an_adapter_env():
    env = envs.make("CartPole-v1", 4, device="cuda", autoreset_mode="same_step", validate=False)
    agent = ActorCritic(env.single_observation_space, env.single_action_space).cuda()
    collect = make_rollout(env, actor_critic_policy(agent), 4, capture="auto")
    assert collect.mode == "none"
    obs, _ = env.reset(seed=0)
    params = {k: v.detach() for k, v in agent.named_parameters()}
    assert collect(params, obs, None).batch.rewards.shape == (4, 4)
    with pytest.raises(ValueError, match="get_state"):
        make_rollout(env, actor_critic_policy(agent), 4, capture="cuda_graph")


# ---------------------------------------------------------------------------- module:EnvId
@pytest.fixture
def registering_module_unloaded(monkeypatch):
    """tests/ importable, and the registering module neither imported nor its id registered yet."""
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    sys.modules.pop(REGISTERING_MODULE, None)
    gym.registry.pop("RegisteredOnImport-v0", None)
    yield
    sys.modules.pop(REGISTERING_MODULE, None)
    gym.registry.pop("RegisteredOnImport-v0", None)


def test_module_colon_env_id_imports_the_module_that_registers_it(registering_module_unloaded):
    env = envs.make(f"{REGISTERING_MODULE}:RegisteredOnImport-v0", 3)
    assert isinstance(env, GymnasiumVectorAdapter) and env.num_envs == 3
    assert env.max_episode_steps == 50  # the registered spec, not a class of that name
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3, 4)
    # An entry point still works, and a name that is neither says both readings.
    assert type(envs.make("envs.classic.cartpole:CartPoleEnv", 2)).__name__ == "CartPoleEnv"
    with pytest.raises(ValueError, match=r"registered no Gymnasium id 'Nope-v0'.*no attribute 'Nope-v0'"):
        envs.make(f"{REGISTERING_MODULE}:Nope-v0", 1)
    with pytest.raises(ValueError, match="cannot import module"):
        envs.make("no_such_module_xyz:Env-v0", 1)


def test_train_script_accepts_module_colon_env_id(main, tmp_path, registering_module_unloaded):
    run_dir = tmp_path / "run"
    summary = main(["--env", f"{REGISTERING_MODULE}:RegisteredOnImport-v0", *TINY, "--run-dir", str(run_dir)])
    assert summary["env_steps"] == 1024 and 1.0 <= summary["eval_length_mean"] <= 50.0


def test_an_unknown_env_is_a_clean_error(main, tmp_path, capsys):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["--env", "NoSuchEnv-v9", *TINY, "--run-dir", str(run_dir)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--env" in err and "NoSuchEnv-v9" in err
    assert not run_dir.exists() or not any(run_dir.iterdir())  # a retry with the same --run-dir works


# ---------------------------------------------------------------------------- goal success keys
_BOX = gym.spaces.Box(-1.0, 1.0, (1,), np.float64)


class _RoboticsStyleGoalEnv(gym.Env):
    """Gymnasium-Robotics' maze convention: ``info["success"]`` (not ``is_success``), and a reset info
    that says ``success: False``. Action 1 reaches the goal at once and terminates; action 0 waits."""

    metadata = {"render_modes": []}
    observation_space = gym.spaces.Dict({k: _BOX for k in ("observation", "achieved_goal", "desired_goal")})
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = np.zeros(1)
        return self._obs(), {"success": False}

    def _obs(self):
        return {"observation": self.x.copy(), "achieved_goal": self.x.copy(), "desired_goal": np.ones(1)}

    def step(self, action):
        if action == 1:
            self.x = np.ones(1)
        reached = bool(self.x[0] == 1.0)
        return self._obs(), float(reached), reached, False, {"success": reached}


def _robotics_env(n):
    return GymnasiumVectorAdapter.from_creator(
        _RoboticsStyleGoalEnv, num_envs=n, max_episode_steps=4, autoreset_mode="same_step", validate=False
    )


def test_success_is_read_from_info_success_of_the_final_step():
    env = _robotics_env(3)
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(torch.tensor([1, 0, 1]))
    assert terminated.tolist() == [True, False, True]
    # SAME_STEP: info["success"] is now the new episode's reset info (False); the ended step's value
    # is in final_info, and that is what counts.
    assert _success(env, info).tolist() == [True, False, True]


@pytest.mark.parametrize("bias, rate", [((-5.0, 5.0), 1.0), ((5.0, -5.0), 0.0)])
def test_evaluate_reports_success_from_info_success(bias, rate):
    env = _robotics_env(4)
    agent = ActorCritic(env.single_observation_space, env.single_action_space)
    with torch.no_grad():
        agent.actor[-1].weight.zero_()
        agent.actor[-1].bias.copy_(torch.tensor(bias))
    out = evaluate(agent, env, None, seed=0)
    assert out["eval_success_rate"] == rate
