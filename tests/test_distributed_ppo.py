"""One PPO run across processes (issue 12 part 5): the sharded update equals one process's update on the
union batch (float64, 2 gloo processes), the parallel-variance merge, and the bad inputs.

The two-process checks share one `torch.multiprocessing.spawn` (starting Python twice costs seconds);
each rank writes what it computed and the test compares it here.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import gymnasium as gym
import pytest
import torch

from hrl_nested import distributed
from hrl_nested.algos import ConfigError
from hrl_nested.algos.ppo import PPOConfig, _make_update_step, ppo_loss
from hrl_nested.algos.ppo_distributed import (
    MINIBATCH_SEED_OFFSET,
    ShardedUpdate,
    minibatch_rows,
    shard_gradients,
)
from hrl_nested.distributed import World, merge_moments, moments
from hrl_nested.networks import ActorCritic
from hrl_nested.obs_norm import ObsNormalizer
from hrl_nested.tracking import CheckpointError
from tests._ranks import run_on_ranks

sys.path.insert(0, str(Path(__file__).resolve().parent))

T, N, SEED = 4, 8, 3
CFG = PPOConfig(
    num_steps=T,
    lr=3e-3,
    update_epochs=2,
    num_minibatches=4,
    norm_adv=True,
    max_grad_norm=0.5,
    clip_vloss=True,
    ent_coef=0.01,
    anneal_lr=False,
)


def _agent() -> ActorCritic:
    torch.manual_seed(0)
    space = gym.spaces.Box(-10.0, 10.0, (4,))
    return ActorCritic(space, gym.spaces.Discrete(2), hidden=(16, 16)).double()


def _union_columns(agent: ActorCritic) -> dict[str, torch.Tensor]:
    """A fixed (T, N) float64 batch, its stored log-probs near the policy's (ratios vary, some clip)."""
    g = torch.Generator().manual_seed(11)
    obs = torch.randn(T, N, 4, generator=g, dtype=torch.float64)
    actions = torch.randint(0, 2, (T, N), generator=g)
    with torch.no_grad():
        dist_params, values = _forward(agent, obs)
        logp = agent.distribution(dist_params).log_prob(actions)
    return {
        "obs": obs,
        "actions": actions,
        "logprobs": logp + 0.3 * torch.randn(T, N, generator=g, dtype=torch.float64),
        "values": values + 0.5 * torch.randn(T, N, generator=g, dtype=torch.float64),
        "advantages": 2.0 * torch.randn(T, N, generator=g, dtype=torch.float64) + 0.7,
        "returns": torch.randn(T, N, generator=g, dtype=torch.float64),
        "policy_mask": torch.rand(T, N, generator=g) > 0.3,
    }


def _forward(agent: ActorCritic, obs: torch.Tensor):
    from hrl_nested.networks import actor_critic_apply

    return actor_critic_apply(agent, dict(agent.named_parameters()), obs)


def _flat(columns: dict[str, torch.Tensor], world: World | None = None) -> dict[str, torch.Tensor]:
    """The union batch (``world`` None) or a rank's shard, flattened to rows as the learner does."""
    if world is not None:
        n = N // world.size
        columns = {k: v[:, world.rank * n : (world.rank + 1) * n] for k, v in columns.items()}
    return {k: v.reshape(-1, *v.shape[2:]) for k, v in columns.items()}


