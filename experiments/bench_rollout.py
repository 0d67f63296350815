"""Rollout throughput: our fused torch rollouts against gymnax (jit + vmap + lax.scan), same device, same run.

For each task (CartPole, FourRooms), policy (uniform random, a 64-64 tanh actor-critic MLP) and number
of envs, one rollout collects T steps x N envs into a full batch (obs, action, log-prob, value,
reward, true next obs, terminated, truncated) plus episode statistics, on both sides. One table row
per path:

- ``ours default``: `hrl_nested.rollout.make_rollout` with its defaults on an env made with no
  compile flag (``compile="auto"``: the env's step compiled on CUDA and on CPU from 4096 envs);
- ``ours eager``: the same with the env made with ``compile=False`` (a CUDA graph on CUDA, eager on CPU);
- ``ours compiled``: the same with ``compile_step=True`` and the env made with ``compile=True`` (one
  ``torch.compile``-d step; captured as a CUDA graph on CUDA);
- ``gymnax``: ``jit(lax.scan)`` over ``vmap(env.step)``.

Each row has its own ratio to gymnax; its "first call" column is the first rollout (for ``ours
compiled`` a cold compile and capture, for gymnax the jit).

The tasks are the same on both sides. CartPole-v1: the same dynamics and 500-step limit. FourRooms:
ours is made with gymnax ``FourRooms-misc``'s defaults (`GYMNAX_FOUR_ROOMS`: slip 1/3, 500-step
limit, goal (8, 9); checked against gymnax's own parameters when it imports). What ours cannot be
set to match: the start cell (ours draws one uniformly in the room diagonally opposite the goal,
the top-left room that holds gymnax's fixed start (4, 1)); the observation (ours a goal ``Dict`` of
``observation``, ``achieved_goal``, ``desired_goal``, each the float ``(row, col) / 12``; gymnax one
int32 4-vector ``(row, col, goal_row, goal_col)``; the MLP sees 4 inputs on both sides); the slip
draw (the same distribution: gymnax takes a uniform action with probability 4/9, ours one of the
three other moves with probability 1/3); gymnax's step computes a reset for every env at every step
and selects, ours resets only the envs that ended.

Kernels per step. A CUDA-graph replay pays per kernel, so every row of ours also reports, from one
profiled rollout, ``per step``: compiled-region calls / kernel-launching aten ops run outside any compiled
region (views and allocations not counted; per-call work divided by T) and, on CUDA, the device kernels the
profiler saw (``--no-kernel-proxy`` skips it). Measured before/after the fused compiled step (issue 11
part 3) on this 2-core CPU with the torch profiler (inductor's ``cpp.enable_kernel_profile`` to see its
kernels), CartPole, 64 envs, T=32, ``capture="static"`` (the CUDA-graph path's static-buffer loop, on CPU),
in kernels a step = inductor kernels + aten ops (extern matmuls included) + eager ops between steps:
`KERNEL_PROXY_CPU` (written to the JSON's meta).

- Before, ``ours compiled`` ran one compiled region per step, but the 9 copies of the step's record into
  the T-step buffers and the 3 adds of the episode sums ran eagerly between steps: 13.4 (random) and
  23.8 (mlp) kernels a step, 11-12 of them outside the region. ``ours default`` on CUDA (the env's step
  compiled, the policy and the bookkeeping eager) was 30.4 and 45.8.
- After, `hrl_nested.rollout.make_rollout` with ``compile_step`` runs each step as ONE compiled call
  that also writes its buffer row and per-env episode sums (summed once per rollout): 2.7 (random: one
  fused kernel + ``aten.rand``, 0.7 of per-call copies) and 13.0 (mlp: 6 matmuls + 5 fused kernels +
  ``aten.rand``); no graph break, no recompile, 0.06 eager ops a step at T=128. ``compile_step="auto"``
  (the default) compiles wherever the rollout is captured as a CUDA graph, so on CUDA ``ours default``
  is the compiled path. On CPU the default stays eager: inductor's vectorized ``tanh`` is about 5x
  slower than eager's on this CPU, so the compiled MLP rollout is slower there (0.21 vs 0.34 M steps/s
  at 4096 envs, load average 7), while the random-policy one is faster (1.71 vs 1.44, 1.36x gymnax).

gymnax rows need the optional ``bench`` extra (``pip install -e ".[bench]"``: jax, gymnax); without
it they say so. Prints a table and writes JSON: to ``experiments/results/bench_rollout_<device>.json``
only when every setting is the default (``--device`` aside), else to ``--out`` or a temp file, so
that a smoke run never overwrites the recorded figures.

    python experiments/bench_rollout.py --device cpu
    python experiments/bench_rollout.py --device cuda --num-envs-list 65536 1048576
    python experiments/bench_rollout.py --num-envs-list 64 --steps 8 --repeats 1 --out /tmp/r.json
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with torch

import torch
import torch._inductor.config
import tyro

import envs
from hrl_nested.networks import ActorCritic, params_of
from hrl_nested.rollout import PolicyOutput, actor_critic_policy, make_rollout

# gymnax FourRooms-misc's defaults (gymnax.environments.misc.rooms: EnvParams.fail_prob,
# max_steps_in_episode, FourRooms.goal_fixed), as our FourRoomsEnv's constructor options.
GYMNAX_FOUR_ROOMS = {"slip_prob": 1.0 / 3.0, "max_episode_steps": 500, "goal": (8, 9)}

TASKS = {  # name -> (our id, fallback entry point, our constructor options, gymnax id)
    "CartPole": ("hrl_nested/CartPole-v1", None, {}, "CartPole-v1"),
    "FourRooms": (
        "hrl_nested/FourRooms-v0",
        "envs.tasks.four_rooms:FourRoomsEnv",
        GYMNAX_FOUR_ROOMS,
        "FourRooms-misc",
    ),
}
PATHS = ("ours default", "ours eager", "ours compiled", "gymnax")  # one table row each
# The kernels-per-step proxy measured before and after the fused compiled step (module docstring).
KERNEL_PROXY_CPU = {
    "setting": "CartPole, 64 envs, T=32, capture='static', 2-core CPU, torch 2.13, torch profiler",
    "unit": "kernels a step = inductor kernels + aten ops in compiled regions + eager aten ops between steps",
    "before": {
        "default_random": 30.4,
        "default_mlp": 45.8,
        "compiled_random": 13.4,
        "compiled_mlp": 23.8,
        "eager_ops_between_steps_compiled": {"random": 11.4, "mlp": 11.8},
    },
    "after": {
        "compiled_random": 2.7,
        "compiled_mlp": 13.0,
        "eager_ops_between_steps_compiled": {"random": 0.7, "mlp": 1.0},
        "note": "per-call copies and clones only (0.06 a step at T=128); on CUDA the default is this path",
    },
}
OFF = {"skipped": "off"}


@dataclasses.dataclass
class Config:
    device: str = "cpu"
    """torch and jax device: cpu or cuda."""
    num_envs_list: tuple[int, ...] | None = None
    """numbers of envs; default 4096 on CPU, 65536 and 1048576 on CUDA."""
    steps: int = 128
    """T, steps per rollout."""
    repeats: int = 5
    """timed rollouts per measurement (the median is reported), after the first call and one warm-up."""
    tasks: tuple[str, ...] = ("CartPole", "FourRooms")
    """tasks to run."""
    policies: tuple[str, ...] = ("random", "mlp")
    """policies: random (uniform actions) and mlp (64-64 tanh actor-critic, sampled)."""
    compile: bool = True
    """also time the torch.compile-d step (and report its compile time)."""
    cold_compile: bool = True
    """disable inductor's on-disk caches, so the compile time reported is a cold one."""
    gymnax: bool = True
    """compare against gymnax when jax and gymnax import."""
    kernel_proxy: bool = True
    """profile one rollout per "ours" row and report the kernels-per-step proxy (compiled regions and eager
    ops per step; on CUDA the device kernels per step)."""
    threads: int = 1
    """CPU threads for torch and XLA: 1 (both single-threaded: a fair comparison that a busy machine
    disturbs least) or 0 (each library's default)."""
    out: str | None = None
    """JSON path. Default: experiments/results/bench_rollout_<device>.json when every other setting is
    the default, else a file in the temp dir (a smoke run never overwrites the recorded figures)."""


