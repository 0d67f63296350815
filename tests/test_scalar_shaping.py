"""The one-scalar shaping control (``--nested-hrl.shaping scalar``): φ = {w_dist}, one learned weight on
`--algo hrl`'s fixed distance shaping, through the same hypergradient engine as the full goal shaping.

Its hypergradient against central finite differences in float64 reuses the tiny nested problem of
``tests/test_nested_hypergrad.py`` with the scalar reward in place of the goal shaping.
"""

from __future__ import annotations

import json

import pytest
import torch

import tests.test_nested_hypergrad as tnh
from hrl_nested import optim
from hrl_nested.algos import ConfigError, Task, nested_hrl
from hrl_nested.algos.nested_parts import reward_fn_for
from hrl_nested.hypergrad import hypergrad
from hrl_nested.nested_objective import ShapingBatch, clip_by_global_norm, shaped_advantages
from hrl_nested.returns import gae
from hrl_nested.shaping import (
    extrinsic_weight,
    fixed_shaping,
    init_goal_shaping,
    init_scalar_shaping,
    scalar_shaping,
)
from hrl_nested.tracking import Run
from tests._hierarchies import small_nested_config
from tests._scripts import load_script

D = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread


def test_scalar_shaping_is_one_weight_on_the_fixed_shaping():
    g = torch.Generator().manual_seed(0)
    ag_next, goal = torch.randn(5, 3, 2, generator=g, dtype=D), torch.randn(5, 3, 2, generator=g, dtype=D)
    phi = init_scalar_shaping(dtype=D)
    assert set(phi) == {"w_dist"}
    # at initialization: exactly `hrl`'s reward (beta = 1, w = 1)
    torch.testing.assert_close(
        scalar_shaping(phi, ag_next, goal), fixed_shaping(ag_next, goal), rtol=0, atol=0
    )
    assert extrinsic_weight(phi) == 1.0
    ref = -0.3 * torch.sqrt(((ag_next - goal) ** 2).sum(-1))
    torch.testing.assert_close(scalar_shaping({"w_dist": torch.tensor(0.3, dtype=D)}, ag_next, goal), ref)
    goal_phi = init_goal_shaping(2, dtype=D)
    assert extrinsic_weight(goal_phi) is goal_phi["beta"]  # the goal shaping still learns beta
    with pytest.raises(ValueError, match="like ag_next"):
        scalar_shaping(phi, ag_next, goal[..., :1])


def test_shaped_advantages_of_the_scalar_shaping_by_hand():
    """``gae(1 * r_ext - w ||ag' - g||)`` with the critic's values: no beta in φ means beta = 1."""
    g = torch.Generator().manual_seed(1)
    T, N = 5, 2
    r, v, vn = (torch.randn(T, N, generator=g, dtype=D) for _ in range(3))
    term = torch.zeros(T, N, dtype=torch.bool)
    term[2, 1] = True
    trunc = torch.zeros(T, N, dtype=torch.bool)
    trunc[3, 0] = True
    ag_next, goal = torch.randn(T, N, 2, generator=g, dtype=D), torch.randn(T, N, 2, generator=g, dtype=D)
    sb = ShapingBatch(r, v, vn, term, trunc, {"ag_next": ag_next, "goal": goal})
    w = torch.tensor(0.7, dtype=D)
    adv, ret = shaped_advantages({"w_dist": w}, sb, reward_fn_for("scalar", 0.9), 0.9, 0.8)
    r_w = r - w * torch.linalg.vector_norm(ag_next - goal, dim=-1)
    adv_ref, ret_ref = gae(r_w, v, vn, term, trunc, 0.9, 0.8)
    torch.testing.assert_close(adv, adv_ref, rtol=0, atol=0)
    torch.testing.assert_close(ret, ret_ref, rtol=0, atol=0)


@pytest.fixture
def scalar_problem(monkeypatch):
    """`tnh._problem` (a tiny float64 nested problem, K = 2 subpolicies) with φ = {w_dist} and the scalar
    shaping as the intrinsic reward; ``w_dist`` is moved off 1 by the problem's own perturbation."""
    monkeypatch.setattr(tnh, "reward_fn_for", lambda kind, gamma: reward_fn_for("scalar", gamma))
    monkeypatch.setattr(
        tnh, "init_goal_shaping", lambda goal_dim, hidden, dtype: init_scalar_shaping(dtype=dtype)
    )
    return tnh._problem(0, tnh._FIXED_MINIBATCHES)