def _grads(agent: ActorCritic, mb: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    loss, _ = ppo_loss(agent, mb, CFG)
    return list(torch.autograd.grad(loss, list(agent.parameters())))


def _compute(rank: int, world_size: int) -> dict[str, object]:
    world = World(rank, world_size, rank)
    agent = _agent()
    columns = _union_columns(agent)
    union, shard = _flat(columns), _flat(columns, world)
    out: dict[str, object] = {}

    # (1) gradients of single minibatches: a random one, one with none of rank 1's rows, with a mask
    perm = torch.randperm(T * N, generator=torch.Generator().manual_seed(5))
    only_rank0 = torch.tensor([t * N + i for t in range(2) for i in range(N // 2)])
    cases = {
        "random": (perm[:16], False),
        "rank1_empty": (only_rank0, False),
        "masked": (perm[8:24], True),
    }
    for name, (rows, masked) in cases.items():
        local = minibatch_rows(rows, 1, N, world)[0]
        pick = [k for k in shard if masked or k != "policy_mask"]
        mb = {k: shard[k][local] for k in pick}
        grads, stats = shard_gradients(agent, mb, CFG, world)
        out[f"{name}_rows"] = int(local.numel())
        out[f"{name}_grads"] = grads
        out[f"{name}_stats"] = stats
        if rank == 0:
            ref_mb = {k: union[k][rows] for k in pick}
            out[f"{name}_ref_grads"] = _grads(agent, ref_mb)
            out[f"{name}_ref_stats"] = torch.stack(list(ppo_loss(agent, ref_mb, CFG)[1]))

    # (2) one full iteration: all epochs and minibatches, norm-adv and grad clip on
    no_mask = {k: v for k, v in shard.items() if k != "policy_mask"}
    dist_agent = copy.deepcopy(agent)
    opt = torch.optim.Adam(dist_agent.parameters(), lr=CFG.lr, eps=1e-5)
    sharded = ShardedUpdate(dist_agent, opt, CFG, world, N, SEED)
    out["iter_stats"] = sharded.update(no_mask)
    out["iter_params"] = [p.detach().clone() for p in dist_agent.parameters()]
    if rank == 0:
        ref_agent = copy.deepcopy(agent)
        ref_opt = torch.optim.Adam(ref_agent.parameters(), lr=CFG.lr, eps=1e-5)
        step = _make_update_step(ref_agent, ref_opt, CFG)
        g = torch.Generator().manual_seed(SEED + MINIBATCH_SEED_OFFSET)
        ref_union = {k: v for k, v in union.items() if k != "policy_mask"}
        batch, size, total = T * N, T * N // CFG.num_minibatches, torch.zeros(6, dtype=torch.float64)
        for _ in range(CFG.update_epochs):
            p = torch.randperm(batch, generator=g)
            for start in range(0, batch, size):
                total += step({k: v[p[start : start + size]] for k, v in ref_union.items()})
        out["iter_ref_stats"] = total / (CFG.update_epochs * CFG.num_minibatches)
        out["iter_ref_params"] = [p.detach().clone() for p in ref_agent.parameters()]
        out["iter_start_params"] = [p.detach().clone() for p in agent.parameters()]

    # (3) observation statistics of the union batch, merged across ranks
    x = columns["obs"][:, rank * (N // 2) : (rank + 1) * (N // 2)]
    m = distributed.all_moments(x.reshape(-1, 4), world)
    out["moments"] = (m.count, m.mean, m.var)
    norm = ObsNormalizer(gym.spaces.Box(-10.0, 10.0, (4,)))
    norm.update(columns["obs"][:1])  # some history first
    norm.update(x, reduce=distributed.moments_reducer(world))
    out["obs_norm"] = norm.state_dict()
    if rank == 0:
        ref = ObsNormalizer(gym.spaces.Box(-10.0, 10.0, (4,)))
        ref.update(columns["obs"][:1])
        ref.update(columns["obs"])
        out["obs_norm_ref"] = ref.state_dict()
    # (4) what rank 0 logs and decides: episode sums over ranks, its flags, every rank's parts
    from hrl_nested.rollout import RolloutResult

    mine = RolloutResult(None, None, None, torch.tensor(10.0 + rank), torch.tensor(3 + rank), torch.tensor(1))
    summed = distributed.sum_episodes(mine, world)
    out["episodes"] = [summed.episode_return_sum, summed.episode_length_sum, summed.episode_count]
    out["flags"] = distributed.broadcast_flags([rank == 0, rank == 1], world, torch.device("cpu"))
    out["gathered"] = distributed.gather_to_main({"rank": rank, "x": torch.full((2,), float(rank))}, world)
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    return run_on_ranks(_compute, tmp_path_factory.mktemp("dist"))


@pytest.mark.parametrize("case", ["random", "rank1_empty", "masked"])
def test_gradients_equal_one_process_on_the_union_minibatch(two_ranks, case):
    r0, r1 = two_ranks
    if case == "rank1_empty":
        assert r1[f"{case}_rows"] == 0 and r0[f"{case}_rows"] == 8
    else:
        assert r0[f"{case}_rows"] > 0 and r1[f"{case}_rows"] > 0
    for g0, g1, ref in zip(r0[f"{case}_grads"], r1[f"{case}_grads"], r0[f"{case}_ref_grads"], strict=True):
        assert ref.abs().max() > 0
        torch.testing.assert_close(g0, ref, rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(g1, g0, rtol=0, atol=0)  # every rank steps with the same gradient
    torch.testing.assert_close(r0[f"{case}_stats"], r0[f"{case}_ref_stats"], rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(r1[f"{case}_stats"], r0[f"{case}_stats"], rtol=0, atol=0)


def test_one_iteration_equals_one_process(two_ranks):
    r0, r1 = two_ranks
    moved = [(a - b).abs().max() for a, b in zip(r0["iter_ref_params"], r0["iter_start_params"], strict=True)]
    assert max(moved) > 1e-3  # the update did something
    assert r0["iter_ref_stats"][5] > CFG.max_grad_norm  # the clip was active (grad_norm is pre-clip)
    for p0, p1, ref in zip(r0["iter_params"], r1["iter_params"], r0["iter_ref_params"], strict=True):
        torch.testing.assert_close(p0, ref, rtol=0, atol=1e-8)
        torch.testing.assert_close(p1, p0, rtol=0, atol=0)
    torch.testing.assert_close(r0["iter_stats"], r0["iter_ref_stats"], rtol=1e-6, atol=1e-10)


def test_obs_statistics_merged_across_ranks(two_ranks):
    r0, r1 = two_ranks
    agent = _agent()
    x = _union_columns(agent)["obs"].reshape(-1, 4)
    for r in (r0, r1):
        count, mean, var = r["moments"]
        assert count.item() == T * N
        torch.testing.assert_close(mean, x.mean(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(var, x.var(0, unbiased=False), rtol=1e-12, atol=1e-12)
        for key in ("mean", "var", "count"):
            torch.testing.assert_close(
                r["obs_norm"]["obs"][key], r0["obs_norm_ref"]["obs"][key], rtol=1e-12, atol=1e-12
            )


def test_rank0_logs_and_decides_for_the_run(two_ranks):
    r0, r1 = two_ranks
    for r in (r0, r1):
        ret, length, count = r["episodes"]
        assert (ret.item(), length.item(), count.item()) == (21.0, 7, 2)
        assert ret.dtype == torch.float32 and length.dtype == count.dtype == torch.int64
        assert r["flags"] == [True, False]  # rank 0's
    assert [g["rank"] for g in r0["gathered"]] == [0, 1] and r1["gathered"] is None
    assert r0["gathered"][1]["x"].tolist() == [1.0, 1.0]


def test_merge_moments_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    x = 3.0 + 2.0 * torch.randn(37, 3, generator=g, dtype=torch.float64)
    for cut in ([5, 20], [1, 2, 30], [36]):
        bounds = [0, *cut, 37]
        out = None
        for lo, hi in zip(bounds, bounds[1:], strict=False):
            m = moments(x[lo:hi])
            out = m if out is None else merge_moments(out, m)
        assert out.count.item() == 37
        torch.testing.assert_close(out.mean, x.mean(0), rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(out.m2, ((x - x.mean(0)) ** 2).sum(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.var, x.var(0, unbiased=False), rtol=1e-12, atol=1e-12)
    empty = distributed.Moments(
        torch.zeros((), dtype=torch.float64),
        torch.zeros(3, dtype=torch.float64),
        torch.zeros(3, dtype=torch.float64),
    )
    both = merge_moments(empty, moments(x))
    torch.testing.assert_close(both.mean, x.mean(0))
    torch.testing.assert_close(merge_moments(empty, empty).mean, torch.zeros(3, dtype=torch.float64))


def test_minibatch_rows_partition_each_minibatch():
    """Each minibatch's rows, mapped back from every rank's local rows, are exactly the minibatch."""
    perm = torch.randperm(6 * 12, generator=torch.Generator().manual_seed(1))
    worlds = [World(r, 3, r) for r in range(3)]
    per_rank = [minibatch_rows(perm, 4, 12, w) for w in worlds]
    for k in range(4):
        union = set(perm[k * 18 : (k + 1) * 18].tolist())
        back = set()
        for w, rows in zip(worlds, per_rank, strict=True):
            local = rows[k]
            back |= {int(r // 4) * 12 + w.rank * 4 + int(r % 4) for r in local}
        assert back == union


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ConfigError, match=r"--num-envs: expected a multiple of the world size 3.*got 8"):
        distributed.local_num_envs(8, World(0, 3, 0))
    assert list(distributed.env_indices(8, World(1, 2, 1))) == [4, 5, 6, 7]
    with pytest.raises(ConfigError, match=r"--device: expected cuda or auto under torchrun"):
        distributed.rank_device(torch.device("cuda", 1), World(0, 2, 0))
    with pytest.raises(CheckpointError, match=r"written by a run of 2 process\(es\).*this run has 1"):
        distributed.check_checkpoint_world({"world_size": 2}, World(), "ck.pt")
    with pytest.raises(CheckpointError, match=r"run of 1 process\(es\).*this run has 2"):
        distributed.check_checkpoint_world({}, World(0, 2, 0), "ck.pt")
    with pytest.raises(ValueError, match=r"RANK < WORLD_SIZE"):
        distributed.world_from_env({"WORLD_SIZE": "2", "RANK": "2"})
    assert distributed.world_from_env({}) == World()


def test_train_script_refuses_what_torchrun_cannot_split(monkeypatch, tmp_path, capsys):
    """Under torchrun's variables, bad input fails before any process group or file: envs that do not
    split, and an algorithm that runs in one process only (SB3's own loop)."""
    from _scripts import load_script

    train = load_script("train.py", "train", reuse=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    base = ["--device", "cpu", "--wandb-mode", "disabled"]
    with pytest.raises(SystemExit) as e:
        train.main(["--num-envs", "7", "--run-dir", str(tmp_path / "a"), *base])
    assert e.value.code == 2
    assert "--num-envs: expected a multiple of the world size 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--algo", "sb3-ppo", "--num-envs", "8", "--run-dir", str(tmp_path / "b"), *base])
    err = capsys.readouterr().err
    assert "--algo: expected one of ppo, nested-hrl, hrl, lirpg under torchrun" in err
    assert "got sb3-ppo" in err and "runs in one process" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("env_id", ["hrl_nested/CartPole-v1", "CartPole-v1"])
def test_rank_envs_draw_what_one_process_draws(env_id):
    """Rank 1 of 2, stepping envs 4..7 of 8, starts them where a one-process run of 8 envs starts them
    (our envs: the ``env_index`` reset option; a wrapped Gymnasium env: Gymnasium's seeds ``seed + i``)."""
    import envs

    whole, _ = envs.make(env_id, 8, device="cpu").reset(seed=123)
    shard_env = envs.make(env_id, 4, device="cpu")
    shard, _ = distributed.reset_shard(shard_env, 123, 8, World(1, 2, 1))
    torch.testing.assert_close(shard, whole[4:])
    assert not torch.equal(shard, whole[:4])


def test_nested_hrl_needs_the_process_group_torchrun_describes(monkeypatch):
    """Nested HRL runs under torchrun (tests/test_distributed_nested.py); torchrun's variables without a
    process group are refused before any setup, as for PPO: the ranks would each train alone."""
    from hrl_nested.algos import Task, nested_hrl

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    task = Task(env="hrl_nested/PointMaze-U-v0", num_envs=8, device="cpu", total_steps=64)
    with pytest.raises(RuntimeError, match=r"WORLD_SIZE=2 but no torch.distributed process group"):
        nested_hrl.train(task, nested_hrl.NestedHRLConfig())
