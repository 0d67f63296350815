"""``--nested-hrl.outer-batch next`` (online cross-validation, Xu et al. 2018): the outer loss of iteration
k's inner update is evaluated on batch k+1, collected by the updated θ'.

In float64 on a tiny fixed pair of batches, the loop's own `_next_outer_step` gives the hypergradient of
``-J_ext(θ'(φ); batch k+1)`` where ``θ'(φ)`` = 4 inner steps on batch k: it matches central finite
differences (SGD and the loop's clipped Adam); cg and neumann match unrolled at convergence; ``same`` is
the default and ``next`` changes the run; every estimator runs; resume carries the pending batch; a bad
value is a named error.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import pytest
import torch

from hrl_nested import optim
from hrl_nested.algos import nested_hrl, nested_steps
from hrl_nested.algos import nested_parts as parts
from hrl_nested.algos.nested_parts import reward_fn_for
from hrl_nested.hierarchy import GoalBounds, Hierarchy
from hrl_nested.hypergrad import hypergrad, run_inner
from hrl_nested.nested_objective import PolicyBatch, ShapingBatch, clip_by_global_norm
from hrl_nested.shaping import init_goal_shaping
from tests._finite_differences import central_differences
from tests._hierarchies import small_hierarchy
from tests._scripts import load_script

D = torch.float64
T, N, K_INNER = 4, 2, 4
REPO = Path(__file__).resolve().parents[1]


def _hierarchy() -> Hierarchy:
    torch.manual_seed(0)
    return small_hierarchy(
        gym.spaces.Box(-1, 1, (3,)),
        gym.spaces.Discrete(3),
        GoalBounds(-torch.ones(2), torch.ones(2), "test"),
        hidden=(5,),
        tolerance=0.2,
    )


def _batch(h: Hierarchy, theta, g: torch.Generator) -> tuple[ShapingBatch, PolicyBatch]:
    """A random T x N batch whose behaviour log-probs are ``theta``'s (the policy that collected it)."""
    B = T * N
    x = torch.randn(B, h.sub_in, generator=g, dtype=D)
    k = torch.randint(0, 2, (B,), generator=g)
    actions = torch.randint(0, 3, (B,), generator=g)
    with torch.no_grad():
        logp = h.sub_dist(theta, (x, k))[0].log_prob(actions)
    term = torch.zeros(T, N, dtype=torch.bool)
    term[2, 0] = True
    reached = torch.zeros(T, N, dtype=torch.bool)
    reached[0, 1] = True
    trunc = torch.zeros(T, N, dtype=torch.bool)
    trunc[1, 1] = True
    ag, ag_next, goal = (torch.randn(T, N, 2, generator=g, dtype=D) for _ in range(3))
    feats = {"ag": ag, "ag_next": ag_next, "goal": goal, "reached": reached, "terminal": term | reached}
    feats["scale"] = torch.ones(2, dtype=D)
    r_ext, v, v_next = (torch.randn(T, N, generator=g, dtype=D) for _ in range(3))
    sb = ShapingBatch(r_ext, v, v_next, term | reached, trunc & ~(term | reached), feats)
    return sb, PolicyBatch((x, k), actions, logp, torch.randn(B, generator=g, dtype=D))


def _cfg(**kw) -> nested_hrl.NestedHRLConfig:
    base = dict(n_inner=K_INNER, gamma=0.9, gae_lambda=0.8, ent_coef=0.01, outer_batch="next")
    return nested_hrl.NestedHRLConfig(**{**base, "hypergrad_max_norm": 1e12, **kw})  # no clipping


