"""The tanh-squashed Gaussian has one log-prob path, and its change of variables is right.

Issue 8 item 6: the rollout's log-prob and the learner's recomputed one must be the same function of the
same stored tensor, so that at zero policy change the PPO ratio is 1 however saturated the squash
(a float32 ``atanh`` of a stored ``tanh(u)`` cannot recover ``u`` once ``tanh(u)`` rounds to 1).
Issue 15 item 1: the ``log(scale)`` term of the log-determinant is checked with bounds whose scales do
not multiply to 1, against references that share no code with the distribution.
"""

import math

import numpy as np
import pytest
import torch
from torch import distributions as td

import envs
from hrl_nested.algos.ppo import PPOConfig, evaluate, ppo_loss
from hrl_nested.distributions import DiagGaussian
from hrl_nested.networks import ActorCritic, params_of
from hrl_nested.rollout import actor_critic_policy, make_rollout

T, N = 16, 64


def _tanh_agent(env, mean):
    torch.manual_seed(0)
    agent = ActorCritic(env.single_observation_space, env.single_action_space, squash="tanh")
    with torch.no_grad():
        agent.actor[-1].bias.fill_(mean)  # out_gain 0.01: the mean is `mean` up to ~0.01
    return agent


def _recording(env):
    """Wrap ``env.step`` to keep every action the env receives."""
    seen, step = [], env.step

    def recording_step(action):
        seen.append(action.clone())
        return step(action)

    env.step = recording_step
    return seen


@pytest.mark.parametrize("env_id", ["hrl_nested/Pendulum-v1", "hrl_nested/MountainCarContinuous-v0"])
@pytest.mark.parametrize("mean", [-5.0, -4.0, -3.0, 0.0, 3.0, 4.0, 5.0])
def test_ppo_ratio_is_one_at_zero_policy_change(env_id, mean):
    env = envs.make(env_id, N, autoreset_mode="same_step", validate=False)
    agent = _tanh_agent(env, mean)
    seen = _recording(env)
    collect = make_rollout(env, actor_critic_policy(agent), T)
    obs, _ = env.reset(seed=1)
    torch.manual_seed(2)
    batch = collect(params_of(agent), obs, None).batch
    # the learner's path (as in ppo.train): flatten the batch, recompute log pi(a | o) from the stored action
    mb = {
        "obs": batch.obs.reshape(T * N, -1),
        "actions": batch.actions.reshape(T * N, -1),
        "logprobs": batch.logprobs.reshape(T * N),
        "values": batch.values.reshape(T * N),
        "advantages": torch.ones(T * N),
        "returns": batch.values.reshape(T * N),
    }
    with torch.no_grad():
        logp_new = agent.distribution(agent(mb["obs"])[0]).log_prob(mb["actions"])
        ratio = (logp_new - mb["logprobs"]).exp()
        torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=1e-5)
        _, stats = ppo_loss(agent, mb, PPOConfig(norm_adv=False))
    pg_loss, approx_kl, clip_frac = (float(stats[i]) for i in (0, 3, 4))  # the learner's own path
    assert pg_loss == pytest.approx(-1.0, abs=1e-5) and clip_frac == 0.0 and abs(approx_kl) < 1e-8
    # the setup does exercise the saturation: scoring the stored env action through a clamped float32
    # atanh (the learner's old second path) is off by far more than the tolerance
    space = env.single_action_space
    loc = torch.tensor((space.high + space.low) / 2)
    scale = torch.tensor((space.high - space.low) / 2)
    squashed = loc + scale * torch.tanh(mb["actions"])
    u_back = torch.atanh(((squashed - loc) / scale).clamp(-1 + 1e-6, 1 - 1e-6))
    with torch.no_grad():
        logp_atanh = agent.distribution(agent(mb["obs"])[0]).log_prob(u_back)
    if abs(mean) >= 4:
        assert (logp_atanh - mb["logprobs"]).abs().max() > 1e-3  # vs the 1e-5 asked of the ratio
    # the env received the squashed draw, inside the bounds
    received = torch.stack(seen)
    torch.testing.assert_close(received, loc + scale * torch.tanh(batch.actions), rtol=0, atol=1e-6)
    assert (received >= torch.tensor(space.low)).all() and (received <= torch.tensor(space.high)).all()


