"""Run bookkeeping for the experiment scripts: run directory, metrics, checkpoints, W&B, progress bar.

A `Run` owns everything an algorithm's loop should not have to think about::

    run_dir/
      config.json      the full config, written when training starts (after a resumed checkpoint loaded)
      metrics.jsonl    one JSON object per iteration, always with ``env_steps`` and ``wall_s``
      summary.json     final numbers (``algo``, ``env``, ``seed``, ``env_steps``, ``wall_s``, eval results)
      checkpoint.pt    the last checkpoint, replaced atomically (tmp file + rename)
      wandb/           W&B's own files (offline runs can be uploaded later with ``wandb sync``)

The loop calls ``run.start()`` once its setup is done (on resume: once ``run.resume_state`` is loaded;
until then the run directory is untouched, so a failed start changes nothing), ``run.log(row)`` once
per iteration, ``run.save_checkpoint(state)`` when
``run.checkpoint_due()`` and at the end, and ``run.finish(summary)``. Logging never stops training:
any W&B error is reported once and W&B is switched off, while the local files stay complete.

One module per job: `run_dir` (naming and checking the directory), `metrics` (``metrics.jsonl``),
`checkpoint` (save, load, resume helpers), `rng_state` (RNG capture), `wandb_mode` (API key lookup and
the offline fallback), `wandb_logger` (the W&B run, its metrics, config, summary and artifacts),
`progress` (the bar), `files` (atomic writes, JSON values), `sweep_args` (the ``--key=value`` arguments of
``wandb agent``) and `run` (`Run`, which ties them together).
Every public name is importable from ``hrl_nested.tracking`` itself.
"""

from hrl_nested.tracking.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    checkpoint_fits,
    load_checkpoint,
    require_keys,
    reset_for_resume,
    save_checkpoint,
)
from hrl_nested.tracking.files import jsonable, replace_atomically, write_json
from hrl_nested.tracking.metrics import read_metrics, truncate_metrics
from hrl_nested.tracking.progress import progress_bar
from hrl_nested.tracking.rng_state import rng_state, set_rng_state
from hrl_nested.tracking.run import Run
from hrl_nested.tracking.run_dir import (
    RunDirError,
    check_run_dir,
    choose_run_id,
    default_run_dir,
    new_run_id,
    prepare_run_dir,
)
from hrl_nested.tracking.sweep_args import SweepArgError, config_flags, normalize_agent_args
from hrl_nested.tracking.wandb_logger import WandbLogger
from hrl_nested.tracking.wandb_mode import WANDB_MODES, has_wandb_api_key, resolve_wandb_mode

__all__ = [
    "CHECKPOINT_NAME",
    "WANDB_MODES",
    "CheckpointError",
    "Run",
    "RunDirError",
    "SweepArgError",
    "WandbLogger",
    "check_run_dir",
    "checkpoint_fits",
    "choose_run_id",
    "config_flags",
    "default_run_dir",
    "has_wandb_api_key",
    "jsonable",
    "load_checkpoint",
    "new_run_id",
    "normalize_agent_args",
    "prepare_run_dir",
    "progress_bar",
    "read_metrics",
    "replace_atomically",
    "require_keys",
    "reset_for_resume",
    "resolve_wandb_mode",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "truncate_metrics",
    "write_json",
]