def _pair(inner_opt, cfg, minibatches, seed: int = 0):
    """Batch k (collected by θ), θ' after the inner steps on it, and batch k+1 (collected by θ')."""
    h = _hierarchy()
    g = torch.Generator().manual_seed(seed)
    theta0 = {k: v.to(D) + 0.4 * torch.randn(v.shape, generator=g, dtype=D) for k, v in h.theta0.items()}
    phi = init_goal_shaping(2, (4,), dtype=D)
    phi = {n: v + 0.5 * torch.randn(v.shape, generator=g, dtype=D) for n, v in phi.items()}
    reward_fn = reward_fn_for("goal", cfg.gamma)
    sb_k, pb_k = _batch(h, theta0, g)
    # the inner optimizer's state carries over: start from the state after one earlier step
    warm = nested_steps.inner_outer(h, sb_k, pb_k, minibatches, reward_fn, theta0, cfg)
    with torch.no_grad():
        theta, state = run_inner(warm.inner_loss, inner_opt, theta0, None, phi, range(1))
    pending = parts.PendingOuter(sb_k, pb_k, minibatches, theta, state, cfg.n_inner)
    prev = nested_steps.inner_outer(h, sb_k, pb_k, minibatches, reward_fn, theta, cfg)
    with torch.no_grad():
        theta_new, state_new = run_inner(prev.inner_loss, inner_opt, theta, state, phi, range(cfg.n_inner))
    sb_n, pb_n = _batch(h, theta_new, g)
    io_next = nested_steps.inner_outer(h, sb_n, pb_n, minibatches, reward_fn, theta_new, cfg)
    outer_opt = optim.adam(1e-3)
    learner = parts.LearnerState(theta_new, state_new, phi, outer_opt.init(phi))
    return SimpleNamespace(
        pieces=(h, reward_fn, inner_opt, outer_opt),
        pending=pending,
        prev=prev,
        io_next=io_next,
        pb_next=pb_n,
        learner=learner,
    )


def _fd(prev, io_next, pending, opt, phi, eps=1e-6):
    """Central finite differences of ``-J_ext`` on batch k+1 after K_INNER inner steps on batch k."""

    def f(p):
        with torch.no_grad():
            w, _ = run_inner(
                prev.inner_loss, opt, pending.theta_start, pending.inner_state, p, range(K_INNER)
            )
            return float(io_next.outer_loss(w, p))

    return central_differences(f, phi, eps)


_FIXED_MINIBATCHES = [torch.tensor([0, 3, 5, 6]), torch.tensor([1, 2, 4, 7])]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_next_batch_hypergradient_matches_central_finite_differences(inner):
    if inner == "sgd":
        opt = optim.sgd(0.5)
    else:  # the loop's own inner optimizer: Adam (eps 1e-5, eps_root) behind global-norm clipping
        opt = clip_by_global_norm(optim.adam(0.05, eps=1e-5, eps_root=1e-16), 0.5)
    for method in ("unrolled", "truncated"):
        cfg = _cfg(hypergrad=method, truncate=K_INNER)
        p = _pair(opt, cfg, _FIXED_MINIBATCHES)
        # truncated (T = n_inner) also runs the live check, against unrolled of the same next-batch problem
        checked = method == "truncated"
        out = nested_steps.next_outer_step(
            p.pending, p.io_next, p.learner, p.pieces, cfg, 0, 1, checked=checked, check_alpha=False
        )
        assert out.ok and (out.cosine is None) != checked
        if checked:
            assert float(out.cosine) > 1 - 1e-9
        pending, prev, learner = p.pending, p.prev, p.learner
        fd = _fd(prev, p.io_next, pending, opt, learner.phi)
        assert float(out.norm) > 1e-4, "a vanishing hypergradient would make the comparison empty"
        assert float(out.grads["phi.0.weight"].abs().max()) > 1e-6  # Φ's hidden layer is reached
        for name in fd:
            msg = f"{method} {name}"
            torch.testing.assert_close(out.grads[name], fd[name], rtol=1e-5, atol=1e-9, msg=msg)
        # the outer loss of batch k (LIRPG's "same") gives another gradient: the batches are not mixed up
        same = hypergrad(
            prev.inner_loss,
            prev.outer_loss,
            pending.theta_start,
            learner.phi,
            method="unrolled",
            inner_steps=K_INNER,
            inner_lr=0.5,
            inner_optimizer=opt,
            opt_state=pending.inner_state,
        )
        assert not torch.allclose(same.grads["phi.0.weight"], out.grads["phi.0.weight"], rtol=1e-2)
        # φ moved by the outer Adam; θ' and its inner state are the caller's to keep
        assert any(not torch.equal(out.learner.phi[k], learner.phi[k]) for k in learner.phi)


