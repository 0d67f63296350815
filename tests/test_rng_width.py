"""The env RNG is Philox-4x32-10 with 64-bit keys (seeds) and 64-bit counters (issue 8, item 9).

Checked against Random123's known-answer vectors and an independent pure-Python Philox; seeds that a
32-bit key folded together differ; no whole reset draw repeats at a scale where a 32-bit state
would (birthday bound); ``options={"env_index": ...}`` reproduces another batch's envs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs import rng
from envs.classic.cartpole import CartPoleEnv
from envs.core import EnvState
from envs.tasks.four_rooms import FourRoomsEnv

MASK = 0xFFFFFFFF

# Random123's kat_vectors for philox4x32_10: (counter, key, expected output).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((MASK,) * 4, (MASK, MASK), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


def _philox_reference(ctr, key, rounds=10):
    """Philox-4x32 written from the paper with Python ints (Salmon et al. 2011, Random123)."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for _ in range(rounds):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK, (p0 >> 32) ^ c3 ^ k1, p0 & MASK
        k0, k1 = (k0 + 0x9E3779B9) & MASK, (k1 + 0xBB67AE85) & MASK
    return c0, c1, c2, c3


@pytest.fixture(params=["default", "torch"])
def path(request, monkeypatch):
    """Run on the eager CPU fast path and on the int64 tensor path that CUDA and compiled steps use."""
    if request.param == "torch":
        monkeypatch.setattr(rng, "_eager_cpu", lambda t: False)
    return request.param


def test_philox_matches_random123_known_answers(path):
    for ctr, key, want in KAT:
        got = rng.philox4x32(torch.tensor(ctr), torch.tensor(key))
        assert tuple(got.tolist()) == want
        assert _philox_reference(ctr, key) == want
    batch = rng.philox4x32(torch.tensor([c for c, _, _ in KAT]), torch.tensor([k for _, k, _ in KAT]))
    assert [tuple(r) for r in batch.tolist()] == [w for _, _, w in KAT]


def test_philox_matches_a_python_reference_on_random_words(path):
    g = np.random.default_rng(0)
    ctr = g.integers(0, 2**32, size=(300, 4))
    key = g.integers(0, 2**32, size=(300, 2))
    ctr[:20] = MASK  # products near 2**64
    got = rng.philox4x32(torch.as_tensor(ctr), torch.as_tensor(key)).tolist()
    want = [list(_philox_reference(tuple(map(int, c)), tuple(map(int, k)))) for c, k in zip(ctr, key)]
    assert got == want


def test_fast_path_and_tensor_path_give_the_same_bits(monkeypatch):
    g = torch.Generator().manual_seed(0)
    n = 40
    key = torch.cat(
        [torch.randint(0, 2**32, (n, 3), generator=g), torch.randint(0, 2**8, (n, 1), generator=g)], 1
    )
    counter = torch.randint(0, 2**32, (n, 2), generator=g)
    one_seed = key.clone()
    one_seed[:, :2] = key[0, :2]  # the usual case, which the fast path special-cases
    rows = torch.tensor([0, 3, 17, 39])
    cases = [(0, 0, 4, None), (1, 7, 9, None), (1, 1023, 13, rows), (15, 2, 2, rows)]
    fast = [rng.random_bits(k, counter, *c) for k in (key, one_seed) for c in cases]
    monkeypatch.setattr(rng, "_eager_cpu", lambda t: False)
    slow = [rng.random_bits(k, counter, *c) for k in (key, one_seed) for c in cases]
    for a, b, c in zip(fast, slow, cases + cases):
        assert torch.equal(a, b)
        if c[3] is not None:  # rows: the same words as a full draw in those rows
            full = rng.random_bits(key, counter, *c[:3])
            assert torch.equal(fast[cases.index(c)][c[3]], full[c[3]])


def test_counter_is_64_bits_with_carry(path):
    c = torch.tensor([[MASK, 5], [MASK, MASK], [7, 0]])
    rng.increment(c, torch.tensor([1, 1, 0]))
    assert c.tolist() == [[0, 6], [0, 0], [7, 0]]
    rng.increment(c)
    assert c.tolist() == [[1, 6], [1, 0], [8, 0]]


