"""Flat PPO on a `TorchVectorEnv`, written out top to bottom (CleanRL's ``ppo.py`` shape).

Schulman et al. 2017, "Proximal policy optimization algorithms", with the implementation details of
Huang et al. 2022, "The 37 implementation details of PPO": GAE, advantage normalization per
minibatch, clipped surrogate, optional clipped value loss, entropy bonus, global grad-norm clipping,
linear learning-rate annealing, Adam with ``eps=1e-5``, orthogonal init, optional observation
normalization.

Speed comes from the batch, not from tricks: the env is pure tensor code, a rollout of ``T`` steps x
``N`` envs runs without a host sync (captured as a CUDA graph on GPU, see `hrl_nested.rollout`), and
the only ``.item()``-like copy is one per iteration, for logging. On a small CPU the cost of a step is
mostly per-op overhead, so many envs per step and few epochs win.

>>> from hrl_nested.algos import Task
>>> out = train(Task(total_steps=2048, num_envs=64, device="cpu", eval_episodes=2), PPOConfig(num_steps=16))
>>> out["env_steps"]
2048
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, ClassVar, Literal

import torch

import envs
from envs.core import EnvState, TorchVectorEnv
from hrl_nested import distributed
from hrl_nested.algos import (
    ConfigError,
    Task,
    batch_split,
    check,
    finite_float,
    layer_sizes,
    positive_int,
    ppo_distributed,
    resolve_device,
)
from hrl_nested.deprecation import renamed_kwargs
from hrl_nested.evaluation import run_eval_episodes, step_success
from hrl_nested.exploration import EXPLORE_MODES, Exploration, end_runs, initial_explore_carry
from hrl_nested.networks import ActorCritic, actor_critic_apply
from hrl_nested.obs_norm import ObsNormalizer
from hrl_nested.ppo_objective import PPOStats, ppo_objective
from hrl_nested.pytree import tree_map
from hrl_nested.returns import gae
from hrl_nested.rollout import CAPTURE_MODES, PolicyOutput, actor_critic_policy, make_rollout
from hrl_nested.tracking import (
    CheckpointError,
    Run,
    checkpoint_fits,
    require_keys,
    reset_for_resume,
    set_rng_state,
)
from hrl_nested.video import EpisodeClip, VideoCapture, eval_env_kwargs


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters. The defaults solve ``hrl_nested/CartPole-v1`` in a few seconds on a CPU.

    Tuned for wall-clock time to solve CartPole with 128 envs on a 2-core CPU, over 32 seeds (see
    ``experiments/bench_ppo.py``): 2 epochs x 8 minibatches of 1024 at lr 2e-3 with GAE lambda 0.98
    solved all of seeds 0-31 within 100k steps (median 32768 env steps, worst 73728), where the
    earlier 2 x 2 minibatches at lr 3.5e-3 with lambda 0.95 stalled near a return of 250 on 4 of
    seeds 0-15.
    """

    num_steps: int = 64
    """Steps per env per rollout (T); a batch is ``num_envs * num_steps`` transitions."""
    lr: float = 2e-3
    """Adam learning rate (at the start, when annealed)."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over the run."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.98
    """GAE lambda (bias/variance trade-off of the advantages)."""
    update_epochs: int = 2
    """Passes over each batch."""
    num_minibatches: int = 8
    """Minibatches per pass (the minibatch size is ``batch_size / num_minibatches``)."""
    clip_coef: float = 0.2
    """Surrogate clipping epsilon."""
    clip_vloss: bool = False
    """Clip the value loss around the old values, as PPO2 does."""
    norm_adv: bool = True
    """Normalize advantages within each minibatch."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    max_grad_norm: float = 0.5
    """Clip the global gradient norm to this."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the actor and of the critic."""
    norm_obs: bool = True
    """Normalize observations by a running mean/std (each Box leaf; updated once per batch, after the
    batch is normalized with the statistics its rollout used; saved in checkpoints)."""
    eval_every: int = 4
    """Evaluate every this many iterations (and always after the last); 0: only at the end."""
    stop_at_return: float | None = None
    """Stop as soon as an evaluation's mean return reaches this (time-to-solve benchmarks)."""
    eval_max_return: float | None = None
    """An upper bound on one episode's return (CartPole-v1: 500). Set together with ``stop_at_return``,
    an evaluation ends as soon as its mean can no longer reach ``stop_at_return`` even if every episode
    still running scored this bound; its ``eval_return_mean`` is then the partial mean so far (below the
    target) and the row has ``eval_stopped_early: 1``. None (default): every evaluation runs in full."""
    compile: bool = False
    """``torch.compile`` the loss + gradient step. Pays off on CUDA for long runs; a cold compile costs
    seconds, more than a whole CartPole run on CPU."""
    capture: str = "auto"
    """Rollout capture (``auto``: a CUDA graph on GPU, eager on CPU and for envs whose state lives in a
    simulator, such as wrapped Gymnasium envs); see `hrl_nested.rollout`."""
    explore: Literal["none", "ez-greedy", "repeat"] = "none"
    """Temporally extended exploration (`hrl_nested.exploration`): ``ez-greedy`` (Dabney et al. 2021: with
    probability ``explore_eps`` take a random action for a zeta-distributed number of steps), ``repeat``
    (hold the policy's own action that long), or ``none``. Exploratory steps are masked out of the policy
    loss (their rewards still feed GAE); a run ends with its episode."""
    explore_eps: float = 0.01
    """Probability per step that an env not in an exploratory run starts one."""
    explore_zeta_mu: float = 2.0
    """``mu > 1`` of the run-length law ``P(n) ∝ n^-mu`` (Dabney et al. 2021 use 2: mean length ~6)."""
    explore_max_duration: int = 10_000
    """Truncation of the run-length law (``1 <= n <= this``)."""

    state_shaping_fields: ClassVar[tuple[str, ...]] = ("num_steps", "hidden", "norm_obs")
    """Fields a resumed run may not change: the batch shape, the network sizes, obs normalization."""

    def objective_kwargs(self) -> dict[str, Any]:
        """The clipped objective's settings (`hrl_nested.ppo_objective.ppo_objective`'s keywords), for the
        one-process loss and the torchrun shard's alike."""
        return dict(
            clip_coef=self.clip_coef,
            vf_coef=self.vf_coef,
            ent_coef=self.ent_coef,
            norm_adv=self.norm_adv,
            clip_vloss=self.clip_vloss,
        )

    def validate(self, task: Task | None = None) -> None:
        """Raise `ConfigError` naming the first bad field; with ``task``, also the cross-field checks
        (``num_minibatches`` divides the batch ``num_envs * num_steps``)."""
        sec = {"section": "ppo"}
        positive_int(self.num_steps, "num_steps", **sec)
        finite_float(self.lr, "lr", low=0.0, low_open=True, **sec)
        finite_float(self.gamma, "gamma", low=0.0, high=1.0, **sec)
        finite_float(self.gae_lambda, "gae_lambda", low=0.0, high=1.0, **sec)
        positive_int(self.update_epochs, "update_epochs", **sec)
        positive_int(self.num_minibatches, "num_minibatches", **sec)
        finite_float(self.clip_coef, "clip_coef", low=0.0, low_open=True, **sec)
        finite_float(self.ent_coef, "ent_coef", low=0.0, **sec)
        finite_float(self.vf_coef, "vf_coef", low=0.0, **sec)
        finite_float(self.max_grad_norm, "max_grad_norm", low=0.0, low_open=True, **sec)
        layer_sizes(self.hidden, "hidden", **sec)
        positive_int(self.eval_every, "eval_every", minimum=0, **sec)
        for name in ("stop_at_return", "eval_max_return"):
            if getattr(self, name) is not None:
                finite_float(getattr(self, name), name, **sec)
        modes = ", ".join(CAPTURE_MODES)
        check(self.capture in CAPTURE_MODES, "capture", f"one of {modes}", self.capture, **sec)
        explore_modes = ", ".join(EXPLORE_MODES)
        check(self.explore in EXPLORE_MODES, "explore", f"one of {explore_modes}", self.explore, **sec)
        prob = "a probability in [0, 1]"
        finite_float(self.explore_eps, "explore_eps", low=0.0, high=1.0, what=prob, **sec)
        finite_float(self.explore_zeta_mu, "explore_zeta_mu", low=1.0, low_open=True, **sec)
        positive_int(self.explore_max_duration, "explore_max_duration", **sec)
        if task is not None:
            batch_split(task, self.num_steps, self.num_minibatches, **sec)


