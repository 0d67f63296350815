"""Parity of the classic-control ports with the installed Gymnasium, from identical states.

gymnax's approach: set a batch of states (including ones beyond the termination thresholds and
actions beyond the continuous bounds), take one step in our batched env and in Gymnasium's single env
for every row, and compare next state, observation, reward and terminated.

- float64: Gymnasium computes in float64 (given float64 actions), so state and reward must agree to
  1e-10; MountainCarContinuous stores its state as float32, so there the state agrees to float32
  rounding. Observations are float32 in Gymnasium: float32 rounding. Angles are compared modulo 2 pi.
  ``terminated`` must be equal except for states within rounding of a termination threshold.
- float32: our error against the float64 reference may be no worse than (a small factor of) NumPy's
  float32 evaluation of the same formula: Gymnasium's own code run on a float32 state and action
  (Acrobot, whose ``rk4`` always allocates float64, is re-run with a float32 RK4 around Gymnasium's
  own ``_dsdt``, ``wrap`` and ``bound``).
- whole float64 trajectories from the same start with the same actions agree to 1e-8 until the episode
  ends, for 200 steps (Acrobot, chaotic, 50); MountainCarContinuous, whose Gymnasium arithmetic is
  float32, to accumulated float32 rounding.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable

import numpy as np
import pytest
import torch
from gymnasium.envs.classic_control import AcrobotEnv as GymAcrobot
from gymnasium.envs.classic_control import CartPoleEnv as GymCartPole
from gymnasium.envs.classic_control import Continuous_MountainCarEnv as GymMCC
from gymnasium.envs.classic_control import MountainCarEnv as GymMountainCar
from gymnasium.envs.classic_control import PendulumEnv as GymPendulum
from gymnasium.envs.classic_control import acrobot as gym_acrobot

from envs.classic.acrobot import AcrobotEnv
from envs.classic.cartpole import CartPoleEnv
from envs.classic.continuous_mountain_car import MountainCarContinuousEnv
from envs.classic.mountain_car import MountainCarEnv
from envs.classic.pendulum import PendulumEnv

N = 1000
EPS32 = 2.0**-24  # float32 rounding, relative
TWO_PI = 2 * math.pi


@dataclasses.dataclass
class Task:
    name: str
    ours: Callable[..., object]
    gym: Callable[[], object]
    states: Callable[[np.random.Generator, int], np.ndarray]  # float64 (n, D), some beyond thresholds
    actions: Callable[[np.random.Generator, int], np.ndarray]  # int64 (n,) or float64 (n, 1)
    margin: Callable[[np.ndarray], np.ndarray]  # distance of a next state to the termination boundary
    angles: tuple[int, ...] = ()  # state dims compared modulo 2 pi
    float32_state: bool = False  # Gymnasium stores the state as float32
    traj_steps: int = 200


def _u(rng, n, lo, hi):
    return rng.uniform(lo, hi, size=n)


def _cartpole_states(rng, n):
    return np.stack([_u(rng, n, -3, 3), _u(rng, n, -3, 3), _u(rng, n, -0.35, 0.35), _u(rng, n, -3, 3)], -1)


def _cartpole_margin(s):
    return np.minimum(np.abs(np.abs(s[:, 0]) - 2.4), np.abs(np.abs(s[:, 2]) - 12 * 2 * math.pi / 360))


def _car_states(rng, n):
    s = np.stack([_u(rng, n, -1.35, 0.75), _u(rng, n, -0.09, 0.09)], -1)
    s[:20, 0] = -1.2  # on the left wall, some moving into it: velocity is zeroed
    s[20:40, 0] = rng.uniform(0.44, 0.52, 20)  # around both goal positions
    return s


def _car_margin(goal):
    return lambda s: np.minimum(np.abs(s[:, 0] - goal), np.abs(s[:, 1]))


def _acrobot_states(rng, n):
    return np.stack(
        [_u(rng, n, -4, 4), _u(rng, n, -4, 4), _u(rng, n, -15, 15), _u(rng, n, -32, 32)], -1
    )  # beyond [-pi, pi] and the velocity bounds 4 pi, 9 pi


def _acrobot_margin(s):
    return np.abs(-np.cos(s[:, 0]) - np.cos(s[:, 1] + s[:, 0]) - 1.0)


def _pendulum_states(rng, n):
    return np.stack([_u(rng, n, -10, 10), _u(rng, n, -10, 10)], -1)  # unnormalized angles, |thdot| > 8


def _discrete(k):
    return lambda rng, n: rng.integers(0, k, size=n)


def _box(lo, hi):
    return lambda rng, n: rng.uniform(lo, hi, size=(n, 1))  # beyond the action bounds


def _never(s):
    return np.full(len(s), np.inf)


def _gym_acrobot(book_or_nips="book"):
    env = GymAcrobot()
    env.book_or_nips = book_or_nips
    return env


TASKS = {
    "CartPole": Task("CartPole", CartPoleEnv, GymCartPole, _cartpole_states, _discrete(2), _cartpole_margin),
    "MountainCar": Task(
        "MountainCar", MountainCarEnv, GymMountainCar, _car_states, _discrete(3), _car_margin(0.5)
    ),
    "MountainCarContinuous": Task(
        "MountainCarContinuous",
        MountainCarContinuousEnv,
        GymMCC,
        _car_states,
        _box(-2.5, 2.5),
        _car_margin(0.45),
        float32_state=True,
    ),
    "Acrobot": Task(
        "Acrobot", AcrobotEnv, _gym_acrobot, _acrobot_states, _discrete(3), _acrobot_margin, (0, 1), False, 50
    ),
    "Pendulum": Task("Pendulum", PendulumEnv, GymPendulum, _pendulum_states, _box(-4, 4), _never),
}

# Task options, each checked against the Gymnasium env built with the same option.
VARIANTS = {
    "CartPole-sutton_barto": (
        "CartPole",
        dict(sutton_barto_reward=True),
        lambda: GymCartPole(sutton_barto_reward=True),
    ),
    "CartPole-semi_implicit": (
        "CartPole",
        dict(kinematics_integrator="semi-implicit euler"),
        lambda: _with(GymCartPole(), kinematics_integrator="semi-implicit euler"),
    ),
    "MountainCar-goal_velocity": (
        "MountainCar",
        dict(goal_velocity=0.01),
        lambda: GymMountainCar(goal_velocity=0.01),
    ),
    "MountainCarContinuous-goal_velocity": (
        "MountainCarContinuous",
        dict(goal_velocity=0.01),
        lambda: GymMCC(goal_velocity=0.01),
    ),
    "Acrobot-nips": ("Acrobot", dict(book_or_nips="nips"), lambda: _gym_acrobot("nips")),
    "Pendulum-g": ("Pendulum", dict(g=9.81), lambda: GymPendulum(g=9.81)),
}


def _with(env, **attrs):
    for k, v in attrs.items():
        setattr(env, k, v)
    return env


# ----------------------------------------------------------------------------- reference steps
def gym_step(env, state: np.ndarray, action) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """One Gymnasium step from ``state`` (its dtype is kept: float32 gives NumPy's float32 evaluation)."""
    env.state = state.copy()
    if isinstance(env, GymCartPole):
        env.steps_beyond_terminated = None  # else a step after termination has reward 0
    obs, reward, terminated, _, _ = env.step(action)
    return np.asarray(env.state, dtype=np.float64), np.asarray(obs, np.float64), float(reward), terminated


def acrobot_step_np32(env, s32: np.ndarray, a: int):
    """Gymnasium's Acrobot step in float32: its own ``_dsdt``, ``wrap`` and ``bound`` in a float32 RK4."""
    y0 = np.append(s32, np.float32(env.AVAIL_TORQUE[a])).astype(np.float32)
    f = lambda y: np.asarray(env._dsdt(y), dtype=np.float32)
    dt, dt2 = env.dt, env.dt / 2.0
    k1 = f(y0)
    k2 = f(y0 + dt2 * k1)
    k3 = f(y0 + dt2 * k2)
    k4 = f(y0 + dt * k3)
    ns = (y0 + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4))[:4]
    ns[0] = gym_acrobot.wrap(ns[0], -math.pi, math.pi)
    ns[1] = gym_acrobot.wrap(ns[1], -math.pi, math.pi)
    ns[2] = gym_acrobot.bound(ns[2], -env.MAX_VEL_1, env.MAX_VEL_1)
    ns[3] = gym_acrobot.bound(ns[3], -env.MAX_VEL_2, env.MAX_VEL_2)
    env.state = ns
    terminated = env._terminal()
    obs = env._get_ob()
    return ns.astype(np.float64), obs.astype(np.float64), -1.0 if not terminated else 0.0, terminated


