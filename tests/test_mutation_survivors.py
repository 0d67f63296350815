"""Tests written to kill the mutants that survived `tools/mutation.py returns losses` (mutmut).

Each test names the mutation it kills. What the survivors had in common: argument checks that were
only exercised for some arguments or without looking at the message, float64 precision never
checked, a strict inequality never met at its boundary, and estimators only tested with
``old_logp = 0`` (where ``logp - old_logp`` and ``logp + old_logp`` agree).
"""

import math

import numpy as np
import pytest
import torch

from hrl_nested.losses import approx_kl, clip_fraction, ppo_clip_loss, value_loss
from hrl_nested.returns import discounted_returns, gae

F64 = torch.float64


def _flags(bits: list[list[int]]) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.bool)


# ------------------------------------------------------------------------------ returns: checks
def test_gae_rejects_integer_rewards_with_a_message():
    """Kills ``raise ValueError(None)``: the message names what was expected."""
    f = torch.zeros(2, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"r_t: expected a floating-point tensor, got torch.int64"):
        gae(torch.ones(2, 1, dtype=torch.int64), torch.zeros(2, 1), torch.zeros(2, 1), f, f, 0.9, 0.9)


@pytest.mark.parametrize("fn", ["gae", "discounted_returns"])
def test_mask_errors_name_the_offending_mask(fn):
    """Kills renamed keys (``"XXterminated_tXX"``, ``"TRUNCATED_T"``) in the shape and dtype checks."""
    r, v = torch.zeros(3, 2), torch.zeros(3, 2)
    ok, short = torch.zeros(3, 2, dtype=torch.bool), torch.zeros(2, 2, dtype=torch.bool)

    def call(term, trunc):
        if fn == "gae":
            return gae(r, v, v, term, trunc, 0.9, 0.9)
        return discounted_returns(r, term, trunc, v, 0.9)

    with pytest.raises(ValueError, match=r"^terminated_t: expected shape \(3, 2\)"):
        call(short, ok)
    with pytest.raises(ValueError, match=r"^truncated_t: expected shape \(3, 2\)"):
        call(ok, short)
    with pytest.raises(ValueError, match=r"^terminated_t: expected a bool tensor, got torch.float32"):
        call(ok.float(), ok)
    with pytest.raises(ValueError, match=r"^truncated_t: expected a bool tensor, got torch.float32"):
        call(ok, ok.float())


def test_next_values_of_a_broadcastable_wrong_shape_are_rejected():
    """Kills dropping ``v_tp1`` from the shape check of `gae` and of `discounted_returns`: a ``(T, 1)``
    tensor would silently broadcast over the envs."""
    r, f = torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"^v_tp1: expected shape \(3, 2\)"):
        gae(r, r, torch.zeros(3, 1), f, f, 0.9, 0.9)
    with pytest.raises(ValueError, match=r"^v_tp1: expected shape \(3, 2\)"):
        discounted_returns(r, f, f, torch.zeros(3, 1), 0.9)
    with pytest.raises(ValueError, match=r"^v_t: expected shape \(3, 2\)"):
        gae(r, torch.zeros(3, 1), r, f, f, 0.9, 0.9)


# ------------------------------------------------------------------------------ returns: values
def _slow_gae(r, v, v_tp1, term, trunc, gamma, lam):
    """The GAE recursion in Python floats, one env and one step at a time."""
    num_steps, num_envs = len(r), len(r[0])
    adv = [[0.0] * num_envs for _ in range(num_steps)]
    for i in range(num_envs):
        a = 0.0
        for t in reversed(range(num_steps)):
            delta = r[t][i] + gamma * (0.0 if term[t][i] else v_tp1[t][i]) - v[t][i]
            a = delta + gamma * lam * (0.0 if term[t][i] or trunc[t][i] else a)
            adv[t][i] = a
    return adv


