"""Wall-clock seconds until CartPole-v1 is solved: our PPO on our CartPole vs Stable-Baselines3.

    python experiments/bench_ppo.py                        # CPU (or CUDA when present), 3 seeds
    python experiments/bench_ppo.py --device cuda --seeds 0 1 2

"Solved" means a mean return >= 475 over 20 evaluation episodes of the deterministic policy (one
episode per eval env, a fresh env seed per evaluation). Both learners are evaluated at the same
cadence in environment steps (``--eval-every-steps``, default 8192: every iteration of our PPO, whose
batch is 128 envs x 64 steps, and every 32 rollouts of SB3's 8 envs x 32 steps). The clock starts
before the envs and the model are built and includes every evaluation and any compilation; the
compile / graph-capture time is also reported on its own. By default an evaluation whose mean can no
longer reach the threshold is cut short, by the same rule for both learners (``--no-eval-early-stop``
runs every evaluation in full; see ``BenchConfig.eval_early_stop``). Reported: the median over seeds,
each seed, and for SB3 also the time of its whole 100k-step budget (rl-zoo's hyperparameters for
CartPole-v1).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro

from hrl_nested.algos import Task, resolve_device
from hrl_nested.algos.ppo import PPOConfig, train

RESULTS = Path(__file__).resolve().parent / "results"
MAX_RETURN = 500.0  # CartPole-v1: reward 1 per step, truncated at 500 steps (ours and Gymnasium's)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Time-to-solve CartPole-v1: our PPO vs Stable-Baselines3 PPO (rl-zoo hyperparameters)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds; each learner runs once per seed, the median is reported."""
    device: str = "auto"
    """Our PPO's device (``auto``: CUDA when available). SB3 always runs on CPU, where its MLP is fastest."""
    out: str | None = None
    """JSON output (default ``experiments/results/bench_ppo_<device>.json``)."""
    threshold: float = 475.0
    """Solved when the evaluation mean return reaches this."""
    eval_episodes: int = 20
    """Episodes per evaluation."""
    eval_every_steps: int = 8192
    """Evaluate each learner every this many env steps (at the first iteration boundary after)."""
    total_steps: int = Task.total_steps
    """Our PPO's budget (its learning rate anneals over it, as in ``experiments/train.py``); not solved
    within it counts as never solved."""
    sb3: bool = True
    """Also run Stable-Baselines3 (``--no-sb3`` to skip it)."""
    sb3_total_steps: int = 100_000
    """SB3's budget (rl-zoo: 1e5); it is always run to the end, time to first solve recorded on the way."""
    eval_early_stop: bool = True
    """For both learners alike: end an evaluation as soon as its mean can no longer reach ``threshold``
    even if every episode still running reaches CartPole's maximum return (500), i.e. when
    ``sum over finished episodes of (500 - return) > episodes * (500 - threshold)``. The outcome
    ("not solved") is then certain, so the time to solve is measured the same, minus hopeless
    evaluation steps. Checked after every env step: ours in `evaluate`, SB3's through
    ``evaluate_policy``'s per-step callback. ``--no-eval-early-stop`` runs every evaluation in full."""
    threads: int = 1
    """torch CPU threads for both learners (1, as ``experiments/train.py`` uses; 0: torch's default)."""
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    """Our PPO's hyperparameters (defaults: those of ``experiments/train.py``)."""
    num_envs: int = Task.num_envs
    """Our PPO's parallel envs."""