def _num_envs(obs) -> int:
    return (obs if torch.is_tensor(obs) else next(iter(obs.values()))).shape[0]


def random_policy(n_actions: int):
    log_n = math.log(n_actions)

    def policy_fn(params, obs, carry):
        n = _num_envs(obs)
        u = torch.rand(n, device=params["_device"].device)
        action = (u * n_actions).long().clamp_max(n_actions - 1)
        zero = torch.zeros(n, device=u.device)
        return PolicyOutput(action, zero - log_n, zero, carry)

    return policy_fn


def make_ours(task: str, num_envs: int, device: str, compiled: bool | None):
    """Our env for ``task``; ``compiled=None``: no compile flag (the env's default, ``"auto"``)."""
    env_id, entry, options, _ = TASKS[task]
    kw = dict(device=device, autoreset_mode="same_step", validate=False, **options)
    if compiled is not None:
        kw["compile"] = compiled
    note = ""
    try:
        env = envs.make(env_id, num_envs, **kw)
    except ValueError:
        if entry is None:
            raise
        try:
            env = envs.make(entry, num_envs, **kw)
            note = f"{env_id} not registered: used {entry}"
        except (ImportError, AttributeError, ValueError) as e:
            return None, f"{env_id} not available ({type(e).__name__})"
    return env, note


