"""GAE and discounted returns: hand-computed values, a slow reference loop, gradients, vmap, compile."""

import pytest
import torch

from hrl_nested.returns import discounted_returns, gae


def slow_gae(r, v, v_next, term, trunc, gamma, lam):
    """Plain Python loops over n and t, straight from the definition."""
    T, N = r.shape
    adv = [[0.0] * N for _ in range(T)]
    for n in range(N):
        a_next = 0.0
        for t in reversed(range(T)):
            boot = 0.0 if term[t][n] else float(v_next[t][n])
            delta = float(r[t][n]) + gamma * boot - float(v[t][n])
            done = bool(term[t][n]) or bool(trunc[t][n])
            a_next = delta + (0.0 if done else gamma * lam * a_next)
            adv[t][n] = a_next
    adv = torch.tensor(adv, dtype=torch.float64)
    return adv, adv + v.double()


def random_batch(T=7, N=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(T, N, generator=g, dtype=dtype)
    v = torch.randn(T, N, generator=g, dtype=dtype)
    v_next = torch.randn(T, N, generator=g, dtype=dtype)
    term = torch.rand(T, N, generator=g) < 0.2
    trunc = torch.rand(T, N, generator=g) < 0.2
    return r, v, v_next, term, trunc


def test_hand_computed_single_env():
    # One env, T=3: step 0 ordinary, step 1 truncated (bootstrap with V(final obs)=10), step 2 terminated.
    r = torch.tensor([[1.0], [2.0], [3.0]])
    v = torch.tensor([[0.5], [1.0], [2.0]])
    v_next = torch.tensor([[1.0], [10.0], [99.0]])  # V(o_1), V(final obs of ep 1), V(terminal obs: ignored)
    term = torch.tensor([[False], [False], [True]])
    trunc = torch.tensor([[False], [True], [False]])
    g, lam = 0.9, 0.8
    adv, ret = gae(r, v, v_next, term, trunc, g, lam)
    a2 = 3.0 - 2.0  # terminated: no bootstrap
    a1 = 2.0 + 0.9 * 10.0 - 1.0  # truncated: bootstrap with V(final obs); trace cut
    a0 = (1.0 + 0.9 * 1.0 - 0.5) + 0.9 * 0.8 * a1
    torch.testing.assert_close(adv.squeeze(-1), torch.tensor([a0, a1, a2]))
    torch.testing.assert_close(ret, adv + v)


def test_matches_slow_reference_loop():
    for seed in range(3):
        r, v, v_next, term, trunc = random_batch(seed=seed)
        adv, ret = gae(r, v, v_next, term, trunc, 0.97, 0.9)
        adv_ref, ret_ref = slow_gae(r, v, v_next, term, trunc, 0.97, 0.9)
        torch.testing.assert_close(adv, adv_ref)
        torch.testing.assert_close(ret, ret_ref)


def test_truncation_bootstraps_termination_does_not():
    r, v = torch.zeros(1, 2), torch.zeros(1, 2)
    v_next = torch.full((1, 2), 5.0)
    term = torch.tensor([[True, False]])
    trunc = torch.tensor([[False, True]])
    adv, _ = gae(r, v, v_next, term, trunc, 0.5, 0.95)
    assert adv.tolist() == [[0.0, 2.5]]
    # terminated and truncated together: terminal wins, no bootstrap.
    adv, _ = gae(
        r, v, v_next, torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool), 0.5, 0.95
    )
    assert adv.tolist() == [[0.0, 0.0]]


def test_no_leakage_across_episode_boundary():
    r, v, v_next, term, trunc = random_batch(T=6, N=4)
    term[:] = False
    trunc[:] = False
    term[2, 0] = True
    trunc[2, 1] = True
    adv, _ = gae(r, v, v_next, term, trunc, 0.99, 0.95)
    r2 = r.clone()
    r2[3:] += 100.0  # change only the next episodes
    v2 = v.clone()
    v2[3:] -= 7.0
    adv2, _ = gae(r2, v2, v_next, term, trunc, 0.99, 0.95)
    torch.testing.assert_close(adv2[:3, :2], adv[:3, :2])  # unaffected before the boundary
    assert not torch.allclose(adv2[:3, 2:], adv[:3, 2:])  # env 2, 3 had no boundary: they see it


def test_last_step_bootstraps():
    r, v = torch.zeros(2, 1), torch.zeros(2, 1)
    v_next = torch.tensor([[0.0], [4.0]])
    f = torch.zeros(2, 1, dtype=torch.bool)
    adv, _ = gae(r, v, v_next, f, f, 0.5, 1.0)
    assert adv.squeeze(-1).tolist() == [1.0, 2.0]


