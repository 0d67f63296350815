"""Nested HRL: a manager sets goals for goal-conditioned subpolicies, and the shaping of their reward
is learned through their inner PPO updates (``--algo nested-hrl``).

The loop, written out top to bottom (`train` -> `run_nested`)::

    for iteration:
        rollout            T steps x N envs; the carry holds each env's open segment (goal, subpolicy,
                           manager log-prob/value, start obs, running return), see `hrl_nested.hierarchy`
        prepare            segment ends (horizon | subgoal reached | episode end: a third signal),
                           extrinsic GAE, the manager's SMDP transitions (`hrl_nested.segments`)
        inner + outer      n_inner PPO steps of the subpolicies θ on φ-shaped advantages; φ descends
                           -J_ext(θ'(φ)) by `hrl_nested.hypergrad.hypergrad` (unrolled | truncated | cg |
                           neumann | es); a non-finite hypergradient skips the whole step
                           (`hrl_nested.algos.nested_steps`)
        critics            V_w and V_ext, ordinary steps on detached targets
        manager            PPO on the SMDP transitions, every manager_every iterations

Papers: HIRO (Nachum et al. 2018) for the manager/subgoal structure and the negative-distance
shaping `--algo hrl` keeps fixed; LIRPG (Zheng et al. 2018) for learning an intrinsic reward through
the policy's update (`--algo lirpg`); meta-gradient RL (Xu et al. 2018) for the outer gradient through
the inner update. `hrl` and `lirpg` run this same loop with other switches.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, ClassVar, Literal

import torch

import envs
from envs.core import EnvState
from hrl_nested import distributed, optim
from hrl_nested.algos import (
    ConfigError,
    Task,
    batch_split,
    check,
    finite_float,
    layer_sizes,
    nested_distributed,
    positive_int,
    ppo_distributed,
    resolve_device,
)
from hrl_nested.algos import nested_parts as parts
from hrl_nested.algos import nested_steps as steps
from hrl_nested.algos.nested_parts import (
    _REQUIRED,
    _batch_stats,
    _checkpoint,
    _restore,
    _Timer,
    _to,
    _to_host,
)
from hrl_nested.algos.ppo import _make_env
from hrl_nested.hierarchy import Hierarchy, goal_bounds
from hrl_nested.nested_objective import clip_by_global_norm
from hrl_nested.rollout import CAPTURE_MODES, make_rollout
from hrl_nested.shaping import init_free_shaping, init_goal_shaping, init_scalar_shaping, phi_summary
from hrl_nested.tracking import Run, checkpoint_fits, require_keys, reset_for_resume, set_rng_state
from hrl_nested.video import VideoCapture, eval_env_kwargs

HYPERGRADS = ("unrolled", "truncated", "cg", "neumann", "es")
OUTER_BATCHES = ("same", "next")
IMPLICIT_PROX = 1.0  # cg and neumann's default proximal weight (MetaFields.prox)
SHAPINGS = ("goal", "scalar")


@dataclasses.dataclass(frozen=True)
class CommonConfig:
    """Rollout, subpolicies and critics: shared by ``nested-hrl``, ``hrl`` and ``lirpg``."""

    num_steps: int = 64
    """Steps per env per rollout (T); a batch is ``num_envs * num_steps`` transitions."""
    gamma: float = 0.99
    """Discount of the subpolicies (and of the extrinsic advantages of the outer loss)."""
    gae_lambda: float = 0.95
    """GAE lambda of the subpolicies."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of every network (subpolicies, critics, manager)."""
    norm_obs: bool = True
    """Normalize Box observation leaves by running statistics (inputs of the policy, never parameters)."""
    sub_lr: float = 1e-3
    """Learning rate of the subpolicies' inner Adam (its state carries over between iterations)."""
    n_inner: int = 8
    """Differentiable inner PPO steps per iteration, each on one minibatch."""
    num_minibatches: int = 4
    """Minibatches per pass over the batch (inner steps cycle through fresh permutations)."""
    clip_coef: float = 0.2
    """PPO's surrogate clipping epsilon (subpolicies and manager)."""
    ent_coef: float = 0.0
    """Entropy bonus of the subpolicies."""
    norm_adv: bool = True
    """Normalize the shaped advantages per minibatch, as flat PPO does."""
    max_grad_norm: float = 0.5
    """Clip the global gradient norm of every inner and ordinary step, as flat PPO does."""
    critic_lr: float = 1e-3
    """Learning rate of the two critics V_w and V_ext."""
    critic_epochs: int = 2
    """Passes of the critics over each batch."""
    eval_every: int = 4
    """Evaluate every this many iterations (and always after the last); 0: only at the end."""
    capture: str = "auto"
    """Rollout capture (``auto``: a CUDA graph on GPU, eager on CPU); see `hrl_nested.rollout`."""

    state_shaping_fields: ClassVar[tuple[str, ...]] = ("num_steps", "hidden", "norm_obs")
    """Fields a resumed run may not change: the batch shape, the network sizes, obs normalization."""
    section: ClassVar[str]
    """The algorithm's section of the command line (``--<section>.<field>``), named by its errors."""

    def validate(self, task: Task | None = None) -> None:
        """Raise `ConfigError` naming the first bad field (``--<section>.<field>``): the common fields first,
        then those of each part the algorithm's config adds (`ManagerConfig`, `MetaFields`, its own)."""
        self._validate_fields({"section": self.section}, task)

    def _validate_fields(self, sec: dict[str, str], task: Task | None) -> None:
        """This part's checks; a part that adds fields calls ``super()`` first, then checks its own."""
        positive_int(self.num_steps, "num_steps", **sec)
        for name in ("gamma", "gae_lambda"):
            finite_float(getattr(self, name), name, low=0.0, high=1.0, **sec)
        layer_sizes(self.hidden, "hidden", **sec)
        for name in ("sub_lr", "clip_coef", "max_grad_norm", "critic_lr"):
            finite_float(getattr(self, name), name, low=0.0, low_open=True, **sec)
        finite_float(self.ent_coef, "ent_coef", low=0.0, **sec)
        for name in ("n_inner", "num_minibatches", "critic_epochs"):
            positive_int(getattr(self, name), name, **sec)
        positive_int(self.eval_every, "eval_every", minimum=0, **sec)
        check(
            self.capture in CAPTURE_MODES,
            "capture",
            f"one of {', '.join(CAPTURE_MODES)}",
            self.capture,
            **sec,
        )
        if task is not None:
            batch_split(task, self.num_steps, self.num_minibatches, **sec)