Config = PPOConfig  # the name `hrl_nested.algos` expects


def train(task: Task, cfg: PPOConfig, run: Run | None = None) -> dict[str, Any]:
    """Train a PPO agent on ``task``; log through ``run``; return the final summary.

    Args:
        task: env, step budget, number of envs, seed, device, evaluation episodes.
        cfg: PPO hyperparameters.
        run: where metrics, checkpoints and the summary go; None keeps them in memory. When
            ``run.resume_state`` is set, training continues exactly from that checkpoint.

    Returns:
        The summary: ``env_steps``, ``iterations``, ``eval_return_mean`` (and ``eval_success_rate``
        on goal envs), ``eval_time_s`` (all evaluations), ``warmup_s`` (first rollout + first update:
        graph capture and compilation), ``solved`` and ``time_to_solve_s`` with ``stop_at_return``, and
        on a resumed run ``env_state_restored``: False for an env whose state lives in a simulator (a
        wrapped Gymnasium env), whose episodes then restart from a seed derived from the iteration.

    Raises:
        ConfigError: a bad value in ``task`` or ``cfg``, or an env that cannot be made (before any file
            is written).
        CheckpointError: ``run.resume_state`` lacks a key or does not fit these objects (before the run
            directory changes).
    """
    task.validate()
    cfg.validate(task)
    if run is None:  # no files, no W&B, no progress bar
        run = Run(None, config={}, algo="ppo", env=task.env, seed=task.seed, total_steps=0, progress=False)
    world = distributed.current_world()  # torchrun: this rank's envs, see hrl_nested.distributed
    device = distributed.rank_device(resolve_device(task.device), world)
    torch.manual_seed(task.seed)

    # ---- setup: envs (SAME_STEP, so a batch never holds a dummy reset step), agent, optimizer
    env = _make_env(task.env, distributed.local_num_envs(task.num_envs, world), device)
    eval_env = _make_env(task.env, task.eval_episodes, device, **eval_env_kwargs(task))
    videos = VideoCapture.for_run(task, run) if world.is_main else None  # None unless --capture-video
    agent = ActorCritic(env.single_observation_space, env.single_action_space, hidden=cfg.hidden).to(device)
    distributed.broadcast_module(agent, world)
    distributed.seed_rank(task.seed, world)  # each rank samples its own actions
    fused_adam = device.type in ("cuda", "cpu")  # one kernel for all parameters, not a Python loop over them
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.lr, eps=1e-5, fused=fused_adam)
    obs_normalizer = ObsNormalizer(env.single_observation_space, device=device) if cfg.norm_obs else None
    # A simulator's state (a wrapped Gymnasium env) cannot be snapshotted, so it can neither be rewound
    # after a capture's warm-up nor checkpointed: such an env runs an eager rollout.
    env_has_state = envs.supports_state(env)
    check(
        env_has_state or cfg.capture in ("auto", "none"),
        "capture",
        f"auto or none for {task.env} (its state lives in a simulator: a capture cannot rewind it)",
        cfg.capture,
        section="ppo",
    )
    capture = cfg.capture if env_has_state else "none"
    explore = _exploration(cfg, env)
    collect = make_rollout(
        env,
        _policy_with_obs_norm(agent, obs_normalizer, explore),
        cfg.num_steps,
        capture=capture,
        reset_carry=None if explore is None else end_runs,
    )
    # The first rollout and update pay for CUDA-graph capture and compilation: timed on their own.
    warmup: dict[str, float] = {}
    timed_collect = _time_first_call(collect, warmup, "rollout", device)
    update_step = _time_first_call(_make_update_step(agent, optimizer, cfg), warmup, "update", device)
    sharded = None
    if world.size > 1:  # minibatches of the union batch, all-reduced gradients
        sharded = ppo_distributed.ShardedUpdate(agent, optimizer, cfg, world, task.num_envs, task.seed)
        update_step = _time_first_call(sharded.step, warmup, "update", device)

    batch_size = task.num_envs * cfg.num_steps
    minibatch_size = batch_size // cfg.num_minibatches
    num_iterations = max(1, math.ceil(task.total_steps / batch_size))

    obs, _ = distributed.reset_shard(env, task.seed, task.num_envs, world)
    carry = None if explore is None else _initial_carry(agent, env.num_envs, device)
    start_iteration, env_steps, last_eval = 0, 0, {}
    resumed: dict[str, Any] = {}
    if run.resume_state is not None:
        resume_state = ppo_distributed.rank_view(run.resume_state, world, run.checkpoint_path)
        start_iteration, env_steps, restored_obs, last_eval = _restore(
            resume_state, run.checkpoint_path, agent, optimizer, obs_normalizer, env, collect, device
        )
        if sharded is not None:
            sharded.load_state_dict(resume_state["minibatch"])
        resumed["env_state_restored"] = restored_obs is not None
        if restored_obs is not None:
            obs = restored_obs
            if carry is not None and resume_state.get("explore_carry") is not None:
                carry = {k: v.to(device) for k, v in resume_state["explore_carry"].items()}
        else:  # the learner continues; the simulator's episodes start afresh, from a seed of their own
            shard = lambda s: distributed.reset_shard(env, s, task.num_envs, world)  # noqa: E731
            obs = reset_for_resume(env, task.env, task.seed, start_iteration, reset=shard)
    run.start()  # the run directory changes only now, with the checkpoint (if any) loaded
    solved_at, eval_time = None, 0.0

    for iteration in range(start_iteration, num_iterations):
        t_iter = time.perf_counter()
        if cfg.anneal_lr:
            optimizer.param_groups[0]["lr"] = cfg.lr * (1.0 - iteration / num_iterations)

        # ---- rollout: T steps x N envs, no host sync inside
        params = _rollout_params(agent, obs_normalizer)
        with torch.no_grad():
            result = timed_collect(params, obs, carry)
        batch, obs, carry = result.batch, result.obs, result.carry
        env_steps += batch_size

        # ---- advantages: V of the true next obs bootstraps truncations, never terminations
        with torch.no_grad():
            b_obs = _normalized(batch.obs, obs_normalizer)
            b_next_obs = _normalized(batch.next_obs, obs_normalizer)
            next_values = agent.value(b_next_obs)
            advantages, returns = gae(
                batch.rewards,
                batch.values,
                next_values,
                batch.terminated,
                batch.truncated,
                cfg.gamma,
                cfg.gae_lambda,
            )
        if obs_normalizer is not None:  # after the batch is normalized with the stats its rollout used
            obs_normalizer.update(batch.obs, reduce=distributed.moments_reducer(world))
        columns = {
            "obs": b_obs,
            "actions": batch.actions,
            "logprobs": batch.logprobs,
            "values": batch.values,
            "advantages": advantages,
            "returns": returns,
        }
        if explore is not None:  # exploratory steps: in GAE and the value loss, not in the policy loss
            columns["policy_mask"] = ~batch.carry["off_policy"]
        flat = tree_map(lambda t: t.reshape(-1, *t.shape[2:]), columns)  # this rank's T x N/G rows

        # ---- update: epochs x minibatches of the clipped PPO objective
        if sharded is not None:  # torchrun: the union batch's minibatches (hrl_nested.algos.ppo_distributed)
            stats = sharded.update(flat, update_step)
            result = distributed.sum_episodes(result, world)
        else:
            stats = torch.zeros(6, device=device)
            for _epoch in range(cfg.update_epochs):
                perm = torch.randperm(batch_size, device=device)
                for start in range(0, batch_size, minibatch_size):
                    idx = perm[start : start + minibatch_size]
                    mb = tree_map(lambda t, idx=idx: t[idx], flat)
                    stats += update_step(mb)
            stats /= cfg.update_epochs * cfg.num_minibatches

        # ---- log (the iteration's one host copy), evaluate, checkpoint
        env.raise_pending()  # deferred invalid-action checks (validate=True) surface here; free if none
        row: dict[str, Any] = {
            "iteration": iteration + 1,
            "env_steps": env_steps,
            **_to_host(stats, result),
            "sps": round(batch_size / (time.perf_counter() - t_iter)),
            "lr": optimizer.param_groups[0]["lr"],
        }
        if explore is not None:  # equal shards: the union's fraction is the ranks' mean
            off = batch.carry["off_policy"].float().mean().reshape(1)
            row["explore_fraction"] = (distributed.all_reduce_sum(off, world) / world.size).item()
        last = iteration + 1 == num_iterations
        if world.is_main and (last or (cfg.eval_every > 0 and (iteration + 1) % cfg.eval_every == 0)):
            t_eval = time.perf_counter()
            hopeless = None
            if cfg.stop_at_return is not None and cfg.eval_max_return is not None:
                hopeless = (cfg.stop_at_return, cfg.eval_max_return)
            last_eval = evaluate(
                agent,
                eval_env,
                obs_normalizer,
                seed=task.seed + 7919 * (iteration + 1),
                stop_if_below=hopeless,
                video=None if videos is None else videos.clip(env_steps),
            )
            row.update(last_eval, eval_s=time.perf_counter() - t_eval)
            eval_time += row["eval_s"]
        row = run.log(row)

        if cfg.stop_at_return is not None and row.get("eval_return_mean", -math.inf) >= cfg.stop_at_return:
            solved_at = row
        # rank 0 evaluates and keeps the clock: its decisions hold for every rank
        save, solved = distributed.broadcast_flags(
            [run.checkpoint_due() or last or solved_at is not None, solved_at is not None], world, device
        )
        if save:
            state = _checkpoint_state(
                iteration + 1, env_steps, agent, optimizer, obs_normalizer, env, obs, collect, last_eval
            )
            has_state = state["obs"] is not None
            state = {**state, "explore_carry": carry if has_state else None}
            if sharded is not None:  # every rank's envs and RNG, gathered into rank 0's checkpoint
                state = ppo_distributed.gather_checkpoint(state, world, sharded)
            if state is not None:
                run.save_checkpoint(state)
        if solved:
            break

    summary = {
        "iterations": run.last_row.get("iteration", start_iteration),
        **last_eval,
        **resumed,
        "eval_time_s": eval_time,
        "warmup_s": sum(warmup.values()),
    }
    if cfg.stop_at_return is not None:
        summary["solved"] = solved_at is not None
        summary["time_to_solve_s"] = None if solved_at is None else solved_at["wall_s"]
    return run.finish(summary)


