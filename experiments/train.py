"""Train an agent and write its run directory.

    python experiments/train.py                                   # PPO on CartPole, a few seconds on CPU
    python experiments/train.py --algo ppo --env hrl_nested/CartPole-v1 --total-steps 500000 \\
        --num-envs 256 --seed 1 --device cuda --run-dir runs/cp1 --wandb-mode online --ppo.lr 3e-3
    python experiments/train.py --resume runs/cp1 --total-steps 1000000   # continue a stopped run
    torchrun --nproc-per-node 4 experiments/train.py --num-envs 4096 --device cuda   # one run on 4 GPUs

The run directory gets ``config.json``, ``metrics.jsonl``, ``summary.json`` and ``checkpoint.pt`` (see
`hrl_nested.tracking`). Each algorithm is one module under ``hrl_nested/algos/``; its hyperparameters
are the nested ``--<algo>.*`` flags.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro

from hrl_nested import distributed
from hrl_nested.algos import ALGORITHMS, ConfigError, Task, check, finite_float, get_algorithm, positive_int
from hrl_nested.algos.ppo_multiseed import RNG_MODES
from hrl_nested.tracking import CheckpointError, Run, RunDirError, choose_run_id, default_run_dir
from hrl_nested.tracking.sweep_args import SweepArgError, normalize_agent_args


@dataclasses.dataclass(frozen=True)
class TrainArgs(Task):
    """Train an agent (the algorithm's own hyperparameters are the ``--<algo>.*`` flags)."""

    run_dir: str | None = None
    """Where the run's files go (default ``runs/<algo>-<env>-<seed>-<time>``); must be new or empty."""
    resume: str | None = None
    """Continue the run in this directory from its last checkpoint, with its ``config.json``; flags given
    here override it (e.g. a larger ``--total-steps``)."""
    wandb_mode: Literal["online", "offline", "disabled"] = "online"
    """Weights & Biases: ``online`` falls back to ``offline`` when there is no API key or no server."""
    wandb_project: str = "hrl_nested"
    """W&B project."""
    checkpoint_every_s: float = 300.0
    """Seconds between checkpoints (one is always written at the end)."""
    threads: int = 1
    """torch CPU threads. 1 suits small RL networks (their ops are too small to split, and a busy core
    stalls every split op); 0 keeps torch's default of one per core."""
    num_seeds: int = 1
    """Train seeds ``seed ... seed+num_seeds-1`` in one process (``--algo ppo``), one run directory each,
    ``<run-dir>/seed-<s>/`` (see `hrl_nested.algos.ppo_multiseed`); 1: a plain run in ``<run-dir>``."""
    rng: Literal[RNG_MODES] = "auto"  # type: ignore[valid-type]
    """Where each seed's sampling noise and minibatch permutations come from with ``--num-seeds`` > 1:
    ``generator`` (one ``torch.Generator`` per seed, in a single-seed run's state: seed s acts as its own
    run would), ``counter`` (counter-based Philox keyed on the seed: no per-seed call, the same run for any
    K or device), ``auto`` (``counter`` on CUDA, ``generator`` elsewhere). One of auto, generator, counter;
    a single-seed run samples from torch's generator (auto or generator)."""


def _field_name(algo: str) -> str:
    return algo.replace("-", "_")


def _config_class() -> type:
    """`TrainArgs` plus ``algo`` and one nested config field per registered algorithm."""
    names = tuple(ALGORITHMS)
    fields: list[tuple[str, Any, Any]] = [
        ("algo", Annotated[Literal[names], tyro.conf.arg(help="Algorithm to train.")], "ppo"),
    ]
    for name in names:
        cls = get_algorithm(name).Config
        fields.append((_field_name(name), cls, dataclasses.field(default_factory=cls)))
    return dataclasses.make_dataclass("TrainConfig", fields, bases=(TrainArgs,), frozen=True)


TrainConfig = _config_class()


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from its ``config.json`` form."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = _from_dict(hint, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


class ResumeMismatchError(RunDirError):
    """``--resume`` with a flag that would change what the checkpoint's state is shaped for."""


def parse_config(argv: list[str] | None = None) -> Any:
    """The config from the command line; with ``--resume DIR``, DIR/config.json overridden by the flags.

    Raises:
        ConfigError: a value out of range (`validate_config`).
        RunDirError: ``--resume`` names no run directory, or disagrees with ``--run-dir``.
        ResumeMismatchError: a resumed run changes a state-shaping field (`check_resume`).
    """
    # `wandb agent` passes --flag=False and --list=[64, 64], which tyro rejects: rewrite them first.
    argv = normalize_agent_args(sys.argv[1:] if argv is None else argv, TrainConfig)
    cfg = tyro.cli(TrainConfig, args=argv)
    if cfg.resume is None:
        validate_config(cfg)
        return cfg
    saved_path = Path(cfg.resume) / "config.json"
    if not saved_path.is_file():
        raise RunDirError(f"--resume {cfg.resume}: no config.json there (is it a run directory?)")
    try:
        saved = _from_dict(TrainConfig, json.loads(saved_path.read_text()))
    except (ValueError, TypeError) as e:
        raise RunDirError(f"--resume {cfg.resume}: config.json is not a run config ({e})") from None
    cfg = tyro.cli(TrainConfig, args=argv, default=saved)
    check_resume(saved, cfg)
    if cfg.run_dir is not None and Path(cfg.run_dir).resolve() != Path(cfg.resume).resolve():
        if saved.run_dir is None or Path(saved.run_dir).resolve() != Path(cfg.run_dir).resolve():
            raise RunDirError(
                f"--resume {cfg.resume} and --run-dir {cfg.run_dir} disagree; give only --resume"
            )
    cfg = dataclasses.replace(cfg, run_dir=cfg.resume)
    validate_config(cfg)
    return cfg


def validate_config(cfg: Any) -> None:
    """Check every value before anything is written: the shared `Task` fields, the script's own, and the
    chosen algorithm's config (including its cross-field checks against the task).

    Raises:
        ConfigError: naming the flag as typed (``--ppo.num-minibatches``), what was expected and what came.
    """
    _task_of(cfg).validate()
    positive_int(cfg.threads, "threads", minimum=0)
    _validate_num_seeds(cfg)
    finite_float(cfg.checkpoint_every_s, "checkpoint_every_s", low=0.0)
    if cfg.resume is None and cfg.run_dir is not None:
        check(cfg.run_dir.strip() != "", "run_dir", "a directory path", repr(cfg.run_dir))
    algo_cfg = getattr(cfg, _field_name(cfg.algo))
    validate = getattr(algo_cfg, "validate", None)
    if validate is None:
        return
    try:
        validate(_task_of(cfg))
    except ConfigError as e:  # an algorithm's own fields live under --<algo>. (as typed: --nested-hrl.)
        if e.section or e.field in {f.name for f in dataclasses.fields(Task)}:
            raise
        raise ConfigError(e.field, e.expected, e.got, section=cfg.algo, note=e.note) from None


def _validate_num_seeds(cfg: Any) -> None:
    """``--num-seeds``: a positive int; above 1 only for ``--algo ppo``, a fresh run and no videos.
    ``--rng``: one of `ppo_multiseed.RNG_MODES`; ``counter`` only with ``--num-seeds`` > 1."""
    positive_int(cfg.num_seeds, "num_seeds")
    check(cfg.rng in RNG_MODES, "rng", f"one of {', '.join(RNG_MODES)}", repr(cfg.rng))
    if cfg.num_seeds == 1:
        note = "a single-seed run samples from torch's generator; counter-based noise is the K-seed path's"
        check(cfg.rng != "counter", "rng", "auto or generator with --num-seeds 1", cfg.rng, note=note)
    if cfg.num_seeds > 1:
        what = f"1 with --algo {cfg.algo} (many seeds in one process: --algo ppo)"
        check(cfg.algo == "ppo", "num_seeds", what, cfg.num_seeds)
        note = "a multi-seed run cannot be resumed; run its seeds again, or one seed alone with --num-seeds 1"
        check(cfg.resume is None, "num_seeds", "1 with --resume", cfg.num_seeds, note=note)
        # the multi-seed loop records no video: refuse the flag rather than drop it
        what = "False with --num-seeds > 1 (videos are recorded by single-seed runs)"
        check(not cfg.capture_video, "capture_video", what, cfg.capture_video)


def check_resume(saved: Any, cfg: Any) -> None:
    """Reject a resumed config that changes the algorithm, or a field that shapes the saved state.

    The shared state-shaping fields are `Task.state_shaping_fields` (env, num_envs); each algorithm's
    ``Config.state_shaping_fields`` adds its own (for PPO: num_steps, hidden, norm_obs). A change to any
    of them would either not load or silently misread the checkpoint (a different batch shape makes the
    iteration count disagree with the saved ``env_steps``).

    Raises:
        ResumeMismatchError: naming the flag, the run's value and the one given.
    """
    if cfg.algo != saved.algo:
        raise ResumeMismatchError(
            f"--resume: --algo {cfg.algo} differs from the run's {saved.algo}; a run continues with the "
            "same algorithm"
        )
    section = _field_name(cfg.algo)
    pairs = [(name, "", saved, cfg) for name in Task.state_shaping_fields]
    algo_saved, algo_new = getattr(saved, section), getattr(cfg, section)
    shaping = getattr(type(algo_new), "state_shaping_fields", ())
    pairs += [(name, cfg.algo, algo_saved, algo_new) for name in shaping]
    for name, sec, old, new in pairs:
        a, b = _get(old, name), _get(new, name)
        if a != b:
            flag = f"--{sec + '.' if sec else ''}{name.replace('_', '-')}"
            raise ResumeMismatchError(
                f"--resume: {flag} {_show(b)} differs from the run's {_show(a)}; it shapes the saved state "
                f"(network, batch or normalization), so a run continues with the same {flag}. Start a new "
                "run (--run-dir) to change it"
            )


def _get(obj: Any, dotted: str) -> Any:
    """``obj.a.b`` for ``"a.b"`` (a state-shaping field may sit in a nested config)."""
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _show(value: Any) -> str:
    """A value as it is typed on the command line (``--ppo.hidden 64 64``)."""
    return " ".join(map(str, value)) if isinstance(value, tuple | list) else str(value)


def _task_of(cfg: Any) -> Task:
    return Task(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(Task)})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse, train, and return the run's summary.

    A bad flag, an unusable run directory or a checkpoint that does not fit this run prints
    ``error: ...`` to stderr and exits with code 2 (``SystemExit(2)``), with the run directory unchanged.
    """
    try:
        return _main(argv)
    except (ConfigError, RunDirError, CheckpointError, SweepArgError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


DISTRIBUTED_ALGOS = ("ppo", "nested-hrl", "hrl", "lirpg")
"""Algorithms that run under ``torchrun`` (one run across processes, `hrl_nested.distributed`)."""


def _check_world(cfg: Any, world: distributed.World) -> None:
    """Under torchrun (``world.size > 1``): an algorithm that supports it, one seed, and envs that split."""
    if world.size == 1:
        return
    note = f"torchrun started {world.size} processes; --algo {cfg.algo} runs in one process"
    what = f"one of {', '.join(DISTRIBUTED_ALGOS)} under torchrun"
    check(cfg.algo in DISTRIBUTED_ALGOS, "algo", what, cfg.algo, note=note)
    check(cfg.num_seeds == 1, "num_seeds", "1 under torchrun (one run across processes)", cfg.num_seeds)
    distributed.local_num_envs(cfg.num_envs, world)


def _main(argv: list[str] | None) -> dict[str, Any]:
    cfg = parse_config(argv)
    world = distributed.world_from_env()  # torchrun's WORLD_SIZE / RANK / LOCAL_RANK
    _check_world(cfg, world)
    if world.size > 1:
        with distributed.session(cfg.device) as world:
            return _train(cfg, world)
    return _train(cfg, world)


def _train(cfg: Any, world: distributed.World) -> dict[str, Any]:
    algo = get_algorithm(cfg.algo)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    # the agent's WANDB_RUN_ID under `wandb agent`; also names the default dir (rank 0's for every rank)
    run_id = distributed.broadcast_object(choose_run_id(), world)
    if cfg.run_dir is None:
        run_dir = default_run_dir(cfg.algo, cfg.env, cfg.seed, run_id=run_id)
        cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
    if cfg.num_seeds > 1:
        return _main_seeds(cfg, run_id)
    with _open_run(cfg, run_id, world) as run:
        summary = algo.train(_task_of(cfg), getattr(cfg, _field_name(cfg.algo)), run)
    if not world.is_main:
        return summary
    shown = {
        k: summary[k]
        for k in ("env_steps", "wall_s", "eval_return_mean", "eval_success_rate")
        if k in summary
    }
    print(
        f"{cfg.algo} on {cfg.env}: "
        + ", ".join(f"{k}={v:g}" for k, v in shown.items())
        + f"  ({cfg.run_dir})"
    )
    return summary


def _open_run(cfg: Any, run_id: str, world: distributed.World) -> Run:
    """The `Run` of ``cfg``; under torchrun every rank raises the error any rank met opening it (rank 0
    refusing a non-empty run directory, a rank failing to read the checkpoint), not a connection error."""
    run, error = None, None
    try:
        run = Run(
            cfg.run_dir,
            config={k: v for k, v in dataclasses.asdict(cfg).items()},
            algo=cfg.algo,
            env=cfg.env,
            seed=cfg.seed,
            total_steps=cfg.total_steps,
            resume=cfg.resume is not None,
            wandb_mode=cfg.wandb_mode,
            wandb_project=cfg.wandb_project,
            checkpoint_every_s=cfg.checkpoint_every_s,
            run_id=run_id,
            writer=world.is_main,  # torchrun: rank 0 alone writes the run's files
        )
    except (RunDirError, CheckpointError) as e:
        error = e
    distributed.raise_any_error(error, world)
    return run


def _main_seeds(cfg: Any, run_id: str) -> list[dict[str, Any]]:
    """``--num-seeds K > 1``: K PPO seeds in one process, ``<run-dir>/seed-<s>/`` each; their summaries."""
    from hrl_nested.algos import ppo_multiseed

    seeds = [cfg.seed + k for k in range(cfg.num_seeds)]
    runs = ppo_multiseed.seed_runs(
        cfg.run_dir,
        dataclasses.asdict(cfg),
        algo=cfg.algo,
        env=cfg.env,
        seeds=seeds,
        total_steps=cfg.total_steps,
        wandb_mode=cfg.wandb_mode,
        wandb_project=cfg.wandb_project,
        checkpoint_every_s=cfg.checkpoint_every_s,
        run_id=run_id,  # each seed's W&B id: <run_id>-s<seed>
    )
    try:
        summaries = ppo_multiseed.train_seeds(_task_of(cfg), cfg.ppo, cfg.num_seeds, runs, rng=cfg.rng)
    finally:
        for run in runs:
            run.close()
    for s in summaries:
        print(f"{cfg.algo} on {cfg.env} seed {s['seed']}: eval_return_mean={s.get('eval_return_mean')}")
    print(f"{len(summaries)} seeds in {cfg.run_dir}/seed-*")
    return summaries


if __name__ == "__main__":
    main()