@dataclasses.dataclass(frozen=True)
class ManagerConfig(CommonConfig):
    """Adds the manager and its goal segments (``nested-hrl`` and ``hrl``)."""

    goal_horizon: int = 10
    """A segment ends after this many steps (or when its subgoal is reached, or its episode ends)."""
    goal_tolerance: float = 0.1
    """A subgoal counts as reached within this L2 distance, in goal-space units."""
    relative_goals: bool = False
    """Goals relative to the achieved goal (manager proposes offsets; subpolicies see ``g - ag``)."""
    goal_scale: float = 1.0
    """Bounds ``[-goal_scale, goal_scale]`` for goal dims the task leaves unbounded (e.g. CartPole's
    velocities); bounded dims use the task's goal space. The run prints which."""
    num_subpolicies: int = 1
    """Subpolicies K (stacked); the manager picks one per segment when K > 1."""
    manager_lr: float = 3e-4
    """Learning rate of the manager's Adam."""
    manager_every: int = 1
    """Update the manager every this many iterations, on the segments that ended since its last update."""
    manager_epochs: int = 2
    """Passes of the manager's PPO over its transitions."""
    manager_minibatches: int = 1
    """Minibatches per manager pass."""
    manager_gamma: float = 0.99
    """Discount of the manager's SMDP (per env step: a segment of length L discounts by gamma^L)."""
    manager_lambda: float = 0.95
    """GAE lambda over each env's chain of segments."""
    manager_ent_coef: float = 0.01
    """Entropy bonus of the manager (goal exploration)."""

    state_shaping_fields: ClassVar[tuple[str, ...]] = (*CommonConfig.state_shaping_fields, "num_subpolicies")
    """Fields a resumed run may not change: the common ones and K, which shapes θ and the critics' input."""

    def _validate_fields(self, sec: dict[str, str], task: Task | None) -> None:
        super()._validate_fields(sec, task)
        for name in (
            "goal_horizon",
            "num_subpolicies",
            "manager_every",
            "manager_epochs",
            "manager_minibatches",
        ):
            positive_int(getattr(self, name), name, **sec)
        for name in ("goal_tolerance", "goal_scale", "manager_lr"):
            finite_float(getattr(self, name), name, low=0.0, low_open=True, **sec)
        for name in ("manager_gamma", "manager_lambda"):
            finite_float(getattr(self, name), name, low=0.0, high=1.0, **sec)
        finite_float(self.manager_ent_coef, "manager_ent_coef", low=0.0, **sec)