@pytest.mark.parametrize("mean", [-5.0, 5.0])
def test_evaluate_sends_the_squashed_mode(mean):
    env = envs.make(
        "hrl_nested/Pendulum-v1", 3, autoreset_mode="same_step", validate=False, max_episode_steps=4
    )
    agent = _tanh_agent(env, mean)
    seen = _recording(env)
    evaluate(agent, env, None, seed=0)
    with torch.no_grad():
        obs, _ = env.reset(seed=0)
        first_mean = agent(obs)[0][:, :1]
    received = torch.stack(seen)
    assert received.abs().max() <= 2.0 and (received * mean > 0).all()
    torch.testing.assert_close(received[0], 2.0 * torch.tanh(first_mean), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mean", [-10.0, -5.0, 3.0, 5.0, 10.0])
def test_sample_and_log_prob_agree_at_saturation_float32(mean):
    d = DiagGaussian(torch.full((4096, 2), mean), torch.zeros(2), squash="tanh", low=-2.0, high=2.0)
    u, lp = d.sample_and_log_prob(torch.Generator().manual_seed(0))
    torch.testing.assert_close(d.log_prob(u), lp, rtol=0, atol=1e-5)
    assert torch.isfinite(lp).all()
    # and lp is the float64 closed form of the draw's density (no rounding through tanh)
    u64 = u.double()
    ref = td.Normal(torch.tensor(mean, dtype=torch.float64), 1.0).log_prob(u64).sum(-1) - (
        math.log(2.0) + torch.log1p(-torch.tanh(u64).square()).nan_to_num(neginf=-1e300)
    ).sum(-1)
    finite = torch.tanh(u64).abs().lt(1).all(-1)  # where float64 itself still resolves 1 - tanh^2
    torch.testing.assert_close(lp.double()[finite], ref[finite], rtol=1e-5, atol=1e-3)


# ---------------------------------------------------------------------------- issue 15 item 1
LOW, HIGH = np.array([-1.0, 0.0]), np.array([3.0, 0.5])  # scales 2 and 0.25: their product is 0.5, not 1


@pytest.mark.parametrize("mean, log_std", [((0.3, -0.4), (-0.2, 0.1)), ((-1.0, 0.8), (0.3, -0.5))])
def test_squashed_density_integrates_to_one_over_asymmetric_box(mean, log_std):
    # midpoint rule over the box, in float64: p(a) = exp(log_prob(u)) with u = unsquash(a)
    n = 800
    axes = [
        torch.linspace(lo, hi, n + 1, dtype=torch.float64)[:-1] + (hi - lo) / (2 * n)
        for lo, hi in zip(LOW, HIGH)
    ]
    a = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    d = DiagGaussian(
        torch.tensor(mean, dtype=torch.float64).expand(n * n, 2),
        torch.tensor(log_std, dtype=torch.float64),
        squash="tanh",
        low=LOW,
        high=HIGH,
    )
    cell = float(np.prod((HIGH - LOW) / n))
    total = d.log_prob(d.unsquash(a)).exp().sum().item() * cell
    assert total == pytest.approx(1.0, abs=2e-3)


def test_log_prob_matches_finite_difference_jacobian_asymmetric_box():
    # log p(a) = log N(u) - log |det d env_action / du|, the Jacobian by central differences (float64)
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(9, 2, generator=g, dtype=torch.float64)
    log_std = torch.randn(9, 2, generator=g, dtype=torch.float64) * 0.3
    d = DiagGaussian(mean, log_std, squash="tanh", low=LOW, high=HIGH)
    u = d.sample(g)
    h = 1e-6
    eye = torch.eye(2, dtype=torch.float64)
    jac = torch.stack(
        [(d.env_action(u + h * eye[i]) - d.env_action(u - h * eye[i])) / (2 * h) for i in range(2)], -1
    )  # (9, 2 outputs, 2 inputs)
    log_det = torch.linalg.slogdet(jac).logabsdet
    ref = td.Independent(td.Normal(mean, log_std.exp()), 1).log_prob(u) - log_det
    torch.testing.assert_close(d.log_prob(u), ref, rtol=0, atol=1e-7)
    # the same density, by torch.distributions' own transforms, at the env action
    ref_td = td.TransformedDistribution(
        td.Independent(td.Normal(mean, log_std.exp()), 1),
        [
            td.TanhTransform(),
            td.AffineTransform(torch.tensor((HIGH + LOW) / 2), torch.tensor((HIGH - LOW) / 2), event_dim=1),
        ],
    )
    torch.testing.assert_close(d.log_prob(u), ref_td.log_prob(d.env_action(u)))
