"""Many independent PPO seeds in one process: ``experiments/train.py --seed S --num-seeds K``.

Research tables need 10+ seeds, and ten separate processes each pay the per-op overhead of a small
network again. Here K agents (seeds ``S ... S+K-1``) train side by side in lock step, each exactly the
agent a single-seed run of `hrl_nested.algos.ppo` would train, up to float rounding:

- parameters stacked on a leading seed dim and held as one ``(K, P)`` buffer
  (`ppo_multiseed_parts.FlatParams`); the networks run as batched matrix products over the stack
  (`hrl_nested.stacked`, several times faster on a CPU than ``vmap`` of ``F.linear``, and bit-identical per
  member to a single network), the one PPO objective (`hrl_nested.ppo_objective`) is ``torch.func.vmap``-ed
  over the seeds, each seed's gradient is clipped to its own global norm in one op, and the optimizer is
  torch's functional Adam (``torch.optim.adam.adam``, fused, as a single run's ``torch.optim.Adam``) on the
  whole buffer in one kernel;
- one env batch of ``K x num_envs``; seed k's envs are reset with ``seed=S+k`` and the stream indices
  ``0 ... num_envs-1`` (the ``env_index`` reset option), so each seed's envs produce exactly the env
  stream of a single-seed run of that seed (and the batch is compiled, or not, as a single run's N envs
  are: ``compile="auto"`` decides by N, not K x N, since a compiled step differs in the low float bits);
- per-seed randomness (``rng``, see `train_seeds`): by default on the CPU one ``torch.Generator`` per seed,
  in the state a single-seed run's global generator has after ``torch.manual_seed(seed)`` and the network
  init, from which the whole rollout's sampling noise and each epoch's minibatch permutation are drawn in
  a single run's order, so the rollouts are a single-seed run's, bit for bit; on CUDA a counter-based
  Philox stream keyed on the seed, with no call per seed;
- the noise enters the rollout as an input (no generator inside the T steps), so on CUDA the rollout is
  captured as one CUDA graph and replayed, as a single run's, and so is the whole update (epochs x
  minibatches of forward, backward, clip and Adam; `ppo_multiseed_parts.CapturedStep`);
- per-seed observation statistics (`ppo_multiseed_parts.StackedObsNormalizer`), advantage normalization
  (inside the vmapped objective) and evaluation; one `Run` (run directory) per seed, their rows made
  from one host copy per iteration and written in a background thread while the next iteration runs
  (`ppo_multiseed_parts.RowWriter`), checkpoints and summaries in parallel threads (each ``fsync``-ed).

Apart from the K generators' draws (``1 + update_epochs`` calls per seed and iteration, none with
``rng="counter"``) and one metrics row per seed, nothing in an iteration loops over the seeds.

What differs from K single runs: the critic's one-column output layer rounds differently in the last bits
in a batched product, so parameters agree to float rounding (~2e-7 after an iteration), not bit for bit;
the actor's forward is bit-identical, so the first rollout is. With ``stop_at_return`` a seed that solved
stops training (its run is finished) while the others go on. ``K == 1`` runs `hrl_nested.algos.ppo.train`
itself. Resuming, ``--ppo.compile``, ``--ppo.explore`` and an explicit ``--ppo.capture`` other than
``auto`` / ``none`` are not supported with ``K > 1`` (a `ConfigError` says so); per-seed checkpoints hold
each agent, its Adam moments and obs statistics.

>>> from hrl_nested.algos import Task
>>> outs = train_seeds(Task(total_steps=1024, num_envs=16, eval_episodes=2, device="cpu"),
...                    PPOConfig(num_steps=32, num_minibatches=2), num_seeds=2)
>>> [o["seed"] for o in outs]
[0, 1]
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.func import stack_module_state, vmap

from envs.compiled_step import resolve_compile
from envs.core import TorchVectorEnv
from hrl_nested.algos import ConfigError, Task, check, positive_int, ppo, resolve_device
from hrl_nested.algos.ppo import PPOConfig, metrics_row
from hrl_nested.algos.ppo_multiseed_eval import apply_stacked_stats, evaluate_seeds
from hrl_nested.algos.ppo_multiseed_parts import (
    CapturedStep,
    FlatParams,
    RowWriter,
    StackedObsNormalizer,
    adam_step_rows,
    clip_grad_norm_rows,
    counter_noise,
    counter_permutations,
    for_each_run,
    rollout_noise,
    seed_key_words,
    seed_permutations,
)
from hrl_nested.networks import ActorCritic
from hrl_nested.ppo_objective import ppo_objective
from hrl_nested.pytree import tree_map
from hrl_nested.returns import gae
from hrl_nested.rollout import PolicyOutput, make_rollout
from hrl_nested.stacked import stacked_actor_critic_apply
from hrl_nested.tracking import Run, choose_run_id

RNG_MODES = ("auto", "generator", "counter")

__all__ = [
    "RNG_MODES",
    "clip_grad_norm_per_seed",
    "evaluate_seeds",
    "seed_run_dir",
    "seed_runs",
    "train_seeds",
]


def seed_run_dir(run_dir: str | Path, seed: int) -> Path:
    """``run_dir/seed-<seed>``: where seed ``seed`` of a multi-seed run writes its files."""
    return Path(run_dir) / f"seed-{seed}"


def seed_runs(
    run_dir: str | Path | None,
    config: dict[str, Any],
    *,
    algo: str,
    env: str,
    seeds: Sequence[int],
    run_id: str | None = None,
    **kwargs,
) -> list[Run]:
    """One `Run` per seed, in ``run_dir/seed-<s>/`` (None: in memory); each ``config.json`` names its own
    seed. ``kwargs`` go to every `Run` (``total_steps``, ``wandb_mode``, ...); only the first seed shows
    a progress bar.

    Each seed's W&B run id is ``<run_id>-s<seed>``, ``run_id`` defaulting to `choose_run_id` (under
    ``wandb agent``, ``$WANDB_RUN_ID``): one id for all K runs would merge them into one W&B run."""
    base = run_id or choose_run_id()
    runs = []
    for i, s in enumerate(seeds):
        path = None if run_dir is None else seed_run_dir(run_dir, s)
        cfg = {**config, "seed": s, "run_dir": None if path is None else str(path)}
        progress = kwargs.pop("progress", None) if i == 0 else False
        kwargs["run_id"] = f"{base}-s{s}"
        runs.append(Run(path, config=cfg, algo=algo, env=env, seed=s, progress=progress, **kwargs))
    return runs


def train_seeds(
    task: Task, cfg: PPOConfig, num_seeds: int, runs: Sequence[Run] | None = None, *, rng: str = "auto"
) -> list[dict[str, Any]]:
    """Train PPO seeds ``task.seed ... task.seed + num_seeds - 1`` in one process; one summary each.

    Args:
        task: env, step budget *per seed*, envs *per seed*, first seed, device, eval episodes per seed.
        cfg: PPO hyperparameters, shared by every seed.
        num_seeds: K, a positive int. 1 runs `hrl_nested.algos.ppo.train` (today's run, exactly).
        runs: one `Run` per seed (e.g. from `seed_runs`), or None to keep everything in memory.
        rng: where each seed's sampling noise and minibatch permutations come from: ``"generator"``, a
            ``torch.Generator`` per seed in a single-seed run's state and order (on the CPU each seed's
            draws are the single-seed run's, bit for bit; ``1 + update_epochs`` calls per seed and
            iteration); ``"counter"``, a counter-based Philox stream keyed on the seed (`ppo_multiseed_parts.
            counter_noise`: no call per seed, a pure function of (seed, iteration, step, env), the same
            for any K and device, but not a single-seed run's numbers); ``"auto"`` (default):
            ``"counter"`` on CUDA (thousands of seeds; a single-seed CUDA run's bits are not reproducible
            there anyway, see `rollout_noise`), ``"generator"`` elsewhere.

    Returns:
        Each seed's summary, as `hrl_nested.algos.ppo.train` returns it (``seed``, ``env_steps``,
        ``eval_return_mean``, ``solved`` / ``time_to_solve_s`` with ``stop_at_return``, ...). With
        ``stop_at_return`` a seed stops logging (and its run finishes) at its first solving evaluation;
        the process stops once every seed has.

    Raises:
        ConfigError: a bad ``num_seeds`` or ``task`` / ``cfg`` value, or an option K > 1 does not support
            (``--resume``, ``--ppo.compile``, ``--ppo.capture`` other than ``auto`` / ``none``, an env that
            is not a `TorchVectorEnv`).
        ValueError: an ``rng`` not in `RNG_MODES`.

    On CUDA with ``--ppo.capture auto`` the rollout and the whole update (while every seed still trains)
    are each captured once as a CUDA graph and replayed (`ppo_multiseed_parts.CapturedStep`).
    """
    positive_int(num_seeds, "num_seeds")
    if rng not in RNG_MODES:
        raise ValueError(f"rng: expected one of {', '.join(RNG_MODES)}, got {rng!r}")
    task.validate()
    cfg.validate(task)
    K = num_seeds
    seeds = [task.seed + k for k in range(K)]
    if runs is not None and len(runs) != K:
        raise ValueError(f"runs: expected one Run per seed ({K}), got {len(runs)}")
    if K == 1:
        return [ppo.train(task, cfg, None if runs is None else runs[0])]
    _check_supported(cfg, runs)
    if runs is None:
        runs = seed_runs(None, {}, algo="ppo", env=task.env, seeds=seeds, total_steps=0, progress=False)
    device = resolve_device(task.device)
    N, T = task.num_envs, cfg.num_steps

    # ---- setup: one env batch of K x N, each seed's agent and generator as a single run makes them
    env = _make_seeds_env(task.env, K, N, device)
    eval_env = _make_seeds_env(task.env, K, task.eval_episodes, device)
    check(
        isinstance(env, TorchVectorEnv),
        "env",
        "a torch env (hrl_nested/... or a TorchVectorEnv class) with --num-seeds > 1",
        task.env,
        note="a wrapped Gymnasium env cannot hold several seeds' streams in one batch",
    )
    counter = rng == "counter" or (rng == "auto" and device.type == "cuda")
    template, layout, gens = _init_agents(env, cfg, seeds, device, generators=not counter)
    keys = seed_key_words(seeds, device)
    flat = layout.flat  # (K, P): every seed's parameters; updated in place by the fused Adam
    mu, nu = torch.zeros_like(flat), torch.zeros_like(flat)
    adam_count = torch.zeros((), dtype=torch.float32, device=device)
    obs_normalizer = (
        StackedObsNormalizer(env.single_observation_space, K, device=device) if cfg.norm_obs else None
    )
    discrete = template.log_std is None
    act_shape = (N, int(env.single_action_space.n)) if discrete else (N, template.log_std.shape[0])
    # "auto": a CUDA graph on CUDA (the noise is an input, so the whole T-step loop is capturable)
    capture = "auto" if cfg.capture == "auto" else "none"
    collect = make_rollout(env, _SeedPolicy(template, K), T, capture=capture)
    grad_fn = _grad_fn(template, cfg, layout)
    captured_update = None
    lr_t = torch.zeros((), dtype=torch.float32, device=device)
    mode = _update_capture(device, cfg)
    if mode is not None:
        update = functools.partial(_update, cfg, grad_fn, (flat, mu, nu), adam_count)
        captured_update = CapturedStep(
            lambda fb, pm, lr_t: update(lr_t, fb, pm), [flat, mu, nu, adam_count], graph=mode == "graph"
        )

    batch_size = N * T
    num_iterations = max(1, math.ceil(task.total_steps / batch_size))
    obs, _ = env.reset(seed=[s for s in seeds for _ in range(N)], options={"env_index": list(range(N)) * K})
    ep_ret = torch.zeros(K * N, device=device, dtype=getattr(env, "dtype", torch.float32))
    ep_len = torch.zeros(K * N, device=device, dtype=torch.int64)
    step0 = torch.zeros(1, dtype=torch.int64, device=device)
    for_each_run(runs, "start")
    live = [True] * K  # False once a seed solved (stop_at_return): its run is finished
    summaries: list[dict[str, Any] | None] = [None] * K
    last_eval: list[dict[str, float]] = [{} for _ in seeds]
    eval_time, warmup, env_steps = [0.0] * K, 0.0, 0

    writer = RowWriter(runs)
    try:
        for iteration in range(num_iterations):
            t_iter = time.perf_counter()
            lr_now = cfg.lr * (1.0 - iteration / num_iterations) if cfg.anneal_lr else cfg.lr

            # ---- rollout: T steps x (K x N) envs, each seed's policy and noise on its own envs
            params = layout.dense(flat)
            stats_in = {} if obs_normalizer is None else obs_normalizer.stats()
            if counter:
                noise = counter_noise(keys, iteration, T, act_shape, gaussian=not discrete, dtype=flat.dtype)
            else:
                noise = rollout_noise(
                    gens, T, act_shape, gaussian=not discrete, dtype=flat.dtype, device=device
                )
            inputs = {**params, "sampling_noise": noise, **{f"obs_norm.{k}": v for k, v in stats_in.items()}}
            with torch.no_grad():
                result = collect(inputs, obs, step0)
            batch, obs = result.batch, result.obs
            env_steps += batch_size
            ep_ret, ep_len, episodes = _episode_stats(batch, ep_ret, ep_len, K)

            # ---- advantages (time-major over K x N columns: each env's column is independent)
            with torch.no_grad():
                b_obs = _normalize(_seed_major(batch.obs, K), stats_in)
                b_next = _normalize(_seed_major(batch.next_obs, K), stats_in)
                next_values = stacked_actor_critic_apply(template, params, b_next, actor=False)[1]
                advantages, returns = gae(
                    batch.rewards,
                    batch.values,
                    _time_major(next_values),
                    batch.terminated,
                    batch.truncated,
                    cfg.gamma,
                    cfg.gae_lambda,
                )
            if obs_normalizer is not None:
                obs_normalizer.update(_seed_major(batch.obs, K))
            flat_batch = tree_map(
                lambda t: t.reshape(K, batch_size, *t.shape[3:]),
                {
                    "obs": b_obs,
                    "actions": _seed_major(batch.actions, K),
                    "logprobs": _seed_major(batch.logprobs, K),
                    "values": _seed_major(batch.values, K),
                    "advantages": _seed_major(advantages, K),
                    "returns": _seed_major(returns, K),
                },
            )

            # ---- update: per-seed permutations, the PPO objective's gradient, per-seed clipping, Adam;
            # only for the seeds still running (a solved seed's run is finished: no need to train it on)
            if counter:
                perms = counter_permutations(keys, iteration, cfg.update_epochs, batch_size)
            else:
                perms = seed_permutations(gens, cfg.update_epochs, batch_size, device)
            rows_live = [k for k in range(K) if live[k]]
            sub = None if len(rows_live) == K else torch.tensor(rows_live, device=device)
            if sub is None and captured_update is not None:  # all seeds: one replay of the captured update
                stats_live = captured_update(flat_batch, perms, lr_t.fill_(lr_now))  # fill_: no host sync
            else:
                state = (flat, mu, nu) if sub is None else (flat[sub], mu[sub], nu[sub])
                mb_source = _take_tree(flat_batch, sub), _take_tree(perms, sub, dim=1)
                stats_live = _update(cfg, grad_fn, state, adam_count, lr_now, *mb_source)
            stats = stats_live
            if sub is not None:
                for full, part in zip((flat, mu, nu), state):
                    full.index_copy_(0, sub, part)
                stats = torch.zeros(K, 6, device=device).index_copy_(0, sub, stats_live)
            if iteration == 0:
                warmup = time.perf_counter() - t_iter

            # ---- log (one host copy for all seeds), evaluate, checkpoint
            env.raise_pending()
            host = torch.cat([stats, episodes], 1).tolist()
            sps = round(batch_size / (time.perf_counter() - t_iter))
            rows = {
                k: {"iteration": iteration + 1, "env_steps": env_steps, **metrics_row(host[k]), "sps": sps}
                for k in rows_live
            }
            for row in rows.values():
                row["lr"] = lr_now  # the float a single run logs, not a host read per seed
            last = iteration + 1 == num_iterations
            if last or (cfg.eval_every > 0 and (iteration + 1) % cfg.eval_every == 0):
                t_eval = time.perf_counter()
                eval_seeds = [s + 7919 * (iteration + 1) for s in seeds]
                params = layout.dense(flat)
                evals = evaluate_seeds(
                    template, params, eval_env, obs_normalizer, eval_seeds, live=live, cfg=cfg
                )
                eval_s = time.perf_counter() - t_eval
                for k in rows_live:
                    last_eval[k] = evals[k]
                    rows[k].update(evals[k], eval_s=eval_s)
                    eval_time[k] += eval_s
            solved = {
                k
                for k in rows_live
                if cfg.stop_at_return is not None
                and rows[k].get("eval_return_mean", -math.inf) >= cfg.stop_at_return
            }
            saving = [k for k in rows_live if last or k in solved or runs[k].checkpoint_due()]
            # a plain iteration's rows are written in the background while the next iteration runs; a
            # checkpoint or a run's end (it reads the logged rows, and writes after them) waits for them
            logged = writer.log(rows, wait=bool(saving))
            if saving:
                opt = (mu, nu, adam_count)
                states = _checkpoints(
                    saving, iteration + 1, env_steps, layout, flat, opt, obs_normalizer, last_eval
                )
                for_each_run([runs[k] for k in saving], "save_checkpoint", [states[k] for k in saving])
            ending = [k for k in rows_live if last or k in solved]
            for k in ending:
                live[k] = False
            if ending:
                info = (last_eval, eval_time, warmup, K, cfg, logged, solved)
                ends = [_summary(k, iteration, *info) for k in ending]
                for k, summary in zip(ending, for_each_run([runs[k] for k in ending], "finish", ends)):
                    summaries[k] = summary
            if not any(live):
                break
    except BaseException:
        writer.close(quiet=True)
        raise
    writer.close()  # the last rows are on disk before the summaries return
    return [s for s in summaries if s is not None]


def _update_capture(device: torch.device, cfg: PPOConfig) -> str | None:
    """How the update runs: ``"graph"`` (captured once as a CUDA graph, replayed; on CUDA with
    ``--ppo.capture auto``), or None (eager). ``"static"``: the capture's buffer logic without a graph."""
    return "graph" if device.type == "cuda" and cfg.capture == "auto" else None