@dataclasses.dataclass(frozen=True)
class MetaFields:
    """The outer loop: φ and its hypergradient (``nested-hrl`` and ``lirpg``)."""

    meta_shaping_fields: ClassVar[tuple[str, ...]] = ("phi_hidden", "meta_ent_coef", "meta_lr")
    """The fields of this part that shape φ (added to the algorithm's ``state_shaping_fields``)."""

    hypergrad: Literal["unrolled", "truncated", "cg", "neumann", "es"] = "truncated"
    """Hypergradient estimator of d(outer loss)/dφ through the inner steps."""
    truncate: int = 2
    """``truncated``: back-propagate through the last this many inner steps."""
    cg_iters: int = 10
    """``cg``: conjugate-gradient iterations."""
    cg_tol: float = 1e-10
    """``cg``: residual tolerance."""
    neumann_terms: int = 10
    """``neumann``: terms of the series ``α Σ (I - αH)^j``."""
    neumann_alpha: float | None = None
    """``neumann``: α; None uses ``sub_lr``. The series converges only for ``α < 2/(prox + ||H||)``: the run
    estimates ``||H||`` and says so when it does not."""
    es_samples: int = 4
    """``es``: antithetic pairs per estimate."""
    es_sigma: float = 0.01
    """``es``: perturbation scale of φ."""
    prox: float | None = None
    """λ of the proximal term ``λ/2 ||θ - θ_start||²`` in the inner loss (for cg: exactly damping λ); keeps
    the implicit system well-posed. 0: off. None: 1.0 for cg and neumann, 0 for the others (measured on
    FourRooms: with λ = 0, cg met non-positive curvature at its first iteration on most early iterations and
    returned a zero hypergradient, live cosine to unrolled 0.33; with λ = 1, 0.999)."""
    phi_lr: float = 1e-3
    """Learning rate of the outer Adam on φ."""
    phi_every: int = 1
    """Update φ every this many iterations (plain inner steps in between)."""
    phi_hidden: tuple[int, ...] = (32,)
    """Hidden sizes of the potential Φ (or of LIRPG's intrinsic-reward MLP)."""
    hypergrad_max_norm: float = 1.0
    """Clip the hypergradient's global norm to this."""
    meta_ent_coef: bool = False
    """Meta-learn the subpolicies' entropy coefficient (log-parameterized) alongside φ."""
    meta_lr: bool = False
    """Meta-learn the subpolicies' log learning rate (unrolled, truncated, es only: an implicit gradient of
    a step size does not exist). The inner optimizer is then the engine's Adam without gradient clipping."""
    check_every: int = 0
    """Every this many iterations, log the cosine between the estimator and the exact unrolled
    hypergradient of the same batch (against es for ``unrolled``) as ``hypergrad_cosine``; 0: never."""
    outer_batch: Literal["same", "next"] = "same"
    """The batch of the outer loss ``-J_ext(θ')``: ``same``, the batch the inner steps trained on (LIRPG);
    ``next``, the next rollout, collected by θ' itself (online cross-validation, Xu et al. 2018): iteration
    k's inner steps are recomputed from their saved start when batch k+1 arrives, and differentiated back
    to φ (the first iteration has no hypergradient yet)."""

    def resolved_prox(self) -> float:
        """The proximal weight λ in use: `prox`, or its method default when `prox` is None."""
        if self.prox is not None:
            return float(self.prox)
        return IMPLICIT_PROX if self.hypergrad in ("cg", "neumann") else 0.0

    def _validate_fields(self, sec: dict[str, str], task: Task | None) -> None:
        super()._validate_fields(sec, task)  # a mixin: super() is the config's `CommonConfig` part
        check(
            self.hypergrad in HYPERGRADS,
            "hypergrad",
            f"one of {', '.join(HYPERGRADS)}",
            self.hypergrad,
            **sec,
        )
        for name in ("truncate", "cg_iters", "neumann_terms", "es_samples", "phi_every"):
            positive_int(getattr(self, name), name, **sec)
        positive_int(self.check_every, "check_every", minimum=0, **sec)
        finite_float(self.cg_tol, "cg_tol", low=0.0, **sec)
        check(
            self.outer_batch in OUTER_BATCHES,
            "outer_batch",
            f"one of {', '.join(OUTER_BATCHES)}",
            self.outer_batch,
            **sec,
        )
        if self.prox is not None:
            finite_float(self.prox, "prox", low=0.0, **sec)
        for name in ("es_sigma", "phi_lr", "hypergrad_max_norm"):
            finite_float(getattr(self, name), name, low=0.0, low_open=True, **sec)
        if self.neumann_alpha is not None:
            finite_float(self.neumann_alpha, "neumann_alpha", low=0.0, low_open=True, **sec)
        ok = all(isinstance(h, int) and h >= 1 for h in self.phi_hidden)
        check(ok, "phi_hidden", "positive layer sizes", tuple(self.phi_hidden), **sec)
        if self.meta_lr:
            check(
                self.hypergrad in ("unrolled", "truncated", "es"),
                "meta_lr",
                "False with --*.hypergrad cg or neumann",
                self.meta_lr,
                note=f"{self.hypergrad} has no gradient for a hyperparameter that only sets the step size; "
                "use unrolled, truncated or es",
                **sec,
            )