def test_gae_keeps_float64_precision():
    """Kills ``.to(None)`` for the masks: a bool mask times a Python float is float32, so the discount
    and the trace would be rounded to float32 (a relative error near 1e-8) and the result with them."""
    g = torch.Generator().manual_seed(0)
    r, v, v_tp1 = (torch.randn(6, 3, generator=g, dtype=F64) for _ in range(3))
    term = _flags([[0, 0, 1], [0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 0]])
    trunc = _flags([[0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]])
    gamma, lam = 0.99, 0.95
    adv, ret = gae(r, v, v_tp1, term, trunc, gamma, lam)
    assert adv.dtype == F64 and ret.dtype == F64
    slow = _slow_gae(r.tolist(), v.tolist(), v_tp1.tolist(), term.tolist(), trunc.tolist(), gamma, lam)
    want = torch.tensor(slow, dtype=F64)
    torch.testing.assert_close(adv, want, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(ret, want + v, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("terminated", [False, True])
def test_discounted_returns_of_a_single_step(terminated):
    """Kills ``torch.zeros_like(v_tp1[1])``: with ``T = 1`` there is no row 1. ``G_0 = r_0 + gamma *
    (0 if terminated else v_1)``."""
    r, v_tp1 = torch.tensor([[1.0, 2.0]], dtype=F64), torch.tensor([[10.0, 20.0]], dtype=F64)
    term = torch.full((1, 2), terminated)
    out = discounted_returns(r, term, torch.zeros(1, 2, dtype=torch.bool), v_tp1, 0.5)
    want = [[1.0, 2.0]] if terminated else [[6.0, 12.0]]
    torch.testing.assert_close(out, torch.tensor(want, dtype=F64))


# ------------------------------------------------------------------------------ losses: checks
# Each argument in turn gets a shape that broadcasts against the others ((4, 1) vs (4,)), so only the
# explicit check can catch it. Kills dropping any argument from `_check_same` and the mutants of
# `_check_same` itself (``items[1]`` as the reference, ``items[2:]`` skipping the second argument).
_LOSSES = {
    "ppo_clip_loss": (lambda a, b, c: ppo_clip_loss(a, b, c, 0.2), ("logp", "old_logp", "adv")),
    "value_loss": (lambda a, b, c: value_loss(a, b, c, 0.2), ("v", "v_old", "ret")),
    "approx_kl": (approx_kl, ("logp", "old_logp")),
    "clip_fraction": (lambda a, b: clip_fraction(a, b, 0.2), ("logp", "old_logp")),
}


@pytest.mark.parametrize(
    "loss, position", [(name, k) for name, (_, args) in _LOSSES.items() for k in range(len(args))]
)
def test_losses_reject_a_broadcastable_shape_in_any_argument(loss, position):
    fn, names = _LOSSES[loss]
    args = [torch.zeros(4) for _ in names]
    args[position] = torch.zeros(4, 1)
    with pytest.raises(ValueError, match=r"expected shape") as info:
        fn(*args)
    wrong = names[position] if position else names[1]  # the first argument is the reference shape
    assert str(info.value).startswith(f"{wrong}: ")


# ------------------------------------------------------------------------------ losses: values
def test_approx_kl_with_nonzero_old_logprobs():
    """Kills ``logp + old_logp``: checked against ``mean((rho - 1) - log rho)`` with ``old_logp != 0``,
    and it is 0 when the policies agree."""
    logp = torch.tensor([-0.3, -1.2, -2.0], dtype=F64)
    old = torch.tensor([-0.5, -1.0, -2.0], dtype=F64)
    want = sum(math.exp(a - b) - 1 - (a - b) for a, b in zip(logp.tolist(), old.tolist())) / 3
    assert approx_kl(logp, old).item() == pytest.approx(want, rel=1e-12)
    assert approx_kl(old, old).item() == 0.0


def test_clip_fraction_with_nonzero_old_logprobs():
    """Kills ``logp + old_logp``: identical nonzero log-probs have ratio 1, so nothing is clipped."""
    logp = torch.tensor([-0.7, -1.5, -3.0])
    assert clip_fraction(logp, logp.clone(), 0.2).item() == 0.0
    assert clip_fraction(logp, logp - 0.5, 0.2).item() == 1.0  # ratio e^0.5 ~ 1.65, outside [0.8, 1.2]


def test_clip_fraction_counts_only_ratios_strictly_outside_the_clip_range():
    """Kills ``>=`` for ``>``: a ratio exactly at ``1 + eps`` is inside the range `ppo_clip_loss`
    clamps to (its gradient still flows), so it is not counted as clipped."""
    d = torch.tensor([0.1, 0.3], dtype=F64)
    eps = float(d[0].exp() - 1.0)  # the ratio of the first sample is exactly 1 + eps in float64
    assert clip_fraction(d, torch.zeros(2, dtype=F64), eps).item() == 0.5
    assert clip_fraction(torch.zeros(2), torch.zeros(2), 0.0).item() == 0.0


# ------------------------------------------------------------ ppo_objective (group objective)
# Survivors of `tools/mutation.py objective`: the loss was only checked with its default coefficients
# and through PPO's training loop, so the signs of the value and entropy terms, the defaults themselves,
# the clipped-value switch, the critic-less branch and the missing-key message were all unchecked.
def _objective_case(critic: bool = True):
    from hrl_nested.distributions import Categorical

    g = torch.Generator().manual_seed(3)
    n = 6
    params = {
        "logits": torch.randn(n, 3, generator=g, dtype=F64),
        "v": torch.randn(n, generator=g, dtype=F64),
    }

    def dist_fn(p, obs):
        return Categorical(p["logits"]), (p["v"] if critic else None)

    mb = {
        "obs": torch.zeros(n, 1, dtype=F64),
        "actions": torch.tensor([0, 1, 2, 2, 1, 0]),
        "logprobs": torch.log_softmax(params["logits"] + 0.4, -1)[torch.arange(n), [0, 1, 2, 2, 1, 0]],
        "advantages": torch.randn(n, generator=g, dtype=F64) * 2 + 1,
        "values": params["v"] + torch.tensor([0.9, -0.9, 0.05, 0.6, -0.4, 0.0], dtype=F64),
        "returns": torch.randn(n, generator=g, dtype=F64) * 3,
    }
    return dist_fn, params, mb


def _by_hand(params, mb, *, clip_coef, vf_coef, ent_coef, norm_adv, clip_vloss, critic=True):
    from hrl_nested.losses import entropy_loss

    logp_all = torch.log_softmax(params["logits"], -1)
    logp = logp_all[torch.arange(len(mb["actions"])), mb["actions"]]
    adv = mb["advantages"]
    if norm_adv:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    pg = ppo_clip_loss(logp, mb["logprobs"], adv, clip_coef)
    ent = -(logp_all.exp() * logp_all).sum(-1).mean()
    if not critic:
        return pg + ent_coef * entropy_loss(ent), torch.zeros((), dtype=F64)
    vl = value_loss(params["v"], mb["values"], mb["returns"], clip_coef if clip_vloss else None)
    return pg + vf_coef * vl + ent_coef * entropy_loss(ent), vl


@pytest.mark.parametrize("clip_vloss", [False, True])
def test_ppo_objective_total_loss_against_a_hand_computed_one(clip_vloss):
    """Kills ``pg - vf_coef * v_loss``, ``vf_coef / v_loss``, ``- ent_coef * entropy_loss``,
    ``ent_coef / entropy_loss``, ``if v is None``, and every change to which clip range the value loss
    gets (``None`` always, ``clip_coef`` always, the argument dropped)."""
    from hrl_nested.ppo_objective import ppo_objective

    dist_fn, params, mb = _objective_case()
    kw = dict(clip_coef=0.2, vf_coef=0.7, ent_coef=0.3, norm_adv=True, clip_vloss=clip_vloss)
    loss, stats = ppo_objective(dist_fn, params, mb, **kw)
    ref, vl = _by_hand(params, mb, **kw)
    unclipped = value_loss(params["v"], mb["values"], mb["returns"], None)
    clipped = value_loss(params["v"], mb["values"], mb["returns"], 0.2)
    assert abs(float(clipped - unclipped)) > 1e-3  # the case tells the two value losses apart
    assert abs(float(vl)) > 1.5  # vf_coef * L_V and vf_coef / L_V differ
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stats.value_loss, vl, rtol=1e-12, atol=1e-12)


def test_ppo_objective_defaults():
    """Kills the mutated defaults ``vf_coef=1.5``, ``ent_coef=1.0``, ``norm_adv=False``, ``clip_vloss=True``:
    the documented defaults are 0.5, 0.0, True and False."""
    from hrl_nested.ppo_objective import ppo_objective

    dist_fn, params, mb = _objective_case()
    loss, _ = ppo_objective(dist_fn, params, mb, clip_coef=0.2)
    ref, _ = _by_hand(params, mb, clip_coef=0.2, vf_coef=0.5, ent_coef=0.0, norm_adv=True, clip_vloss=False)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)