def ppo_loss(
    agent: ActorCritic, mb: dict[str, torch.Tensor], cfg: PPOConfig
) -> tuple[torch.Tensor, PPOStats]:
    """The PPO objective on a minibatch, ``L = L_clip + vf_coef * L_V - ent_coef * H``: the one
    implementation, `hrl_nested.ppo_objective.ppo_objective`, on the agent's parameter dict.

    Returns:
        ``(loss, stats)``: the scalar to minimize and the detached `PPOStats` (``policy_loss``,
        ``value_loss``, ``entropy``, ``approx_kl``, ``clip_fraction``; ``stats[0]`` still works).
    """

    def dist_fn(params: dict[str, torch.Tensor], obs: Any):
        dist_params, v = actor_critic_apply(agent, params, obs)
        return agent.distribution(dist_params), v

    return ppo_objective(dist_fn, dict(agent.named_parameters()), mb, **cfg.objective_kwargs())


def _make_update_step(agent: ActorCritic, optimizer: torch.optim.Optimizer, cfg: PPOConfig):
    """``update_step(mb) -> stats``: one gradient step; with ``cfg.compile`` the loss's forward and backward
    are compiled (AOTAutograd), while the fused Adam step is already a single kernel."""
    loss_fn = torch.compile(ppo_loss) if cfg.compile else ppo_loss
    params = list(agent.parameters())

    def update_step(mb: dict[str, torch.Tensor]) -> torch.Tensor:
        loss, stats = loss_fn(agent, mb, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm, foreach=True)
        optimizer.step()
        return torch.stack([*stats, grad_norm.detach().reshape(())])

    return update_step