def reference(task: Task, make_gym, states: np.ndarray, actions: np.ndarray, np32: bool = False):
    """Gymnasium, row by row. ``np32``: state and action in float32 (NumPy's float32 evaluation)."""
    env = make_gym()
    rows = []
    for s, a in zip(states, actions):
        if a.ndim:  # Box action: float64 so that Gymnasium computes in float64, float32 for np32
            a = a.astype(np.float32 if np32 else np.float64)
        else:
            a = int(a)
        if np32 and task.name == "Acrobot":
            rows.append(acrobot_step_np32(env, s.astype(np.float32), a))
        else:
            rows.append(gym_step(env, s.astype(np.float32) if np32 else s, a))
    ns, obs, rew, term = zip(*rows)
    return np.stack(ns), np.stack(obs), np.array(rew), np.array(term)


def ours_step(task: Task, states, actions, dtype, **kwargs):
    env = task.ours(num_envs=len(states), dtype=dtype, **kwargs)
    env.reset(seed=0)
    env.state = torch.as_tensor(states, dtype=dtype)
    a = torch.as_tensor(actions, dtype=dtype if actions.ndim > 1 else torch.int64)
    obs, rew, term, trunc, _ = env.step(a)
    assert not trunc.any()
    out = (env.state, obs, rew)
    return (*(t.double().numpy() for t in out), term.numpy())