def test_ppo_objective_without_a_critic():
    """Kills, in the critic-less branch, ``loss = None``, ``- ent_coef * entropy_loss``, ``ent_coef /
    entropy_loss``, ``entropy_loss(None)``, ``v_loss = None`` and a zero value loss of another shape or
    dtype (``torch.zeros(None)``, ``dtype=None``, no shape). ``device=None`` / no device in that
    ``torch.zeros`` are equivalent here: the default device is the CPU the test runs on (CUDA runs of
    the PPO tests would tell them apart)."""
    from hrl_nested.ppo_objective import ppo_objective

    dist_fn, params, mb = _objective_case(critic=False)
    kw = dict(clip_coef=0.2, vf_coef=0.7, ent_coef=0.3, norm_adv=False, clip_vloss=False)
    loss, stats = ppo_objective(dist_fn, params, mb, **kw)
    ref, _ = _by_hand(params, mb, critic=False, **kw)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    assert stats.value_loss.shape == () and stats.value_loss.dtype == F64 and float(stats.value_loss) == 0.0


def test_ppo_objective_names_missing_minibatch_keys():
    """Kills ``missing = None`` and the message's mutants (``ValueError(None)``, ``list(None)``,
    ``sorted(None)``)."""
    from hrl_nested.ppo_objective import ppo_objective

    dist_fn, params, mb = _objective_case()
    del mb["advantages"]
    expected = (
        "mb: expected keys ['obs', 'actions', 'logprobs', 'advantages'], missing ['advantages'] "
        "(got ['actions', 'logprobs', 'obs', 'returns', 'values'])"
    )
    with pytest.raises(ValueError) as exc:
        ppo_objective(dist_fn, params, mb, clip_coef=0.2)
    assert str(exc.value) == expected