@torch.inference_mode()
@renamed_kwargs(rms="obs_normalizer")
def evaluate(
    agent: ActorCritic,
    env: TorchVectorEnv,
    obs_normalizer: ObsNormalizer | None,
    *,
    seed: int,
    max_steps: int = 10_000,
    stop_if_below: tuple[float, float] | None = None,
    video: EpisodeClip | None = None,
) -> dict[str, float]:
    """One episode per eval env with the deterministic policy (the distribution's mode).

    A lean loop (it is most of a CartPole run's time on CPU): the observation statistics are read
    once, the actor alone runs straight from the parameters (`actor_critic_apply`), and a Categorical's
    mode is the argmax of the raw logits (the same action as ``Categorical(logits).mode()``).

    Args:
        agent: the actor-critic (only the actor is used).
        env: a SAME_STEP env with one env per episode to evaluate; reset here with ``seed``.
        obs_normalizer: the `ObsNormalizer` whose statistics the agent was trained with, or None
            (``rms=``, its old name, still works and warns).
        seed: reset seed (a fresh one per evaluation, so successive evaluations see new starts).
        max_steps: cap for envs without a time limit.
        stop_if_below: ``(target, max_return)``: stop as soon as the mean return can no longer reach
            ``target``, i.e. when ``sum(finished returns) + (unfinished episodes) * max_return <
            n * target``. The outcome "mean < target" is then certain; the returned mean is the partial
            one (unfinished episodes count what they have so far) and ``eval_stopped_early`` is 1.0.

    Returns:
        ``eval_return_mean``, ``eval_length_mean`` and, on goal envs (or ``info["is_success"]`` /
        ``info["success"]``),
        ``eval_success_rate`` (success on an episode's last step, see
        `hrl_nested.evaluation.step_success`).
    """
    params = dict(agent.named_parameters())
    stats = None if obs_normalizer is None else obs_normalizer.stats()
    discrete = agent.log_std is None

    def act(obs: Any, carry: None) -> tuple[torch.Tensor, None]:
        x = obs if stats is None else obs_normalizer.normalize(obs, stats)
        out, _ = actor_critic_apply(agent, params, x, critic=False)
        if discrete:
            return out.argmax(-1), None
        dist = agent.distribution(out)
        return dist.env_action(dist.mode()), None

    return run_eval_episodes(
        env, act, seed=seed, max_steps=max_steps, stop_if_below=stop_if_below, video=video
    )


