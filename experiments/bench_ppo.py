"""Time to solve CartPole-v1: our PPO against Stable-Baselines3 with our hyperparameters and with rl-zoo's.

    python experiments/bench_ppo.py                        # CPU (or CUDA when present), seeds 100-109
    python experiments/bench_ppo.py --device cuda
    python experiments/bench_ppo.py --seeds 100 --total-steps 16384 --sb3-zoo-total-steps 16384 \
        --out /tmp/bench_ppo_smoke.json                    # a smoke run

Four kinds of row, in one run, so that implementation speed and hyperparameters are told apart:

- ``ours``: `hrl_nested.algos.ppo.train` with `PPOConfig`'s defaults (on CUDA one row per path: eager,
  CUDA graph, CUDA graph + compile);
- ``sb3 (our hyperparameters)``: SB3's PPO configured like ours, as far as SB3 allows (below): the
  difference to ``ours`` is the implementation;
- ``ours (--num-seeds K, one process)``: every seed at once in one process (`hrl_nested.algos.
  ppo_multiseed`, the same settings as ``ours``); below the table, that process's wall time against the
  sum of the K sequential ``ours`` runs (each run, and each seed of the process, stops at its solve; the
  process when its last seed has);
- with ``--rejax-python PY`` (an environment with rejax 0.1.3, see ``experiments/rejax_ppo.py``), a
  second table: the whole budget with only a final evaluation, ours against rejax's PPO compiled end to
  end with JAX (PureJaxRL's design) with our settings, one seed and all seeds in one process (rejax:
  ``vmap``), compile time in its own column;
- ``sb3 (rl-zoo hyperparameters)``: SB3's PPO with rl-zoo's tuned CartPole-v1 settings (8 envs x 32
  steps, 20 epochs of one 256-minibatch, lr and clip annealed from 1e-3 and 0.2, gamma 0.98, lambda
  0.8): about 40x more gradient steps per env step than ours, a different trade of samples for compute.

Seeds: `PPOConfig` was tuned on seeds 0-31 (see its docstring), so the default seeds are 100-109,
none of them used in tuning; the table and the JSON say which seeds ran and flag any overlap.

"Solved" means a mean return >= 475 over 20 evaluation episodes of the deterministic policy (one
episode per eval env, a fresh env seed per evaluation). Every learner is evaluated after its update,
at the first iteration boundary after each ``--eval-every-steps`` env steps (default 8192: every
iteration of ours and of SB3 with our hyperparameters, every 32 rollouts with rl-zoo's), and stops at
its first solving evaluation; a seed that never solves runs its whole budget (ours: 100k steps,
rounded up to whole iterations; SB3 with ours: the same steps, so that its learning rate anneals over
the same span; rl-zoo: 1e5). The clock starts before the envs and the model are built and includes
every evaluation and any compilation (also reported on its own for ours). An evaluation whose mean
can no longer reach the threshold is cut short, by the same rule for every learner
(``--no-eval-early-stop`` runs each in full).

Reported per row: time and env steps to solve (median over seeds, an unsolved seed counting as
infinitely slow, and each seed), training throughput (env steps per second of wall time outside
evaluations, until the run stopped), gradient steps per 1000 env steps, and each median's ratio to
ours (the reference row named in the table) from the same run.

What could not be matched between ours and ``sb3 (our hyperparameters)``:

- The env: SB3 steps Gymnasium's CartPole-v1 in a ``DummyVecEnv`` (NumPy, one Python env after the
  other, a ``Monitor`` each); ours steps its batched torch CartPole (the same dynamics, tested for
  parity). This is part of the implementation being measured.
- Observation normalization: SB3's ``VecNormalize`` (``norm_obs=True, norm_reward=False``, clip 10,
  eps 1e-8, initial count 1e-4: the same formula as ours) updates its running statistics at every
  vec-env step, before normalizing that step's observation; ours updates them once per batch, after
  the batch was normalized with the statistics its rollout used. The eval env gets a copy of the
  training statistics before each evaluation (``training=False``).
- The value loss: SB3 minimizes ``vf_coef * mean((V - R)^2)``, ours ``vf_coef * 0.5 * mean((V -
  R)^2)``; SB3 is given ``vf_coef / 2``, which makes the two losses (and the global grad-norm clip)
  equal.
- The learning-rate schedule is matched exactly: ours uses ``lr * (1 - i / N)`` at iteration ``i`` of
  ``N``; SB3 evaluates its schedule after the rollout, at progress ``1 - (i + 1) / N``, so it gets
  ``lr * min(1, progress + 1 / N)`` over a budget of exactly ``N`` iterations.
- Time limits: SB3 adds ``gamma * V(final obs)`` to the reward of a truncated step, ours bootstraps
  ``V(final obs)`` inside GAE: the same targets (the critic does not change during a rollout).
- Adam (``eps=1e-5`` on both sides): ours uses the fused kernel, SB3 torch's default; the initial
  weights use the same orthogonal init and gains (hidden sqrt(2), policy 0.01, value 1) but different
  random streams, so seed ``s`` is a different draw for each learner.
- Evaluation: SB3's ``evaluate_policy`` on a ``DummyVecEnv`` of 20 Gymnasium envs, ours on its batched
  env; both one episode per env, same early-stop rule.

Everything else is set equal: number of envs, steps per rollout, epochs, minibatch size, gamma, GAE
lambda, clip coefficient (constant), no value clipping, per-minibatch advantage normalization,
ent/vf coefficients, max grad norm, the separate 64-64 tanh actor and critic MLPs, 1 torch thread.

Results go to ``experiments/results/bench_ppo_<device>.json`` only when every setting is the default
(``--device`` aside); any other run writes to ``--out`` or, without it, to a file in the temp dir,
so that a smoke run never overwrites the recorded figures.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import tyro

from hrl_nested.algos import Task, resolve_device
from hrl_nested.algos.ppo import PPOConfig, train
from hrl_nested.algos.ppo_multiseed import train_seeds

RESULTS = Path(__file__).resolve().parent / "results"
MAX_RETURN = 500.0  # CartPole-v1: reward 1 per step, truncated at 500 steps (ours and Gymnasium's)
TUNING_SEEDS = range(0, 32)  # the seeds PPOConfig's defaults were tuned on (its docstring)
SB3_OURS, SB3_ZOO = "sb3 (our hyperparameters)", "sb3 (rl-zoo hyperparameters)"
# rl-zoo's hyperparams/ppo.yml for CartPole-v1 (n_timesteps 1e5; lin_1e-3, lin_0.2 are linear decays).
ZOO = dict(n_envs=8, n_steps=32, batch_size=256, n_epochs=20, gamma=0.98, gae_lambda=0.8, ent_coef=0.0,
           lr=1e-3, clip=0.2)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Time-to-solve CartPole-v1: our PPO vs Stable-Baselines3 PPO (our and rl-zoo's hyperparameters)."""

    seeds: tuple[int, ...] = tuple(range(100, 110))
    """Seeds; each learner runs once per seed, the median is reported. Default 100-109: PPOConfig was
    tuned on seeds 0-31, which a fair benchmark must not reuse (an overlap is flagged in the output)."""
    device: str = "auto"
    """Our PPO's device (``auto``: CUDA when available). SB3 always runs on CPU, where its MLP is fastest."""
    out: str | None = None
    """JSON output. Default: ``experiments/results/bench_ppo_<device>.json`` when every other setting is
    the default, else a file in the temp dir (a smoke run never overwrites the recorded figures)."""
    threshold: float = 475.0
    """Solved when the evaluation mean return reaches this."""
    eval_episodes: int = 20
    """Episodes per evaluation."""
    eval_every_steps: int = 8192
    """Evaluate each learner every this many env steps (at the first iteration boundary after)."""
    total_steps: int = Task.total_steps
    """Budget of ours and of SB3 with our hyperparameters (their learning rates anneal over it, as in
    ``experiments/train.py``); not solved within it counts as never solved."""
    sb3: bool = True
    """Also run Stable-Baselines3 (``--no-sb3`` to skip it)."""
    sb3_variants: tuple[Literal["our-hparams", "rl-zoo"], ...] = ("our-hparams", "rl-zoo")
    """Which SB3 rows to run: with our hyperparameters, with rl-zoo's."""
    sb3_zoo_total_steps: int = 100_000
    """Budget of SB3 with rl-zoo's hyperparameters (rl-zoo: 1e5; its lr and clip anneal over it)."""
    eval_early_stop: bool = True
    """For every learner alike: end an evaluation as soon as its mean can no longer reach ``threshold``
    even if every episode still running reaches CartPole's maximum return (500), i.e. when
    ``sum over finished episodes of (500 - return) > episodes * (500 - threshold)``. The outcome
    ("not solved") is then certain, so the time to solve is measured the same, minus hopeless
    evaluation steps. Checked after every env step: ours in `evaluate`, SB3's through
    ``evaluate_policy``'s per-step callback. ``--no-eval-early-stop`` runs every evaluation in full."""
    threads: int = 1
    """torch CPU threads for every learner (1, as ``experiments/train.py`` uses; 0: torch's default)."""
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    """Our PPO's hyperparameters (defaults: those of ``experiments/train.py``), also given to SB3's
    ``our-hparams`` row."""
    num_envs: int = Task.num_envs
    """Parallel envs of ours and of SB3 with our hyperparameters."""
    rejax_python: str | None = None
    """Python of an environment with rejax 0.1.3 (which needs ``gymnax<1.0``, so not this one; see
    ``experiments/rejax_ppo.py``). With it, a second table: the whole fixed budget (final evaluation
    only) of ours and of rejax's end-to-end compiled PPO with our settings, one seed and all seeds in
    one process, rejax's compile time in its own column. None: no rejax rows."""
    num_seeds_row: bool = True
    """Also train every seed at once in one process (``train.py --num-seeds``, `hrl_nested.algos.
    ppo_multiseed`; the seeds must be consecutive): a row per seed, and the wall time of that one process
    against the sum of the sequential ``ours`` runs of the same seeds (``--no-num-seeds-row`` skips it)."""