# ---------------------------------------------------------------------------- ours
def run_ours(cfg: BenchConfig, seed: int, device: str, compile: bool, capture: str) -> dict[str, Any]:
    batch = cfg.num_envs * cfg.ppo.num_steps
    ppo = dataclasses.replace(
        cfg.ppo, eval_every=max(1, round(cfg.eval_every_steps / batch)), stop_at_return=cfg.threshold,
        compile=compile, capture=capture, eval_max_return=MAX_RETURN if cfg.eval_early_stop else None,
    )  # fmt: skip
    task = Task(total_steps=cfg.total_steps, num_envs=cfg.num_envs, seed=seed, device=device,
                eval_episodes=cfg.eval_episodes)  # fmt: skip
    t0 = time.perf_counter()
    summary = train(task, ppo)
    wall = time.perf_counter() - t0
    return {
        "seed": seed,
        "solved": summary["solved"],
        "time_to_solve_s": wall if summary["solved"] else None,
        "env_steps": summary["env_steps"] if summary["solved"] else None,
        "total_steps": summary["env_steps"],
        "iterations": summary["iterations"],
        "eval_return_mean": summary["eval_return_mean"],
        "eval_time_s": summary["eval_time_s"],
        "compile_s": summary["warmup_s"],
        "wall_s": wall,
        "eval_every_iterations": ppo.eval_every,
    }


# ---------------------------------------------------------------------------- Stable-Baselines3
def run_sb3(cfg: BenchConfig, seed: int) -> dict[str, Any]:
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    class Hopeless(Exception):
        """Raised inside ``evaluate_policy`` once the mean can no longer reach the threshold."""

    def stop_if_hopeless(locals_: dict[str, Any], _globals: dict[str, Any]) -> None:
        """``evaluate_policy``'s callback (called per env per step): the same rule as our `evaluate`.

        Episodes counted as finished: those already appended, plus env ``i`` if it is done now (it is
        appended after this call); every other unfinished episode is assumed to reach MAX_RETURN."""
        i, counts, targets = locals_["i"], locals_["episode_counts"], locals_["episode_count_targets"]
        finished = sum(float(r) for r in locals_["episode_rewards"])
        unfinished = int((counts < targets).sum())
        if locals_["done"]:
            finished += float(locals_["current_rewards"][i])
            unfinished -= 1
        if finished + unfinished * MAX_RETURN < cfg.eval_episodes * cfg.threshold:
            raise Hopeless

    class SolveTimer(BaseCallback):
        """Evaluates every ``eval_every_steps`` env steps; records the time of the first solve."""

        def __init__(self, eval_env, t0: float):
            super().__init__()
            self.eval_env, self.t0, self.next_eval = eval_env, t0, cfg.eval_every_steps
            self.solved_at: tuple[float, int, float, float] | None = None
            self.eval_time, self.evals = 0.0, 0

        def _on_step(self) -> bool:
            if self.num_timesteps < self.next_eval:
                return True
            self.next_eval += cfg.eval_every_steps
            t = time.perf_counter()
            self.eval_env.seed(seed + 7919 * self.evals)
            hopeless = stop_if_hopeless if cfg.eval_early_stop else None
            try:
                mean, _ = evaluate_policy(self.model, self.eval_env, n_eval_episodes=cfg.eval_episodes,
                                          deterministic=True, callback=hopeless)  # fmt: skip
            except Hopeless:
                mean = -math.inf  # certainly below the threshold
            self.evals += 1
            self.eval_time += time.perf_counter() - t
            if self.solved_at is None and mean >= cfg.threshold:
                self.solved_at = (
                    time.perf_counter() - self.t0,
                    self.num_timesteps,
                    float(mean),
                    self.eval_time,
                )
            return True

    t0 = time.perf_counter()
    env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    # One env per evaluation episode, as for ours: evaluate_policy then runs one episode in each.
    eval_env = DummyVecEnv([lambda: Monitor(gym.make("CartPole-v1")) for _ in range(cfg.eval_episodes)])
    model = PPO(
        "MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0,
        learning_rate=lambda progress: 1e-3 * progress, clip_range=lambda progress: 0.2 * progress,
        seed=seed, device="cpu", verbose=0,
    )  # fmt: skip
    timer = SolveTimer(eval_env, t0)
    model.learn(cfg.sb3_total_steps, callback=timer)
    wall = time.perf_counter() - t0
    solved = timer.solved_at is not None
    return {
        "seed": seed,
        "solved": solved,
        "time_to_solve_s": timer.solved_at[0] if solved else None,
        "env_steps": timer.solved_at[1] if solved else None,
        "eval_return_mean": timer.solved_at[2] if solved else None,
        "eval_time_s": timer.solved_at[3] if solved else timer.eval_time,  # until solved, as for ours
        "total_time_s": wall,
        "total_eval_time_s": timer.eval_time,
        "total_steps": int(model.num_timesteps),
    }