# ---------------------------------------------------------------------------- helpers
def _to_host(stats: torch.Tensor, result: Any) -> dict[str, float]:
    """The update's mean statistics and the finished episodes' means, in one device-to-host copy."""
    episodes = (result.episode_return_sum, result.episode_length_sum, result.episode_count)
    values = torch.cat([stats, torch.stack([x.to(stats.dtype) for x in episodes])]).tolist()
    return metrics_row(values)


STAT_NAMES = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm")


def metrics_row(values: list[float]) -> dict[str, Any]:
    """A metrics row from the host values ``[*STAT_NAMES, episode return sum, length sum, count]``: the
    statistics, ``episodes`` and, when any episode ended, the mean episode return and length."""
    out = dict(zip(STAT_NAMES, values[:6]))
    ret_sum, len_sum, count = values[6:]
    out["episodes"] = int(count)
    if count > 0:
        out["episode_return_mean"] = ret_sum / count
        out["episode_length_mean"] = len_sum / count
    return out


def _time_first_call(fn, into: dict[str, float], name: str, device: torch.device):
    """``fn``, with the duration of its first call (synchronized on CUDA) stored in ``into[name]``."""

    def timed(*args, **kwargs):
        if name in into:
            return fn(*args, **kwargs)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        into[name] = time.perf_counter() - t0
        return out

    return timed