@dataclasses.dataclass(frozen=True)
class NestedHRLConfig(MetaFields, ManagerConfig):
    """Nested HRL: manager + subpolicies + learned shaping φ (defaults sized for a 2-core CPU)."""

    shaping: Literal["goal", "scalar"] = "goal"
    """What φ is: ``goal`` (a potential MLP plus the distance and bonus weights, `hrl_nested.shaping.
    goal_shaping`) or ``scalar`` (one learned weight on `--algo hrl`'s fixed distance shaping,
    `hrl_nested.shaping.scalar_shaping`: the control for what a learned shaping function adds)."""

    state_shaping_fields: ClassVar[tuple[str, ...]] = (
        *ManagerConfig.state_shaping_fields,
        *MetaFields.meta_shaping_fields,
        "shaping",
    )
    """Fields a resumed run may not change (they shape the checkpointed tensors)."""
    section: ClassVar[str] = "nested_hrl"

    def _validate_fields(self, sec: dict[str, str], task: Task | None) -> None:
        super()._validate_fields(sec, task)
        check(self.shaping in SHAPINGS, "shaping", f"one of {', '.join(SHAPINGS)}", self.shaping, **sec)


Config = NestedHRLConfig


def train(task: Task, cfg: NestedHRLConfig, run: Run | None = None) -> dict[str, Any]:
    """Train nested HRL on ``task``; log through ``run``; return the summary (see `run_nested`)."""
    return run_nested(task, cfg, run, algo="nested-hrl", manager=True, shaping=cfg.shaping)