# ---------------------------------------------------------------------------- ours
def run_ours(cfg: BenchConfig, seed: int, device: str, compile: bool, capture: str) -> dict[str, Any]:
    batch = cfg.num_envs * cfg.ppo.num_steps
    ppo = dataclasses.replace(
        cfg.ppo, eval_every=max(1, round(cfg.eval_every_steps / batch)), stop_at_return=cfg.threshold,
        compile=compile, capture=capture, eval_max_return=MAX_RETURN if cfg.eval_early_stop else None,
    )  # fmt: skip
    task = Task(total_steps=cfg.total_steps, num_envs=cfg.num_envs, seed=seed, device=device,
                eval_episodes=cfg.eval_episodes)  # fmt: skip
    t0, cpu0 = time.perf_counter(), time.process_time()
    summary = train(task, ppo)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return _seed_row(
        seed, bool(summary["solved"]), wall=wall, env_steps=summary["env_steps"],
        eval_time=summary["eval_time_s"], eval_return=summary["eval_return_mean"],
        compile_s=summary["warmup_s"], budget_steps=max(1, math.ceil(cfg.total_steps / batch)) * batch,
        iterations=summary["iterations"], eval_every_iterations=ppo.eval_every, cpu_s=cpu,
    )  # fmt: skip


def run_ours_seeds(cfg: BenchConfig, device: str) -> tuple[list[dict[str, Any]], float, float]:
    """All of ``cfg.seeds`` in one process (`ppo_multiseed.train_seeds`), the same settings as `run_ours`;
    each seed stops logging at its solve, the process once every seed has. Returns the per-seed rows, the
    process's wall time and its CPU time (setup, every evaluation and the last seed's solve included)."""
    seeds = sorted(cfg.seeds)
    batch = cfg.num_envs * cfg.ppo.num_steps
    ppo = dataclasses.replace(
        cfg.ppo, eval_every=max(1, round(cfg.eval_every_steps / batch)), stop_at_return=cfg.threshold,
        compile=False, capture="none", eval_max_return=MAX_RETURN if cfg.eval_early_stop else None,
    )  # fmt: skip
    task = Task(total_steps=cfg.total_steps, num_envs=cfg.num_envs, seed=seeds[0], device=device,
                eval_episodes=cfg.eval_episodes)  # fmt: skip
    t0, cpu0 = time.perf_counter(), time.process_time()
    summaries = train_seeds(task, ppo, len(seeds))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    rows = [
        _seed_row(
            s["seed"], bool(s["solved"]), wall=s["time_to_solve_s"] or s["wall_s"], env_steps=s["env_steps"],
            eval_time=s["eval_time_s"], eval_return=s["eval_return_mean"], compile_s=s["warmup_s"],
            iterations=s["iterations"], eval_every_iterations=ppo.eval_every,
        )  # fmt: skip
        for s in summaries
    ]
    return rows, wall, cpu


