"""Many independent PPO seeds in one process: ``experiments/train.py --seed S --num-seeds K``.

Research tables need 10+ seeds, and ten separate processes each pay the per-op overhead of a small
network again. Here K agents (seeds ``S ... S+K-1``) train side by side in lock step, each exactly the
agent a single-seed run of `hrl_nested.algos.ppo` would train, up to float rounding:

- parameters stacked on a leading seed dim (``torch.func.stack_module_state``); the networks run as
  batched matrix products over the stack (`hrl_nested.stacked`, several times faster on a CPU than
  ``vmap`` of ``F.linear``, and bit-identical per member to a single network), the one PPO objective
  (`hrl_nested.ppo_objective`) is ``torch.func.vmap``-ed over the seeds, and the optimizer is the
  functional Adam of `hrl_nested.optim` on the stacked dicts;
- one env batch of ``K x num_envs``; seed k's envs are reset with ``seed=S+k`` and the stream indices
  ``0 ... num_envs-1`` (the ``env_index`` reset option), so each seed's envs produce exactly the env
  stream of a single-seed run of that seed (and the batch is compiled, or not, as a single run's N envs
  are: ``compile="auto"`` decides by N, not K x N, since a compiled step differs in the low float bits);
- per-seed randomness from one ``torch.Generator`` per seed, in the state a single-seed run's global
  generator has after ``torch.manual_seed(seed)`` and the network init: the rollout's sampling noise
  and each epoch's minibatch permutation are drawn from it in the same order, so the first rollout's
  actions are bit-identical to a single-seed run's;
- per-seed observation statistics, advantage normalization (inside the vmapped objective), gradient
  clipping (each seed's global norm) and evaluation; one `Run` (run directory) per seed.

What differs from K single runs: the critic's one-column output layer and the functional (not fused)
Adam round differently in the last bits, so parameters agree to float rounding (~2e-7 after an
iteration), not bit for bit; the actor's forward is bit-identical, so the first rollout is. With
``stop_at_return`` a seed that solved stops training (its run is finished) while the others go on.
``K == 1`` runs `hrl_nested.algos.ppo.train` itself. Resuming, ``--ppo.compile``, ``--ppo.explore`` and
captured rollouts are not supported with ``K > 1`` (a `ConfigError` says so); per-seed checkpoints hold each
agent, its Adam moments and obs statistics.

>>> from hrl_nested.algos import Task
>>> outs = train_seeds(Task(total_steps=1024, num_envs=16, eval_episodes=2, device="cpu"),
...                    PPOConfig(num_steps=32, num_minibatches=2), num_seeds=2)
>>> [o["seed"] for o in outs]
[0, 1]
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.func import stack_module_state, vmap

from envs.core import TorchVectorEnv
from envs.fused import resolve_compile
from hrl_nested.algos import ConfigError, Task, check, positive_int, ppo, resolve_device
from hrl_nested.algos.ppo import PPOConfig, metrics_row
from hrl_nested.algos.ppo_multiseed_eval import apply_stacked_stats, evaluate_seeds, stacked_stats
from hrl_nested.networks import ActorCritic
from hrl_nested.obs_norm import ObsNormalizer
from hrl_nested.optim import AdamState, adam
from hrl_nested.ppo_objective import ppo_objective
from hrl_nested.pytree import tree_map
from hrl_nested.returns import gae
from hrl_nested.rollout import PolicyOutput, make_rollout
from hrl_nested.stacked import stacked_actor_critic_apply
from hrl_nested.tracking import Run, choose_run_id

__all__ = ["clip_grad_norm_per_seed", "evaluate_seeds", "seed_run_dir", "seed_runs", "train_seeds"]


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
    task: Task, cfg: PPOConfig, num_seeds: int, runs: Sequence[Run] | None = None
) -> list[dict[str, Any]]:
    """Train PPO seeds ``task.seed ... task.seed + num_seeds - 1`` in one process; one summary each.

    Args:
        task: env, step budget *per seed*, envs *per seed*, first seed, device, eval episodes per seed.
        cfg: PPO hyperparameters, shared by every seed.
        num_seeds: K, a positive int. 1 runs `hrl_nested.algos.ppo.train` (today's run, exactly).
        runs: one `Run` per seed (e.g. from `seed_runs`), or None to keep everything in memory.

    Returns:
        Each seed's summary, as `hrl_nested.algos.ppo.train` returns it (``seed``, ``env_steps``,
        ``eval_return_mean``, ``solved`` / ``time_to_solve_s`` with ``stop_at_return``, ...). With
        ``stop_at_return`` a seed stops logging (and its run finishes) at its first solving evaluation;
        the process stops once every seed has.

    Raises:
        ConfigError: a bad ``num_seeds`` or ``task`` / ``cfg`` value, or an option K > 1 does not support
            (``--resume``, ``--ppo.compile``, a captured rollout, an env that is not a `TorchVectorEnv`).
    """
    positive_int(num_seeds, "num_seeds")
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
    agents, gens = [], []
    for s in seeds:
        torch.manual_seed(s)
        agents.append(
            ActorCritic(env.single_observation_space, env.single_action_space, hidden=cfg.hidden).to(device)
        )
        gens.append(_generator_after_init(s, device))
    template = agents[0]
    stacked, _ = stack_module_state(agents)
    params = {k: v.detach() for k, v in stacked.items()}
    lr = torch.tensor(float(cfg.lr), device=device)
    optimizer = adam(lr, eps=1e-5)  # torch.optim.Adam's defaults otherwise, as flat PPO's
    opt_state = optimizer.init(params)
    rmss = (
        [ObsNormalizer(env.single_observation_space, device=device) for _ in seeds] if cfg.norm_obs else None
    )
    policy = _SeedPolicy(template, gens, K)
    collect = make_rollout(env, policy, T, capture="none")
    grad_fn = _grad_fn(template, cfg)

    batch_size = N * T
    num_iterations = max(1, math.ceil(task.total_steps / batch_size))
    obs, _ = env.reset(seed=[s for s in seeds for _ in range(N)], options={"env_index": list(range(N)) * K})
    ep_ret = torch.zeros(K * N, device=device, dtype=getattr(env, "dtype", torch.float32))
    ep_len = torch.zeros(K * N, device=device, dtype=torch.int64)
    for run in runs:
        run.start()
    live = [True] * K  # False once a seed solved (stop_at_return): its run is finished
    summaries: list[dict[str, Any] | None] = [None] * K
    last_eval: list[dict[str, float]] = [{} for _ in seeds]
    eval_time, warmup, env_steps = [0.0] * K, 0.0, 0

    for iteration in range(num_iterations):
        t_iter = time.perf_counter()
        lr_now = cfg.lr * (1.0 - iteration / num_iterations) if cfg.anneal_lr else cfg.lr
        lr.fill_(lr_now)

        # ---- rollout: T steps x (K x N) envs, each seed's policy on its own envs
        stats_in = stacked_stats(rmss)
        with torch.no_grad():
            result = collect({**params, **{f"obs_norm.{k}": v for k, v in stats_in.items()}}, obs, None)
        batch, obs = result.batch, result.obs
        env_steps += batch_size
        ep_ret, ep_len, episodes = _episode_stats(batch, ep_ret, ep_len, K)

        # ---- advantages (time-major over K x N columns: each env's column is independent)
        with torch.no_grad():
            b_obs = _normalize(_seed_major(batch.obs, K), rmss, stats_in)
            b_next = _normalize(_seed_major(batch.next_obs, K), rmss, stats_in)
            next_values = stacked_actor_critic_apply(template, params, b_next)[1]
            advantages, returns = gae(
                batch.rewards,
                batch.values,
                _time_major(next_values),
                batch.terminated,
                batch.truncated,
                cfg.gamma,
                cfg.gae_lambda,
            )
        if rmss is not None:
            raw = _seed_major(batch.obs, K)
            for k, rms in enumerate(rmss):
                rms.update(tree_map(lambda t, k=k: t[k], raw))
        flat = tree_map(
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
        stats = torch.zeros(K, 6, device=device)
        rows_live = [k for k in range(K) if live[k]]
        sub = None if len(rows_live) == K else torch.tensor(rows_live, device=device)
        p, st = _take(params, opt_state, sub)
        p, st, stats_live = _update(
            cfg, grad_fn, optimizer, p, st, _take_tree(flat, sub), [gens[k] for k in rows_live]
        )
        params, opt_state = _put(params, opt_state, p, st, sub)
        stats[rows_live] = stats_live
        if iteration == 0:
            warmup = time.perf_counter() - t_iter

        # ---- log (one host copy for all seeds), evaluate, checkpoint
        env.raise_pending()
        host = torch.cat([stats, episodes], 1).tolist()
        sps = round(batch_size / (time.perf_counter() - t_iter))
        rows = [
            {
                "iteration": iteration + 1,
                "env_steps": env_steps,
                **metrics_row(host[k]),
                "sps": sps,
                "lr": lr.item(),
            }
            for k in range(K)
        ]
        last = iteration + 1 == num_iterations
        if last or (cfg.eval_every > 0 and (iteration + 1) % cfg.eval_every == 0):
            t_eval = time.perf_counter()
            eval_seeds = [s + 7919 * (iteration + 1) for s in seeds]
            evals = evaluate_seeds(template, params, eval_env, rmss, eval_seeds, live=live, cfg=cfg)
            eval_s = time.perf_counter() - t_eval
            for k in range(K):
                if live[k]:
                    last_eval[k] = evals[k]
                    rows[k].update(evals[k], eval_s=eval_s)
                    eval_time[k] += eval_s
        for k in range(K):
            if not live[k]:
                continue
            row = runs[k].log(rows[k])
            solved = (
                cfg.stop_at_return is not None
                and row.get("eval_return_mean", -math.inf) >= cfg.stop_at_return
            )
            if runs[k].checkpoint_due() or last or solved:
                runs[k].save_checkpoint(
                    _checkpoint(k, iteration + 1, env_steps, template, params, opt_state, rmss, last_eval[k])
                )
            if solved or last:
                live[k] = False
                summary = {
                    "iterations": iteration + 1,
                    **last_eval[k],
                    "eval_time_s": eval_time[k],
                    "warmup_s": warmup,
                    "num_seeds": K,
                }
                if cfg.stop_at_return is not None:
                    summary["solved"] = solved
                    summary["time_to_solve_s"] = row["wall_s"] if solved else None
                summaries[k] = runs[k].finish(summary)
        if not any(live):
            break
    return [s for s in summaries if s is not None]


def _update(cfg, grad_fn, optimizer, params, opt_state, flat, gens):
    """``update_epochs`` passes of ``num_minibatches`` minibatches over each seed's batch (``flat``:
    ``(K, B, ...)``), each seed's permutation from its own generator (as a single run's ``randperm``);
    returns the new params, Adam state and the ``(K, 6)`` mean statistics (with the gradient norm)."""
    k, batch_size = flat["actions"].shape[:2]
    minibatch_size = batch_size // cfg.num_minibatches
    device = next(iter(params.values())).device
    seed_index = torch.arange(k, device=device).unsqueeze(1)
    stats = torch.zeros(k, 6, device=device)
    for _epoch in range(cfg.update_epochs):
        perms = torch.stack([torch.randperm(batch_size, device=device, generator=g) for g in gens])
        for start in range(0, batch_size, minibatch_size):
            idx = perms[:, start : start + minibatch_size]
            mb = tree_map(lambda t, idx=idx: t[seed_index, idx], flat)
            grads, mb_stats = grad_fn(params, mb)
            grads, grad_norm = clip_grad_norm_per_seed(grads, cfg.max_grad_norm)
            params, opt_state = optimizer.update(grads, opt_state, params)
            stats += torch.stack([*mb_stats, grad_norm], 1)
    return params, opt_state, stats / (cfg.update_epochs * cfg.num_minibatches)


def _take_tree(tree: Any, sub: torch.Tensor | None) -> Any:
    return tree if sub is None else tree_map(lambda t: t[sub], tree)


def _take(params: dict, opt_state: AdamState, sub: torch.Tensor | None) -> tuple[dict, AdamState]:
    """The rows ``sub`` of the stacked params and Adam moments (all of them for None)."""
    if sub is None:
        return params, opt_state
    return _take_tree(params, sub), AdamState(
        opt_state.count, _take_tree(opt_state.mu, sub), _take_tree(opt_state.nu, sub)
    )


def _put(params: dict, opt_state: AdamState, p: dict, st: AdamState, sub: torch.Tensor | None):
    """`_take`'s inverse: rows ``sub`` replaced by ``p`` / ``st`` (new tensors, nothing written in place)."""
    if sub is None:
        return p, st

    def put(full: dict, part: dict) -> dict:
        return {n: full[n].index_copy(0, sub, part[n]) for n in full}

    return put(params, p), AdamState(st.count, put(opt_state.mu, st.mu), put(opt_state.nu, st.nu))


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

    ``compile="auto"`` compiles a CPU batch from `envs.fused.AUTO_COMPILE_MIN_ENVS_CPU` envs on, and a
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
    parameters) on its N envs, its sampling noise from its own generator, drawn with the shapes and order
    `hrl_nested.rollout.actor_critic_policy` draws it in a single-seed run."""

    def __init__(self, template: ActorCritic, gens: Sequence[torch.Generator], num_seeds: int):
        self.template, self.gens, self.K = template, list(gens), num_seeds

    def __call__(self, params: dict[str, torch.Tensor], obs: Any, carry: Any) -> PolicyOutput:
        net = {k: v for k, v in params.items() if not k.startswith("obs_norm.")}
        stats = {k[len("obs_norm.") :]: v for k, v in params.items() if k.startswith("obs_norm.")}
        x = tree_map(lambda t: t.reshape(self.K, -1, *t.shape[1:]), obs)
        if stats:
            x = apply_stacked_stats(x, stats, lead=1)
        dist_params, value = stacked_actor_critic_apply(self.template, net, x)
        dist = self.template.distribution(dist_params)
        flat = lambda t: t.reshape(-1, *t.shape[2:])  # noqa: E731
        if self.template.log_std is None:
            u = self._noise(torch.rand, dist.logits)
            gumbel = u.clamp_min_(torch.finfo(u.dtype).tiny).log_().neg_().log_()
            action = (dist.logits.detach() - gumbel).argmax(-1)
            return PolicyOutput(flat(action), flat(dist.log_prob(action)), flat(value), carry)
        u = dist.mean + dist.std * self._noise(torch.randn, dist.mean)
        return PolicyOutput(flat(u), flat(dist.log_prob(u)), flat(value), carry, flat(dist.env_action(u)))

    def _noise(self, draw, like: torch.Tensor) -> torch.Tensor:
        shape = tuple(like.shape[1:])
        return torch.stack(
            [draw(shape, dtype=like.dtype, device=like.device, generator=g) for g in self.gens]
        )


def _normalize(x: Any, rmss: list[ObsNormalizer] | None, stats: dict[str, torch.Tensor]) -> Any:
    return x if rmss is None else apply_stacked_stats(x, stats, lead=2)


def _seed_major(x: Any, K: int) -> Any:
    """``(T, K*N, ...)`` -> ``(K, T, N, ...)``."""
    return tree_map(lambda t: t.reshape(t.shape[0], K, -1, *t.shape[2:]).transpose(0, 1), x)


def _time_major(x: torch.Tensor) -> torch.Tensor:
    """``(K, T, N)`` -> ``(T, K*N)``."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def _episode_stats(batch: Any, ep_ret: torch.Tensor, ep_len: torch.Tensor, K: int):
    """Per-seed sums of the returns and lengths of the episodes that ended in this rollout, and their
    count, ``(K, 3)``; the running per-env accumulators carry across rollouts."""
    ret_sum = torch.zeros_like(ep_ret)
    len_sum = torch.zeros_like(ep_len)
    done = batch.terminated | batch.truncated
    for t in range(batch.num_steps):
        ep_ret = ep_ret + batch.rewards[t]
        ep_len = ep_len + 1
        ret_sum += torch.where(done[t], ep_ret, 0)
        len_sum += torch.where(done[t], ep_len, 0)
        ep_ret = torch.where(done[t], torch.zeros_like(ep_ret), ep_ret)
        ep_len = torch.where(done[t], torch.zeros_like(ep_len), ep_len)
    count = done.sum(0)
    per_seed = torch.stack([ret_sum, len_sum.to(ret_sum.dtype), count.to(ret_sum.dtype)], 1)
    return ep_ret, ep_len, per_seed.reshape(K, -1, 3).sum(1).to(torch.float32)