def test_discounted_returns_equal_gae_lambda_one():
    r, v, v_next, term, trunc = random_batch(T=9, N=6, seed=3)
    # consistent critic: inside an episode V(o_{t+1}) is the next row's V(o_t)
    done = term | trunc
    v_next[:-1] = torch.where(done[:-1], v_next[:-1], v[1:])
    _, ret = gae(r, v, v_next, term, trunc, 0.9, 1.0)
    torch.testing.assert_close(discounted_returns(r, term, trunc, v_next, 0.9), ret)


def test_discounted_returns_hand_computed():
    r = torch.tensor([[1.0], [1.0], [1.0], [1.0]])
    term = torch.tensor([[False], [True], [False], [False]])
    trunc = torch.tensor([[False], [False], [False], [True]])
    v_next = torch.tensor([[9.0], [9.0], [9.0], [3.0]])
    got = discounted_returns(r, term, trunc, v_next, 0.5).squeeze(-1)
    assert got.tolist() == [1.5, 1.0, 1.0 + 0.5 * 2.5, 2.5]


def test_gradcheck_rewards_gamma_lambda():
    r, v, v_next, term, trunc = random_batch(T=5, N=3, seed=1)
    r.requires_grad_(True)
    v.requires_grad_(True)
    gamma = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda r, v, g, l: gae(r, v, v_next, term, trunc, g, l), (r, v, gamma, lam)
    )
    assert torch.autograd.gradcheck(lambda r, g: discounted_returns(r, term, trunc, v_next, g), (r, gamma))


def test_gradient_wrt_rewards_is_discount_structure():
    # d A_0 / d r_t = (gamma lam)^t inside one episode
    T = 4
    r = torch.zeros(T, 1, requires_grad=True)
    f = torch.zeros(T, 1, dtype=torch.bool)
    adv, _ = gae(r, torch.zeros(T, 1), torch.zeros(T, 1), f, f, 0.5, 0.5)
    (g,) = torch.autograd.grad(adv[0, 0], r)
    torch.testing.assert_close(g.squeeze(-1), torch.tensor([1.0, 0.25, 0.0625, 0.015625]))


def test_vmap_over_batches_of_rollouts():
    batches = [random_batch(T=5, N=3, seed=s) for s in range(4)]
    stacked = [torch.stack(x) for x in zip(*batches)]
    adv, ret = torch.func.vmap(lambda r, v, vn, te, tr: gae(r, v, vn, te, tr, 0.99, 0.95))(*stacked)
    for i, b in enumerate(batches):
        a, rt = gae(*b, 0.99, 0.95)
        torch.testing.assert_close(adv[i], a)
        torch.testing.assert_close(ret[i], rt)


def test_vmap_over_gamma():
    r, v, v_next, term, trunc = random_batch(T=5, N=3)
    gammas = torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)
    adv, _ = torch.func.vmap(lambda g: gae(r, v, v_next, term, trunc, g, 0.9))(gammas)
    for i, g in enumerate(gammas.tolist()):
        torch.testing.assert_close(adv[i], gae(r, v, v_next, term, trunc, g, 0.9)[0])


def test_torch_compile_matches_eager():
    r, v, v_next, term, trunc = random_batch(T=4, N=3, dtype=torch.float32)
    compiled = torch.compile(gae, dynamic=False)
    adv, ret = compiled(r, v, v_next, term, trunc, 0.99, 0.95)
    adv_ref, ret_ref = gae(r, v, v_next, term, trunc, 0.99, 0.95)
    torch.testing.assert_close(adv, adv_ref)
    torch.testing.assert_close(ret, ret_ref)


@pytest.mark.parametrize(
    "bad, msg",
    [
        (dict(r=torch.zeros(3)), "r_t: expected shape"),
        (dict(v=torch.zeros(3, 3)), "v_t: expected shape"),
        (dict(term=torch.zeros(3, 2)), "terminated_t: expected a bool"),
        (dict(trunc=torch.zeros(3, 1, dtype=torch.bool)), "truncated_t: expected shape"),
    ],
)
def test_shape_errors(bad, msg):
    args = dict(
        r=torch.zeros(3, 2),
        v=torch.zeros(3, 2),
        vn=torch.zeros(3, 2),
        term=torch.zeros(3, 2, dtype=torch.bool),
        trunc=torch.zeros(3, 2, dtype=torch.bool),
    )
    args.update(bad)
    with pytest.raises(ValueError, match=msg):
        gae(args["r"], args["v"], args["vn"], args["term"], args["trunc"], 0.9, 0.9)