# ------------------------------------------------------------------------------ optim (group optim)
# Survivors of `tools/mutation.py optim`: the weight-decay argument checks were never exercised with a
# bad tensor or a bad number, the update count's device never looked at, `Optimizer._replace` (used by
# NamedTuple machinery) never called, and zero weight decay never told apart from a tensor one.
@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.zeros(2), r"^weight_decay must be a float >= 0 or a floating-point scalar tensor, got a "
                         r"torch.float32 tensor of shape \(2,\)$"),
        (torch.tensor(1), r"^weight_decay must be .* got a torch.int64 tensor of shape \(\)$"),
        (-0.1, r"^weight_decay must be a float >= 0 or a floating-point scalar tensor, got -0.1$"),
        (True, r"^weight_decay must be .* got True$"),
        ("0.1", r"^weight_decay must be .* got '0.1'$"),
    ],
    ids=["vector", "int-tensor", "negative", "bool", "string"],
)  # fmt: skip
@pytest.mark.parametrize("make", ["sgd", "adam"])
def test_bad_weight_decay_is_named(make, bad, message):
    """Kills the ``and``/``or``, ``== 1``/``!= 2`` and ``is_floating_point`` mutants of
    `_check_weight_decay` and its ``ValueError(None)`` / ``tuple(None)`` messages."""
    from hrl_nested import optim

    with pytest.raises(ValueError, match=message):
        getattr(optim, make)(0.1, weight_decay=bad)
    getattr(optim, make)(0.1, weight_decay=torch.tensor(0.5))  # a float scalar tensor is fine
    getattr(optim, make)(0.1, weight_decay=torch.tensor([0.5]))  # one element, any shape