def _summary(k, iteration, last_eval, eval_time, warmup, num_seeds, cfg, logged, solved) -> dict[str, Any]:
    """Seed k's summary (`hrl_nested.algos.ppo.train`'s keys) at the iteration its run ends."""
    summary = {
        "iterations": iteration + 1,
        **last_eval[k],
        "eval_time_s": eval_time[k],
        "warmup_s": warmup,
        "num_seeds": num_seeds,
    }
    if cfg.stop_at_return is not None:
        summary["solved"] = k in solved
        summary["time_to_solve_s"] = logged[k]["wall_s"] if k in solved else None
    return summary


def _init_agents(env, cfg: PPOConfig, seeds: Sequence[int], device: torch.device, *, generators: bool):
    """Each seed's `ActorCritic` as a single run of that seed initializes it (on the CPU, right after
    seeding the CPU generator with the seed), stacked into a `FlatParams` on ``device``; the template
    module (seed 0's, on ``device``); and (with ``generators``) each seed's sampling generator in the
    state a single run's has after the init."""
    agents, gens = [], []
    for s in seeds:
        # torch.manual_seed would also seed every CUDA generator, and queue that with a stack trace when CUDA
        # is not initialized (milliseconds per seed); the init draws from the CPU generator only.
        torch.default_generator.manual_seed(s)
        agents.append(ActorCritic(env.single_observation_space, env.single_action_space, hidden=cfg.hidden))
        if generators:
            gens.append(_generator_after_init(s, device))
    stacked, _ = stack_module_state(agents)
    layout = FlatParams({k: v.detach() for k, v in stacked.items()})
    layout.flat = layout.flat.to(device)  # one host-to-device copy for all seeds' parameters
    return agents[0].to(device), layout, gens


