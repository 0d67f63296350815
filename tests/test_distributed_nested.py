"""Nested HRL across processes (issue 12 part 5): on a tiny fixed union batch split over 2 gloo processes in
float64, φ's hypergradient (unrolled, truncated, cg, neumann, es) equals the one-process hypergradient on
the union batch, and the parameters after one learning step (θ and φ through the loop's own
`_outer_step`, both critics, the manager on the gathered segments) equal one process's.

The rollouts themselves differ per rank (each rank samples its own actions, as flat PPO's do), so the
comparison is of the learning step on a fixed union batch, as tests/test_distributed_ppo.py does; the
loop's wiring under ``torchrun`` is tests/test_torchrun_nested.py's. One spawn of the two processes
(`tests._ranks.run_on_ranks`) serves every check; the one-process references run here, in the test process
(no process group: ``replicate`` and ``reduce_sum`` are the identity).
"""

from __future__ import annotations

import copy

import gymnasium as gym
import pytest
import torch

from hrl_nested import optim
from hrl_nested.algos import nested_hrl, nested_steps
from hrl_nested.algos import nested_parts as parts
from hrl_nested.algos.nested_distributed import Shards
from hrl_nested.algos.ppo_distributed import MINIBATCH_SEED_OFFSET, minibatch_rows
from hrl_nested.distributed import World
from hrl_nested.hierarchy import GoalBounds
from hrl_nested.nested_objective import PolicyBatch, ShapingBatch, clip_by_global_norm
from hrl_nested.shaping import init_goal_shaping
from tests._hierarchies import small_hierarchy, small_nested_config
from tests._ranks import run_on_ranks

D = torch.float64
T, N, GAMMA, SEED = 4, 4, 0.9, 5
METHODS = ("unrolled", "truncated", "cg", "neumann", "es")

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread


def _cfg(method: str) -> nested_hrl.NestedHRLConfig:
    """Inner steps, estimators, outer step, critics and manager, each sized for a float64 batch of 16."""
    return small_nested_config(
        hypergrad=method, num_steps=T, n_inner=4, sub_lr=0.05, gamma=GAMMA, gae_lambda=0.8, ent_coef=0.01,
        truncate=2, cg_iters=5, neumann_terms=5, neumann_alpha=0.05, es_samples=3, es_sigma=0.05,
        phi_lr=0.01, hypergrad_max_norm=100.0, critic_epochs=2, manager_epochs=2, manager_minibatches=2,
    )  # fmt: skip