def run_nested(
    task: Task, cfg: Any, run: Run | None, *, algo: str, manager: bool, shaping: str
) -> dict[str, Any]:
    """The nested loop shared by ``nested-hrl`` (manager, learned goal shaping, or with ``shaping="scalar"``
    one learned weight on the fixed shaping), ``hrl`` (manager, fixed shaping: φ never updated) and
    ``lirpg`` (no manager, learned free-form intrinsic reward).

    Returns:
        The summary: ``env_steps``, ``iterations``, ``eval_return_mean`` (``eval_success_rate`` on goal
        envs), ``outer_skipped``, ``goal_bounds`` (where the manager's goal bounds came from).
    """
    task.validate()
    cfg.validate(task)
    learn_phi = shaping != "fixed"
    if run is None:
        run = Run(None, config={}, algo=algo, env=task.env, seed=task.seed, total_steps=0, progress=False)
    world = distributed.current_world()  # torchrun: see hrl_nested.algos.nested_distributed
    device = distributed.rank_device(resolve_device(task.device), world)
    torch.manual_seed(task.seed)

    # ---- setup: envs, networks, φ, optimizers, rollout
    env = _make_env(task.env, distributed.local_num_envs(task.num_envs, world), device)
    eval_env = _make_env(task.env, task.eval_episodes, device, **eval_env_kwargs(task))
    videos = VideoCapture.for_run(task, run) if world.is_main else None  # None unless --capture-video
    h = _hierarchy(env, cfg, manager, device)
    inner_opt = clip_by_global_norm(optim.adam(cfg.sub_lr, eps=1e-5, eps_root=1e-16), cfg.max_grad_norm)
    phi = _init_phi(h, cfg, shaping, device)
    shards = None
    if world.size > 1:  # every rank starts from rank 0's networks; each samples its own actions
        h.theta0 = distributed.broadcast_tensors(h.theta0, world)
        phi = distributed.broadcast_tensors(phi, world)
        for module in (h.critics, h.manager):
            if module is not None:
                distributed.broadcast_module(module, world)
        distributed.seed_rank(task.seed, world)
        shards = nested_distributed.Shards(world, task.num_envs, cfg.num_steps, task.seed)
    outer_opt = optim.adam(cfg.phi_lr if learn_phi else 0.0)  # fixed shaping: never stepped
    learner = parts.LearnerState(dict(h.theta0), inner_opt.init(h.theta0), phi, outer_opt.init(phi))
    critic_opt = torch.optim.Adam(h.critics.parameters(), lr=cfg.critic_lr, eps=1e-5)
    mgr_opt = (
        None if h.manager is None else torch.optim.Adam(h.manager.parameters(), lr=cfg.manager_lr, eps=1e-5)
    )
    capture = cfg.capture if envs.supports_state(env) or cfg.capture != "auto" else "none"
    collect = make_rollout(env, h.policy_fn(), cfg.num_steps, capture=capture, reset_carry=h.reset_carry)
    reward_fn = parts.reward_fn_for(shaping, cfg.gamma)
    batch_size = task.num_envs * cfg.num_steps
    num_iterations = max(1, math.ceil(task.total_steps / batch_size))

    obs, _ = distributed.reset_shard(env, task.seed, task.num_envs, world)
    loop = parts.LoopState(0, 0, obs, h.initial_carry(obs), {}, 0, [])
    if run.resume_state is not None:
        loop, learner = _resume(run, task, h, env, collect, critic_opt, mgr_opt, device, shards)
    if h.goal is not None and world.is_main:
        print(f"{algo}: goal bounds from {h.goal.source}", flush=True)
    run.start()
    env_steps, obs, carry = loop.env_steps, loop.obs, loop.carry
    last_eval, outer_skipped, mgr_rows = loop.last_eval, loop.outer_skipped, loop.mgr_rows
    pending = loop.pending  # outer_batch="next": the last φ iteration's inner update, awaiting this batch
    next_batch = learn_phi and cfg.outer_batch == "next"
    alpha_checked = False

    for iteration in range(loop.iteration, num_iterations):
        t_iter = time.perf_counter()
        timer = _Timer(device)
        # ---- rollout: T steps x N envs; the carry holds each env's open segment
        stats = h.stats()
        carry_in = carry
        result = collect(h.rollout_params(learner.theta, stats), obs, carry)
        batch, obs, carry = result.batch, result.obs, result.carry
        env_steps += batch_size
        timer.mark("rollout")

        # ---- segments, shaped-reward inputs, extrinsic advantages, SMDP transitions
        prep = parts.prepare(h, batch, carry_in, stats, cfg, shaping)
        if prep.open_return is not None:  # the learner keeps the open segments' running return
            carry = {**carry, "seg_return": prep.open_return}
        if h.obs_normalizer is not None:  # after the batch is prepared with the stats its rollout used
            h.obs_normalizer.update(batch.obs, reduce=distributed.moments_reducer(world))

        # ---- inner steps of θ on φ-shaped advantages; φ by the hypergradient every phi_every iterations
        row: dict[str, Any] = {}
        if shards is None:
            minibatches = _minibatches(batch_size, cfg, device)
        else:  # torchrun: this rank's rows of the union batch's minibatches
            minibatches = shards.minibatches(cfg, device)
        io = steps.inner_outer(h, prep.sb, prep.pb, minibatches, reward_fn, learner.theta, cfg)
        if next_batch:  # online cross-validation: the previous inner update is judged on this batch
            if pending is not None:
                checked = cfg.check_every > 0 and iteration % cfg.check_every == 0
                out = steps.next_outer_step(
                    pending,
                    io,
                    learner,
                    (h, reward_fn, inner_opt, outer_opt),
                    cfg,
                    task.seed,
                    iteration,
                    checked=checked,
                    check_alpha=checked or not alpha_checked,
                )
                alpha_checked = True
                timer.mark("hypergrad")
                if out.cosine is not None:
                    row["hypergrad_cosine"] = out.cosine
                if out.ok:  # θ' is already in use (it collected this batch): only φ moves
                    learner = learner._replace(phi=out.learner.phi, outer_state=out.learner.outer_state)
                else:
                    outer_skipped += 1
                row["hypergrad_norm"] = out.norm
            start = learner
            learner = steps.plain_inner(io, learner, inner_opt, cfg)
            timer.mark("inner")
            pending = None
            if iteration % cfg.phi_every == 0:
                pending = parts.PendingOuter(
                    prep.sb, prep.pb, minibatches, start.theta, start.inner_state, cfg.n_inner
                )
        elif learn_phi and iteration % cfg.phi_every == 0:
            checked = cfg.check_every > 0 and iteration % cfg.check_every == 0
            out = steps.outer_step(
                io,
                learner,
                inner_opt,
                outer_opt,
                cfg,
                task.seed,
                iteration,
                check_alpha=checked or not alpha_checked,
            )
            alpha_checked = True
            timer.mark("hypergrad")
            if checked:
                row["hypergrad_cosine"] = steps.live_check(
                    io, learner, out.grads, inner_opt, cfg, task.seed + iteration
                )
            if out.ok:
                learner = out.learner
            else:  # the whole step is skipped: θ, the inner and the outer optimizer states stay as they were
                outer_skipped += 1
            row["hypergrad_norm"] = out.norm
        else:
            learner = steps.plain_inner(io, learner, inner_opt, cfg)
            timer.mark("inner")
        if learn_phi:
            row["outer_skipped"] = outer_skipped

        # ---- critics (ordinary steps on detached targets) and manager (PPO on SMDP transitions)
        ret_w, r_in = parts.shaped_returns(learner.phi, prep, reward_fn, cfg)
        row["critic_loss"] = parts.update_critics(h, critic_opt, prep, ret_w, cfg, shards=shards)
        timer.mark("critics")
        if h.manager is not None:
            if shards is None:
                mgr_rows.append(prep.manager_rows)
            else:  # torchrun: every rank trains the manager on the union's ended segments
                mgr_rows.append(shards.gather_manager_rows(prep.manager_rows, prep.smdp.mask))
            if (iteration + 1) % cfg.manager_every == 0:
                gen = None if shards is None else shards.generator
                row.update(parts.update_manager(h, mgr_opt, mgr_rows, cfg, generator=gen))
                mgr_rows = []
            timer.mark("manager")

        # ---- log (one host copy), evaluate, checkpoint
        row.update(_batch_stats(h, env, batch, prep, r_in, result, world))
        if learn_phi:
            out_range = parts.potential_range(learner.phi, prep)
            out_range = out_range if shards is None else shards.union_range(out_range)
            row.update(phi_summary(learner.phi, out_range))
        env.raise_pending()  # deferred invalid-action checks (validate=True) surface here; free if none
        host = _to_host(row)
        host.update(iteration=iteration + 1, env_steps=env_steps, **timer.splits())
        host["sps"] = round(batch_size / (time.perf_counter() - t_iter))
        last = iteration + 1 == num_iterations
        due = last or (cfg.eval_every > 0 and (iteration + 1) % cfg.eval_every == 0)
        if due and world.is_main:
            t_eval = time.perf_counter()
            video = None if videos is None else videos.clip(env_steps)
            seed = task.seed + 7919 * (iteration + 1)
            last_eval = parts.evaluate(h, learner.theta, eval_env, seed=seed, video=video)
            host.update(last_eval, eval_s=time.perf_counter() - t_eval)
        run.log(host)
        (save,) = distributed.broadcast_flags([run.checkpoint_due() or last], world, device)  # rank 0's clock
        if save:
            loop = parts.LoopState(
                iteration + 1, env_steps, obs, carry, last_eval, outer_skipped, mgr_rows, pending
            )
            state = _checkpoint(loop, learner, h, critic_opt, mgr_opt, env, collect)
            if shards is not None:  # every rank's envs, carry and RNG, gathered into rank 0's checkpoint
                state = nested_distributed.gather_checkpoint(state, shards)
            if state is not None:
                run.save_checkpoint(state)

    summary = {
        "iterations": run.last_row.get("iteration", loop.iteration),
        **last_eval,
        "outer_skipped": outer_skipped,
    }
    if hasattr(cfg, "resolved_prox"):  # the λ in use (config.json holds None for the method default)
        summary["prox"] = cfg.resolved_prox()
    if h.goal is not None:
        summary["goal_bounds"] = h.goal.source
    return run.finish(summary)