def _update(cfg, grad_fn, state, adam_count, lr, flat_batch, perms) -> torch.Tensor:
    """``update_epochs`` passes of ``num_minibatches`` minibatches over each seed's batch (``flat_batch``:
    ``(K, B, ...)``) in the order of its permutations ``perms`` (``(epochs, K, B)``), updating the stacked
    parameters and Adam moments ``state = (flat, mu, nu)`` in place; returns the ``(K, 6)`` mean statistics
    (with the gradient norm before clipping)."""
    flat, mu, nu = state
    k, batch_size = flat_batch["actions"].shape[:2]
    minibatch_size = batch_size // cfg.num_minibatches
    seed_index = torch.arange(k, device=flat.device).unsqueeze(1)
    stats = torch.zeros(k, 6, device=flat.device)
    for epoch in range(cfg.update_epochs):
        for start in range(0, batch_size, minibatch_size):
            idx = perms[epoch, :, start : start + minibatch_size]
            mb = tree_map(lambda t, idx=idx: t[seed_index, idx], flat_batch)
            grad, mb_stats = grad_fn(flat, mb)
            grad, grad_norm = clip_grad_norm_rows(grad, cfg.max_grad_norm)
            adam_step_rows(flat, grad, mu, nu, adam_count, lr=lr)
            stats += torch.cat([mb_stats, grad_norm.unsqueeze(1)], 1)
    return stats / (cfg.update_epochs * cfg.num_minibatches)