def _union_problem():
    """A hierarchy (K = 2 subpolicies, Discrete(3), goal dim 2) in float64, θ, φ away from their init, and
    a fixed ``(T, N)`` union batch: episode and segment ends, subgoals reached, extrinsic advantages."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    bounds = GoalBounds(-torch.ones(2), torch.ones(2), "test")
    h = small_hierarchy(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(3), bounds, hidden=(5,))
    h.critics.double()
    h.manager.double()
    theta = {k: v.to(D) + 0.4 * torch.randn(v.shape, generator=g, dtype=D) for k, v in h.theta0.items()}
    phi = init_goal_shaping(2, (4,), dtype=D)
    phi = {n: v + 0.5 * torch.randn(v.shape, generator=g, dtype=D) for n, v in phi.items()}
    x = torch.randn(T, N, h.sub_in, generator=g, dtype=D)
    k = torch.randint(0, 2, (T, N), generator=g)
    actions = torch.randint(0, 3, (T, N), generator=g)
    with torch.no_grad():
        logp = h.sub_dist(theta, (x.reshape(-1, h.sub_in), k.reshape(-1)))[0].log_prob(actions.reshape(-1))
    term = torch.zeros(T, N, dtype=torch.bool)
    term[2, 0] = term[1, 3] = True
    trunc = torch.zeros(T, N, dtype=torch.bool)
    trunc[1, 1] = True
    reached = torch.zeros(T, N, dtype=torch.bool)
    reached[0, 1] = reached[3, 2] = True
    ag, ag_next, goal = (torch.randn(T, N, 2, generator=g, dtype=D) for _ in range(3))
    columns = {
        "x": x,
        "k": k,
        "actions": actions,
        "logprobs": logp.reshape(T, N) + 0.2 * torch.randn(T, N, generator=g, dtype=D),
        "adv_ext": torch.randn(T, N, generator=g, dtype=D),
        "r_ext": torch.randn(T, N, generator=g, dtype=D),
        "values": torch.randn(T, N, generator=g, dtype=D),
        "next_values": torch.randn(T, N, generator=g, dtype=D),
        "terminated": term | reached,
        "truncated": trunc & ~(term | reached),
        "ag": ag,
        "ag_next": ag_next,
        "goal": goal,
        "reached": reached,
        "critic_target_w": torch.randn(T, N, generator=g, dtype=D),
        "critic_target_ext": torch.randn(T, N, generator=g, dtype=D),
        "segment_ended": torch.rand(T, N, generator=g) < 0.5,
        "m_input": torch.randn(T, N, h.mgr_in, generator=g, dtype=D),
        "m_action": torch.randn(T, N, 3, generator=g, dtype=D).clamp(-1, 1),
        "m_adv": torch.randn(T, N, generator=g, dtype=D),
        "m_ret": torch.randn(T, N, generator=g, dtype=D),
    }
    columns["m_action"][..., 2] = torch.randint(0, 2, (T, N), generator=g).to(D)
    with torch.no_grad():
        mgr = dict(h.manager.named_parameters())
        mdist, mv = h.manager_dist(mgr, columns["m_input"])
        columns["m_logp"] = mdist.log_prob(columns["m_action"])
        columns["m_value"] = mv
    return h, theta, phi, columns


def _pieces(h, columns: dict[str, torch.Tensor]):
    """The `ShapingBatch`, `PolicyBatch`, critic inputs/targets and manager rows of ``columns`` (a
    ``(T, n)`` block: the whole batch or one rank's envs), rows in ``(t, n)`` order as the loop flattens."""
    c = columns
    rows = lambda v: v.reshape(-1, *v.shape[2:])  # noqa: E731
    feats = {
        "ag": c["ag"],
        "ag_next": c["ag_next"],
        "goal": c["goal"],
        "reached": c["reached"],
        "terminal": c["terminated"],
        "scale": torch.ones(2, dtype=D),
    }
    sb = ShapingBatch(c["r_ext"], c["values"], c["next_values"], c["terminated"], c["truncated"], feats)
    pb = PolicyBatch(
        (rows(c["x"]), rows(c["k"])), rows(c["actions"]), rows(c["logprobs"]), rows(c["adv_ext"])
    )
    crit_x = h.critic_input(rows(c["x"]), rows(c["k"]))
    prep = parts.Prepared(sb, pb, None, None, None, None, crit_x, rows(c["critic_target_ext"]), None)
    ended = rows(c["segment_ended"])
    mgr_rows = {
        "obs": rows(c["m_input"])[ended],
        "actions": rows(c["m_action"])[ended],
        "logprobs": rows(c["m_logp"])[ended],
        "values": rows(c["m_value"])[ended],
        "advantages": rows(c["m_adv"])[ended],
        "returns": rows(c["m_ret"])[ended],
    }
    return sb, pb, prep, rows(c["critic_target_w"]), mgr_rows


def _learning_step(method: str, h, theta, phi, sb, pb, minibatches):
    """The loop's `_outer_step` (n_inner inner steps, the hypergradient, the outer Adam step on φ)."""
    cfg = _cfg(method)
    inner_opt = clip_by_global_norm(optim.adam(cfg.sub_lr, eps=1e-5, eps_root=1e-16), cfg.max_grad_norm)
    outer_opt = optim.adam(cfg.phi_lr)
    learner = parts.LearnerState(theta, inner_opt.init(theta), phi, outer_opt.init(phi))
    io = nested_steps.inner_outer(h, sb, pb, minibatches, parts.reward_fn_for("goal", GAMMA), theta, cfg)
    out = nested_steps.outer_step(io, learner, inner_opt, outer_opt, cfg, SEED, 0, check_alpha=False)
    assert out.ok
    return {"grads": out.grads, "theta": out.learner.theta, "phi": out.learner.phi}


def _union_perms(cfg) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(SEED + MINIBATCH_SEED_OFFSET)
    return [torch.randperm(T * N, generator=g) for _ in range(cfg.n_inner // cfg.num_minibatches)]


def _uneven_minibatches() -> list[torch.Tensor]:
    """Union minibatches (rows ``t * N + env``) the ranks share unevenly: the first lies in rank 0's envs
    alone, so rank 1 contributes an empty shard (zero terms, zero gradient) to its loss."""
    only_rank0 = torch.tensor([0, 1, 4, 5, 8, 9])
    mixed = torch.tensor([2, 3, 6, 7, 10, 12, 13])
    return [only_rank0, mixed, only_rank0, mixed]


def _compute(rank: int, world_size: int) -> dict[str, object]:
    world = World(rank, world_size, rank)
    h, theta, phi, columns = _union_problem()
    n = N // world_size
    mine = {k: v[:, rank * n : (rank + 1) * n] for k, v in columns.items()}
    sb, pb, prep, ret_w, mgr_rows = _pieces(h, mine)
    out: dict[str, object] = {}
    for method in METHODS:
        shards = Shards(world, N, T, SEED)  # the loop's minibatches: rows of the union permutations
        minibatches = shards.minibatches(_cfg(method), torch.device("cpu"))
        out[method] = _learning_step(method, h, theta, phi, sb, pb, minibatches)
        out[f"{method}_rows"] = [int(m.numel()) for m in minibatches]
    empty = [minibatch_rows(u, 1, N, world)[0] for u in _uneven_minibatches()]
    assert int(empty[0].numel()) == (6 if rank == 0 else 0)  # rank 1 holds none of minibatch 0
    out["empty_shard"] = _learning_step("cg", h, theta, phi, sb, pb, empty)

    cfg = _cfg("truncated")
    critics = copy.deepcopy(h.critics)
    hc = copy.copy(h)
    hc.critics = critics
    opt = torch.optim.Adam(critics.parameters(), lr=cfg.critic_lr, eps=1e-5)
    out["critic_loss"] = parts.update_critics(hc, opt, prep, ret_w, cfg, shards=Shards(world, N, T, SEED))
    out["critics"] = {k: v.detach().clone() for k, v in critics.state_dict().items()}

    shards = Shards(world, N, T, SEED)
    union_rows = shards.gather_manager_rows(mgr_rows, mine["segment_ended"])
    out["manager_rows"] = union_rows
    hm = copy.copy(h)
    hm.manager = copy.deepcopy(h.manager)
    mopt = torch.optim.Adam(hm.manager.parameters(), lr=cfg.manager_lr, eps=1e-5)
    parts.update_manager(hm, mopt, [union_rows], cfg, generator=shards.generator)
    out["manager"] = {k: v.detach().clone() for k, v in hm.manager.state_dict().items()}
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    return run_on_ranks(_compute, tmp_path_factory.mktemp("dist_nested"))


@pytest.fixture(scope="module")
def union():
    h, theta, phi, columns = _union_problem()
    return h, theta, phi, columns, _pieces(h, columns)


@pytest.mark.parametrize("method", METHODS)
def test_hypergradient_and_step_equal_one_process_on_the_union_batch(two_ranks, union, method):
    h, theta, phi, _, (sb, pb, *_rest) = union
    cfg = _cfg(method)
    size = T * N // cfg.num_minibatches
    minibatches = [
        p[j * size : (j + 1) * size] for p in _union_perms(cfg) for j in range(cfg.num_minibatches)
    ]
    ref = _learning_step(method, h, theta, phi, sb, pb, minibatches)
    r0, r1 = two_ranks
    assert all(r > 0 for r in r0[f"{method}_rows"] + r1[f"{method}_rows"])  # both ranks hold rows
    assert [a + b for a, b in zip(r0[f"{method}_rows"], r1[f"{method}_rows"], strict=True)] == [size] * 4
    norm = torch.sqrt(sum(g.square().sum() for g in ref["grads"].values()))
    assert norm > 1e-4 and float(ref["grads"]["phi.0.weight"].abs().max()) > 1e-6
    for r in (r0, r1):
        for name in phi:
            torch.testing.assert_close(r[method]["grads"][name], ref["grads"][name], rtol=1e-6, atol=1e-10)
            torch.testing.assert_close(r[method]["phi"][name], ref["phi"][name], rtol=0, atol=1e-8)
        for name in theta:
            torch.testing.assert_close(r[method]["theta"][name], ref["theta"][name], rtol=0, atol=1e-8)
    moved = max(float((ref["theta"][k] - theta[k]).abs().max()) for k in theta)
    assert moved > 1e-3  # the inner steps did something


def test_a_rank_without_rows_in_a_minibatch_adds_nothing(two_ranks, union):
    """A union minibatch that lies in one rank's envs alone: the other rank's shard is empty, and the
    hypergradient and step still equal one process's on the union minibatches (of unequal sizes)."""
    h, theta, phi, _, (sb, pb, *_rest) = union
    ref = _learning_step("cg", h, theta, phi, sb, pb, _uneven_minibatches())
    for r in two_ranks:
        for name in phi:
            got = r["empty_shard"]["grads"][name]
            torch.testing.assert_close(got, ref["grads"][name], rtol=1e-6, atol=1e-10)
        for name in theta:
            torch.testing.assert_close(r["empty_shard"]["theta"][name], ref["theta"][name], rtol=0, atol=1e-8)


def test_critics_step_equals_one_process_on_the_union_batch(two_ranks, union):
    """Both critics after their epochs of union minibatches (the same permutations as one process drawing
    from the same generator), the global gradient clip included."""
    h, _, _, _, (_, _, prep, ret_w, _) = union
    cfg = _cfg("truncated")
    critics = copy.deepcopy(h.critics)
    opt = torch.optim.Adam(critics.parameters(), lr=cfg.critic_lr, eps=1e-5)
    g = torch.Generator().manual_seed(SEED + MINIBATCH_SEED_OFFSET)
    size, clipped = T * N // cfg.num_minibatches, []
    for _ in range(cfg.critic_epochs):
        perm = torch.randperm(T * N, generator=g)
        for s in range(0, T * N, size):
            idx = perm[s : s + size]
            x = prep.critic_x[idx]
            loss = 0.5 * (
                (critics["w"](x).squeeze(-1) - ret_w[idx]).square().mean()
                + (critics["ext"](x).squeeze(-1) - prep.ret_ext[idx]).square().mean()
            )
            opt.zero_grad()
            loss.backward()
            clipped.append(float(torch.nn.utils.clip_grad_norm_(critics.parameters(), cfg.max_grad_norm)))
            opt.step()
    assert max(clipped) > cfg.max_grad_norm  # the clip was active
    for r in two_ranks:
        for k, v in critics.state_dict().items():
            torch.testing.assert_close(r["critics"][k], v, rtol=0, atol=1e-8)
    torch.testing.assert_close(two_ranks[0]["critic_loss"], two_ranks[1]["critic_loss"], rtol=0, atol=0)


def test_manager_trains_on_the_gathered_segments_in_one_process_order(two_ranks, union):
    h, _, _, _, (*_, mgr_rows) = union
    cfg = _cfg("truncated")
    for r in two_ranks:  # the union's ended segments, ordered by (t, global env) as one process has them
        for k, v in mgr_rows.items():
            torch.testing.assert_close(r["manager_rows"][k], v, rtol=0, atol=0)
    hm = copy.copy(h)
    hm.manager = copy.deepcopy(h.manager)
    opt = torch.optim.Adam(hm.manager.parameters(), lr=cfg.manager_lr, eps=1e-5)
    generator = torch.Generator().manual_seed(SEED + MINIBATCH_SEED_OFFSET)
    parts.update_manager(hm, opt, [mgr_rows], cfg, generator=generator)
    moved = max(
        float((a - b).abs().max())
        for a, b in zip(hm.manager.state_dict().values(), h.manager.state_dict().values())
    )
    assert moved > 1e-5
    for r in two_ranks:
        for k, v in hm.manager.state_dict().items():
            torch.testing.assert_close(r["manager"][k], v, rtol=0, atol=1e-8)


def test_union_minibatch_rows_are_the_ranks_shares():
    """`Shards.minibatches` hands each rank exactly its rows of each union minibatch (no row twice)."""
    cfg = _cfg("unrolled")
    perms = _union_perms(cfg)
    n = N // 2
    for rank in range(2):
        got = Shards(World(rank, 2, rank), N, T, SEED).minibatches(cfg, torch.device("cpu"))
        want = [r for p in perms for r in minibatch_rows(p, cfg.num_minibatches, N, World(rank, 2, rank))]
        assert [g.tolist() for g in got] == [w.tolist() for w in want]
        assert all(int(r.max()) < T * n for r in got)