def _resume(run: Run, task: Task, h: Hierarchy, env, collect, critic_opt, mgr_opt, device, shards=None):
    """``(LoopState, LearnerState)`` from ``run.resume_state`` loaded into the live objects; a checkpoint
    that does not fit (or was written by another world size) is a `CheckpointError` naming the file.
    Under ``torchrun`` (``shards``) each rank loads its own envs, carry and RNG states."""
    world = distributed.World() if shards is None else shards.world
    st = ppo_distributed.rank_view(run.resume_state, world, run.checkpoint_path)
    require_keys(st, _REQUIRED, run.checkpoint_path)
    if shards is not None:
        shards.load_state_dict(st["minibatch"])
    with checkpoint_fits(run.checkpoint_path):
        learner = _restore(st, h, critic_opt, mgr_opt, device)
        if envs.supports_state(env) and st["env"] is not None:
            env.set_state(EnvState(**st["env"]))
            collect.load_state_dict(st["rollout"])
            obs, carry = _to(st["obs"], device), _to(st["carry"], device)
        else:  # a simulator's state cannot be checkpointed: fresh episodes, fresh segments
            shard = lambda s: distributed.reset_shard(env, s, task.num_envs, world)  # noqa: E731
            obs = reset_for_resume(env, task.env, task.seed, int(st["iteration"]), reset=shard)
            carry = h.initial_carry(obs)
        set_rng_state(st["rng"])
        loop = parts.LoopState(
            int(st["iteration"]),
            int(st["env_steps"]),
            obs,
            carry,
            dict(st.get("last_eval") or {}),
            int(st["outer_skipped"]),
            [_to(r, device) for r in st["mgr_rows"]],
            parts.pending_from_dict(st.get("outer_pending"), device),
        )
    return loop, learner