@dataclasses.dataclass
class Runner:
    """A prepared rollout: ``run()`` does one synchronized rollout; ``first_call_s`` timed the first."""

    run: Callable[[], None]
    first_call_s: float
    info: dict


def prepare_ours(task: str, policy: str, num_envs: int, cfg: Config, compiled: bool | None) -> Runner | dict:
    env, note = make_ours(task, num_envs, cfg.device, compiled)
    if env is None:
        return {"skipped": note}
    torch.manual_seed(0)
    ac = ActorCritic(env.single_observation_space, env.single_action_space, hidden=(64, 64)).to(cfg.device)
    if policy == "mlp":
        policy_fn, params = actor_critic_policy(ac), {k: v.detach() for k, v in params_of(ac).items()}
    else:
        n_actions = int(env.single_action_space.n)
        policy_fn, params = random_policy(n_actions), {"_device": torch.zeros(1, device=cfg.device)}
    # "ours default": make_rollout's own default (compile_step="auto": compiled where captured, on CUDA).
    kw = {} if compiled is None else {"compile_step": compiled}
    collect = make_rollout(env, policy_fn, cfg.steps, **kw)
    obs, _ = env.reset(seed=0)
    sync = torch.cuda.synchronize if cfg.device.startswith("cuda") else (lambda: None)
    t0 = time.perf_counter()
    state = {"res": collect(params, obs)}
    sync()
    first_s = time.perf_counter() - t0  # compile and/or CUDA-graph capture, plus one rollout

    def run() -> None:
        state["res"] = collect(params, state["res"].obs)
        sync()

    info = {"note": note} if note else {}
    info["rollout_compiled"] = collect.compiled
    if cfg.kernel_proxy:
        info.update(kernels_per_step(run, cfg.steps, cfg.device))
    return Runner(run, first_s, info)


# Views and allocations launch no kernel; every other aten op outside a compiled region launches one.
_NO_KERNEL = frozenset(
    "empty empty_strided as_strided view _unsafe_view alias detach t transpose unsqueeze squeeze select "
    "slice expand permute reshape _reshape_alias unbind lift_fresh resize_ result_type empty_like view_as "
    "expand_as contiguous".split()
)