def _take_tree(tree: Any, sub: torch.Tensor | None, dim: int = 0) -> Any:
    return tree if sub is None else tree_map(lambda t: t.index_select(dim, sub), tree)


def _check_supported(cfg: PPOConfig, runs: Sequence[Run] | None) -> None:
    note = "not supported with --num-seeds > 1"
    check(cfg.capture in ("auto", "none"), "capture", "auto or none", cfg.capture, section="ppo", note=note)
    check(not cfg.compile, "compile", "False", cfg.compile, section="ppo", note=note)
    explore = getattr(cfg, "explore", "none")
    check(explore == "none", "explore", "none", explore, section="ppo", note=note)
    if runs is not None and any(r.resume_state is not None for r in runs):
        raise ConfigError("resume", "no --resume", "a run directory", note=note)


def _make_seeds_env(env_id: str, num_seeds: int, per_seed: int, device: torch.device) -> Any:
    """The env batch of ``num_seeds x per_seed`` envs, stepping as a single-seed run's ``per_seed`` do.

    ``compile="auto"`` compiles a CPU batch from `envs.compiled_step.AUTO_COMPILE_MIN_ENVS_CPU` envs on, and a
    compiled step's floats differ from the eager step's in the low bits (so would the sampled actions):
    where K x N crosses that size and N does not, the batch is made eager, as the single-seed runs'.
    """
    n = num_seeds * per_seed
    single = resolve_compile("auto", device, per_seed)
    if resolve_compile("auto", device, n) == single:
        return ppo._make_env(env_id, n, device)
    try:
        return ppo._make_env(env_id, n, device, compile=single)
    except ConfigError:  # an env without a compile option (a wrapped Gymnasium env): it never compiles
        return ppo._make_env(env_id, n, device)