def angle_diff(a, b):
    return np.remainder(a - b + math.pi, TWO_PI) - math.pi


def state_err(task: Task, ours, ref):
    err = np.abs(ours - ref)
    for d in task.angles:
        err[:, d] = np.abs(angle_diff(ours[:, d], ref[:, d]))
    return err


def check_terminated(task: Task, ours, ref, ref_next_state, tol):
    bad = ours != ref
    near = task.margin(ref_next_state) < tol
    assert not (bad & ~near).any(), (
        f"{task.name}: terminated differs away from the threshold at rows {np.flatnonzero(bad & ~near)[:10]}"
    )
    assert bad.sum() <= max(2, len(bad) // 100)


# ----------------------------------------------------------------------------- tests
def _cases():
    for name in TASKS:
        yield pytest.param(name, {}, None, id=name)
    for vid, (name, kw, make) in VARIANTS.items():
        yield pytest.param(name, kw, make, id=vid)


@pytest.mark.parametrize("name,kwargs,make_gym", list(_cases()))
def test_one_step_float64(name, kwargs, make_gym):
    task = TASKS[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    states, actions = task.states(rng, N), task.actions(rng, N)
    ns, obs, rew, term = ours_step(task, states, actions, torch.float64, **kwargs)
    r_ns, r_obs, r_rew, r_term = reference(task, make_gym or task.gym, states, actions)

    err = state_err(task, ns, r_ns)
    if task.float32_state:  # Gymnasium rounds its stored state to float32 once
        assert (err <= EPS32 * np.abs(r_ns) + 1e-12).all(), err.max(0)
    else:
        assert err.max() <= 1e-10, err.max(0)
    assert np.abs(rew - r_rew).max() <= 1e-10
    # Gymnasium returns float32 observations: one float32 rounding of the float64 value.
    assert (np.abs(obs - r_obs) <= EPS32 * np.abs(obs) + 1e-30).all(), np.abs(obs - r_obs).max(0)
    check_terminated(task, term, r_term, r_ns, tol=1e-9)
    if task.name != "Pendulum":
        assert 0 < term.sum() < N or name == "Acrobot"  # the sample reaches both sides of the boundary


@pytest.mark.parametrize("name", list(TASKS))
def test_one_step_float32_no_worse_than_numpy_float32(name):
    task = TASKS[name]
    rng = np.random.default_rng(1 + zlib.crc32(name.encode()))
    states = task.states(rng, N).astype(np.float32).astype(np.float64)  # the same input for all three
    actions = task.actions(rng, N)
    if actions.ndim > 1:
        actions = actions.astype(np.float32).astype(np.float64)
    ns, obs, rew, term = ours_step(task, states, actions, torch.float32)
    ref = reference(task, task.gym, states, actions)
    npf = reference(task, task.gym, states, actions, np32=True)

    for what, ours_v, np_v, ref_v in (
        ("state", ns, npf[0], ref[0]),
        ("obs", obs, npf[1], ref[1]),
        ("reward", rew[:, None], npf[2][:, None], ref[2][:, None]),
    ):
        e_ours = state_err(task, ours_v, ref_v) if what == "state" else np.abs(ours_v - ref_v)
        e_np = state_err(task, np_v, ref_v) if what == "state" else np.abs(np_v - ref_v)
        # Our outputs are float32 tensors, so each carries one unavoidable output rounding, which
        # Gymnasium's Python-float results (rewards, MountainCar's double ``math.cos``) do not: it is
        # taken off first. ``tiny`` covers components where the NumPy evaluation happens to be exact.
        excess = np.maximum(e_ours - EPS32 * np.abs(ref_v), 0)
        tiny = 2 * EPS32 * np.abs(ref_v).mean(0) + 1e-30
        assert (excess.max(0) <= 2 * e_np.max(0) + tiny).all(), (what, e_ours.max(0), e_np.max(0))
        assert (excess.mean(0) <= 1.5 * e_np.mean(0) + tiny).all(), (what, e_ours.mean(0), e_np.mean(0))
    check_terminated(task, term, ref[3], ref[0], tol=1e-4)


@pytest.mark.parametrize("name", list(TASKS))
def test_float64_trajectories(name):
    task = TASKS[name]
    n, steps = 16, task.traj_steps
    rng = np.random.default_rng(2)
    gyms = [task.gym() for _ in range(n)]
    for i, g in enumerate(gyms):
        g.reset(seed=i)
    starts = np.stack([np.asarray(g.state, np.float64) for g in gyms])  # Gymnasium's reset states
    env = task.ours(num_envs=n, dtype=torch.float64, max_episode_steps=None)
    env.reset(seed=0)
    env.state = torch.as_tensor(starts)
    alive = np.ones(n, bool)
    # MountainCarContinuous: Gymnasium's own arithmetic is float32 there (a float32 state, so ``3 * p``
    # and the velocity update are float32 operations), so a float64 trajectory can only agree to
    # accumulated float32 rounding: about 4e-7 after 200 steps, 32 float32 ulps of 0.5 allowed.
    tol = 32 * EPS32 if task.float32_state else 1e-8
    for t in range(steps):
        actions = task.actions(rng, n)
        a = torch.as_tensor(actions, dtype=torch.float64 if actions.ndim > 1 else torch.int64)
        _, _, term, _, _ = env.step(a)
        for i, g in enumerate(gyms):
            if not alive[i]:
                continue
            act = actions[i].astype(np.float64) if actions.ndim > 1 else int(actions[i])
            _, _, g_term, _, _ = g.step(act)
            ours = env.state[i].numpy()[None]
            err = state_err(task, ours, np.asarray(g.state, np.float64)[None])
            assert err.max() <= tol, (name, t, i, err)
            assert bool(term[i]) == g_term, (name, t, i)
            if g_term:
                alive[i] = False
        if not alive.any():
            break
    if name == "CartPole":
        assert not alive.all()  # random actions end CartPole episodes: the end is compared too
