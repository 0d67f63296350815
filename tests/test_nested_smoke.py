"""Smoke runs of ``experiments/train.py`` for nested-hrl (each estimator), hrl and lirpg on our goal tasks,
CartPole and a Gymnasium goal env; resume with the carry; named config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests._scripts import load_script

REPO = Path(__file__).resolve().parents[1]
GOAL_ENV = "tests._nested_goal_env:TinyGoalEnv"  # a plain gym.Env goal env, wrapped by the adapter
TINY = ["--num-envs", "4", "--eval-episodes", "2", "--device", "cpu", "--wandb-mode", "disabled"]


def _algo_flags(algo: str, **extra) -> list[str]:
    flags = {"num-steps": 8, "n-inner": 2, "num-minibatches": 2, "hidden": "8", **extra}
    out = []
    for k, v in flags.items():
        out += [f"--{algo}.{k}", *str(v).split()]
    return out


@pytest.fixture(scope="module")
def main():
    return load_script("train.py", "train_script_nested").main


@pytest.fixture(autouse=True)
def setup(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # tests._nested_goal_env importable, as a user's package is
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # train.py sets 1 thread


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# One tiny run per (algorithm or estimator, env): every estimator meets every kind of env once.
CASES = [
    ("nested-hrl", "unrolled", "hrl_nested/FourRooms-v0"),
    ("nested-hrl", "truncated", "hrl_nested/PointMaze-U-v0"),
    ("nested-hrl", "cg", "hrl_nested/CartPole-v1"),
    ("nested-hrl", "neumann", GOAL_ENV),
    ("nested-hrl", "es", "hrl_nested/FourRooms-v0"),
    ("nested-hrl", "cg", GOAL_ENV),
    ("nested-hrl", "es", "hrl_nested/CartPole-v1"),
    ("hrl", None, "hrl_nested/PointMaze-U-v0"),
    ("hrl", None, "hrl_nested/CartPole-v1"),
    ("hrl", None, GOAL_ENV),
    ("lirpg", "truncated", "hrl_nested/FourRooms-v0"),
    ("lirpg", "es", "hrl_nested/CartPole-v1"),
    ("lirpg", "unrolled", GOAL_ENV),
]


@pytest.mark.parametrize(("algo", "method", "env"), CASES)
def test_smoke_run_writes_summary_and_metrics(main, tmp_path, algo, method, env):
    extra = {} if method is None else {"hypergrad": method, "check-every": 1}
    if method == "es":
        extra["es-samples"] = 2
    if algo == "nested-hrl":
        extra.update({"num-subpolicies": 2, "manager-every": 2})
    if algo != "lirpg":
        extra["goal-horizon"] = 3
    run_dir = tmp_path / "run"
    argv = ["--algo", algo, "--env", env, "--total-steps", "64", "--run-dir", str(run_dir), *TINY,
            *_algo_flags(algo, **extra)]  # fmt: skip
    summary = main(argv)
    rows = _rows(run_dir)
    assert summary["env_steps"] == 64 and [r["env_steps"] for r in rows] == [32, 64]
    saved = json.loads((run_dir / "summary.json").read_text())
    goal_env = "CartPole" not in env
    assert ("eval_success_rate" in saved) == goal_env
    if goal_env:
        assert 0.0 <= saved["eval_success_rate"] <= 1.0
    if method is not None:  # the outer loop ran, and was checked against a second estimator
        assert all("hypergrad_norm" in r and "outer_skipped" in r and "hypergrad_cosine" in r for r in rows)
        assert all(abs(r["hypergrad_cosine"]) <= 1.0 + 1e-6 for r in rows)
    if algo != "lirpg":
        assert all(1.0 <= r["segment_length_mean"] <= 3.0 for r in rows)  # 8 steps always end one
        assert "subgoal_reached_rate" in rows[0]
    assert all(r["time_rollout_s"] > 0 for r in rows)


def test_resume_continues_exactly_with_the_carry(main, tmp_path):
    """2 iterations + resume to 4 reproduce a straight 4-iteration run (env, carry, optimizers, RNG)."""
    flags = [*TINY, *_algo_flags("nested-hrl", **{"goal-horizon": 3, "eval-every": 0})]
    main(["--algo", "nested-hrl", "--env", "hrl_nested/PointMaze-U-v0", "--total-steps", "128",
          "--run-dir", str(tmp_path / "straight"), *flags])  # fmt: skip
    main(["--algo", "nested-hrl", "--env", "hrl_nested/PointMaze-U-v0", "--total-steps", "64",
          "--run-dir", str(tmp_path / "split"), *flags])  # fmt: skip
    main(["--resume", str(tmp_path / "split"), "--total-steps", "128"])
    timing = ("wall_s", "sps", "eval_s")
    strip = lambda rows: [
        {k: v for k, v in r.items() if k not in timing and not k.startswith("time_")}  # noqa: E731
        for r in rows
    ]
    straight, split = strip(_rows(tmp_path / "straight")), strip(_rows(tmp_path / "split"))
    # the split run's iteration 2 evaluates (its last); otherwise the rows agree to the bit
    drop_eval = lambda r: {k: v for k, v in r.items() if not k.startswith("eval_")}  # noqa: E731
    assert [drop_eval(r) for r in split] == [drop_eval(r) for r in straight]
    assert split[-1]["eval_return_mean"] == straight[-1]["eval_return_mean"]


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--algo", "nested-hrl", "--nested-hrl.prox", "-1"], "--nested-hrl.prox"),
        (
            ["--algo", "nested-hrl", "--nested-hrl.hypergrad", "cg", "--nested-hrl.meta-lr"],
            "--nested-hrl.meta-lr",
        ),
        (["--algo", "nested-hrl", "--nested-hrl.es-samples", "0"], "--nested-hrl.es-samples"),
        (["--algo", "hrl", "--hrl.goal-horizon", "0"], "--hrl.goal-horizon"),
        (["--algo", "lirpg", "--lirpg.num-minibatches", "3"], "--lirpg.num-minibatches"),
    ],
)
def test_bad_values_are_named_errors_with_exit_code_2_and_no_files(main, tmp_path, capsys, argv, flag):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main([*argv, "--run-dir", str(run_dir), "--wandb-mode", "disabled"])
    assert e.value.code == 2
    assert flag in capsys.readouterr().err
    assert not run_dir.exists() or not any(run_dir.iterdir())


def test_a_task_without_a_box_goal_space_is_a_named_error(main, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--algo", "hrl", "--env", "FrozenLake-v1", "--run-dir", str(tmp_path / "r"), *TINY])
    assert e.value.code == 2 and "--env" in capsys.readouterr().err