def test_optimizer_replace_keeps_weight_decay():
    """Kills the mutants of `Optimizer._replace` (no test called it: "no tests")."""
    from hrl_nested import optim

    opt = optim.sgd(0.1, weight_decay=0.25)
    new = opt._replace(weight_decay=0.5)
    assert type(new) is optim.Optimizer and new.weight_decay == 0.5
    assert new.init is opt.init and new.update is opt.update
    same = opt._replace()
    assert same.weight_decay == 0.25 and tuple(same) == tuple(opt)


@pytest.mark.parametrize("make", ["sgd", "adam"])
def test_update_count_lives_on_the_params_device(make):
    """Kills `_count_like` mutants that drop or replace its device (``device=None``, ``"XXcpuXX"``, the
    ``if params`` branch forced), and ``_count_like(None)`` in ``init``: on the meta device the count
    must follow the params, and empty params give a CPU count."""
    from hrl_nested import optim

    init, _ = getattr(optim, make)(0.1)
    state = init({"w": torch.zeros(3, device="meta")})
    assert state.count.device.type == "meta" and state.count.dtype == torch.int64 and state.count.shape == ()
    assert init({}).count.device == torch.device("cpu")


@pytest.mark.parametrize("make", ["sgd", "adam"])
def test_weight_decay_adds_its_l2_term(make):
    """A nonzero weight decay adds ``weight_decay * p`` to the gradient (checked against SGD's formula).

    Equivalent survivors (not killed): ``_is_zero(None)`` and ``_is_zero(weight_decay) and False`` in
    both updates. `_is_zero` only lets a Python 0 skip adding ``0 * p``, which for finite parameters
    changes no value (it saves an op; only an infinite parameter would turn ``0 * p`` into NaN).
    """
    from hrl_nested import optim

    p = {"w": torch.tensor([1.0, -2.0], dtype=F64)}
    g = {"w": torch.tensor([0.5, 0.5], dtype=F64)}
    init, update = getattr(optim, make)(0.1, weight_decay=0.0)
    new0, _ = update(g, init(p), p)
    init, update = getattr(optim, make)(0.1, weight_decay=0.3)
    new3, _ = update(g, init(p), p)
    assert not torch.equal(new0["w"], new3["w"])
    if make == "sgd":
        torch.testing.assert_close(new3["w"], p["w"] - 0.1 * (g["w"] + 0.3 * p["w"]))
        torch.testing.assert_close(new0["w"], p["w"] - 0.1 * g["w"])


def test_nesterov_without_momentum_message():
    """Kills the mutated message of sgd's nesterov check."""
    from hrl_nested import optim

    with pytest.raises(ValueError, match=r"^sgd: nesterov=True needs momentum > 0$"):
        optim.sgd(0.1, nesterov=True)


# ---------------------------------------------------------- distributions (group distributions)
# Survivors of `tools/mutation.py distributions` killed here: every test used 2-D logits / head outputs
# (where ``argmax(+1)`` and ``shape[+1]`` equal ``argmax(-1)`` and ``shape[-1]``), float32 (where a
# dropped ``dtype=`` changes nothing), error messages unchecked, and no half-bounded Box.
# The 41 that survived the rerun (some of them named in the docstrings below, which did not reach them)
# are killed in the second pass further down.
def test_categorical_on_3d_float64_logits():
    """Kills ``argmax(+1)`` in ``mode`` and ``sample``, ``shape[:+1]`` / ``shape[:-2]`` in the log_prob
    message (the draw's ``dtype`` is pinned by test_categorical_sample_is_gumbel_max_of_a_float64_uniform)."""
    from hrl_nested.distributions import Categorical

    logits = torch.full((2, 3, 4), -30.0, dtype=F64)
    logits[..., 2] = 0.0  # every row is (almost surely) action 2
    d = Categorical(logits)
    assert torch.equal(d.mode(), torch.full((2, 3), 2))
    assert torch.equal(d.sample(torch.Generator().manual_seed(0)), torch.full((2, 3), 2))
    with pytest.raises(ValueError, match=r"^action: expected shape \(2, 3\), got \(3,\)$"):
        d.log_prob(torch.zeros(3, dtype=torch.int64))