def kernels_per_step(run: Callable[[], None], steps: int, device: str) -> dict:
    """The kernels-per-step proxy of one profiled rollout (see the module docstring).

    ``regions_per_step``: calls of a ``torch.compile``-d region; ``eager_ops_per_step``: aten ops that
    launch a kernel and run outside any compiled region (top-level ops only, views and allocations not
    counted; per-call work such as the copies into static buffers is included, divided by T). On CUDA
    also ``cuda_kernels_per_step``: the device kernels the profiler saw (those of a CUDA-graph replay
    included, where CUPTI reports them).
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    try:
        with profile(activities=activities) as prof:
            run()
        events = list(prof.events())
    except Exception as e:  # noqa: BLE001 - a profiler problem must not cost the timings
        return {"kernel_proxy_error": f"{type(e).__name__}: {str(e)[:80]}"}
    regions = eager = kernels = 0
    for e in events:
        name = e.name
        if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA:
            kernels += 1
            continue
        if name.startswith("Torch-Compiled Region"):
            regions += 1
            continue
        if not name.startswith("aten::") or name[6:] in _NO_KERNEL:
            continue
        p, nested = e.cpu_parent, False
        while p is not None and not nested:
            nested = p.name.startswith(("aten::", "Torch-Compiled Region"))
            p = p.cpu_parent
        eager += not nested
    out = {"regions_per_step": regions / steps, "eager_ops_per_step": eager / steps}
    if device.startswith("cuda"):
        out["cuda_kernels_per_step"] = kernels / steps
    return out


def measure(runners: dict, num_envs: int, cfg: Config) -> dict[str, dict]:
    """Time the runners in interleaved rounds, so that a busy machine's load hits them alike."""
    live = {k: r for k, r in runners.items() if isinstance(r, Runner)}
    for r in live.values():  # one untimed call after the first: a late recompile stays out of the timings
        r.run()
    times: dict[str, list[float]] = {k: [] for k in live}
    for _ in range(cfg.repeats):
        for k, r in live.items():
            t0 = time.perf_counter()
            r.run()
            times[k].append(time.perf_counter() - t0)
    out = {}
    for k, r in runners.items():
        if k in live:
            sec = statistics.median(times[k])
            out[k] = {
                "steps_per_s": num_envs * cfg.steps / sec,
                "rollout_s": sec,
                "first_call_s": r.first_call_s,
            }
            out[k].update(r.info)
        else:
            out[k] = r
    return out


def prepare_gymnax(task: str, policy: str, num_envs: int, cfg: Config) -> Runner | dict:
    try:
        import gymnax
        import jax
        import jax.numpy as jnp
    except ImportError as e:
        return {"skipped": f"gymnax not installed ({e.name})"}
    platform_name = "gpu" if cfg.device.startswith("cuda") else "cpu"
    try:
        dev = jax.devices(platform_name)[0]
    except RuntimeError:
        return {"skipped": f"jax has no {platform_name} device"}
    gid = TASKS[task][3]
    env, env_params = gymnax.make(gid)
    info = {"gymnax_id": gid}
    if task == "FourRooms":  # ours was made with GYMNAX_FOUR_ROOMS: say so if gymnax's defaults moved
        theirs = {
            "slip_prob": float(env_params.fail_prob),
            "max_episode_steps": int(env_params.max_steps_in_episode),
            "goal": tuple(int(x) for x in env.goal_fixed),
        }
        differ = {k: v for k, v in theirs.items() if v != GYMNAX_FOUR_ROOMS[k]}
        if differ:
            info["note"] = f"gymnax's settings differ from ours: {differ}"
    n_act = int(env.action_space(env_params).n)
    obs_dim = int(env.observation_space(env_params).shape[0])
    T, N = cfg.steps, num_envs

    def mlp_init(key, sizes, out_scale):
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            key, k = jax.random.split(key)
            scale = out_scale if i == len(sizes) - 2 else math.sqrt(2.0)
            layers.append((jax.nn.initializers.orthogonal(scale)(k, (a, b)), jnp.zeros(b)))
        return layers

    def mlp(layers, x):
        for i, (w, b) in enumerate(layers):
            x = x @ w + b
            if i < len(layers) - 1:
                x = jnp.tanh(x)
        return x

    k_actor, k_critic = jax.random.split(jax.random.PRNGKey(0))
    theta = (mlp_init(k_actor, [obs_dim, 64, 64, n_act], 0.01), mlp_init(k_critic, [obs_dim, 64, 64, 1], 1.0))

    def act(theta, obs, key):
        if policy == "random":
            a = jax.random.randint(key, (N,), 0, n_act)
            return a, jnp.full((N,), -math.log(n_act)), jnp.zeros(N)
        x = obs.astype(jnp.float32)
        logits, value = mlp(theta[0], x), mlp(theta[1], x)[:, 0]
        a = jax.random.categorical(key, logits)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), a[:, None], 1)[:, 0]
        return a, logp, value

    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def rollout(theta, obs, state, ep_ret, ep_len, key):
        def body(carry, _):
            obs, state, ep_ret, ep_len, key = carry
            key, k_act, k_step = jax.random.split(key, 3)
            a, logp, v = act(theta, obs, k_act)
            next_obs, state, r, term, trunc, info = step(jax.random.split(k_step, N), state, a, env_params)
            done = term | trunc
            ep_ret, ep_len = ep_ret + r, ep_len + 1
            ended = (jnp.where(done, ep_ret, 0).sum(), jnp.where(done, ep_len, 0).sum(), done.sum())
            ep_ret, ep_len = jnp.where(done, 0.0, ep_ret), jnp.where(done, 0, ep_len)
            rec = (obs, a, logp, v, r, info["final_observation"], term, trunc, ended)
            return (next_obs, state, ep_ret, ep_len, key), rec

        return jax.lax.scan(body, (obs, state, ep_ret, ep_len, key), None, length=T)

    with jax.default_device(dev):
        theta = jax.device_put(theta, dev)
        obs, state = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(
            jax.random.split(jax.random.PRNGKey(1), N), env_params
        )
        carry = (obs, state, jnp.zeros(N), jnp.zeros(N, jnp.int32), jax.random.PRNGKey(2))
        # Committed like the rollout's outputs: a first call on uncommitted arrays would be compiled
        # again on the second call (jit caches by committedness), inside the timed repeats.
        carry = jax.device_put(carry, dev)
        fn = jax.jit(rollout)
        t0 = time.perf_counter()
        carry, traj = fn(theta, *carry)
        jax.block_until_ready(traj)
        first_s = time.perf_counter() - t0
    box = {"carry": carry}
    del traj

    def run() -> None:
        with jax.default_device(dev):
            box["carry"], traj = fn(theta, *box["carry"])
            jax.block_until_ready(traj)

    return Runner(run, first_s, info)