@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_scalar_shaping_hypergradient_matches_central_finite_differences(scalar_problem, inner):
    io, theta, phi = scalar_problem
    assert set(phi) == {"w_dist"}
    if inner == "sgd":
        opt = optim.sgd(0.5)
    else:  # the loop's own inner optimizer: Adam behind global-norm clipping
        opt = clip_by_global_norm(optim.adam(0.05, eps=1e-5, eps_root=1e-16), 0.5)
    fd = tnh._fd(io, theta, phi, opt, steps=4)
    for method, extra in (("unrolled", {}), ("truncated", {"truncate": 4})):
        res = hypergrad(
            io.inner_loss, io.outer_loss, theta, phi, method=method, inner_steps=4, inner_lr=0.5,
            inner_optimizer=opt, **extra,
        )  # fmt: skip
        assert set(res.grads) == {"w_dist"}
        assert float(res.grads["w_dist"].abs()) > 1e-5, "a vanishing hypergradient makes the check empty"
        torch.testing.assert_close(res.grads["w_dist"], fd["w_dist"], rtol=1e-5, atol=1e-9, msg=method)


def test_the_truncated_estimator_of_the_loop_matches_unrolled_when_it_spans_every_step(scalar_problem):
    """The loop's default estimator (truncated) with the truncation covering all inner steps is the exact
    unrolled hypergradient; with fewer steps it differs (so the comparison can fail)."""
    io, theta, phi = scalar_problem
    opt = optim.sgd(0.5)
    common = {"inner_steps": 4, "inner_lr": 0.5, "inner_optimizer": opt}
    exact = hypergrad(io.inner_loss, io.outer_loss, theta, phi, method="unrolled", **common)
    full = hypergrad(io.inner_loss, io.outer_loss, theta, phi, method="truncated", truncate=4, **common)
    short = hypergrad(io.inner_loss, io.outer_loss, theta, phi, method="truncated", truncate=1, **common)
    torch.testing.assert_close(full.grads["w_dist"], exact.grads["w_dist"], rtol=1e-10, atol=1e-14)
    assert not torch.allclose(short.grads["w_dist"], exact.grads["w_dist"], rtol=1e-3)


def test_nested_hrl_with_scalar_shaping_learns_only_w_dist(tmp_path):
    task = Task(env="hrl_nested/FourRooms-v0", total_steps=3 * 32, num_envs=4, eval_episodes=2, device="cpu")
    cfg = small_nested_config(hypergrad="unrolled", shaping="scalar", phi_lr=0.1)
    run = Run(tmp_path / "run", config={}, algo="nested-hrl", env=task.env, seed=0,
              total_steps=task.total_steps, progress=False)  # fmt: skip
    summary = nested_hrl.train(task, cfg, run)
    assert summary["outer_skipped"] == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    w = [r["phi_w_dist"] for r in rows]
    assert w[0] != 1.0 and len(set(w)) == len(w)  # the one weight moves every iteration (Adam, lr 0.1)
    assert all("phi_beta" not in r and "phi_w_bonus" not in r and "phi_out_min" not in r for r in rows)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert set(state["phi"]) == {"w_dist"}
    assert "shaping" in nested_hrl.NestedHRLConfig.state_shaping_fields  # φ's keys depend on it


def test_bad_shaping_value_names_what_was_expected():
    with pytest.raises(ConfigError) as e:
        nested_hrl.NestedHRLConfig(shaping="mlp").validate()
    assert str(e.value) == "--nested-hrl.shaping: expected one of goal, scalar, got mlp"
    nested_hrl.NestedHRLConfig(shaping="scalar").validate()
    with pytest.raises(ValueError, match="'goal', 'scalar', 'fixed' or 'free'"):
        reward_fn_for("potential", 0.9)


def test_a_bad_shaping_flag_exits_2_naming_the_choices(tmp_path, capsys):

    from tests.test_train_cli_errors import SCRIPT

    module = load_script(SCRIPT.name, "train_script_shaping")
    argv = ["--algo", "nested-hrl", "--nested-hrl.shaping", "mlp", "--run-dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exc:
        module.main([*argv, "--wandb-mode", "disabled"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--nested-hrl.shaping" in err and "goal" in err and "scalar" in err
    assert not (tmp_path / "run").exists()