def _generator_after_init(seed: int, device: torch.device) -> torch.Generator:
    """The generator a single-seed run samples from, in its state after ``torch.manual_seed(seed)`` and
    the network init: on CPU a copy of the global generator now; on CUDA a fresh one seeded with ``seed``
    (the init runs on the CPU, so the CUDA generator is still untouched there)."""
    if device.type == "cpu":
        g = torch.Generator()
        g.set_state(torch.get_rng_state())
        return g
    return torch.Generator(device=device).manual_seed(seed)


class _SeedPolicy:
    """The rollout's policy step on the ``(K*N, ...)`` batch: each seed's actor (run over the stacked
    parameters) on its N envs, with the noise of step t of its own draws for the rollout.

    The noise comes in the parameters (``params["sampling_noise"]``, ``(T, K, N, A)``, from
    `rollout_noise`) and the carry is the step index t (a ``(1,)`` int64 tensor), so a rollout has no
    generator call and no Python branch inside: it replays as one CUDA graph. A Categorical's action is
    the Gumbel-max of its noise and a Gaussian's ``mean + std * noise``, as in a single-seed run
    (`hrl_nested.distributions`)."""

    def __init__(self, template: ActorCritic, num_seeds: int):
        self.template, self.K = template, num_seeds

    def __call__(self, params: dict[str, torch.Tensor], obs: Any, carry: torch.Tensor) -> PolicyOutput:
        net = {k: v for k, v in params.items() if k != "sampling_noise" and not k.startswith("obs_norm.")}
        stats = {k[len("obs_norm.") :]: v for k, v in params.items() if k.startswith("obs_norm.")}
        noise = params["sampling_noise"].index_select(0, carry).squeeze(0)  # (K, N, A); no host sync
        x = tree_map(lambda t: t.reshape(self.K, -1, *t.shape[1:]), obs)
        if stats:
            x = apply_stacked_stats(x, stats, lead=1)
        dist_params, value = stacked_actor_critic_apply(self.template, net, x)
        dist = self.template.distribution(dist_params)
        flat = lambda t: t.reshape(-1, *t.shape[2:])  # noqa: E731
        if self.template.log_std is None:
            gumbel = noise.clamp_min(torch.finfo(noise.dtype).tiny).log_().neg_().log_()
            action = (dist.logits.detach() - gumbel).argmax(-1)
            return PolicyOutput(flat(action), flat(dist.log_prob(action)), flat(value), carry + 1)
        u = dist.mean + dist.std * noise
        return PolicyOutput(flat(u), flat(dist.log_prob(u)), flat(value), carry + 1, flat(dist.env_action(u)))