def test_categorical_and_make_distribution_messages():
    """Kills ``and`` for ``or`` in Categorical's logits check, its ``ValueError(None)`` / ``tuple(None)``
    messages, ``shape[+1]`` in make_distribution's Discrete check (3-D head output) and the mutated
    messages of its Box and unsupported-space errors."""
    import gymnasium as gym

    from hrl_nested.distributions import Categorical, make_distribution

    with pytest.raises(ValueError, match=r"^logits: expected a float tensor of shape \(\.\.\., n\), got "
                                         r"torch.int64 \(2, 3\)$"):  # fmt: skip
        Categorical(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"got torch.float32 \(\)$"):
        Categorical(torch.tensor(1.0))
    assert make_distribution(gym.spaces.Discrete(4), torch.zeros(2, 3, 4)).mode().shape == (2, 3)
    box = gym.spaces.Box(-1.0, 1.0, (2,))
    with pytest.raises(ValueError, match=r"^head_output: expected last dim 2\*2 \(mean, log_std\) for Box"
                                         r".*, got \(5, 3\)$"):  # fmt: skip
        make_distribution(box, torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"flatten other spaces with a Gymnasium wrapper first$"):
        make_distribution(gym.spaces.MultiBinary(3), torch.zeros(2, 3))


def test_half_bounded_box_is_unbounded():
    """Kills ``or`` for ``and`` in make_distribution's ``bounded``: a Box with one infinite side gets no
    squashing (``(bounded) or True`` is killed by test_unbounded_box_has_no_bounds)."""
    import gymnasium as gym

    from hrl_nested.distributions import make_distribution

    half = gym.spaces.Box(np.array([0.0, 0.0], np.float32), np.array([1.0, np.inf], np.float32))
    d = make_distribution(half, torch.zeros(3, 4))
    assert d.squash is None
    u = torch.full((3, 2), 5.0)
    assert torch.equal(d.env_action(u), u)  # not clipped into [0, 1]
    with pytest.raises(ValueError, match="needs a bounded Box"):
        make_distribution(half, torch.zeros(3, 4), squash="tanh")


# ------------------------------------------------- distributions (group distributions): second pass
# The 41 survivors left open above, all killed here (none is equivalent). What they had in common: the
# seeded draws were never compared with the documented formula (``argmax(logits - log(-log u))``,
# ``u = mean + std * eps``) drawn from the same generator, so a float32 uniform/normal under float64
# parameters, a dropped ``generator`` or ``mean - std * eps`` went unnoticed; the device arguments were
# only ever exercised on CPU, where ``device=None`` is the same device; DiagGaussian's error messages,
# its ``clip`` checks and ``unsquash`` for ``clip`` were never run; and ``_log_det`` never saw 3-D input,
# where ``sum(+1)`` and ``sum(-1)`` differ. Devices are checked with "meta" tensors (shape/dtype/device
# only, no data), which this GPU-less machine has: a draw made on the default device instead of the
# parameters' then fails to mix with them ("Tensor on device cpu is not on the expected device meta").
def test_categorical_sample_is_gumbel_max_of_a_float64_uniform():
    """Kills ``dtype=None`` / no ``dtype`` in Categorical.sample's uniform draw: with float64 logits the
    sample is exactly ``argmax(logits - log(-log u))`` for ``u`` a float64 uniform from the same generator
    (a float32 uniform comes from a different random stream and differs on most of 200 uniform rows)."""
    from hrl_nested.distributions import Categorical

    logits = torch.zeros(200, 5, dtype=F64)  # uniform: the argmax is decided by the noise alone
    s = Categorical(logits).sample(torch.Generator().manual_seed(3))
    u = torch.rand(200, 5, dtype=F64, generator=torch.Generator().manual_seed(3))
    expected = (logits - u.clamp_min(torch.finfo(F64).tiny).log().neg().log()).argmax(-1)
    assert s.dtype == torch.int64
    assert torch.equal(s, expected)