def _grad_fn(template: ActorCritic, cfg: PPOConfig):
    """``grad_fn(params, mb) -> (grads, stats)`` for stacked ``(K, ...)`` params and minibatches: the
    one PPO objective (`ppo_objective`) of each seed, vmapped over the seeds on the networks' stacked
    outputs; the gradient of the summed losses is each seed's own gradient (the seeds share nothing)."""

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

    def grad_fn(params: dict[str, torch.Tensor], mb: dict[str, torch.Tensor]):
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        dist_params, value = stacked_actor_critic_apply(template, leaves, mb["obs"])
        losses, stats = per_seed(dist_params, value, {k: v for k, v in mb.items() if k != "obs"})
        grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        return dict(zip(leaves, grads)), stats

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
    norms = [torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1) for g in grads.values()]
    total = torch.linalg.vector_norm(torch.stack(norms, 1), dim=1)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    out = {k: g * coef.reshape(-1, *([1] * (g.dim() - 1))) for k, g in grads.items()}
    return out, total


def _checkpoint(k, iteration, env_steps, template, params, opt_state, rmss, last_eval) -> dict[str, Any]:
    """Seed k's agent (an `ActorCritic` state dict), its Adam moments and obs statistics. A multi-seed run
    cannot be resumed (the shared env batch is not saved); the agent can be loaded for evaluation."""
    agent = {name: v[k].detach().clone() for name, v in params.items()}
    return {
        "iteration": iteration,
        "env_steps": env_steps,
        "agent": agent,
        "optimizer": {
            "count": opt_state.count.clone(),
            "mu": {n: v[k].clone() for n, v in opt_state.mu.items()},
            "nu": {n: v[k].clone() for n, v in opt_state.nu.items()},
        },
        "obs_norm": None if rmss is None else rmss[k].state_dict(),
        "last_eval": last_eval,
        "multiseed": True,
    }