_success = step_success  # the rule's old home: callers and tests import it from here


def _normalized(obs: Any, obs_normalizer: ObsNormalizer | None) -> Any:
    return obs if obs_normalizer is None else obs_normalizer.normalize(obs)


def _rollout_params(agent: ActorCritic, obs_normalizer: ObsNormalizer | None) -> dict[str, torch.Tensor]:
    """The agent's parameters (detached views) plus the obs statistics the rollout should use: inputs,
    so that a captured rollout sees this iteration's values."""
    params = {k: v.detach() for k, v in agent.named_parameters()}
    if obs_normalizer is not None:
        params.update({f"obs_norm.{k}": v for k, v in obs_normalizer.stats().items()})
    return params


def _exploration(cfg: PPOConfig, env: Any) -> Exploration | None:
    """The run's `Exploration` (None for ``explore="none"``); an action space it cannot draw random
    actions in is a `ConfigError` on ``--ppo.explore``."""
    if cfg.explore == "none":
        return None
    try:
        return Exploration(
            cfg.explore,
            cfg.explore_eps,
            cfg.explore_zeta_mu,
            cfg.explore_max_duration,
            env.single_action_space,
        )
    except ValueError as e:
        raise ConfigError(
            "explore", "repeat or none for this action space", cfg.explore, section="ppo", note=str(e)
        ) from None