def _normalize(x: Any, stats: dict[str, torch.Tensor]) -> Any:
    return apply_stacked_stats(x, stats, lead=2) if stats else x


def _seed_major(x: Any, K: int) -> Any:
    """``(T, K*N, ...)`` -> ``(K, T, N, ...)``."""
    return tree_map(lambda t: t.reshape(t.shape[0], K, -1, *t.shape[2:]).transpose(0, 1), x)


def _time_major(x: torch.Tensor) -> torch.Tensor:
    """``(K, T, N)`` -> ``(T, K*N)``."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def _episode_stats(batch: Any, ep_ret: torch.Tensor, ep_len: torch.Tensor, K: int):
    """Per-seed sums of the returns and lengths of the episodes that ended in this rollout, and their
    count, ``(K, 3)``; the running per-env accumulators carry across rollouts.

    No loop over time: with ``R_t = ep_ret + sum_{u<=t} r_u`` the running return had no episode ended,
    the episodes ending at steps ``t_1 < ... < t_m`` return ``R_{t_1}, R_{t_2} - R_{t_1}, ...``, so their
    sum telescopes to ``R_{t_m}`` (0 when none ended), and the next rollout starts from ``R_{T-1} -
    R_{t_m}``; the same for lengths. (Integer rewards give the step-by-step sums exactly.)"""
    done = batch.terminated | batch.truncated
    T = done.shape[0]
    steps = torch.arange(T, device=done.device).unsqueeze(1)
    running_ret = ep_ret + batch.rewards.to(ep_ret.dtype).cumsum(0)
    running_len = ep_len + steps + 1
    last = torch.where(done, steps, -1).amax(0)  # the last step an episode ended at, -1 for none
    ended = last >= 0
    at_last = last.clamp(min=0).unsqueeze(0)
    ret_sum = torch.where(ended, running_ret.gather(0, at_last).squeeze(0), 0)
    len_sum = torch.where(ended, running_len.gather(0, at_last).squeeze(0), 0)
    ep_ret, ep_len = running_ret[-1] - ret_sum, running_len[-1] - len_sum
    count = done.sum(0)
    per_seed = torch.stack([ret_sum, len_sum.to(ret_sum.dtype), count.to(ret_sum.dtype)], 1)
    return ep_ret, ep_len, per_seed.reshape(K, -1, 3).sum(1).to(torch.float32)


def _grad_fn(template: ActorCritic, cfg: PPOConfig, layout: FlatParams):
    """``grad_fn(flat, mb) -> (grad, stats)`` for the ``(K, P)`` stacked parameters and ``(K, ...)``
    minibatches: the one PPO objective (`ppo_objective`) of each seed, vmapped over the seeds on the
    networks' stacked outputs; the gradient of the summed losses is each seed's own gradient (the seeds
    share nothing), returned as one ``(K, P)`` tensor, with the ``(K, 5)`` objective statistics."""

    def objective(dist_params: torch.Tensor, value: torch.Tensor, mb: dict[str, torch.Tensor]):
        def dist_fn(_params: Any, out: tuple[torch.Tensor, torch.Tensor]):
            return template.distribution(out[0]), out[1]

        return ppo_objective(
            dist_fn,
            {},
            {**mb, "obs": (dist_params, value)},
            clip_coef=cfg.clip_coef,
            vf_coef=cfg.vf_coef,
            ent_coef=cfg.ent_coef,
            norm_adv=cfg.norm_adv,
            clip_vloss=cfg.clip_vloss,
        )

    per_seed = vmap(objective)

    def grad_fn(flat: torch.Tensor, mb: dict[str, torch.Tensor]):
        # contiguous copies: a batched product over strided views of the flat buffer is much slower
        leaves = {k: v.requires_grad_() for k, v in layout.dense(flat).items()}
        dist_params, value = stacked_actor_critic_apply(template, leaves, mb["obs"])
        losses, stats = per_seed(dist_params, value, {k: v for k, v in mb.items() if k != "obs"})
        grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        return layout.cat(grads), torch.stack(list(stats), 1)

    return grad_fn


def clip_grad_norm_per_seed(
    grads: dict[str, torch.Tensor], max_norm: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``torch.nn.utils.clip_grad_norm_`` for each seed of stacked ``(K, ...)`` gradients.

    With ``n_k = ||(||g_k^1||, ..., ||g_k^P||)||_2`` (the global 2-norm of seed k's gradients), seed k's
    gradients are scaled by ``min(1, max_norm / (n_k + 1e-6))``.

    Returns:
        ``(clipped grads, n)`` with ``n`` the ``(K,)`` norms before clipping.

    >>> g = {"w": torch.tensor([[3.0, 4.0], [0.3, 0.4]])}
    >>> clipped, n = clip_grad_norm_per_seed(g, 1.0)
    >>> n.tolist(), [round(x, 3) for x in clipped["w"][0].tolist()]
    ([5.0, 0.5], [0.6, 0.8])
    """
    layout = FlatParams(grads)  # each seed's gradients as one row: `clip_grad_norm_rows`
    clipped, norms = clip_grad_norm_rows(layout.flat, max_norm)
    return layout.dense(clipped), norms


def _checkpoints(
    seeds, iteration, env_steps, layout, flat, opt, obs_normalizer, last_eval
) -> dict[int, dict[str, Any]]:
    """The checkpoints of the seeds (row indices) ``seeds``, keyed by row: each an `ActorCritic` state dict,
    its Adam moments and obs statistics, from one host copy of all seeds' tensors. A multi-seed run cannot
    be resumed (the shared env batch is not saved); an agent can be loaded for evaluation."""
    mu, nu, count = opt
    host = [layout.views(t.cpu()) for t in (flat, mu, nu)]
    obs_norm = None if obs_normalizer is None else obs_normalizer.host_state_dicts()
    out = {}
    for k in seeds:
        agent, m, v = ({n: t[k].clone() for n, t in views.items()} for views in host)
        out[k] = {
            "iteration": iteration,
            "env_steps": env_steps,
            "agent": agent,
            "optimizer": {"count": count.cpu().clone(), "mu": m, "nu": v},
            "obs_norm": None if obs_norm is None else obs_norm[k],
            "last_eval": last_eval[k],
            "multiseed": True,
        }
    return out