def test_draws_follow_the_parameters_device():
    """Kills ``device=None`` / no ``device`` in Categorical.sample's and DiagGaussian.sample_and_log_prob's
    draws and in the ``torch.as_tensor`` of ``low`` / ``high``: on "meta" parameters each of these would
    land on the CPU."""
    from hrl_nested.distributions import Categorical, DiagGaussian

    meta = torch.device("meta")
    s = Categorical(torch.zeros(3, 4, device=meta)).sample()
    assert (s.device, s.dtype, tuple(s.shape)) == (meta, torch.int64, (3,))
    d = DiagGaussian(torch.zeros(3, 2, device=meta), torch.zeros(2, device=meta), "clip", low=-1.0, high=2.0)
    assert d.low.device == meta and d.high.device == meta
    u, logp = d.sample_and_log_prob()
    assert (u.device, tuple(u.shape), logp.device, tuple(logp.shape)) == (meta, (3, 2), meta, (3,))
    assert d.env_action(u).device == meta


def test_gaussian_draw_is_mean_plus_std_times_the_generators_normal():
    """Kills dropping ``generator`` (in ``sample`` or in ``sample_and_log_prob``'s ``randn``),
    ``dtype=None`` / no ``dtype`` in that ``randn`` and ``mean - std * eps``: the draw is
    ``mean + exp(log_std) * eps`` with ``eps`` a float64 normal from the generator passed in.
    (``mean - std * eps`` has the same law, but a seeded generator must reproduce the documented draw:
    common random numbers across code paths and resumed runs rely on it.)"""
    from hrl_nested.distributions import DiagGaussian

    g = torch.Generator().manual_seed(0)
    mean = torch.randn(4, 3, dtype=F64, generator=g) + 1.0
    log_std = torch.randn(3, dtype=F64, generator=g) * 0.5
    d = DiagGaussian(mean, log_std)
    eps = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(7))
    expected = mean + log_std.exp() * eps
    torch.manual_seed(123)  # the global generator: a draw that ignores ``generator`` comes from here
    u = d.sample(torch.Generator().manual_seed(7))
    assert u.dtype == F64
    assert torch.equal(u, expected)
    u2, logp = d.sample_and_log_prob(torch.Generator().manual_seed(7))
    assert torch.equal(u2, expected)
    assert torch.equal(logp, d.log_prob(expected))


def test_diag_gaussian_argument_checks_and_messages():
    """Kills ``and`` for ``or`` in the mean check (a 0-d float mean and a 1-d integer mean must each be
    refused), the ``None`` / ``tuple(None)`` / mutated messages of the mean, low/high and clip checks,
    ``"XXclipXX"`` / ``"CLIP"`` in the clip check, and the mutated log_prob shape message."""
    from hrl_nested.distributions import DiagGaussian

    with pytest.raises(ValueError, match=r"^mean: expected a float tensor of shape \(\.\.\., d\), got "
                                         r"torch.int64 \(3,\)$"):  # fmt: skip
        DiagGaussian(torch.zeros(3, dtype=torch.int64), torch.zeros(3))
    with pytest.raises(ValueError, match=r"^mean: expected .*, got torch.float64 \(\)$"):
        DiagGaussian(torch.tensor(0.0, dtype=F64), torch.tensor(0.0, dtype=F64))
    with pytest.raises(ValueError, match=r"^low, high: give both or neither$"):
        DiagGaussian(torch.zeros(2), torch.zeros(2), "tanh", low=-1.0)
    with pytest.raises(ValueError, match=r"^squash='clip' needs low and high$"):
        DiagGaussian(torch.zeros(2), torch.zeros(2), "clip")
    d = DiagGaussian(torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"^action: expected shape \(2, 3\), got \(3, 2\)$"):
        d.log_prob(torch.zeros(3, 2))


def test_bounds_take_the_mean_dtype():
    """Kills ``dtype=None`` / no ``dtype`` in the ``torch.as_tensor`` of ``low`` and ``high``: bounds given
    as Python floats or float32 arrays become float64 under a float64 mean, so clipping lands exactly on
    the float64 bound (a float32 0.1 is 0.100000001...)."""
    from hrl_nested.distributions import DiagGaussian

    mean = torch.zeros(2, 2, dtype=F64)
    d = DiagGaussian(mean, torch.zeros(2, dtype=F64), "clip", low=-0.3, high=0.1)
    assert d.low.dtype == F64 and d.high.dtype == F64
    a = d.env_action(torch.tensor([[5.0, -5.0], [0.05, -0.2]], dtype=F64))
    assert a.dtype == F64
    assert torch.equal(a, torch.tensor([[0.1, -0.3], [0.05, -0.2]], dtype=F64))
    box = DiagGaussian(mean, torch.zeros(2, dtype=F64), "tanh", np.float32([-1, 0]), np.float32([3, 0.5]))
    assert box.low.dtype == F64 and box.high.dtype == F64