# ---------------------------------------------------------------------------- report
def _median(values: list[float | None]) -> float | None:
    """Median where an unsolved seed counts as infinitely slow; None when most seeds never solved."""
    m = statistics.median([math.inf if v is None else v for v in values])
    return None if m == math.inf else m


def _fmt(x: float | None, digits: int = 2) -> str:
    return "not solved" if x is None else f"{x:.{digits}f}"


def main(cfg: BenchConfig) -> dict[str, Any]:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    # Imports are not part of any timing. The first torch.optim optimizer of a process imports
    # torch._dynamo (about 1.5 s); without this, whichever learner runs first would pay for it.
    importlib.import_module("torch._dynamo")

    device = resolve_device(cfg.device)
    variants = [("ours", dict(compile=False, capture="auto"))]
    if device.type == "cuda":  # with and without compilation / CUDA graphs
        variants = [
            ("ours (eager)", dict(compile=False, capture="none")),
            ("ours (CUDA graph)", dict(compile=False, capture="auto")),
            ("ours (CUDA graph + compile)", dict(compile=True, capture="auto")),
        ]
    results: dict[str, list[dict[str, Any]]] = {}
    for name, kw in variants:
        results[name] = [run_ours(cfg, s, str(device), **kw) for s in cfg.seeds]
        print(f"{name}: " + ", ".join(_fmt(r["time_to_solve_s"]) for r in results[name]), flush=True)
    if cfg.sb3:
        results["sb3"] = [run_sb3(cfg, s) for s in cfg.seeds]
        print("sb3: " + ", ".join(_fmt(r["time_to_solve_s"]) for r in results["sb3"]), flush=True)

    medians = {name: _median([r["time_to_solve_s"] for r in rs]) for name, rs in results.items()}
    sb3_solve = medians.get("sb3")
    sb3_total = statistics.median([r["total_time_s"] for r in results["sb3"]]) if cfg.sb3 else None
    lines = [
        f"CartPole-v1 time to solve (eval mean >= {cfg.threshold:g} over {cfg.eval_episodes} episodes, "
        f"evaluated every {cfg.eval_every_steps} env steps"
        f"{', hopeless evaluations cut short for both' if cfg.eval_early_stop else ''}), "
        f"median of seeds {list(cfg.seeds)}; "
        f"device {device}, {torch.get_num_threads()} torch threads",
        "| learner | median s to solve | per seed s | env steps to solve | eval s (to solve) | compile s "
        "| SB3 / this |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rs in results.items():
        med = medians[name]
        ratio = "" if name == "sb3" or med is None or sb3_solve is None else f"{sb3_solve / med:.1f}x"
        compile_s = "-" if name == "sb3" else _fmt(statistics.median(r["compile_s"] for r in rs))
        lines.append(
            f"| {name} | {_fmt(med)} | {' / '.join(_fmt(r['time_to_solve_s']) for r in rs)} | "
            f"{' / '.join(str(r['env_steps']) for r in rs)} | "
            f"{_fmt(statistics.median(r['eval_time_s'] for r in rs))} | {compile_s} | {ratio} |"
        )
    if sb3_total is not None:
        sb3_eval = statistics.median(r["total_eval_time_s"] for r in results["sb3"])
        ours = medians[variants[-1][0]]
        vs_total = "" if ours is None else f"; {sb3_total / ours:.1f}x our median time to solve"
        lines.append(
            f"SB3 full {cfg.sb3_total_steps} steps: median {sb3_total:.2f} s with its evaluations "
            f"({sb3_eval:.2f} s of them){vs_total}"
        )
    table = "\n".join(lines)
    print(table)

    report = {
        "config": dataclasses.asdict(cfg),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "results": results,
        "median_time_to_solve_s": medians,
        "sb3_median_total_s": sb3_total,
        "table": table,
    }
    out = Path(cfg.out) if cfg.out else RESULTS / f"bench_ppo_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    print(f"wrote {out}")
    return report


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(type(x).__name__)


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