def budget_rows(cfg: BenchConfig, device: str) -> list[dict[str, Any]]:
    """The whole budget, final evaluation only, no early stop: ours (first seed; all seeds in one
    process) and rejax with the same settings (one seed; all seeds vmapped), each timed by wall clock."""
    seeds = sorted(cfg.seeds)
    ppo = dataclasses.replace(cfg.ppo, eval_every=0)
    task = Task(total_steps=cfg.total_steps, num_envs=cfg.num_envs, seed=seeds[0], device=device,
                eval_episodes=cfg.eval_episodes)  # fmt: skip
    rows = []
    t0 = time.perf_counter()
    one = train(task, ppo)
    rows.append(dict(learner="ours", seeds=1, total_s=time.perf_counter() - t0, compile_s=one["warmup_s"],
                     env_steps=one["env_steps"], eval_return_mean=one["eval_return_mean"]))  # fmt: skip
    t0 = time.perf_counter()
    many = train_seeds(task, ppo, len(seeds))
    rows.append(dict(learner="ours (--num-seeds)", seeds=len(seeds), total_s=time.perf_counter() - t0,
                     compile_s=many[0]["warmup_s"], env_steps=many[0]["env_steps"],
                     eval_return_mean=statistics.mean(m["eval_return_mean"] for m in many)))  # fmt: skip
    batch = cfg.num_envs * cfg.ppo.num_steps
    settings = {
        "seed": seeds[0], "total_timesteps": max(1, math.ceil(cfg.total_steps / batch)) * batch,
        "num_envs": cfg.num_envs, "num_steps": ppo.num_steps, "num_epochs": ppo.update_epochs,
        "num_minibatches": ppo.num_minibatches, "learning_rate": ppo.lr, "gamma": ppo.gamma,
        "gae_lambda": ppo.gae_lambda, "clip_eps": ppo.clip_coef, "ent_coef": ppo.ent_coef,
        "vf_coef": ppo.vf_coef, "max_grad_norm": ppo.max_grad_norm,
    }  # fmt: skip
    env = dict(os.environ)
    if cfg.threads == 1:  # as our learners: one thread for the numerical work
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    for k in (1, len(seeds)):
        script = Path(__file__).resolve().parent / "rejax_ppo.py"
        t0 = time.perf_counter()
        proc = subprocess.run([cfg.rejax_python, str(script), json.dumps({**settings, "num_seeds": k})],
                              capture_output=True, text=True, env=env, check=False)  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(f"rejax ({cfg.rejax_python}) failed:\n{proc.stderr[-2000:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(dict(learner="rejax 0.1.3 (vmap)" if k > 1 else "rejax 0.1.3", seeds=k,
                         total_s=out["compile_s"] + out["train_s"], compile_s=out["compile_s"],
                         train_s=out["train_s"], process_s=time.perf_counter() - t0,
                         env_steps=out["env_steps"],
                         eval_return_mean=statistics.mean(out["eval_return_mean"])))  # fmt: skip
    return rows


