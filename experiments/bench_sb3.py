"""SB3 through our envs against SB3 on Gymnasium's own CartPole: env steps per second, in one run.

    python experiments/bench_sb3.py                       # CPU, about a minute
    python experiments/bench_sb3.py --num-envs 8 --ppo-steps 4096 --out /tmp/bench_sb3_smoke.json

Two backends behind the same SB3 stack (``VecMonitor`` on a ``VecEnv``), same seed, same
hyperparameters:

- ``ours``: `envs.SB3VecEnv` over the batched torch ``hrl_nested/CartPole-v1`` (SAME_STEP);
- ``gymnasium``: SB3's ``DummyVecEnv`` of ``gym.make("CartPole-v1")`` (one Python env after the other).

Two measurements per backend and ``num_envs``:

- ``vecenv``: ``VecEnv.step`` with random actions (numpy in and out, episode ends handled as SB3
  wants): the cost of the env plus its SB3 interface, nothing else;
- ``ppo``: SB3's ``PPO.learn`` with SB3's defaults except ``n_steps = 2048 // num_envs`` (the 2048-step
  rollout SB3's defaults make with one env), timed from the first ``learn`` call to its end (the model
  is built before the clock starts): env steps per second of training, where SB3's own update (10
  epochs of 64-sample minibatches) costs most of the time.

The backends run in turn for each measurement, on one torch thread; the JSON records the 1-minute
load average before and after, since other processes on a shared machine slow every row.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import stable_baselines3
import torch
import tyro
from bench_machine import load_average, machine_meta  # a sibling: experiments/ is on sys.path when run
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

import envs


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """SB3 on our CartPole vs SB3 on Gymnasium's CartPole."""

    num_envs: tuple[int, ...] = (8, 64)
    """Env counts to measure."""
    vecenv_steps: int = 20_000
    """Env steps of the random-action ``VecEnv.step`` loop (per backend and env count)."""
    ppo_steps: int = 8192
    """Env steps of ``PPO.learn`` (per backend and env count)."""
    seed: int = 0
    """Seed of the envs and the model."""
    threads: int = 1
    """torch threads."""
    out: Path | None = None
    """JSON output; default experiments/results/bench_sb3_cpu.json."""


BACKENDS = ("ours", "gymnasium")


def make_vec_env(backend: str, num_envs: int) -> VecMonitor:
    """``VecMonitor`` over our `envs.SB3VecEnv` or over SB3's ``DummyVecEnv`` of Gymnasium's CartPole."""
    if backend == "ours":
        return VecMonitor(envs.SB3VecEnv.make("hrl_nested/CartPole-v1", num_envs))
    return VecMonitor(DummyVecEnv([lambda: gym.make("CartPole-v1") for _ in range(num_envs)]))


def vecenv_rate(backend: str, num_envs: int, env_steps: int, seed: int) -> float:
    """Env steps per second of ``VecEnv.step`` with uniformly random actions."""
    venv = make_vec_env(backend, num_envs)
    venv.seed(seed)
    venv.reset()
    rng = np.random.default_rng(seed)
    steps = max(1, env_steps // num_envs)
    actions = rng.integers(0, 2, size=(steps, num_envs))
    venv.step(actions[0])  # first-call costs out of the window
    t0 = time.perf_counter()
    for a in actions:
        venv.step(a)
    rate = steps * num_envs / (time.perf_counter() - t0)
    venv.close()
    return rate


def ppo_rate(backend: str, num_envs: int, env_steps: int, seed: int) -> float:
    """Env steps per second of SB3's ``PPO.learn`` (SB3's defaults, ``n_steps = 2048 // num_envs``)."""
    venv = make_vec_env(backend, num_envs)
    model = PPO("MlpPolicy", venv, n_steps=max(1, 2048 // num_envs), seed=seed, device="cpu", verbose=0)
    t0 = time.perf_counter()
    model.learn(env_steps)
    rate = model.num_timesteps / (time.perf_counter() - t0)
    venv.close()
    return rate


def main(cfg: BenchConfig) -> list[dict]:
    torch.set_num_threads(cfg.threads)
    load_before = load_average()
    rows = []
    print(f"{'measure':8s} {'N':>4s} {'ours sps':>10s} {'gymnasium sps':>14s} {'ours/gym':>9s}", flush=True)
    for n in cfg.num_envs:
        for measure, fn, steps in (
            ("vecenv", vecenv_rate, cfg.vecenv_steps),
            ("ppo", ppo_rate, cfg.ppo_steps),
        ):
            rate = {b: fn(b, n, steps, cfg.seed) for b in BACKENDS}
            row = dict(
                measure=measure,
                num_envs=n,
                env_steps=steps,
                ours_steps_per_s=round(rate["ours"]),
                gymnasium_steps_per_s=round(rate["gymnasium"]),
                ratio=rate["ours"] / rate["gymnasium"],
            )
            rows.append(row)
            print(
                f"{measure:8s} {n:4d} {row['ours_steps_per_s']:10d} {row['gymnasium_steps_per_s']:14d} "
                f"{row['ratio']:9.2f}",
                flush=True,
            )
    meta = machine_meta(
        "cpu",
        load_before,
        stable_baselines3=stable_baselines3.__version__,
        seed=cfg.seed,
        method=(
            "one timed window per backend, in turn; vecenv: VecMonitor(VecEnv).step with random actions; "
            "ppo: PPO.learn with SB3 defaults and n_steps = 2048 // num_envs"
        ),
    )
    out = cfg.out or Path(__file__).parent / "results" / "bench_sb3_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")
    print(
        f"\ntorch threads: {torch.get_num_threads()}; load average {meta['load_average_1min']}; wrote {out}"
    )
    return rows


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
