"""The nested problem through the hypergradient engine, in float64 on a tiny fixed batch (minibatch
indices fixed outside the loss): φ's hypergradient against central finite differences, the implicit
estimators against unrolled at convergence, and the skip of a non-finite step."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest
import torch

from hrl_nested import optim
from hrl_nested.algos import nested_hrl, nested_steps
from hrl_nested.algos import nested_parts as parts
from hrl_nested.algos.nested_parts import reward_fn_for
from hrl_nested.hierarchy import GoalBounds
from hrl_nested.hypergrad import hypergrad, run_inner
from hrl_nested.nested_objective import PolicyBatch, ShapingBatch, clip_by_global_norm, make_inner_outer
from hrl_nested.shaping import init_goal_shaping
from tests._finite_differences import central_differences
from tests._hierarchies import small_hierarchy

D = torch.float64
T, N, GAMMA = 4, 2, 0.9


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread


def _problem(seed: int, minibatches, prox: float = 0.0):
    """A tiny nested problem: K=2 stacked subpolicies (Discrete(3)), goal dim 2, T x N = 4 x 2."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    bounds = GoalBounds(-torch.ones(2), torch.ones(2), "test")
    h = small_hierarchy(
        gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(3), bounds, hidden=(5,), tolerance=0.2
    )
    # larger than the init's 0.01 gain, so that the policy is far from uniform
    theta = {k: (v.to(D) + 0.4 * torch.randn(v.shape, generator=g, dtype=D)) for k, v in h.theta0.items()}
    B = T * N
    x = torch.randn(B, h.sub_in, generator=g, dtype=D)
    k = torch.randint(0, 2, (B,), generator=g)
    actions = torch.randint(0, 3, (B,), generator=g)
    with torch.no_grad():
        dist, _ = h.sub_dist(theta, (x, k))
        logp_old = dist.log_prob(actions)
    term = torch.zeros(T, N, dtype=torch.bool)
    term[2, 0] = True
    trunc = torch.zeros(T, N, dtype=torch.bool)
    trunc[1, 1] = True
    ag, ag_next, goal = (torch.randn(T, N, 2, generator=g, dtype=D) for _ in range(3))
    reached = torch.zeros(T, N, dtype=torch.bool)
    reached[0, 1] = True
    feats = {
        "ag": ag,
        "ag_next": ag_next,
        "goal": goal,
        "reached": reached,
        "terminal": term | reached,
        "scale": torch.ones(2, dtype=D),
    }
    sb = ShapingBatch(
        torch.randn(T, N, generator=g, dtype=D),
        torch.randn(T, N, generator=g, dtype=D),
        torch.randn(T, N, generator=g, dtype=D),
        term | reached,
        trunc & ~(term | reached),
        feats,
    )
    pb = PolicyBatch((x, k), actions, logp_old, torch.randn(B, generator=g, dtype=D))
    phi = init_goal_shaping(2, (4,), dtype=D)
    # away from the init (where Φ's last layer is 0 and its hidden weights get no gradient)
    phi = {n: v + 0.5 * torch.randn(v.shape, generator=g, dtype=D) for n, v in phi.items()}
    io = make_inner_outer(
        h.sub_dist,
        sb,
        pb,
        minibatches(B) if callable(minibatches) else minibatches,
        reward_fn_for("goal", GAMMA),
        theta_start=theta,
        gamma=GAMMA,
        gae_lambda=0.8,
        clip_coef=0.2,
        ent_coef=0.01,
        prox=prox,
    )
    return io, theta, phi


def _fd(io, theta, phi, opt, steps, h=1e-6):
    """Central finite differences of the outer loss after ``steps`` inner steps, entry by entry of φ."""

    def f(p):
        with torch.no_grad():
            w, _ = run_inner(io.inner_loss, opt, theta, None, p, range(steps))
            return float(io.outer_loss(w, p))

    return central_differences(f, phi, h)


_FIXED_MINIBATCHES = [torch.tensor([0, 3, 5, 6]), torch.tensor([1, 2, 4, 7])]


@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_unrolled_and_truncated_hypergradients_of_phi_match_central_finite_differences(inner):
    io, theta, phi = _problem(0, _FIXED_MINIBATCHES)
    if inner == "sgd":
        opt = optim.sgd(0.5)
    else:  # the loop's own inner optimizer: Adam (eps 1e-5, eps_root) behind global-norm clipping
        opt = clip_by_global_norm(optim.adam(0.05, eps=1e-5, eps_root=1e-16), 0.5)
    fd = _fd(io, theta, phi, opt, steps=4)
    for method, extra in (("unrolled", {}), ("truncated", {"truncate": 4})):
        res = hypergrad(
            io.inner_loss,
            io.outer_loss,
            theta,
            phi,
            method=method,
            inner_steps=4,
            inner_lr=0.5,
            inner_optimizer=opt,
            **extra,
        )
        norm = torch.sqrt(sum(v.square().sum() for v in res.grads.values()))
        assert norm > 1e-4, "a vanishing hypergradient would make the comparison empty"
        assert float(res.grads["phi.0.weight"].abs().max()) > 1e-6  # Φ's hidden layer is reached too
        for name in phi:
            torch.testing.assert_close(
                res.grads[name], fd[name], rtol=1e-5, atol=1e-9, msg=f"{method} {name}"
            )