def test_the_outer_loss_on_the_batch_theta_prime_collected_has_ratio_one_but_a_gradient():
    opt = optim.sgd(0.5)
    cfg = _cfg(hypergrad="unrolled")
    p = _pair(opt, cfg, _FIXED_MINIBATCHES)
    theta = {k: v.clone().requires_grad_() for k, v in p.learner.theta.items()}
    loss = p.io_next.outer_loss(theta, p.learner.phi)
    adv = p.pb_next.adv_ext
    torch.testing.assert_close(loss, -(adv / (adv.std() + 1e-8)).mean(), rtol=1e-12, atol=1e-14)
    grads = torch.autograd.grad(loss, list(theta.values()))
    assert max(float(g.abs().max()) for g in grads) > 1e-6


def test_cg_and_neumann_on_the_next_batch_match_unrolled_at_convergence_with_the_proximal_term():
    """The implicit estimators take θ' as given (0 recomputed steps); with a strong prox term and full-batch
    SGD run to convergence, they agree with unrolled through the recomputed inner steps."""
    lr, steps = 0.08, 30  # contraction ~ (1 - 0.08 * 10) per step: far below float64 rounding after 30
    opt = optim.sgd(lr)
    full = [torch.arange(T * N)]
    results = {}
    for method in ("unrolled", "cg", "neumann"):
        cfg = _cfg(
            hypergrad=method,
            n_inner=steps,
            prox=10.0,
            cg_iters=60,
            cg_tol=1e-14,
            neumann_terms=50,
            neumann_alpha=lr,
        )
        p = _pair(opt, cfg, full, seed=1)
        stationary_grad = torch.func.grad(p.prev.stationary_loss)(p.learner.theta, p.learner.phi)
        assert max(float(v.abs().max()) for v in stationary_grad.values()) < 1e-12  # θ' has converged
        out = nested_steps.next_outer_step(
            p.pending, p.io_next, p.learner, p.pieces, cfg, 0, 1, checked=False, check_alpha=False
        )
        assert out.ok
        results[method] = out
    assert float(results["unrolled"].grads["phi.0.weight"].abs().max()) > 1e-6
    for method in ("cg", "neumann"):
        for name, ref in results["unrolled"].grads.items():
            torch.testing.assert_close(results[method].grads[name], ref, rtol=1e-4, atol=1e-10, msg=method)


# ---------------------------------------------------------------------------- through train.py
TINY = ["--num-envs", "4", "--eval-episodes", "2", "--device", "cpu", "--wandb-mode", "disabled"]


def _flags(algo: str, **extra) -> list[str]:
    flags = {"num-steps": 8, "n-inner": 2, "num-minibatches": 2, "hidden": "8", **extra}
    return [x for k, v in flags.items() for x in (f"--{algo}.{k}", *str(v).split())]


@pytest.fixture(scope="module")
def main():
    return load_script("train.py", "train_script_outer_batch").main


