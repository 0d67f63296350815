"""Networks used functionally, and stacks of policies through vmap."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.func import functional_call

from hrl_nested.distributions import Categorical, DiagGaussian
from hrl_nested.networks import (
    MLP,
    ActorCritic,
    FastTanh,
    params_of,
    select_member,
    stack_modules,
    vmap_apply,
)

OBS = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
GOAL_OBS = gym.spaces.Dict(
    {
        "observation": gym.spaces.Box(-1.0, 1.0, (3,), np.float32),
        "achieved_goal": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
        "desired_goal": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
    }
)


def test_mlp_orthogonal_init():
    torch.manual_seed(0)
    m = MLP(8, 3, hidden=(16, 16), out_gain=0.01)
    w = m[0].weight  # (16, 8): orthonormal columns times sqrt(2)
    torch.testing.assert_close(w.T @ w, 2.0 * torch.eye(8), atol=1e-5, rtol=0)
    assert m[-1].weight.abs().max() < 0.02
    assert all((layer.bias == 0).all() for layer in m if isinstance(layer, torch.nn.Linear))
    assert m(torch.zeros(5, 8)).shape == (5, 3)


def test_actor_critic_discrete_and_functional_call():
    torch.manual_seed(0)
    ac = ActorCritic(OBS, gym.spaces.Discrete(2))
    obs = torch.randn(6, 4)
    logits, v = ac(obs)
    assert logits.shape == (6, 2) and v.shape == (6,)
    assert isinstance(ac.distribution(logits), Categorical)
    params = params_of(ac)
    assert set(params) == {n for n, _ in ac.named_parameters()}
    l2, v2 = functional_call(ac, params, (obs,))
    torch.testing.assert_close(l2, logits)
    torch.testing.assert_close(v2, v)
    torch.testing.assert_close(ac.value(obs), v)
    # new parameter dict: the module's own weights are untouched and the output changes
    new = {k: p.detach() + 0.1 for k, p in params.items()}
    l3, _ = functional_call(ac, new, (obs,))
    assert not torch.allclose(l3, logits)
    # gradients flow to the dict entries
    lp = ac.distribution(functional_call(ac, params, (obs,))[0]).log_prob(torch.zeros(6, dtype=torch.long))
    grads = torch.autograd.grad(lp.sum(), list(params.values()), allow_unused=True)
    assert grads[0] is not None


@pytest.mark.parametrize("squash, expected", [("auto", "clip"), ("tanh", "tanh"), (None, None)])
def test_actor_critic_box(squash, expected):
    space = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 1.0], np.float32))
    ac = ActorCritic(OBS, space, squash=squash, log_std_init=-0.5)
    params, v = ac(torch.randn(5, 4))
    assert params.shape == (5, 4) and v.shape == (5,)
    d = ac.distribution(params)
    assert isinstance(d, DiagGaussian) and d.squash == expected
    torch.testing.assert_close(d.log_std, torch.full((5, 2), -0.5))
    a = d.sample()
    assert a.shape == (5, 2) and d.log_prob(a).shape == (5,)
    if expected == "tanh":  # the draw is stored; the env gets it squashed into the box
        e = d.env_action(a)
        assert (e[:, 0].abs() <= 2).all() and ((e[:, 1] >= 0) & (e[:, 1] <= 1)).all()


def test_actor_critic_goal_dict_and_discrete_obs():
    ac = ActorCritic(GOAL_OBS, gym.spaces.Discrete(4))
    assert ac.obs_dim == 5
    obs = {
        "observation": torch.randn(7, 3),
        "achieved_goal": torch.randn(7, 2),
        "desired_goal": torch.randn(7, 2),
    }
    logits, v = ac(obs)
    assert logits.shape == (7, 4) and v.shape == (7,)
    torch.testing.assert_close(ac.encode(obs), torch.cat([obs["observation"], obs["desired_goal"]], -1))
    ac2 = ActorCritic(gym.spaces.Discrete(5), gym.spaces.Discrete(2))
    x = ac2.encode(torch.tensor([0, 4]))
    assert x.tolist()[1] == [0.0, 0.0, 0.0, 0.0, 1.0]


def test_stack_of_three_policies_vmap_equals_each():
    torch.manual_seed(0)
    members = [ActorCritic(OBS, gym.spaces.Discrete(3)) for _ in range(3)]
    stacked, base = stack_modules(members)
    assert stacked["actor.0.weight"].shape == (3, 64, 4)
    obs = torch.randn(10, 4)
    logits, v = vmap_apply(base, stacked, obs)
    assert logits.shape == (3, 10, 3) and v.shape == (3, 10)
    for k, m in enumerate(members):
        lk, vk = m(obs)
        torch.testing.assert_close(logits[k], lk)
        torch.testing.assert_close(v[k], vk)
    # per-member observations
    obs_k = torch.randn(3, 10, 4)
    logits, _ = vmap_apply(base, stacked, obs_k, per_member_obs=True)
    for k, m in enumerate(members):
        torch.testing.assert_close(logits[k], m(obs_k[k])[0])
    # goal dict observations pass through vmap as a pytree
    gm = [ActorCritic(GOAL_OBS, gym.spaces.Discrete(2)) for _ in range(2)]
    gp, gb = stack_modules(gm)
    gobs = {k: torch.randn(4, s.shape[0]) for k, s in GOAL_OBS.spaces.items()}
    torch.testing.assert_close(vmap_apply(gb, gp, gobs)[1][1], gm[1](gobs)[1])


def test_select_member_picks_per_env():
    torch.manual_seed(1)
    members = [ActorCritic(OBS, gym.spaces.Discrete(3)) for _ in range(3)]
    stacked, base = stack_modules(members)
    obs = torch.randn(6, 4)
    index = torch.tensor([2, 0, 1, 1, 0, 2])
    logits, v = select_member(vmap_apply(base, stacked, obs), index)
    assert logits.shape == (6, 3) and v.shape == (6,)
    for n in range(6):
        ln, vn = members[int(index[n])](obs[n : n + 1])
        torch.testing.assert_close(logits[n], ln[0])
        torch.testing.assert_close(v[n], vn[0])
    # gradient reaches only the chosen members' parameters
    (v.sum()).backward()
    assert all(stacked["critic.0.weight"].grad[k].abs().sum() > 0 for k in range(3))
    with pytest.raises(ValueError, match=r"\(K, N=6"):
        select_member(torch.zeros(3, 5), index)
    with pytest.raises(ValueError, match="int tensor"):
        select_member(torch.zeros(3, 6), index.float())


def test_select_member_unchosen_member_gets_zero_grad():
    members = [MLP(4, 1) for _ in range(3)]
    stacked, base = stack_modules(members)
    out = select_member(vmap_apply(base, stacked, torch.randn(5, 4)), torch.tensor([0, 0, 2, 2, 0]))
    out.sum().backward()
    assert stacked["0.weight"].grad[1].abs().sum() == 0
    assert stacked["0.weight"].grad[0].abs().sum() > 0


def test_errors():
    with pytest.raises(ValueError, match="action_space"):
        ActorCritic(OBS, gym.spaces.MultiDiscrete([2, 2]))
    with pytest.raises(ValueError, match="observation space"):
        ActorCritic(gym.spaces.Tuple([OBS]), gym.spaces.Discrete(2))
    with pytest.raises(ValueError, match="at least one"):
        stack_modules([])


def test_fast_tanh_equals_tanh_with_gradients():
    x = torch.linspace(-30, 30, 2001, dtype=torch.float64).requires_grad_(True)
    y = FastTanh()(x)
    torch.testing.assert_close(y, torch.tanh(x), atol=1e-15, rtol=1e-12)
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, 1 - torch.tanh(x.detach()) ** 2, atol=1e-14, rtol=1e-10)
    x32 = torch.randn(10000) * 5
    torch.testing.assert_close(FastTanh()(x32), torch.tanh(x32), atol=3e-7, rtol=0)
    assert isinstance(MLP(2, 1)[1], FastTanh) and isinstance(MLP(2, 1)[1], torch.nn.Tanh)
    assert isinstance(MLP(2, 1, activation=torch.nn.ReLU)[1], torch.nn.ReLU)


def test_fast_tanh_is_tanh_at_every_size():
    # It once took a ``2 sigmoid(2x) - 1`` branch above 4096 elements on CPU; now it is nn.Tanh itself.
    assert FastTanh.forward is torch.nn.Tanh.forward
    for n in (100, 4095, 4096, 64 * 128):
        x = (torch.randn(n, dtype=torch.float64) * 10).requires_grad_(True)
        y = FastTanh()(x)
        torch.testing.assert_close(y, torch.tanh(x), atol=1e-15, rtol=1e-12)
        (g,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(g, 1 - torch.tanh(x.detach()) ** 2, atol=1e-14, rtol=1e-10)


@pytest.mark.parametrize(
    "obs_space,act_space,activation",
    [
        (OBS, gym.spaces.Discrete(3), torch.nn.Tanh),
        (OBS, gym.spaces.Box(-1.0, 1.0, (2,), np.float32), torch.nn.Tanh),
        (GOAL_OBS, gym.spaces.Discrete(2), torch.nn.ReLU),
    ],
)
def test_actor_critic_apply_equals_functional_call_with_gradients(obs_space, act_space, activation):
    from hrl_nested.networks import actor_critic_apply

    torch.manual_seed(0)
    ac = ActorCritic(obs_space, act_space, hidden=(16, 8), activation=activation)
    params = {
        k: (v.detach() + 0.1 * torch.randn_like(v)).requires_grad_(True) for k, v in params_of(ac).items()
    }
    obs = tree_obs = obs_space.sample()
    if isinstance(obs_space, gym.spaces.Dict):
        tree_obs = {k: torch.as_tensor(np.stack([obs_space[k].sample() for _ in range(5)])) for k in obs}
    else:
        tree_obs = torch.as_tensor(np.stack([obs_space.sample() for _ in range(5)]))
    ref_out, ref_v = functional_call(ac, params, (tree_obs,))
    out, v = actor_critic_apply(ac, params, tree_obs)
    torch.testing.assert_close(out, ref_out, atol=0, rtol=0)
    torch.testing.assert_close(v, ref_v, atol=0, rtol=0)
    ref_g = torch.autograd.grad(
        (ref_out.square().sum() + ref_v.sum()), list(params.values()), allow_unused=True
    )
    g = torch.autograd.grad((out.square().sum() + v.sum()), list(params.values()), allow_unused=True)
    for a, b in zip(g, ref_g):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    actor_only, none = actor_critic_apply(ac, params, tree_obs, critic=False)
    assert none is None
    torch.testing.assert_close(actor_only, ref_out, atol=0, rtol=0)


def test_actor_critic_apply_falls_back_to_functional_call_with_hooks():
    from hrl_nested.networks import actor_critic_apply

    ac = ActorCritic(OBS, gym.spaces.Discrete(2))
    ac.actor[0].register_forward_hook(lambda m, i, o: o * 0.0)  # a hook must be honoured
    params = params_of(ac)
    obs = torch.randn(3, 4)
    ref_out, ref_v = functional_call(ac, params, (obs,))
    out, v = actor_critic_apply(ac, params, obs)
    torch.testing.assert_close(out, ref_out, atol=0, rtol=0)
    torch.testing.assert_close(v, ref_v, atol=0, rtol=0)
