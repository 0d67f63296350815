"""Environment throughput: our torch vector envs against Gymnasium's fastest vectorization, one run.

For each classic-control task and number of envs, steps per second through the public ``env.step``
of

- ``gymnasium``: ``gym.make_vec(id, num_envs, vectorization_mode=...)`` with ``"vector_entry_point"``
  where Gymnasium registers a vector env (CartPole's ``CartPoleVectorEnv``), else ``"sync"`` (one
  Python env per copy; only up to 4096 envs);
- ``default``: ``envs.make("hrl_nested/<id>", num_envs, device)`` with no extra flags, what users get
  (``compile="auto"``: compiled on CUDA and on CPU from 4096 envs, else eager);
- ``eager``: the same with ``compile=False``;
- ``compiled``: the same with ``compile=True`` (the step is one inductor kernel, called directly);
  its one-off compile time is reported in its own column (the default path's too, when it compiles).

With ``--profile`` (the default) each row also keeps a per-op breakdown of the eager step
(``torch.profiler``: calls and self time per step of the costliest aten ops, and the time outside
them: Python and NumPy); ``--profile-tasks`` adds rows with only that breakdown for other tasks.

``--peer-tasks`` (default ``FourRooms-misc``) are measured against gymnax instead of Gymnasium: ours made
with the gymnax env's settings (`GYMNAX_PEERS`: slip 1/3, 500-step limit, goal (8, 9)), gymnax's
``jit(vmap(env.step))`` called once per step on the CPU (its step includes its autoreset, as ours does;
``jax.block_until_ready`` closes each timed window). Needs the ``bench`` extra (jax, gymnax).

Actions are uniform random, generated up front (on the device for ours). Ours check action values
(``validate=True``, the default) unless ``--no-validate``. Each measurement is the best of several
timed windows, the implementations taking turns (the machine may be shared: all see the same load,
and the best window is the least disturbed one). Prints a
table with the ratio ours / Gymnasium and writes ``experiments/results/bench_envs_<device>.json``.

    python experiments/bench_envs.py
    python experiments/bench_envs.py --device cuda
    python experiments/bench_envs.py --tasks CartPole-v1 --num-envs-list 4096 --window-s 0.2
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
import torch._inductor.config
import tyro
from bench_machine import load_average, machine_meta  # a sibling: experiments/ is on sys.path when run

import envs

TASKS = ("CartPole-v1", "MountainCar-v0", "MountainCarContinuous-v0", "Acrobot-v1", "Pendulum-v1")
SYNC_MAX_ENVS = 4096


@dataclasses.dataclass
class Config:
    device: str = "cpu"
    """torch device of our envs (Gymnasium's always run on the CPU, in NumPy)."""
    num_envs_list: tuple[int, ...] | None = None
    """numbers of envs; default 1 64 4096, plus 65536 1048576 on CUDA."""
    tasks: tuple[str, ...] = TASKS
    """Gymnasium ids (ours are ``hrl_nested/<id>``)."""
    window_s: float = 0.1
    """target length of one timed window."""
    budget_s: float = 1.0
    """measuring time per (task, num_envs) and implementation."""
    validate: bool = True
    """check action values in our envs (the default for users)."""
    compiled: bool = True
    """also measure ``compile=True`` (and the default path, ``compile="auto"``)."""
    profile: bool = True
    """keep a per-op breakdown of the eager step in each row (``torch.profiler``)."""
    peer_tasks: tuple[str, ...] = ("FourRooms-misc",)
    """tasks measured against gymnax (`GYMNAX_PEERS`: ``jit(vmap(env.step))``, one call per step, gymnax's
    own autoreset) instead of Gymnasium, on ours made with the gymnax env's settings."""
    profile_tasks: tuple[str, ...] = ()
    """tasks profiled only (rows with the eager step's breakdown and no peer)."""
    threads: int | None = None
    """torch intra-op threads (also those of the compiled kernels); default: torch's (one per core)."""
    cold_compile: bool = False
    """disable inductor's caches, so that compile times are those of a first run on a fresh machine."""
    out: Path | None = None
    """JSON output; default experiments/results/bench_envs_<device>.json."""

    @property
    def sizes(self) -> tuple[int, ...]:
        if self.num_envs_list is not None:
            return self.num_envs_list
        return (1, 64, 4096, 65536, 1048576) if torch.device(self.device).type == "cuda" else (1, 64, 4096)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One implementation under test: its ``step``, pre-generated actions, and its timing window.

    ``sync`` waits for the queued steps (default: the torch device's); gymnax dispatches asynchronously
    and passes ``jax.block_until_ready`` of its state."""

    def __init__(
        self,
        step: Callable[[Any], Any],
        actions: list[Any],
        device: torch.device,
        compile_s=None,
        sync: Callable[[], None] | None = None,
    ):
        self.step, self.actions, self.device = step, actions, device
        self.compile_s = compile_s
        self.sync = sync or (lambda: _sync(device))
        self.window = 1
        self.best = float("inf")  # seconds per step

    def warm_up(self, window_s: float) -> None:
        for a in self.actions[:3]:
            self.step(a)
        self.sync()
        t0 = time.perf_counter()
        self.step(self.actions[0])
        self.sync()
        per_step = max(time.perf_counter() - t0, 1e-7)
        self.window = max(1, min(len(self.actions), int(window_s / per_step)))

    def time_window(self) -> None:
        t = time.perf_counter()
        for i in range(self.window):
            self.step(self.actions[i])
        self.sync()
        self.best = min(self.best, (time.perf_counter() - t) / self.window)


def measure(runners: dict[str, Runner], cfg: Config) -> None:
    """Best seconds per step of each runner, timing their windows in turn (round robin).

    Interleaving exposes every implementation to the same machine load; the best window of each is
    its least disturbed one.
    """
    for r in runners.values():
        r.warm_up(cfg.window_s)
    start = time.perf_counter()
    while True:
        for r in runners.values():
            r.time_window()
        if time.perf_counter() - start > cfg.budget_s * len(runners):
            break


def gymnasium_runner(task: str, n: int) -> tuple[str, Runner | None]:
    mode = "vector_entry_point" if gym.spec(task).vector_entry_point is not None else "sync"
    if mode == "sync" and n > SYNC_MAX_ENVS:
        return mode, None
    env = gym.make_vec(task, num_envs=n, vectorization_mode=mode)
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(64)]
    return mode, Runner(env.step, actions, torch.device("cpu"))


# Tasks with a gymnax peer: name -> (our id, our constructor options = the gymnax env's settings).
# FourRooms-misc's defaults (gymnax.environments.misc.rooms: EnvParams.fail_prob, max_steps_in_episode,
# FourRooms.goal_fixed); `gymnax_runner` checks them against gymnax's own when it imports.
GYMNAX_PEERS = {
    "FourRooms-misc": (
        "hrl_nested/FourRooms-v0",
        {"slip_prob": 1.0 / 3.0, "max_episode_steps": 500, "goal": (8, 9)},
    ),
}
PROFILE_TASKS = GYMNAX_PEERS  # tasks that can be profiled with a peer's settings


def gymnax_runner(task: str, n: int, device: str = "cpu") -> tuple[str, Runner | None]:
    """gymnax's ``task`` on jax's device of ``device``'s kind: ``jit(vmap(env.step))`` called once per step
    with pre-split keys and pre-drawn uniform actions (its step includes its autoreset, as ours does);
    ``(why, None)`` without gymnax. Raises ``ValueError`` if gymnax's settings moved away from the ones
    ours is made with."""
    try:
        import gymnax
        import jax
    except ImportError as e:
        return f"gymnax not installed ({e.name})", None
    env, params = gymnax.make(task)
    theirs = {
        "slip_prob": float(params.fail_prob),
        "max_episode_steps": int(params.max_steps_in_episode),
        "goal": tuple(int(x) for x in env.goal_fixed),
    }
    ours = GYMNAX_PEERS[task][1]
    if theirs != ours:
        raise ValueError(f"{task}: expected gymnax's settings {ours} (ours are made with them), got {theirs}")
    try:
        dev = jax.devices("gpu" if torch.device(device).type == "cuda" else "cpu")[0]
    except RuntimeError:
        return f"jax has no device for {device}", None
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    reset = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))
    # jit runs where its inputs live: put the keys and actions on ``dev`` once, up front
    key_reset, key_steps, key_actions = jax.device_put(jax.random.split(jax.random.PRNGKey(0), 3), dev)
    _, state = reset(jax.random.split(key_reset, n), params)
    n_actions = int(env.action_space(params).n)
    actions = jax.random.randint(key_actions, (64, n), 0, n_actions)
    inputs = [(jax.random.split(k, n), actions[i]) for i, k in enumerate(jax.random.split(key_steps, 64))]
    jax.block_until_ready(inputs)
    holder = {"state": state}

    def gymnax_step(key_action: tuple[Any, Any]) -> None:
        keys, action = key_action
        holder["state"] = step(keys, holder["state"], action, params)[1]

    def sync() -> None:
        jax.block_until_ready(holder["state"])

    return "gymnax", Runner(gymnax_step, inputs, torch.device(device), sync=sync)


def make_ours(task: str, n: int, cfg: Config, compile: bool | None) -> Any:
    """Our env for ``task`` (a Gymnasium id or a `PROFILE_TASKS` name); ``compile=None``: the default."""
    env_id, options = PROFILE_TASKS.get(task, (f"hrl_nested/{task}", {}))
    kw: dict[str, Any] = dict(options)
    if compile is not None:
        kw["compile"] = compile
    if not cfg.validate:
        kw["validate"] = False
    return envs.make(env_id, num_envs=n, device=cfg.device, **kw)


def _actions(env: Any, n: int) -> list[torch.Tensor]:
    g = torch.Generator(device=env.device).manual_seed(0)
    space = env.single_action_space
    if isinstance(space, gym.spaces.Discrete):
        acts = torch.randint(0, int(space.n), (64, n), generator=g, device=env.device)
    else:  # uniform in the Box bounds
        lo = torch.as_tensor(space.low, dtype=env.dtype, device=env.device)
        hi = torch.as_tensor(space.high, dtype=env.dtype, device=env.device)
        u = torch.rand((64, n, *space.shape), generator=g, device=env.device, dtype=env.dtype)
        acts = lo + (hi - lo) * u
    return list(acts.unbind(0))


def profile_step(task: str, n: int, cfg: Config, steps: int = 20) -> dict[str, Any]:
    """Where an eager step's time goes: the costliest aten ops (calls, self microseconds per step) and
    the wall time outside aten ops (Python, NumPy), from ``torch.profiler`` over ``steps`` steps."""
    from torch.profiler import ProfilerActivity, profile

    env = make_ours(task, n, cfg, compile=False)
    env.reset(seed=0)
    actions = _actions(env, n)
    for a in actions[:5]:
        env.step(a)
    _sync(env.device)
    t0 = time.perf_counter()
    for i in range(steps):
        env.step(actions[i % len(actions)])
    _sync(env.device)
    wall_us = (time.perf_counter() - t0) / steps * 1e6
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if env.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            env.step(actions[i % len(actions)])
        _sync(env.device)
    ops = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    aten_us = sum(e.self_cpu_time_total for e in ops) / steps
    top = sorted(ops, key=lambda e: -e.self_cpu_time_total)[:12]
    return dict(
        path="eager",
        steps=steps,
        wall_us_per_step=wall_us,
        aten_ops_per_step=sum(e.count for e in ops) / steps,
        aten_self_us_per_step=aten_us,
        outside_aten_us_per_step=max(wall_us - aten_us, 0.0),
        top_ops=[
            dict(op=e.key, calls_per_step=e.count / steps, self_us_per_step=e.self_cpu_time_total / steps)
            for e in top
        ],
    )


def our_runner(task: str, n: int, cfg: Config, compile: bool | None) -> Runner:
    """``hrl_nested/<task>`` on ``cfg.device``; a compiled env is compiled here (timed)."""
    env = make_ours(task, n, cfg, compile)
    env.reset(seed=0)
    actions = _actions(env, n)
    env.step(actions[0])  # compiles, when compiled
    _sync(env.device)
    return Runner(env.step, actions, env.device, env.compile_seconds if env.compiled else None)


def main(cfg: Config) -> list[dict[str, Any]]:
    if cfg.cold_compile:
        torch._inductor.config.force_disable_caches = True
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    unknown = sorted(set(cfg.peer_tasks) - set(GYMNAX_PEERS))
    if unknown:
        raise SystemExit(f"--peer-tasks: expected names from {sorted(GYMNAX_PEERS)}, got {unknown}")
    device = torch.device(cfg.device)
    load_before = load_average()
    rows = []
    for task in (*cfg.tasks, *cfg.peer_tasks):
        for n in cfg.sizes:
            peer = "gymnax" if task in GYMNAX_PEERS else "gymnasium"
            if peer == "gymnax":
                mode, gym_run = gymnax_runner(task, n, cfg.device)
            else:
                mode, gym_run = gymnasium_runner(task, n)
            runners = {"eager": our_runner(task, n, cfg, compile=False)}
            if cfg.compiled:
                runners["default"] = our_runner(task, n, cfg, compile=None)
                runners["compiled"] = our_runner(task, n, cfg, compile=True)
            if gym_run is not None:
                runners["peer"] = gym_run
            measure(runners, cfg)
            rate = {k: n / r.best for k, r in runners.items()}
            rows.append(
                dict(
                    task=task,
                    num_envs=n,
                    peer=peer,
                    peer_mode=mode,
                    peer_steps_per_s=rate.get("peer"),
                    gymnasium_mode=mode if peer == "gymnasium" else None,
                    gymnasium_steps_per_s=rate.get("peer") if peer == "gymnasium" else None,
                    default_steps_per_s=rate.get("default"),
                    default_compiled=runners["default"].compile_s is not None if cfg.compiled else False,
                    eager_steps_per_s=rate["eager"],
                    compiled_steps_per_s=rate.get("compiled"),
                    compile_s=runners["compiled"].compile_s if cfg.compiled else None,
                )
            )
            if cfg.profile:
                rows[-1]["profile"] = profile_step(task, n, cfg)
            print(_line(rows[-1]), flush=True)
    for task in cfg.profile_tasks if cfg.profile else ():
        for n in cfg.sizes:
            prof = profile_step(task, n, cfg)
            rows.append(dict(task=task, num_envs=n, profile_only=True, profile=prof))
            print(
                f"{task:26s} {n:8d} eager step {prof['wall_us_per_step']:.0f} us (profile only)", flush=True
            )
    # Other processes on the machine disturb OpenMP kernels badly: compare runs on an idle machine.
    meta = machine_meta(
        device,
        load_before,
        validate=cfg.validate,
        cold_compile=cfg.cold_compile,
        method="best of timed windows taken in turn; steps x num_envs per second through env.step",
    )
    out = cfg.out or Path(__file__).parent / "results" / f"bench_envs_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")
    state = "on" if cfg.validate else "off"
    load = meta["load_average_1min"]
    print(
        f"\nvalidation: {state}; torch threads: {torch.get_num_threads()}; load average {load}; wrote {out}"
    )
    return rows


HEADER = (
    f"{'task':26s} {'N':>8s} {'peer (gymnasium/gymnax)':>24s} {'default':>9s} {'eager':>9s} {'compiled':>9s} "
    f"{'dflt/peer':>9s} {'eager/peer':>10s} {'comp/peer':>9s} {'compile_s':>9s}"
)


def _fmt(rate: float | None) -> str:
    return "-" if rate is None else f"{rate / 1e6:.2f}M"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.2f}x"


def _line(r: dict[str, Any]) -> str:
    kind = r["peer"] if r["peer"] == "gymnax" else ("sync" if r["peer_mode"] == "sync" else "vector")
    gym_col = f"{_fmt(r['peer_steps_per_s'])} ({kind})"
    compile_s = "-" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
    gym_rate, eager, comp = r["peer_steps_per_s"], r["eager_steps_per_s"], r["compiled_steps_per_s"]
    dflt = r["default_steps_per_s"]
    return (
        f"{r['task']:26s} {r['num_envs']:8d} {gym_col:>24s} "
        f"{_fmt(dflt):>9s} {_fmt(eager):>9s} {_fmt(comp):>9s} {_ratio(dflt, gym_rate):>9s} "
        f"{_ratio(eager, gym_rate):>10s} {_ratio(comp, gym_rate):>9s} {compile_s:>9s}"
    )


if __name__ == "__main__":
    cfg = tyro.cli(Config)
    print(
        f"steps/s (env steps x num_envs), device {cfg.device}, validation {'on' if cfg.validate else 'off'}"
    )
    print(HEADER)
    main(cfg)