@pytest.fixture(autouse=True)
def _threads(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # train.py sets 1 thread


def _rows(run_dir: Path) -> list[dict]:
    """The metrics rows without their timings."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    drop = ("wall_s", "sps", "eval_s")
    return [{k: v for k, v in r.items() if k not in drop and not k.startswith("time_")} for r in rows]


@pytest.mark.parametrize("method", ["unrolled", "truncated", "cg", "neumann", "es"])
def test_smoke_next_batch_with_each_estimator(main, tmp_path, method):
    extra = {"hypergrad": method, "check-every": 1, "outer-batch": "next", "goal-horizon": 3, "es-samples": 2}
    run_dir = tmp_path / "run"
    main(["--algo", "nested-hrl", "--env", "hrl_nested/FourRooms-v0", "--total-steps", "96",
          "--run-dir", str(run_dir), *TINY, *_flags("nested-hrl", **extra)])  # fmt: skip
    rows = _rows(run_dir)
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    # the first iteration's update awaits the next batch: no hypergradient yet; then one per iteration
    assert "hypergrad_norm" not in rows[0] and rows[0]["outer_skipped"] == 0
    for r in rows[1:]:
        assert r["hypergrad_norm"] >= 0.0 and abs(r["hypergrad_cosine"]) <= 1.0 + 1e-6
    assert json.loads((run_dir / "config.json").read_text())["nested_hrl"]["outer_batch"] == "next"


def test_lirpg_shares_the_option(main, tmp_path):
    run_dir = tmp_path / "run"
    main(["--algo", "lirpg", "--env", "hrl_nested/CartPole-v1", "--total-steps", "64", "--run-dir",
          str(run_dir), *TINY, *_flags("lirpg", **{"outer-batch": "next"})])  # fmt: skip
    rows = _rows(run_dir)
    assert "hypergrad_norm" not in rows[0] and "hypergrad_norm" in rows[1]


def test_same_is_the_default_and_next_changes_the_run(main, tmp_path):
    base = ["--algo", "nested-hrl", "--env", "hrl_nested/PointMaze-U-v0", "--total-steps", "96", *TINY]
    runs = {}
    cases = (("default", {}), ("same", {"outer-batch": "same"}), ("next", {"outer-batch": "next"}))
    for name, extra in cases:
        flags = _flags("nested-hrl", **{"goal-horizon": 3, **extra})
        main([*base, "--run-dir", str(tmp_path / name), *flags])
        runs[name] = _rows(tmp_path / name)
    assert runs["same"] == runs["default"]  # bit for bit
    assert all("hypergrad_norm" in r for r in runs["same"])
    # next: no outer step on the first batch, a different hypergradient afterwards
    assert runs["next"][0]["phi_w_dist"] == 1.0 and runs["same"][0]["phi_w_dist"] != 1.0
    assert runs["next"][1]["hypergrad_norm"] != runs["same"][1]["hypergrad_norm"]


@pytest.mark.parametrize("method", ["truncated", "cg"])
def test_resume_with_next_carries_the_pending_batch(main, tmp_path, method):
    """2 iterations + resume to 4 reproduce a straight 4-iteration run: the checkpoint holds iteration 2's
    batch, minibatches, θ_start and inner state, whose hypergradient iteration 3 computes."""
    flags = [*TINY, *_flags("nested-hrl", **{"goal-horizon": 3, "eval-every": 0, "outer-batch": "next",
                                              "hypergrad": method})]  # fmt: skip
    env = ["--algo", "nested-hrl", "--env", "hrl_nested/PointMaze-U-v0"]
    main([*env, "--total-steps", "128", "--run-dir", str(tmp_path / "straight"), *flags])
    main([*env, "--total-steps", "64", "--run-dir", str(tmp_path / "split"), *flags])
    main(["--resume", str(tmp_path / "split"), "--total-steps", "128"])
    drop_eval = lambda rows: [{k: v for k, v in r.items() if not k.startswith("eval_")} for r in rows]  # noqa: E731
    straight, split = _rows(tmp_path / "straight"), _rows(tmp_path / "split")
    assert "hypergrad_norm" in split[2]  # the resumed run's first iteration used the saved pending batch
    assert drop_eval(split) == drop_eval(straight)


def test_a_bad_outer_batch_is_a_named_error_with_exit_code_2(main, tmp_path, capsys):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["--algo", "nested-hrl", "--nested-hrl.outer-batch", "later", "--run-dir", str(run_dir),
              "--wandb-mode", "disabled"])  # fmt: skip
    assert e.value.code == 2
    assert "--nested-hrl.outer-batch" in capsys.readouterr().err
    assert not run_dir.exists() or not any(run_dir.iterdir())


def test_validate_names_the_field_for_a_config_built_in_code():
    with pytest.raises(nested_hrl.ConfigError) as e:
        nested_hrl.NestedHRLConfig(outer_batch="later").validate()
    assert "outer-batch" in str(e.value) or "outer_batch" in str(e.value)