# ---------------------------------------------------------------------------- setup
def _hierarchy(env, cfg, manager: bool, device) -> Hierarchy:
    goal = None
    if manager:
        try:
            goal = goal_bounds(env.goal_space, cfg.goal_scale, device)
        except ValueError as e:
            raise ConfigError(
                "env", "an env whose goal space is a 1-D Box", env.goal_space, note=str(e)
            ) from None
    return Hierarchy(
        env.single_observation_space,
        env.single_action_space,
        goal,
        num_subpolicies=getattr(cfg, "num_subpolicies", 1),
        hidden=cfg.hidden,
        relative_goals=getattr(cfg, "relative_goals", False),
        horizon=getattr(cfg, "goal_horizon", 1),
        tolerance=getattr(cfg, "goal_tolerance", 0.0),
        norm_obs=cfg.norm_obs,
        device=device,
    )


def _init_phi(h: Hierarchy, cfg, shaping: str, device) -> dict[str, torch.Tensor]:
    if shaping == "goal":
        phi = init_goal_shaping(h.goal_dim, cfg.phi_hidden, device=device)
    elif shaping == "scalar":  # one weight, beta fixed at 1 (only w_dist / beta matters, see shaping.py)
        phi = init_scalar_shaping(device=device)
    elif shaping == "free":
        in_dim = 2 * h.sub_in + h.act_dim
        phi = init_free_shaping(in_dim, cfg.phi_hidden, device=device)
    else:  # fixed shaping: only β, never updated
        return {"beta": torch.ones((), device=device)}
    if getattr(cfg, "meta_ent_coef", False):
        phi["log_ent_coef"] = torch.full((), math.log(max(cfg.ent_coef, 1e-4)), device=device)
    if getattr(cfg, "meta_lr", False):
        phi["log_sub_lr"] = torch.full((), math.log(cfg.sub_lr), device=device)
    return phi


def _minibatches(batch_size: int, cfg, device) -> list[torch.Tensor]:
    """The row indices of each inner step, drawn here, outside the loss (fresh permutation per pass)."""
    mb = batch_size // cfg.num_minibatches
    out = []
    for t in range(cfg.n_inner):
        if t % cfg.num_minibatches == 0:
            perm = torch.randperm(batch_size, device=device)
        j = t % cfg.num_minibatches
        out.append(perm[j * mb : (j + 1) * mb])
    return out


# The θ/φ step code moved to `hrl_nested.algos.nested_steps` (this file had grown past 800 lines); the old
# names stay importable from here for code written against the earlier layout. The loop itself calls
# `nested_steps`, so patching these aliases does not change it.
OuterStep, NextOuterStep = steps.OuterStep, steps.NextOuterStep
_inner_outer, _outer_step, _next_outer_step = steps.inner_outer, steps.outer_step, steps.next_outer_step
_plain_inner, _live_check = steps.plain_inner, steps.live_check
_check_neumann_alpha = steps.check_neumann_alpha