def fmt_proxy(r: dict) -> str:
    """``regions / eager ops [/ CUDA kernels]`` per step, or ``-``."""
    if "regions_per_step" not in r:
        return "-"
    cells = [f"{r['regions_per_step']:.2g} reg", f"{r['eager_ops_per_step']:.3g} ops"]
    if "cuda_kernels_per_step" in r:
        cells.append(f"{r['cuda_kernels_per_step']:.3g} kernels")
    return " / ".join(cells)


def fmt_rate(r: dict) -> str:
    return f"{r['steps_per_s'] / 1e6:,.2f}" if "steps_per_s" in r else "-"


def main(cfg: Config) -> list[dict]:
    if cfg.cold_compile:
        torch._inductor.config.force_disable_caches = True
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
        if cfg.threads == 1:  # before jax is imported
            os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
    rows = []
    for task in cfg.tasks:
        for policy in cfg.policies:
            for n in default_sizes(cfg):
                runners = {
                    "ours default": _try_compiled(task, policy, n, cfg, None),
                    "ours eager": prepare_ours(task, policy, n, cfg, compiled=False),
                    "ours compiled": _try_compiled(task, policy, n, cfg, True) if cfg.compile else OFF,
                    "gymnax": prepare_gymnax(task, policy, n, cfg) if cfg.gymnax else OFF,
                }
                timed = measure(runners, n, cfg)
                del runners
                if cfg.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                gymnax_rate = timed["gymnax"].get("steps_per_s")
                for path in PATHS:
                    r = timed[path]
                    rate = r.get("steps_per_s")
                    vs = rate / gymnax_rate if rate and gymnax_rate and path != "gymnax" else None
                    row = {"task": task, "policy": policy, "num_envs": n, "steps": cfg.steps, "path": path}
                    rows.append({**row, **r, "vs_gymnax": vs})
                print(f"  done {task}/{policy}/{n}", flush=True)
    print_table(rows, cfg)
    write_json(rows, cfg)
    return rows


def default_sizes(cfg: Config) -> tuple[int, ...]:
    return cfg.num_envs_list or ((65536, 1048576) if cfg.device.startswith("cuda") else (4096,))