def budget_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "Whole budget per seed, final evaluation only (ours: 20 episodes; rejax: its 128); ours' compile = "
        "first rollout + update; rejax: jit compile, then the compiled run; rejax keeps lr constant (0.1.3 "
        "has no annealing)",
        "| learner | seeds | env steps per seed | total s | compile s | total s excl. compile "
        "| eval return |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['learner']} | {r['seeds']} | {r['env_steps']} | {r['total_s']:.2f} | {r['compile_s']:.2f} "
            f"| {r['total_s'] - r['compile_s']:.2f} | {r['eval_return_mean']:.1f} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- Stable-Baselines3
def run_sb3(cfg: BenchConfig, seed: int, variant: str) -> dict[str, Any]:
    """One seed of SB3's PPO, ``variant`` ``our-hparams`` or ``rl-zoo`` (see the module docstring)."""
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

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
        """Evaluates the policy after its update (at the start of the next rollout, and once more after
        ``learn``) at the first boundary after every ``eval_every_steps`` env steps; records the first
        solve and then stops training at the next env step."""

        def __init__(self, train_env, eval_env, t0: float):
            super().__init__()
            self.train_env, self.eval_env, self.t0 = train_env, eval_env, t0
            self.next_eval = cfg.eval_every_steps
            self.solved_at: dict[str, Any] | None = None
            self.eval_time, self.evals = 0.0, 0

        def _on_rollout_start(self) -> None:
            self.maybe_evaluate()

        def _on_step(self) -> bool:
            return self.solved_at is None

        def maybe_evaluate(self) -> None:
            steps = int(self.model.num_timesteps)
            if self.solved_at is not None or steps < self.next_eval:
                return
            self.next_eval = (steps // cfg.eval_every_steps + 1) * cfg.eval_every_steps
            t = time.perf_counter()
            if isinstance(self.train_env, VecNormalize):  # evaluate with the statistics trained with
                self.eval_env.obs_rms = copy.deepcopy(self.train_env.obs_rms)
            self.eval_env.seed(seed + 7919 * self.evals)
            hopeless = stop_if_hopeless if cfg.eval_early_stop else None
            try:
                mean, _ = evaluate_policy(self.model, self.eval_env, n_eval_episodes=cfg.eval_episodes,
                                          deterministic=True, callback=hopeless)  # fmt: skip
            except Hopeless:
                mean = -math.inf  # certainly below the threshold
            self.evals += 1
            self.eval_time += time.perf_counter() - t
            if mean >= cfg.threshold:
                self.solved_at = dict(wall=time.perf_counter() - self.t0, env_steps=steps,
                                      eval_return=float(mean), eval_time=self.eval_time)  # fmt: skip

    ours_hp = variant == "our-hparams"
    p = cfg.ppo
    t0 = time.perf_counter()
    if ours_hp:
        batch = cfg.num_envs * p.num_steps
        num_iterations = max(1, math.ceil(cfg.total_steps / batch))  # as ours rounds its budget
        budget = num_iterations * batch
        lr0 = p.lr
        # Ours: lr0 * (1 - i / N) at iteration i; SB3 asks after the rollout, at progress 1 - (i + 1) / N.
        lr = (lambda progress: lr0 * min(1.0, progress + 1.0 / num_iterations)) if p.anneal_lr else lr0
        env = make_vec_env("CartPole-v1", n_envs=cfg.num_envs, seed=seed)
        if p.norm_obs:
            env = VecNormalize(
                env, norm_obs=True, norm_reward=False, clip_obs=10.0, epsilon=1e-8, gamma=p.gamma
            )
        kwargs = dict(
            n_steps=p.num_steps, batch_size=batch // p.num_minibatches, n_epochs=p.update_epochs,
            learning_rate=lr, gamma=p.gamma, gae_lambda=p.gae_lambda, clip_range=p.clip_coef,
            clip_range_vf=p.clip_coef if p.clip_vloss else None, normalize_advantage=p.norm_adv,
            ent_coef=p.ent_coef, vf_coef=p.vf_coef / 2,  # SB3's value loss has no 0.5 factor
            max_grad_norm=p.max_grad_norm,
            policy_kwargs=dict(net_arch=dict(pi=list(p.hidden), vf=list(p.hidden)),
                               activation_fn=torch.nn.Tanh, ortho_init=True),
        )  # fmt: skip
    else:
        budget, z = cfg.sb3_zoo_total_steps, ZOO
        env = make_vec_env("CartPole-v1", n_envs=z["n_envs"], seed=seed)
        kwargs = dict(
            n_steps=z["n_steps"], batch_size=z["batch_size"], n_epochs=z["n_epochs"], gamma=z["gamma"],
            gae_lambda=z["gae_lambda"], ent_coef=z["ent_coef"],
            learning_rate=lambda progress: z["lr"] * progress,
            clip_range=lambda progress: z["clip"] * progress,
        )  # fmt: skip
    # One env per evaluation episode, as for ours: evaluate_policy then runs one episode in each.
    eval_env = DummyVecEnv([lambda: Monitor(gym.make("CartPole-v1")) for _ in range(cfg.eval_episodes)])
    if isinstance(env, VecNormalize):
        eval_env = VecNormalize(eval_env, training=False, norm_obs=True, norm_reward=False, clip_obs=10.0,
                                epsilon=1e-8)  # fmt: skip
    model = PPO("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **kwargs)
    timer = SolveTimer(env, eval_env, t0)
    model.learn(budget, callback=timer)
    timer.maybe_evaluate()  # the update after the last rollout
    wall = time.perf_counter() - t0
    s = timer.solved_at or dict(wall=wall, env_steps=model.num_timesteps, eval_time=timer.eval_time,
                                eval_return=None)  # fmt: skip
    return _seed_row(
        seed, timer.solved_at is not None, wall=s["wall"], env_steps=s["env_steps"], eval_time=s["eval_time"],
        eval_return=s["eval_return"], compile_s=None, budget_steps=budget,
    )  # fmt: skip


# ---------------------------------------------------------------------------- report
def _seed_row(seed: int, solved: bool, *, wall: float, env_steps: int, eval_time: float, **extra) -> dict:
    """One seed's result. ``wall``, ``env_steps`` and ``eval_time`` run until the run stopped: at its
    solving evaluation, or at the end of its budget."""
    return {
        "seed": seed,
        "solved": solved,
        "time_to_solve_s": wall if solved else None,
        "env_steps_to_solve": int(env_steps) if solved else None,
        "wall_s": wall,
        "env_steps": int(env_steps),
        "eval_time_s": eval_time,
        "train_steps_per_s": env_steps / max(wall - eval_time, 1e-9),
        **extra,
    }


def grad_steps_per_1k(name: str, cfg: BenchConfig) -> float:
    """Gradient steps per 1000 env steps: epochs x minibatches per batch of envs x steps."""
    if name == SB3_ZOO:
        batch = ZOO["n_envs"] * ZOO["n_steps"]
        steps = ZOO["n_epochs"] * math.ceil(batch / ZOO["batch_size"])
    else:
        batch = cfg.num_envs * cfg.ppo.num_steps
        steps = cfg.ppo.update_epochs * cfg.ppo.num_minibatches
    return 1000.0 * steps / batch


def _median(values: list[float | None]) -> float | None:
    """Median where an unsolved seed counts as infinitely slow; None when most seeds never solved."""
    m = statistics.median([math.inf if v is None else v for v in values])
    return None if m == math.inf else m


def _fmt(x: float | None, digits: int = 2) -> str:
    return "not solved" if x is None else f"{x:.{digits}f}"


def _ratio(x: float | None, ref: float | None) -> str:
    return "-" if x is None or not ref else f"{x / ref:.2f}x"


def _span(seeds: tuple[int, ...]) -> str:
    s = sorted(seeds)
    return f"{s[0]}-{s[-1]}" if s == list(range(s[0], s[-1] + 1)) and len(s) > 1 else ", ".join(map(str, s))


def summarize(results: dict[str, list[dict[str, Any]]], cfg: BenchConfig) -> dict[str, dict[str, Any]]:
    """Per learner: medians over seeds, gradient steps per 1000 env steps."""
    out = {}
    for name, rs in results.items():
        out[name] = {
            "median_time_to_solve_s": _median([r["time_to_solve_s"] for r in rs]),
            "median_env_steps_to_solve": _median([r["env_steps_to_solve"] for r in rs]),
            "median_train_steps_per_s": statistics.median(r["train_steps_per_s"] for r in rs),
            "median_eval_time_s": statistics.median(r["eval_time_s"] for r in rs),
            "solved": f"{sum(r['solved'] for r in rs)}/{len(rs)}",
            "grad_steps_per_1k_env_steps": grad_steps_per_1k(name, cfg),
        }
        compile_s = [r["compile_s"] for r in rs if r.get("compile_s") is not None]
        out[name]["median_compile_s"] = statistics.median(compile_s) if compile_s else None
    return out


def make_table(summary: dict[str, dict[str, Any]], results: dict[str, list[dict[str, Any]]],
               cfg: BenchConfig, device: torch.device, reference: str) -> str:  # fmt: skip
    overlap = sorted(set(cfg.seeds) & set(TUNING_SEEDS))
    tuning = _span(tuple(TUNING_SEEDS))
    seeds_note = f"WARNING: {overlap} are tuning seeds" if overlap else f"none of the tuning seeds {tuning}"
    ref = summary[reference]
    lines = [
        f"CartPole-v1 time to solve (eval mean >= {cfg.threshold:g} over {cfg.eval_episodes} episodes, "
        f"evaluated every {cfg.eval_every_steps} env steps after the update"
        f"{', hopeless evaluations cut short for all' if cfg.eval_early_stop else ''}); "
        f"median of seeds {_span(cfg.seeds)} ({seeds_note}); device {device}, {torch.get_num_threads()} "
        f"torch threads; ratios are to '{reference}' in this run",
        "| learner | solved | median s to solve | s vs ours | median env steps to solve | steps vs ours "
        "| train env steps/s | steps/s vs ours | grad steps / 1k env steps | eval s (median) | compile s "
        "| per seed s | per seed env steps |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        rs = results[name]
        lines.append(
            f"| {name} | {s['solved']} | {_fmt(s['median_time_to_solve_s'])} "
            f"| {_ratio(s['median_time_to_solve_s'], ref['median_time_to_solve_s'])} "
            f"| {_fmt(s['median_env_steps_to_solve'], 0)} "
            f"| {_ratio(s['median_env_steps_to_solve'], ref['median_env_steps_to_solve'])} "
            f"| {s['median_train_steps_per_s']:,.0f} "
            f"| {_ratio(s['median_train_steps_per_s'], ref['median_train_steps_per_s'])} "
            f"| {s['grad_steps_per_1k_env_steps']:.2f} | {s['median_eval_time_s']:.2f} "
            f"| {_fmt(s['median_compile_s']) if s['median_compile_s'] is not None else '-'} "
            f"| {' / '.join(_fmt(r['time_to_solve_s']) for r in rs)} "
            f"| {' / '.join(_fmt(r['env_steps_to_solve'], 0) for r in rs)} |"
        )
    lines.append(
        "train env steps/s: env steps / (wall - evaluation time) until the run stopped (at its solve, or "
        "its budget), setup and compilation included"
    )
    return "\n".join(lines)


def default_out(cfg: BenchConfig, device: torch.device) -> Path:
    """The recorded file for a full-settings run, else a temp file (never overwrite recorded figures)."""
    if cfg.out:
        return Path(cfg.out)
    if dataclasses.replace(cfg, device="auto") == BenchConfig():
        return RESULTS / f"bench_ppo_{device.type}.json"
    path = Path(tempfile.gettempdir()) / f"bench_ppo_{device.type}_partial.json"
    print(f"non-default settings and no --out: writing {path}, not experiments/results/")
    return path


def main(cfg: BenchConfig) -> dict[str, Any]:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    # Imports are not part of any timing. The first torch.optim optimizer of a process imports
    # torch._dynamo (about 1.5 s); without this, whichever learner runs first would pay for it.
    importlib.import_module("torch._dynamo")
    if cfg.sb3:
        importlib.import_module("stable_baselines3")

    seeds = sorted(cfg.seeds)
    if cfg.num_seeds_row and seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        raise SystemExit(
            f"--seeds: expected consecutive seeds for the --num-seeds row (--seed S --num-seeds K trains "
            f"S ... S+K-1), got {cfg.seeds}; or pass --no-num-seeds-row"
        )
    device = resolve_device(cfg.device)
    variants = [("ours", dict(compile=False, capture="auto"))]
    reference = "ours"
    if device.type == "cuda":  # one row per path
        variants = [
            ("ours (eager)", dict(compile=False, capture="none")),
            ("ours (CUDA graph)", dict(compile=False, capture="auto")),
            ("ours (CUDA graph + compile)", dict(compile=True, capture="auto")),
        ]
        reference = "ours (CUDA graph)"  # the default path (PPOConfig: compile off, capture auto)
    results: dict[str, list[dict[str, Any]]] = {}
    for name, kw in variants:
        results[name] = [run_ours(cfg, s, str(device), **kw) for s in cfg.seeds]
        print(f"{name}: " + ", ".join(_fmt(r["time_to_solve_s"]) for r in results[name]), flush=True)
    multi = None
    if cfg.num_seeds_row and len(cfg.seeds) > 1:
        name = f"ours (--num-seeds {len(cfg.seeds)}, one process)"
        results[name], multi_wall, multi_cpu = run_ours_seeds(cfg, str(device))
        sequential = sum(r["wall_s"] for r in results[reference])
        sequential_cpu = sum(r["cpu_s"] for r in results[reference])
        multi = {
            "row": name,
            "seeds": len(cfg.seeds),
            "one_process_wall_s": multi_wall,
            "sequential_wall_s": sequential,
            "speedup": sequential / multi_wall,
            # CPU time is less sensitive to other processes on a shared machine than wall time
            "one_process_cpu_s": multi_cpu,
            "sequential_cpu_s": sequential_cpu,
            "cpu_speedup": sequential_cpu / multi_cpu,
            "sequential_row": reference,
        }
        print(f"{name}: {multi_wall:.2f} s for all seeds vs {sequential:.2f} s sequential", flush=True)
    if cfg.sb3:
        for variant in dict.fromkeys(cfg.sb3_variants):
            name = SB3_OURS if variant == "our-hparams" else SB3_ZOO
            results[name] = [run_sb3(cfg, s, variant) for s in cfg.seeds]
            print(f"{name}: " + ", ".join(_fmt(r["time_to_solve_s"]) for r in results[name]), flush=True)

    budget = budget_rows(cfg, str(device)) if cfg.rejax_python else None
    summary = summarize(results, cfg)
    table = make_table(summary, results, cfg, device, reference)
    if multi is not None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        table += (
            f"\n{multi['seeds']} seeds in one process ({multi['row']}): {multi['one_process_wall_s']:.2f} s "
            f"wall vs {multi['sequential_wall_s']:.2f} s for the {multi['seeds']} sequential '{reference}' "
            f"runs: {multi['speedup']:.2f}x (each stops at its solve; the process when its last seed has); "
            f"CPU time {multi['one_process_cpu_s']:.2f} s vs {multi['sequential_cpu_s']:.2f} s: "
            f"{multi['cpu_speedup']:.2f}x; load average {load:.1f} on {os.cpu_count()} cores"
        )
    if budget is not None:
        table += "\n\n" + budget_table(budget)
    print(table)

    report = {
        "config": dataclasses.asdict(cfg),
        "seeds": list(cfg.seeds),
        "tuning_seeds": [TUNING_SEEDS.start, TUNING_SEEDS.stop - 1],
        "seeds_overlapping_tuning": sorted(set(cfg.seeds) & set(TUNING_SEEDS)),
        "reference": reference,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "cpu_count": os.cpu_count(),
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "sb3": importlib.metadata.version("stable_baselines3") if cfg.sb3 else None,
        "sb3_rl_zoo_hyperparameters": ZOO,
        "results": results,
        "summary": summary,
        "num_seeds": multi,
        "budget_rows": budget,
        "table": table,
    }
    out = default_out(cfg, device)
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