def test_unbounded_box_has_no_bounds():
    """Kills ``(bounded) or True`` in make_distribution: an unbounded (or half-bounded) Box must give a
    distribution without bounds, not one carrying the Box's infinite ``low`` / ``high``."""
    import gymnasium as gym

    from hrl_nested.distributions import make_distribution

    for box in (
        gym.spaces.Box(-np.inf, np.inf, (2,)),
        gym.spaces.Box(np.float32([0, 0]), np.float32([1, np.inf])),
    ):
        d = make_distribution(box, torch.zeros(3, 4))
        assert d.squash is None and d.low is None and d.high is None


def test_unsquash_inverts_tanh_in_float64_and_refuses_clip():
    """Kills ``"XXclipXX"`` / ``"CLIP"`` in unsquash's clip check (clip would then return its input as if
    it were the identity) and the ``None`` / mutated messages of that error. Also pins the float64
    round trip ``unsquash(env_action(u)) = u`` with off-centre bounds, and the identity for ``None``."""
    from hrl_nested.distributions import DiagGaussian

    u = torch.linspace(-3.0, 3.0, 12, dtype=F64).reshape(2, 3, 2)
    low, high = torch.tensor([-1.0, 0.0], dtype=F64), torch.tensor([3.0, 0.5], dtype=F64)
    t = DiagGaussian(torch.zeros_like(u), torch.zeros(2, dtype=F64), "tanh", low=low, high=high)
    back = t.unsquash(t.env_action(u))
    assert back.dtype == F64
    torch.testing.assert_close(back, u, rtol=0.0, atol=1e-10)
    plain = DiagGaussian(torch.zeros_like(u), torch.zeros(2, dtype=F64))
    assert plain.unsquash(u) is u
    clip = DiagGaussian(torch.zeros_like(u), torch.zeros(2, dtype=F64), "clip", low=low, high=high)
    with pytest.raises(ValueError, match=r"^unsquash: squash='clip' has no inverse \(clipping loses the "
                                         r"draw\)$"):  # fmt: skip
        clip.unsquash(clip.env_action(u))


def test_tanh_log_det_on_3d_input_against_finite_differences():
    """Kills ``sum(+1)`` for ``sum(-1)`` in ``_log_det``: on a ``(2, 3, 2)`` batch it would sum over the
    middle axis. ``_log_det`` and ``log_prob`` are checked against a float64 central finite difference of
    ``a = env_action(u)`` (elementwise, so ``log|det J| = sum_i log|da_i/du_i|``) with asymmetric bounds
    whose scales (2 and 0.25) do not multiply to 1."""
    from hrl_nested.distributions import DiagGaussian

    g = torch.Generator().manual_seed(5)
    mean = torch.randn(2, 3, 2, dtype=F64, generator=g)
    log_std = torch.randn(2, dtype=F64, generator=g) * 0.3
    d = DiagGaussian(mean, log_std, "tanh", low=[-1.0, 0.0], high=[3.0, 0.5])
    u = torch.randn(2, 3, 2, dtype=F64, generator=g) * 1.5
    h = 1e-6
    fd = (d.env_action(u + h) - d.env_action(u - h)) / (2 * h)
    log_det = fd.abs().log().sum(-1)
    assert d._log_det(u).shape == (2, 3)
    torch.testing.assert_close(d._log_det(u), log_det, rtol=0.0, atol=1e-7)
    gauss = torch.distributions.Normal(mean, log_std.exp()).log_prob(u).sum(-1)
    torch.testing.assert_close(d.log_prob(u), gauss - log_det, rtol=0.0, atol=1e-7)