def _reset_obs(seed, n=8):
    return CartPoleEnv(num_envs=n).reset(seed=seed)[0]


def test_seeds_that_32_bits_folded_together_differ():
    seeds = [0, 5273241408, 2**63, 2**32, 1, 2**32 + 1, 2**64 - 1]
    obs = [_reset_obs(s) for s in seeds]
    for i in range(len(seeds)):
        for j in range(i + 1, len(seeds)):
            assert not torch.equal(obs[i], obs[j]), (seeds[i], seeds[j])
    assert torch.equal(_reset_obs(2**63), _reset_obs(2**63))
    # A per-env seed list is the same stream as the int seed, for seeds past 2**63 too.
    env = CartPoleEnv(num_envs=2)
    mixed = env.reset(seed=[2**64 - 1, 0])[0]
    assert torch.equal(mixed[0], _reset_obs(2**64 - 1, 2)[0]) and torch.equal(mixed[1], _reset_obs(0, 2)[1])


@pytest.mark.parametrize("bad", [-1, 2**64, True, 1.5, "3", [1, 2, 3, -4], [0] * 3])
def test_bad_seeds_are_rejected(bad):
    with pytest.raises(ValueError, match=r"seed: expected an int in \[0, 2\*\*64\)"):
        CartPoleEnv(num_envs=4).reset(seed=bad)


def test_no_whole_reset_draw_repeats_where_32_bits_would():
    # 2**15 envs x 16 resets = 2**19 reset draws: a 32-bit generator state would repeat about
    # C(2**19, 2) / 2**32 = 32 whole draws (P(none) ~ e**-32); 96 bits of draw should repeat none.
    n, resets = 2**15, 16
    env = CartPoleEnv(num_envs=n)
    draws = [env.reset(seed=123)[0]] + [env.reset()[0] for _ in range(resets - 1)]
    whole = np.ascontiguousarray(torch.cat(draws).numpy()).view("V16").ravel()  # one item per draw
    assert len(np.unique(whole)) == n * resets


def test_env_index_reproduces_envs_of_another_batch():
    idx = [5, 0, 12, 9]
    ref = FourRoomsEnv(num_envs=16, slip_prob=0.3, random_goal=True, max_episode_steps=7, validate=False)
    sub = FourRoomsEnv(num_envs=4, slip_prob=0.3, random_goal=True, max_episode_steps=7, validate=False)
    o_ref, _ = ref.reset(seed=11)
    o_sub, _ = sub.reset(seed=11, options={"env_index": idx})
    acts = torch.randint(0, 4, (30, 16), generator=torch.Generator().manual_seed(0))
    for t in range(31):
        for k in o_ref:
            assert torch.equal(o_sub[k], o_ref[k][idx]), (t, k)
        if t < 30:
            o_ref = ref.step(acts[t])[0]
            o_sub = sub.step(acts[t, idx])[0]
    # The index stays with the env across a plain reset and reseeding; envs of two runs in one batch.
    two_runs = CartPoleEnv(num_envs=4)
    obs = two_runs.reset(seed=[3, 3, 4, 4], options={"env_index": torch.tensor([0, 1, 0, 1])})[0]
    assert torch.equal(obs[:2], CartPoleEnv(num_envs=2).reset(seed=3)[0])
    assert torch.equal(obs[2:], CartPoleEnv(num_envs=2).reset(seed=4)[0])
    assert torch.equal(two_runs.get_state().rng_key[:, 2], torch.tensor([0, 1, 0, 1]))


def test_env_index_with_reset_mask_and_no_seed():
    env = CartPoleEnv(num_envs=3)
    env.reset(seed=9)
    mask = torch.tensor([False, True, False])
    before = env.get_state()
    obs = env.reset(options={"env_index": np.array([0, 7, 0]), "reset_mask": mask})[0]
    assert torch.equal(obs[1], CartPoleEnv(num_envs=8).reset(seed=9)[0][7])  # keeps its seed, new index
    after = env.get_state()
    assert torch.equal(after.rng_key[~mask], before.rng_key[~mask])
    assert torch.equal(after.rng_counter[~mask], before.rng_counter[~mask])