def test_cg_and_neumann_match_unrolled_at_convergence_with_the_proximal_term():
    # A strong proximal term keeps every ratio inside PPO's clip range, where the loss is smooth (at a
    # kink of the clipped surrogate there is no Hessian, and SGD bounces around it instead of converging).
    io, theta, phi = _problem(1, lambda b: [torch.arange(b)], prox=10.0)
    lr, steps = 0.08, 60  # contraction ~ (1 - 0.08 * 10) per step: far below float64 rounding after 60
    opt = optim.sgd(lr)
    unrolled = hypergrad(
        io.inner_loss,
        io.outer_loss,
        theta,
        phi,
        method="unrolled",
        inner_steps=steps,
        inner_lr=lr,
        inner_optimizer=opt,
    )
    gnorm = torch.func.grad(io.stationary_loss)(unrolled.params, phi)
    assert max(float(v.abs().max()) for v in gnorm.values()) < 1e-12  # the inner problem has converged
    assert float(unrolled.grads["phi.0.weight"].abs().max()) > 1e-6
    common = {
        "inner_steps": steps,
        "inner_lr": lr,
        "inner_optimizer": opt,
        "stationary_loss": io.stationary_loss,
    }
    cg = hypergrad(io.inner_loss, io.outer_loss, theta, phi, method="cg", iters=60, tol=1e-14, **common)
    neumann = hypergrad(
        io.inner_loss, io.outer_loss, theta, phi, method="neumann", terms=100, alpha=lr, **common
    )
    for name in phi:
        torch.testing.assert_close(
            cg.grads[name], unrolled.grads[name], rtol=1e-4, atol=1e-10, msg=f"cg {name}"
        )
        torch.testing.assert_close(
            neumann.grads[name], unrolled.grads[name], rtol=1e-4, atol=1e-10, msg=f"neumann {name}"
        )
    # and the first iterate is *not* converged: the implicit estimators need the convergence to agree
    early = hypergrad(
        io.inner_loss,
        io.outer_loss,
        theta,
        phi,
        method="unrolled",
        inner_steps=1,
        inner_lr=lr,
        inner_optimizer=opt,
    )
    assert not torch.allclose(early.grads["phi.0.weight"], cg.grads["phi.0.weight"], rtol=1e-2)


def _cfg(**kw):
    return nested_hrl.NestedHRLConfig(n_inner=2, **kw)


def test_a_non_finite_hypergradient_skips_the_step_leaving_theta_and_both_optimizers_untouched():
    io, theta, phi = _problem(2, _FIXED_MINIBATCHES)
    bad = io._replace(outer_loss=lambda w, p: io.outer_loss(w, p) * float("nan"))
    inner_opt = clip_by_global_norm(optim.adam(1e-3, eps=1e-5, eps_root=1e-16), 0.5)
    outer_opt = optim.adam(1e-3)
    start = parts.LearnerState(theta, inner_opt.init(theta), phi, outer_opt.init(phi))
    cfg = _cfg(hypergrad="unrolled")
    out = nested_steps.outer_step(bad, start, inner_opt, outer_opt, cfg, 0, 0, check_alpha=False)
    assert out.ok is False
    # the outer optimizer was never called, and θ with its inner state stay as they were
    assert out.learner.phi is phi and out.learner.outer_state is start.outer_state
    assert out.learner.theta is theta and out.learner.inner_state is start.inner_state
    good = nested_steps.outer_step(io, start, inner_opt, outer_opt, cfg, 0, 0, check_alpha=False)
    assert good.ok is True and any(not torch.equal(good.learner.phi[k], phi[k]) for k in phi)


def test_the_loop_counts_skipped_steps_and_keeps_the_subpolicies(tmp_path, monkeypatch):
    real = nested_steps.make_inner_outer
    seen = []

    def nan_outer(*args, **kwargs):
        io = real(*args, **kwargs)
        seen.append({k: v.clone() for k, v in kwargs["theta_start"].items()})
        return io._replace(outer_loss=lambda w, p: io.outer_loss(w, p) * float("nan"))

    monkeypatch.setattr(nested_steps, "make_inner_outer", nan_outer)
    from hrl_nested.algos import Task
    from hrl_nested.tracking import Run

    task = Task(env="hrl_nested/FourRooms-v0", total_steps=3 * 32, num_envs=4, eval_episodes=2, device="cpu")
    cfg = nested_hrl.NestedHRLConfig(
        num_steps=8, n_inner=2, num_minibatches=2, hidden=(8,), hypergrad="unrolled"
    )
    run = Run(
        tmp_path / "run",
        config={},
        algo="nested-hrl",
        env=task.env,
        seed=0,
        total_steps=task.total_steps,
        progress=False,
    )
    summary = nested_hrl.train(task, cfg, run)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["outer_skipped"] for r in rows] == [1, 2, 3] and summary["outer_skipped"] == 3
    assert all(r["phi_w_dist"] == 1.0 and r["phi_w_bonus"] == 0.0 for r in rows)  # φ never moved
    for before in seen[1:]:  # every iteration starts from the same θ: the skipped inner steps left no trace
        assert all(torch.equal(before[k], seen[0][k]) for k in before)