def _initial_carry(agent: ActorCritic, num_envs: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The exploration carry with no run open, its held action shaped and typed like the policy's."""
    if agent.log_std is None:
        like = torch.zeros(num_envs, dtype=torch.int64, device=device)
    else:
        like = torch.zeros(num_envs, agent.log_std.shape[0], dtype=agent.log_std.dtype, device=device)
    return initial_explore_carry(num_envs, like)


def _policy_with_obs_norm(
    agent: ActorCritic, obs_normalizer: ObsNormalizer | None, explore: Exploration | None = None
):
    """``actor_critic_policy(agent, explore)``, normalizing obs first with the statistics in the params."""
    policy = actor_critic_policy(agent, explore)
    if obs_normalizer is None:
        return policy

    def policy_fn(params: dict[str, torch.Tensor], obs: Any, carry: Any) -> PolicyOutput:
        stats = {k[len("obs_norm.") :]: v for k, v in params.items() if k.startswith("obs_norm.")}
        net = {k: v for k, v in params.items() if not k.startswith("obs_norm.")}
        return policy(net, obs_normalizer.normalize(obs, stats), carry)

    return policy_fn


def _checkpoint_state(
    iteration, env_steps, agent, optimizer, obs_normalizer, env, obs, collect, last_eval
) -> dict:
    # An env whose state lives in a simulator has none to save: its run resumes with fresh episodes.
    has_state = envs.supports_state(env)
    return {
        "iteration": iteration,
        "env_steps": env_steps,
        "agent": agent.state_dict(),
        "optimizer": optimizer.state_dict(),
        "obs_norm": None if obs_normalizer is None else obs_normalizer.state_dict(),
        "env": dataclasses.asdict(env.get_state()) if has_state else None,
        "obs": obs if has_state else None,
        "rollout": collect.state_dict(),
        "last_eval": last_eval,
    }


_REQUIRED = ("iteration", "env_steps", "agent", "optimizer", "obs_norm", "env", "obs", "rollout", "rng")


def _restore(
    state, path, agent, optimizer, obs_normalizer, env, collect, device
) -> tuple[int, int, Any, dict]:
    """Load a checkpoint into the live objects; returns ``(iteration, env_steps, obs, last_eval)``, with
    ``obs`` None when the env's state was not restored (an env without ``get_state``: fresh episodes).

    Raises:
        CheckpointError: a key is missing, or a saved tensor does not fit this run (naming the file).
    """
    if state.get("multiseed"):  # ppo_multiseed saves each agent, not the shared env batch
        raise CheckpointError(
            f"checkpoint {path} is one seed of a --num-seeds K > 1 run, which cannot be resumed (its envs' "
            "state is not saved); train the seed again, or load its 'agent' state dict for evaluation"
        )
    require_keys(state, _REQUIRED, path)
    if (obs_normalizer is None) != (state["obs_norm"] is None):
        raise CheckpointError(
            f"checkpoint {path}: saved with norm_obs={state['obs_norm'] is not None}, this run has "
            f"norm_obs={obs_normalizer is not None}; resume with the run's own --ppo.norm-obs"
        )
    restore_env = envs.supports_state(env) and state["env"] is not None and state["obs"] is not None
    with checkpoint_fits(path, "; it was written by a run with other network sizes, batch shape or env"):
        agent.load_state_dict(state["agent"])
        optimizer.load_state_dict(state["optimizer"])
        if obs_normalizer is not None:
            obs_normalizer.load_state_dict(state["obs_norm"])
        obs = None
        if restore_env:
            env.set_state(EnvState(**state["env"]))
            collect.load_state_dict(state["rollout"])
            obs = state["obs"]
            obs = {k: v.to(device) for k, v in obs.items()} if isinstance(obs, dict) else obs.to(device)
        set_rng_state(state["rng"])
    return int(state["iteration"]), int(state["env_steps"]), obs, dict(state.get("last_eval") or {})


def _make_env(env_id: str, num_envs: int, device: torch.device, **kwargs: Any) -> Any:
    """A SAME_STEP env for training or evaluation; an env that cannot be made is a `ConfigError` on --env.
    ``kwargs`` go to the env (``render_mode`` for ``--capture-video``)."""
    try:
        return envs.make(
            env_id, num_envs, device=device, autoreset_mode="same_step", validate=False, **kwargs
        )
    except Exception as e:  # whatever a user's env constructor raises (TypeError for a non-env class, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(
            "env",
            "a Gymnasium id, 'module:EnvId' or 'package.module:Class'",
            env_id,
            note=f"{type(e).__name__}: {first}" if first else type(e).__name__,
        ) from None