def _try_compiled(task: str, policy: str, n: int, cfg: Config, compiled: bool | None) -> dict:
    """A variant that may compile, or a row saying why it could not be built (an inductor codegen error
    on this torch/CPU must not cost the eager and gymnax measurements of the same run)."""
    try:
        return prepare_ours(task, policy, n, cfg, compiled)
    except Exception as e:  # noqa: BLE001 - reported in the table, not swallowed
        msg = str(e).splitlines()[0][:80] if str(e) else ""
        print(f"  compiled {task}/{policy}/{n} failed: {type(e).__name__}: {msg}", flush=True)
        return {"skipped": f"compile failed ({type(e).__name__})"}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def print_table(rows: list[dict], cfg: Config) -> None:
    dev = device_name(cfg.device)
    print(
        f"\nRollout throughput, M steps/s (T={cfg.steps}, median of {cfg.repeats}), "
        f"device {cfg.device} ({dev}), torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg() if hasattr(os, 'getloadavg') else '?'}"
    )
    head = ("task", "policy", "num_envs", "path", "M steps/s", "first call s", "vs gymnax", "per step")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    notes = []
    for r in rows:
        cells = (
            r["task"],
            r["policy"],
            f"{r['num_envs']:,}",
            r["path"],
            fmt_rate(r) if "steps_per_s" in r else r.get("skipped", "-"),
            f"{r['first_call_s']:.1f}" if "first_call_s" in r else "-",
            f"{r['vs_gymnax']:.2f}x" if r["vs_gymnax"] else "-",
            fmt_proxy(r),
        )
        print("| " + " | ".join(str(x) for x in cells) + " |")
        if "note" in r:
            notes.append(f"{r['task']}/{r['policy']}/{r['num_envs']} {r['path']}: {r['note']}")
    if "FourRooms" in cfg.tasks:
        opts = ", ".join(f"{k}={v!r}" for k, v in GYMNAX_FOUR_ROOMS.items())
        notes.append(
            f"FourRooms: ours is made with gymnax FourRooms-misc's defaults ({opts}); still different: "
            "the start cell (ours uniform in the top-left room, gymnax fixed at (4, 1)) and the observation "
            "(ours a goal Dict of (row, col) / 12 floats, gymnax an int 4-vector; the MLP sees 4 inputs on "
            "both sides)"
        )
    notes.append(
        "ours default = no compile flag anywhere (the env's compile='auto', make_rollout's "
        "compile_step='auto': the whole step compiled where it is captured, on CUDA); "
        "ours eager = make_rollout(capture='auto', compile_step=False) on a compile=False env: a CUDA graph "
        "on CUDA, eager on CPU; ours compiled = compile_step=True and an env made with compile=True; "
        "first call s = the first rollout (for a compiled row: cold compile and capture; for gymnax: the "
        "jit); per step = compiled-region calls / kernel-launching aten ops outside them [/ CUDA kernels "
        "seen by the profiler], from one profiled rollout"
    )
    for n in dict.fromkeys(notes):
        print(f"- {n}")


def is_full_run(cfg: Config) -> bool:
    """Every setting at its default (device and output path aside, the sizes at the device's default)."""
    sizes_default = default_sizes(cfg) == default_sizes(dataclasses.replace(cfg, num_envs_list=None))
    return sizes_default and dataclasses.replace(cfg, device="cpu", out=None, num_envs_list=None) == Config()


def write_json(rows: list[dict], cfg: Config) -> None:
    name = f"bench_rollout_{cfg.device.split(':')[0]}.json"
    if cfg.out:
        path = Path(cfg.out)
    elif is_full_run(cfg):
        path = Path(__file__).parent / "results" / name
    else:
        path = Path(tempfile.gettempdir()) / name.replace(".json", "_partial.json")
        print(f"non-default settings and no --out: writing {path}, not experiments/results/")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": cfg.device,
        "device_name": device_name(cfg.device),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "config": dataclasses.asdict(cfg),
        "tasks": {
            t: {"ours": TASKS[t][0], "ours_options": TASKS[t][2], "gymnax": TASKS[t][3]} for t in cfg.tasks
        },
        "layout": "one row per (task, policy, num_envs, path); vs_gymnax = this path's steps/s / gymnax's",
        "kernel_proxy_cpu_before_after": KERNEL_PROXY_CPU,
    }
    try:
        import gymnax
        import jax

        meta.update(jax=jax.__version__, gymnax=importlib.metadata.version(gymnax.__name__))
    except ImportError:
        pass
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main(tyro.cli(Config))