@pytest.mark.parametrize(
    "bad, what",
    [
        ([0, 1], "shape"),
        ([0, 1, 2, 3, 4], "shape"),
        ([0, -1, 2, 3], "-1"),
        ([0.0, 1.0, 2.0, 3.0], "dtype"),
        (torch.tensor([0.0, 1.0, 2.0, 3.0]), "dtype"),
        (torch.tensor([True, False, True, False]), "dtype"),
        ([0, 1, 2, 2**40], str(2**40)),
        ("abcd", "dtype"),
        (torch.zeros(2, 2, dtype=torch.int64), "shape"),
    ],
)
def test_env_index_is_validated(bad, what):
    env = CartPoleEnv(num_envs=4)
    with pytest.raises(ValueError, match=r"env_index: expected 4 ints in \[0, 2\*\*40\)") as err:
        env.reset(seed=0, options={"env_index": bad})
    assert what in str(err.value)


def test_state_holds_wide_rng_and_round_trips_across_the_32_bit_carry():
    env = FourRoomsEnv(num_envs=6, slip_prob=0.5, random_goal=True, max_episode_steps=4, validate=False)
    env.reset(seed=2**40 + 3, options={"env_index": [2**39, 1, 2, 3, 4, 5]})
    snap = env.get_state()
    assert snap.rng_key.shape == (6, 4) and snap.rng_counter.shape == (6, 2)
    assert snap.rng_key.dtype == snap.rng_counter.dtype == torch.int64
    assert snap.rng_key[0].tolist() == [3, 2**8, 0, 2**7]
    snap.rng_counter[:, 0] = MASK - 2  # the low word overflows within the next steps
    env.set_state(snap)
    acts = torch.randint(0, 4, (10, 6), generator=torch.Generator().manual_seed(3))
    first = [env.step(a)[0]["observation"].clone() for a in acts]
    assert env.get_state().rng_counter[:, 1].tolist() == [1] * 6
    env.set_state(snap)
    again = [env.step(a)[0]["observation"].clone() for a in acts]
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    # An EnvState from before the widening (one int64 per env) is refused by name, not copied.
    old = EnvState(
        snap.vars, snap.elapsed, snap.needs_reset, snap.rng_key[:, 0].clone(), snap.rng_counter[:, 0]
    )
    with pytest.raises(ValueError, match="32-bit RNG layout"):
        env.set_state(old)


def test_partial_resets_draw_the_same_on_the_eager_row_subset_and_branch_free():
    def run(branch_free):
        env = FourRoomsEnv(num_envs=32, slip_prob=0.3, random_goal=True, max_episode_steps=5, validate=False)
        env._branch_free = branch_free
        out = [env.reset(seed=4)[0]["observation"]]
        acts = torch.randint(0, 4, (12, 32), generator=torch.Generator().manual_seed(1))
        for t, a in enumerate(acts):
            out.append(env.step(a)[0]["desired_goal"])
            if t == 6:
                out.append(env.reset(options={"reset_mask": torch.arange(32) % 3 == 0})[0]["observation"])
        return torch.stack(out)

    assert torch.equal(run(False), run(True))


def test_compiled_env_draws_the_same_bits_as_eager():
    # The compiled step takes the int64 tensor path (also CUDA's); eager CPU the NumPy one. FourRooms
    # with slip draws on both streams, float32 uniforms and float64-based integers.
    kw = dict(num_envs=16, slip_prob=0.4, random_goal=True, max_episode_steps=6, validate=False)
    eager, compiled = FourRoomsEnv(**kw), FourRoomsEnv(compile=True, **kw)
    for env in (eager, compiled):
        env.reset(seed=2**63 + 5, options={"env_index": list(range(100, 116))})
        state = env.get_state()
        state.rng_counter[:, 0] = MASK - 3  # cross the low word's carry inside the compiled step
        env.set_state(state)
    acts = torch.randint(0, 4, (15, 16), generator=torch.Generator().manual_seed(2))
    for a in acts:
        e, c = eager.step(a)[0], compiled.step(a)[0]
        assert all(torch.equal(e[k], c[k]) for k in e)
    assert torch.equal(eager.get_state().rng_counter, compiled.get_state().rng_counter)
