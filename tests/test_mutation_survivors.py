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


# ------------------------------------------------------------------------------ rollout (group rollout)
# Explained as equivalent or out of reach on CPU (not killed here):
# - CUDA-only branches of `Collector.__init__` / `_collect` (pinning "cuda" to an index, "auto" choosing
#   "cuda_graph", ``_graph`` / ``_graph_out`` initial values, the "cuda_graph on a CPU env" check's string
#   constant): `test_cuda_graph_equals_eager_after_param_update` (marked ``cuda``) covers them on a GPU.
# - ``device=dev`` dropped from the accumulators or the bounds: the same tensor on CPU.
# - ``dtype=dt`` dropped (or ``dt`` None) in the bounds: ``as_tensor`` keeps the space's own dtype, and
#   ``torch.minimum`` / ``maximum`` promote to the action's dtype, so the clipped values are identical.
# - ``torch.compile(..., dynamic=None / True / no dynamic=)``: the same compiled function, only its
#   recompilation policy differs (no observable value); torch.compile tests are left out of mutation
#   runs for time (tools/mutation.py) and `test_compiled_step_equals_eager` covers compiled steps.
# - `_warm_up`'s CUDA side stream and `_snapshot` / `_rewind`'s CUDA RNG state: CUDA only, as above.
# - ``self._warmed_up = None / False`` at the end of `_warm_up`: the "static" mode then warms up (and
#   rewinds) on every call instead of the first; on CPU that leaves no trace either.
# - ``self._warmed_up = None``: falsy like False. ``= True`` skips the "static" mode's warm-up, which
#   on CPU leaves no trace by design (it is rewound); it matters only before a CUDA graph capture.
# - ``_run``: ``device=x.device`` dropped from the buffers: CPU either way.
# - ``_leaves``: ``out.append(t) and t`` returns None to a ``tree_map`` whose result is discarded.
def _rollout_env(n=4, **kw):
    import envs

    return envs.make(
        "hrl_nested/CartPole-v1", n, autoreset_mode="same_step", validate=False, max_episode_steps=8, **kw
    )


def _cartpole_agent(env):
    from hrl_nested.networks import ActorCritic

    torch.manual_seed(0)
    return ActorCritic(env.single_observation_space, env.single_action_space)


class _EnvProxy:
    """A real env seen through a proxy: ``hide`` makes attributes missing, keywords override them, and
    ``step`` records the actions the env receives."""

    def __init__(self, env, hide=(), **override):
        self._env, self._hide, self.seen = env, set(hide), []
        self.__dict__.update(override)

    def __getattr__(self, name):
        if name in self._hide:
            raise AttributeError(name)
        return getattr(self._env, name)

    def step(self, action):
        self.seen.append(action.clone())
        return self._env.step(action)


def test_static_buffers_reject_a_dtype_only_or_shape_only_change_with_a_message():
    """Kills ``or`` -> ``and`` in `_copy_tree`'s check (a change of dtype *or* shape alone must raise),
    its messages (``None``, ``tuple(None)``) and the names `_collect` gives them (params, obs, carry)."""
    from hrl_nested.networks import params_of
    from hrl_nested.rollout import actor_critic_policy, make_rollout

    env = _rollout_env()
    ac = _cartpole_agent(env)
    collect = make_rollout(env, actor_critic_policy(ac), 2, capture="static")
    obs, _ = env.reset(seed=0)
    collect(params_of(ac), obs)
    with pytest.raises(
        ValueError,
        match=r"^obs: expected torch.float32 \(4, 4\) as in the first call, got torch.float64 \(4, 4\)$",
    ):
        collect(params_of(ac), obs.double())
    with pytest.raises(
        ValueError,
        match=r"^obs: expected torch.float32 \(4, 4\) as in the first call, got torch.float32 \(2, 8\)$",
    ):
        collect(params_of(ac), obs.reshape(2, 8))
    with pytest.raises(
        ValueError, match=r"^carry: expected the structure of the first call \(0 tensors\), got 1$"
    ):
        collect(params_of(ac), obs, torch.zeros(4))
    doubled = {k: v.double() for k, v in params_of(ac).items()}
    with pytest.raises(
        ValueError, match=r"^params: expected torch.float32 .* as in the first call, got torch.float64"
    ):
        collect(doubled, obs)


def test_actor_critic_policy_outputs_for_a_gaussian_and_a_categorical_policy():
    """Kills `actor_critic_policy` returning None for the Gaussian's logprob, value, carry or
    env_action, the carry in env_action's place, or a dropped carry for a categorical policy."""
    import gymnasium as gym

    from hrl_nested.networks import ActorCritic, actor_critic_apply, params_of
    from hrl_nested.rollout import actor_critic_policy

    obs, carry = torch.randn(5, 3), {"goal": torch.arange(5.0)}
    for act_space in (gym.spaces.Box(-2.0, 1.0, (2,)), gym.spaces.Discrete(3)):
        torch.manual_seed(1)
        ac = ActorCritic(gym.spaces.Box(-1, 1, (3,)), act_space)
        out = actor_critic_policy(ac)(params_of(ac), obs, carry)
        dist_params, value = actor_critic_apply(ac, params_of(ac), obs)
        dist = ac.distribution(dist_params)
        assert out.carry is carry
        torch.testing.assert_close(out.value, value)
        torch.testing.assert_close(out.logprob, dist.log_prob(out.action))
        if isinstance(act_space, gym.spaces.Box):
            torch.testing.assert_close(out.env_action, dist.env_action(out.action))
        else:
            assert out.env_action is None


def test_make_rollout_num_steps_checks():
    """Kills ``num_steps < 1`` -> ``< 2`` / ``<= 1`` (one step is a valid rollout) and ``or`` -> ``and``
    in the type check (a float must be refused)."""
    from hrl_nested.networks import params_of
    from hrl_nested.rollout import actor_critic_policy, make_rollout

    env = _rollout_env()
    ac = _cartpole_agent(env)
    obs, _ = env.reset(seed=0)
    assert make_rollout(env, actor_critic_policy(ac), 1)(params_of(ac), obs).batch.rewards.shape == (1, 4)
    for bad in (2.0, True, 0):
        with pytest.raises(ValueError, match=rf"^num_steps: expected a positive int, got {bad!r}$"):
            make_rollout(env, actor_critic_policy(ac), bad)


def test_autoreset_mode_is_read_from_the_attribute_or_else_the_metadata():
    """Kills the mutants of ``getattr(env, "autoreset_mode", None) or env.metadata.get("autoreset_mode")``:
    an env may declare SAME_STEP in either place; and the NEXT_STEP message's text."""
    from gymnasium.vector import AutoresetMode

    from hrl_nested.rollout import actor_critic_policy, make_rollout

    env = _rollout_env()
    policy = actor_critic_policy(_cartpole_agent(env))
    same = AutoresetMode.SAME_STEP
    make_rollout(_EnvProxy(env, hide=["autoreset_mode"], metadata={"autoreset_mode": same}), policy, 2)
    make_rollout(_EnvProxy(env, autoreset_mode=same, metadata={}), policy, 2)
    nxt = _EnvProxy(env, hide=["autoreset_mode"], metadata={"autoreset_mode": AutoresetMode.NEXT_STEP})
    with pytest.raises(
        ValueError,
        match=r"got AutoresetMode.NEXT_STEP; NEXT_STEP would put a dummy reset transition into the batch$",
    ):
        make_rollout(nxt, policy, 2)


def test_collect_calls_raise_pending_once_when_the_env_has_it_and_works_without():
    """Kills the mutants of ``raise_pending = getattr(self.env, "raise_pending", None)`` and of its
    ``is not None`` test: called once per collect, and an env without it (no default) still works."""
    from hrl_nested.networks import params_of
    from hrl_nested.rollout import actor_critic_policy, make_rollout

    env = _rollout_env()
    ac = _cartpole_agent(env)
    obs, _ = env.reset(seed=0)
    calls = []
    counting = _EnvProxy(env, raise_pending=lambda: calls.append(1))
    make_rollout(counting, actor_critic_policy(ac), 3)(params_of(ac), obs)
    assert calls == [1]
    without = _EnvProxy(env, hide=["raise_pending"])
    assert make_rollout(without, actor_critic_policy(ac), 3)(params_of(ac), obs).batch.rewards.shape == (3, 4)


def test_capture_modes_that_rewind_refuse_an_env_without_state_and_none_accepts_it():
    """Kills the mutants of ``self.mode in ("cuda_graph", "static") and not can_rewind`` and its message."""
    from hrl_nested.networks import params_of
    from hrl_nested.rollout import actor_critic_policy, make_rollout

    env = _rollout_env()
    ac = _cartpole_agent(env)
    no_state = _EnvProxy(env, supports_state=False)
    for capture in ("static", "cuda_graph"):
        with pytest.raises(
            ValueError,
            match=rf"^capture='{capture}': expected an env with get_state/set_state, got _EnvProxy \(",
        ):
            make_rollout(no_state, actor_critic_policy(ac), 2, capture=capture)
    for capture in ("none", "auto"):
        collect = make_rollout(no_state, actor_critic_policy(ac), 2, capture=capture)
        assert collect.mode == "none"
        obs, _ = env.reset(seed=0)
        collect(params_of(ac), obs)


def test_episode_accumulators_take_the_env_dtype_and_default_to_float32():
    """Kills a dropped or None ``dtype`` of the episode-return accumulator and ``getattr`` mutants:
    a float64 env keeps float64 returns; an env with no ``dtype`` gets float32."""
    from hrl_nested.networks import params_of
    from hrl_nested.rollout import actor_critic_policy, make_rollout

    env = _rollout_env(dtype=torch.float64)
    ac = _cartpole_agent(env).double()
    collect = make_rollout(env, actor_critic_policy(ac), 12)
    obs, _ = env.reset(seed=0)
    res = collect(params_of(ac), obs)
    assert res.episode_count > 0
    assert collect.state_dict()["episode_return"].dtype == torch.float64
    assert res.episode_return_sum.dtype == torch.float64
    no_dtype = _EnvProxy(_rollout_env(), hide=["dtype"])
    assert (
        make_rollout(no_dtype, actor_critic_policy(ac), 2).state_dict()["episode_return"].dtype
        == torch.float32
    )


def test_box_actions_reach_the_env_clipped_to_the_space():
    """Kills ``space = None`` and ``np.all(None)`` for the bounds: the env must receive the clipped
    action (the batch keeps the unclipped one). The policy gives no ``env_action``, so nothing but the
    collector clips (a Gaussian's ``env_action`` would already be inside the box)."""
    from test_rollout import LineGoalEnv

    from hrl_nested.rollout import PolicyOutput, make_rollout

    def wide_policy(params, obs, carry):
        a = 3.0 * torch.randn(obs["observation"].shape)
        return PolicyOutput(a, torch.zeros(len(a)), torch.zeros(len(a)), carry)

    # No ``dtype`` attribute (kills ``getattr(env, "dtype", )`` for the bounds): float32 by default.
    env = _EnvProxy(LineGoalEnv(8, autoreset_mode="same_step", validate=False), hide=["dtype"])
    obs, _ = env.reset(seed=3)
    torch.manual_seed(0)
    res = make_rollout(env, wide_policy, 6)({}, obs)
    sent = torch.stack(env.seen)
    assert res.batch.actions.abs().max() > 1.0 and sent.abs().max() <= 1.0
    torch.testing.assert_close(sent, res.batch.actions.clamp(-1.0, 1.0))
    # Kills ``out.action if ... or True``: a policy's env_action, when given, is what the env receives.
    quarter = lambda p, o, c: wide_policy(p, o, c)._replace(env_action=torch.full((8, 1), 0.25))  # noqa: E731
    env.seen.clear()
    make_rollout(env, quarter, 2)({}, obs)
    assert all(torch.equal(a, torch.full((8, 1), 0.25)) for a in env.seen)


def test_load_state_dict_errors_name_the_accumulator():
    """Kills the names `load_state_dict` gives `_copy_tree` (None, renamed); ``.to(None)`` is a no-op."""
    from hrl_nested.rollout import actor_critic_policy, make_rollout

    env = _rollout_env()
    collect = make_rollout(env, actor_critic_policy(_cartpole_agent(env)), 2)
    good = collect.state_dict()
    with pytest.raises(
        ValueError, match=r"^episode_return: expected torch.float32 \(4,\) as in the first call"
    ):
        collect.load_state_dict({**good, "episode_return": torch.zeros(4, dtype=F64)})
    with pytest.raises(
        ValueError, match=r"^episode_length: expected torch.int64 \(4,\) as in the first call"
    ):
        collect.load_state_dict({**good, "episode_length": torch.zeros(3, dtype=torch.int64)})


def test_step_flag_is_passed_on_and_wraps_the_step_with_dynamo():
    """Kills ``bool(compile_step)`` -> None / ``bool(None)``, ``if compile_step and False`` and
    ``torch.compile(None)`` / ``torch.compile(dynamic=False)`` (a decorator, not the compiled step).
    torch.compile is lazy: nothing is compiled unless the step runs. (Its name avoids "compile": the
    mutation runs deselect ``-k "not compile"``.)"""
    from hrl_nested.rollout import actor_critic_policy, make_rollout

    env = _rollout_env()
    policy = actor_critic_policy(_cartpole_agent(env))
    compiled = make_rollout(env, policy, 2, compile_step=True)
    assert getattr(compiled._step_fn, "_torchdynamo_orig_callable", None) == compiled._step
    plain = make_rollout(env, policy, 2)
    assert plain._step_fn == plain._step


# ------------------------------------------------------------------- nested pieces (group nested)
# Explained as equivalent (not killed here):
# - ``.to(None)`` for ``not_term`` / ``trace`` in `smdp_gae` and for ``open_return`` in `smdp_transitions`:
#   ``Tensor.to(None)`` is a no-op, and the bool / lower-precision operand is promoted by the arithmetic
#   it enters right away, to the same values.
def test_segment_and_smdp_argument_checks_name_what_came():
    """Kills the messages of `subgoal_reached`, `segment_ends` and `smdp_transitions` (``None``,
    ``tuple(None)``, renamed names, ``r_t.shape[2:]``) and ``or`` -> ``and`` in `smdp_transitions`'s
    shape check (a bad ``step_t`` or a bad ``seg_end_t`` alone must raise)."""
    from hrl_nested.segments import segment_ends, smdp_transitions, subgoal_reached

    with pytest.raises(ValueError, match=r"^g: expected shape \(2, 3\) like ag, got \(2, 2\)$"):
        subgoal_reached(torch.zeros(2, 3), torch.zeros(2, 2), 0.1)
    z = torch.zeros(3, 2, dtype=torch.bool)
    g = torch.zeros(3, 2, 1)
    with pytest.raises(ValueError, match=r"^step_t: expected shape \(T, N\), got \(3,\)$"):
        segment_ends(torch.zeros(3, dtype=torch.long), g, g, z, z, horizon=2, tolerance=0.1)
    with pytest.raises(
        ValueError, match=r"^terminated_t: expected a bool \(3, 2\) tensor, got torch.float32 \(3, 2\)$"
    ):
        segment_ends(torch.zeros(3, 2, dtype=torch.long), g, g, z.float(), z, horizon=2, tolerance=0.1)
    r, step = torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.long)
    with pytest.raises(
        ValueError,
        match=r"^r_t, step_t, seg_end_t: expected one \(T, N\) shape, got \(3, 2\), \(3, 2\), \(3, 1\)$",
    ):
        smdp_transitions(r, step, z[:, :1], z, 0.9, torch.zeros(2))
    with pytest.raises(
        ValueError,
        match=r"^r_t, step_t, seg_end_t: expected one \(T, N\) shape, got \(3, 2\), \(3, 1\), \(3, 2\)$",
    ):
        smdp_transitions(r, step[:, :1], z, z, 0.9, torch.zeros(2))
    with pytest.raises(ValueError, match=r"^open_return: expected shape \(2,\), got \(3,\)$"):
        smdp_transitions(r, step, z, z, 0.9, torch.zeros(3))


def test_subgoal_reached_includes_the_tolerance_boundary():
    """Kills ``<=`` -> ``<``: a distance equal to the tolerance counts as reached (3-4-5 triangle)."""
    from hrl_nested.segments import subgoal_reached

    assert subgoal_reached(torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2), 5.0).tolist() == [True]


def test_smdp_pieces_on_a_single_step_batch_with_int32_steps():
    """Kills ``zero[+1]`` / ``zero[-2]`` for the open return and ``delta[1]`` in `smdp_gae` (only a T = 1
    batch tells rows apart when they are all zero), and ``step_t.to(None)``: ``length`` is int64 even
    for int32 steps."""
    from hrl_nested.segments import smdp_gae, smdp_transitions

    r = torch.tensor([[1.0, 2.0]])
    step = torch.tensor([[0, 2]], dtype=torch.int32)
    end = torch.tensor([[True, False]])
    term = torch.zeros(1, 2, dtype=torch.bool)
    tr, open_ret = smdp_transitions(r, step, end, term, 0.5, torch.tensor([0.0, 3.0]))
    assert tr.length.dtype == torch.int64 and tr.length.tolist() == [[1, 0]]
    torch.testing.assert_close(open_ret, torch.tensor([0.0, 3.0 + 0.25 * 2.0]))
    adv, ret = smdp_gae(tr, term, torch.tensor([[0.5, 0.0]]), torch.tensor([[2.0, 0.0]]), 0.9)
    torch.testing.assert_close(adv, torch.tensor([[1.0 + 0.5 * 2.0 - 0.5, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[2.0, 0.0]]))


def test_free_shaping_init_and_apply():
    """Kills every mutant of `init_free_shaping` / `free_shaping` (no test reached them) and `mlp_init`'s
    default device ``"XXcpuXX"``: keys, ``beta = 1``,
    dtype and device, a zero output at init of shape ``x.shape[:-1]``, and the MLP ``rin.*`` after."""
    from hrl_nested.shaping import free_shaping, init_free_shaping, mlp_apply, mlp_init

    phi = init_free_shaping(3, (4,), dtype=torch.float64)
    assert sorted(phi) == ["beta", "rin.0.bias", "rin.0.weight", "rin.1.bias", "rin.1.weight"]
    assert phi["beta"].shape == () and float(phi["beta"]) == 1.0
    assert phi["rin.1.weight"].shape == (1, 4) and not phi["rin.1.weight"].any()
    assert all(v.dtype == torch.float64 and v.device.type == "cpu" for v in phi.values())
    assert init_free_shaping(2)["rin.0.weight"].shape == (32, 2)
    assert (
        mlp_init(2, (3,), 1, "p")["p.1.weight"].device.type == "cpu"
    )  # the default device (no caller omits it)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    out = free_shaping(phi, x)
    assert out.shape == (2, 5) and not out.any()
    phi["rin.1.weight"] = torch.randn(1, 4, dtype=torch.float64)
    torch.testing.assert_close(free_shaping(phi, x), mlp_apply(phi, "rin", x)[..., 0])
    torch.testing.assert_close(free_shaping(phi, x[0, 0]), mlp_apply(phi, "rin", x[0, 0])[0])


def test_phi_summary_keys_and_range():
    """Kills the mutants of `phi_summary`: the scalars present in φ, and the potential's min / max only
    for a non-empty output (also a single element)."""
    from hrl_nested.shaping import init_goal_shaping, phi_summary

    phi = init_goal_shaping(2)
    phi["w_bonus"] = torch.tensor(0.25)
    s = phi_summary(phi, torch.tensor([0.5, -1.0, 2.0]))
    assert sorted(s) == ["phi_beta", "phi_out_max", "phi_out_min", "phi_w_bonus", "phi_w_dist"]
    assert [float(s[k]) for k in ("phi_beta", "phi_w_dist", "phi_w_bonus", "phi_out_min", "phi_out_max")] == [
        1.0,
        1.0,
        0.25,
        -1.0,
        2.0,
    ]
    assert sorted(phi_summary(phi)) == ["phi_beta", "phi_w_bonus", "phi_w_dist"]
    assert sorted(phi_summary(phi, torch.zeros(0))) == ["phi_beta", "phi_w_bonus", "phi_w_dist"]
    one = phi_summary({"beta": torch.tensor(2.0)}, torch.tensor([3.0]))
    assert {k: float(v) for k, v in one.items()} == {"phi_beta": 2.0, "phi_out_min": 3.0, "phi_out_max": 3.0}


def _tiny_inner_outer(prox):
    from hrl_nested.distributions import Categorical
    from hrl_nested.nested_objective import PolicyBatch, ShapingBatch, make_inner_outer

    g = torch.Generator().manual_seed(0)
    z = torch.zeros(2, 2, dtype=torch.bool)
    sb = ShapingBatch(torch.randn(2, 2, generator=g), torch.zeros(2, 2), torch.zeros(2, 2), z, z, None)
    obs = torch.randn(4, 3, generator=g)
    pb = PolicyBatch(
        obs, torch.tensor([0, 1, 1, 0]), torch.full((4,), -math.log(2.0)), torch.randn(4, generator=g)
    )
    start = {"w": torch.ones(3, 2)}
    return make_inner_outer(
        lambda theta, x: (Categorical(x @ theta["w"]), None),
        sb,
        pb,
        [torch.arange(4)],
        lambda phi, f: torch.zeros(2, 2),
        theta_start=start,
        gamma=0.9,
        gae_lambda=0.8,
        clip_coef=0.2,
        prox=prox,
    )


def test_proximal_term_is_half_lambda_times_the_squared_distance_to_the_start():
    """Kills ``a[k] + b[k]`` in `_sq_dist`: the proximal term is ``λ/2 ||θ - θ_start||²``, measured with
    a nonzero start (a zero start makes ``+`` and ``-`` agree)."""
    theta, phi = {"w": torch.full((3, 2), 3.0)}, {"beta": torch.tensor(1.0)}
    plain = _tiny_inner_outer(0.0).stationary_loss(theta, phi)
    with_prox = _tiny_inner_outer(0.5).stationary_loss(theta, phi)
    torch.testing.assert_close(with_prox - plain, torch.tensor(0.5 * 0.5 * 6 * 2.0**2))


def test_clip_by_global_norm_refuses_zero_and_grad_cosine_values():
    """Kills ``max_norm >= 0`` in `clip_by_global_norm`, and every mutant of `grad_cosine` (no test
    reached it): its key check and message, the cosine itself, and 0 for a zero gradient."""
    from hrl_nested.nested_objective import clip_by_global_norm, grad_cosine
    from hrl_nested.optim import sgd

    with pytest.raises(ValueError, match=r"^max_norm: expected a float > 0, got 0.0$"):
        clip_by_global_norm(sgd(1.0), 0.0)
    with pytest.raises(ValueError, match=r"^b: expected keys \['u', 'w'\], got \['w'\]$"):
        grad_cosine({"w": torch.ones(2), "u": torch.ones(1)}, {"w": torch.ones(2)})
    a = {"w": torch.tensor([1.0, 0.0]), "u": torch.tensor([2.0])}
    b = {"w": torch.tensor([3.0, 4.0]), "u": torch.tensor([0.5])}
    expected = (3.0 + 1.0) / (math.sqrt(5.0) * math.sqrt(25.25))
    cos = grad_cosine(a, b)
    assert cos.dtype == torch.float64
    torch.testing.assert_close(cos, torch.tensor(expected, dtype=F64))
    torch.testing.assert_close(
        grad_cosine(a, {k: -2 * v for k, v in a.items()}), torch.tensor(-1.0, dtype=F64)
    )
    zero = {"w": torch.zeros(2), "u": torch.zeros(1)}
    assert float(grad_cosine(a, zero)) == 0.0
    tiny = {"w": torch.tensor([1e-3, 0.0]), "u": torch.zeros(1)}  # |a| |b| < 1: no clamp at 1
    torch.testing.assert_close(grad_cosine(tiny, tiny), torch.tensor(1.0, dtype=F64))


@pytest.mark.parametrize(
    ("grad", "max_norm", "expected"),
    [
        ([3.0, 4.0], 1.0, [-3.0 / (5.0 + 1e-6), -4.0 / (5.0 + 1e-6)]),  # clipped to the max norm
        ([0.3, 0.4], 1.0, [-0.3, -0.4]),  # below it: unchanged (the scale is capped at 1)
        ([3e-6, 4e-6], 1e-6, [-0.5e-6, -(2.0 / 3.0) * 1e-6]),  # g max_norm / (||g|| + 1e-6), eps visible
    ],
)
def test_clip_by_global_norm_scales_by_max_norm_over_norm_plus_eps(grad, max_norm, expected):
    """Kills ``max_norm * norm``, ``norm - 1e-6``, ``norm + 1.000001``, ``clamp(max=2)`` and ``g / scale``
    in `clip_by_global_norm`, checked through one SGD step with lr 1 (float64)."""
    from hrl_nested.nested_objective import clip_by_global_norm
    from hrl_nested.optim import sgd

    opt = clip_by_global_norm(sgd(1.0), max_norm)
    w = {"w": torch.zeros(2, dtype=F64)}
    new, _ = opt.update({"w": torch.tensor(grad, dtype=F64)}, opt.init(w), w)
    torch.testing.assert_close(new["w"], torch.tensor(expected, dtype=F64), rtol=1e-9, atol=0.0)


def test_clip_by_global_norm_keeps_weight_decay():
    """Kills ``Optimizer(opt.init, update, )``: the wrapped optimizer's weight decay is kept."""
    from hrl_nested.nested_objective import clip_by_global_norm
    from hrl_nested.optim import sgd

    assert clip_by_global_norm(sgd(1.0, weight_decay=0.1), 1.0).weight_decay == 0.1


def test_shaped_advantages_add_the_intrinsic_reward():
    """Kills ``β r_ext - R_φ``: the shaped reward is ``β r_ext + R_φ``, through GAE."""
    from hrl_nested.nested_objective import ShapingBatch, shaped_advantages

    g = torch.Generator().manual_seed(3)
    r, v, v1 = (torch.randn(3, 2, generator=g, dtype=F64) for _ in range(3))
    term = torch.tensor([[False, True], [False, False], [False, False]])
    trunc = torch.tensor([[False, False], [True, False], [False, False]])
    bonus = torch.randn(3, 2, generator=g, dtype=F64)
    sb = ShapingBatch(r, v, v1, term, trunc, bonus)
    adv, ret = shaped_advantages({"beta": torch.tensor(0.5, dtype=F64)}, sb, lambda phi, f: f, 0.9, 0.8)
    ref_adv, ref_ret = gae(0.5 * r + bonus, v, v1, term, trunc, 0.9, 0.8)
    torch.testing.assert_close(adv, ref_adv)
    torch.testing.assert_close(ret, ref_ret)


def test_make_inner_outer_defaults_message_outer_scale_and_dict_observations():
    """Kills, in `make_inner_outer`: the defaults ``ent_coef = 0`` and ``prox = 0`` (changed to 1), the
    empty-minibatches message, the outer advantages' scale ``A / (std(A) + 1e-8)`` (``*``, ``- 1e-8``,
    ``+ 1.00000001``: a constant ``A`` has std 0, so the 1e-8 decides it), and `_take` on a dict of
    observation rows (``_take(None, idx)``, ``_take(v, None)``, a dropped argument)."""
    from hrl_nested.distributions import Categorical
    from hrl_nested.nested_objective import PolicyBatch, ShapingBatch, make_inner_outer

    g = torch.Generator().manual_seed(0)
    z = torch.zeros(2, 2, dtype=torch.bool)
    sb = ShapingBatch(torch.randn(2, 2, generator=g), torch.zeros(2, 2), torch.zeros(2, 2), z, z, None)
    x = torch.randn(4, 3, generator=g)
    actions, logp = torch.tensor([0, 1, 1, 0]), torch.full((4,), -math.log(2.0))
    kw = {"gamma": 0.9, "gae_lambda": 0.8, "clip_coef": 0.2}
    start = {"w": torch.zeros(3, 2)}
    theta, phi = {"w": torch.randn(3, 2, generator=g)}, {"beta": torch.tensor(1.0)}
    zero_r = lambda phi, f: torch.zeros(2, 2)  # noqa: E731

    def build(obs, dist_fn, adv_ext, minibatches, **extra):
        pb = PolicyBatch(obs, actions, logp, adv_ext)
        return make_inner_outer(dist_fn, sb, pb, minibatches, zero_r, theta_start=start, **kw, **extra)

    flat = lambda th, o: (Categorical(o @ th["w"]), None)  # noqa: E731
    adv = torch.randn(4, generator=g)
    default = build(x, flat, adv, [torch.arange(4)]).stationary_loss(theta, phi)
    explicit = build(x, flat, adv, [torch.arange(4)], ent_coef=0.0, prox=0.0).stationary_loss(theta, phi)
    torch.testing.assert_close(default, explicit)
    with pytest.raises(ValueError, match=r"^minibatches: expected at least one index tensor, got none$"):
        build(x, flat, adv, [])
    # theta = 0: ratio 1, so the outer loss is -mean(A / (std(A) + 1e-8)) = -(1e-9 / 1e-8) for a constant A.
    const = build(x, flat, torch.full((4,), 1e-9), [torch.arange(4)])
    torch.testing.assert_close(const.outer_loss(start, phi), torch.tensor(-0.1))
    # Dict observation rows: the minibatch takes the same rows of every entry.
    in_dict = lambda th, o: (Categorical(o["x"] @ th["w"]), None)  # noqa: E731
    idx = [torch.tensor([2, 0])]
    torch.testing.assert_close(
        build({"x": x}, in_dict, adv, idx).inner_loss(theta, phi, 0),
        build(x, flat, adv, idx).inner_loss(theta, phi, 0),
    )


def test_mlp_apply_is_linear_tanh_linear_and_names_missing_layers():
    """Kills, in `mlp_apply`: ``i <= n - 1`` / ``i < n + 1`` (a tanh on the output), ``i < n - 2`` (no
    tanh between layers), ``n == 1`` (a one-layer MLP refused) and the message's mutants."""
    from hrl_nested.shaping import mlp_apply

    g = torch.Generator().manual_seed(0)
    p = {k: torch.randn(s, generator=g, dtype=F64) for k, s in [("m.0.weight", (4, 2)), ("m.0.bias", (4,))]}
    p.update({"m.1.weight": 3.0 * torch.ones(1, 4, dtype=F64), "m.1.bias": torch.tensor([2.0], dtype=F64)})
    x = torch.randn(5, 2, generator=g, dtype=F64)
    expected = torch.tanh(x @ p["m.0.weight"].T + p["m.0.bias"]) @ p["m.1.weight"].T + p["m.1.bias"]
    torch.testing.assert_close(mlp_apply(p, "m", x), expected)
    one = {"m.0.weight": p["m.0.weight"], "m.0.bias": p["m.0.bias"]}
    torch.testing.assert_close(mlp_apply(one, "m", x), x @ p["m.0.weight"].T + p["m.0.bias"])
    with pytest.raises(
        ValueError, match=r"^params: no layers 'q.<i>.weight' in \['m.0.bias', 'm.0.weight'\]$"
    ):
        mlp_apply(one, "q", x)


def test_potential_and_goal_shaping_scale_defaults_dtype_and_messages():
    """Kills, in `potential`: ``ag * scale`` / ``g * scale`` and the default ``scale = 2``; in
    `goal_shaping`: the default ``scale = 2`` and the shape messages; in `init_goal_shaping`: scalars
    made without the requested dtype. (``reached.to(None)`` is equivalent: a bool times a float tensor.)"""
    from hrl_nested.shaping import goal_shaping, init_goal_shaping, mlp_apply, potential

    g0 = torch.Generator().manual_seed(1)
    phi = init_goal_shaping(2, (4,), dtype=F64)
    assert all(phi[k].dtype == F64 for k in ("beta", "w_dist", "w_bonus"))
    phi["phi.1.weight"] = torch.randn(1, 4, generator=g0, dtype=F64)
    ag, ag1, g = (torch.randn(3, 2, generator=g0, dtype=F64) for _ in range(3))
    scale = torch.tensor([2.0, 0.5], dtype=F64)
    ref = mlp_apply(phi, "phi", torch.cat([ag / scale, g / scale], -1))[..., 0]
    torch.testing.assert_close(potential(phi, ag, g, scale), ref)
    torch.testing.assert_close(potential(phi, ag, g), mlp_apply(phi, "phi", torch.cat([ag, g], -1))[..., 0])
    reached, terminal = torch.tensor([True, False, False]), torch.tensor([False, True, False])
    torch.testing.assert_close(
        goal_shaping(phi, ag, ag1, g, reached, terminal, 0.9),
        goal_shaping(phi, ag, ag1, g, reached, terminal, 0.9, 1.0),
    )
    with pytest.raises(ValueError, match=r"^g: expected shape \(3, 2\) like ag, got \(3, 1\)$"):
        potential(phi, ag, g[:, :1])
    with pytest.raises(ValueError, match=r"^ag_next: expected shape \(3, 2\) like ag, got \(3, 1\)$"):
        goal_shaping(phi, ag, ag1[:, :1], g, reached, terminal, 0.9)
    with pytest.raises(ValueError, match=r"^g: expected shape \(3, 2\) like ag, got \(2, 2\)$"):
        goal_shaping(phi, ag, ag1, g[:2], reached, terminal, 0.9)


def test_inner_loss_is_ppo_on_the_minibatch_of_shaped_advantages():
    """Kills, in `make_inner_outer`'s inner loss: the returns instead of the advantages (``[1]``), the
    minibatch ignored (``or True``; `inner_loss` on ``None``), ``log_ent_coef`` ignored or misnamed, and
    ``norm_adv`` dropped. (``prox >= 0`` is equivalent: it adds ``0.5 * 0 * ||θ - θ_0||²``.)"""
    from hrl_nested.distributions import Categorical
    from hrl_nested.nested_objective import PolicyBatch, ShapingBatch, make_inner_outer, shaped_advantages
    from hrl_nested.ppo_objective import ppo_objective

    g = torch.Generator().manual_seed(4)
    z = torch.zeros(2, 2, dtype=torch.bool)
    sb = ShapingBatch(*(torch.randn(2, 2, generator=g, dtype=F64) for _ in range(3)), z, z, None)
    x = torch.randn(4, 3, generator=g, dtype=F64)
    pb = PolicyBatch(
        x, torch.tensor([0, 1, 1, 0]), torch.full((4,), -0.5, dtype=F64), torch.ones(4, dtype=F64)
    )
    dist_fn = lambda th, o: (Categorical(o @ th["w"]), None)  # noqa: E731
    theta = {"w": torch.randn(3, 2, generator=g, dtype=F64)}
    phi = {"beta": torch.tensor(1.0, dtype=F64), "log_ent_coef": torch.tensor(-1.0, dtype=F64)}
    idx = torch.tensor([2, 0])
    io = make_inner_outer(
        dist_fn, sb, pb, [idx], lambda p, f: torch.zeros(2, 2, dtype=F64), theta_start=theta,
        gamma=0.9, gae_lambda=0.8, clip_coef=0.2, ent_coef=0.5, norm_adv=False,
    )  # fmt: skip
    adv = shaped_advantages(phi, sb, lambda p, f: 0.0, 0.9, 0.8)[0].reshape(-1)
    mb = {"obs": x[idx], "actions": pb.actions[idx], "logprobs": pb.logprobs[idx], "advantages": adv[idx]}
    ref, _ = ppo_objective(dist_fn, theta, mb, clip_coef=0.2, ent_coef=math.exp(-1.0), norm_adv=False)
    torch.testing.assert_close(io.inner_loss(theta, phi, 0), ref)


def test_mlp_init_gains_and_zero_last_only_and_segment_end_messages():
    """Kills, in `mlp_init`: the orthogonal gains (sqrt 2 hidden, 1 last: dropped, swapped, 2.0) and
    ``last or zero_last`` (only the last layer is zeroed); in `segment_ends`: the ``goal_t`` message and
    the ``truncated_t`` name. (``device=None`` in `mlp_init` is equivalent on CPU.)"""
    from hrl_nested.segments import segment_ends
    from hrl_nested.shaping import mlp_init

    torch.manual_seed(0)
    p = mlp_init(2, (4,), 3, "p", zero_last=False, dtype=F64)
    w0, w1 = p["p.0.weight"], p["p.1.weight"]
    torch.testing.assert_close(w0.T @ w0, 2.0 * torch.eye(2, dtype=F64))  # (4, 2): columns of norm sqrt 2
    torch.testing.assert_close(w1 @ w1.T, torch.eye(3, dtype=F64))  # (3, 4): rows of norm 1
    assert mlp_init(2, (4,), 1, "p")["p.0.weight"].abs().sum() > 0
    z = torch.zeros(3, 2, dtype=torch.bool)
    step = torch.zeros(3, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^goal_t: expected leading dims \(3, 2\), got \(2, 2, 1\)$"):
        segment_ends(step, torch.zeros(2, 2, 1), torch.zeros(2, 2, 1), z, z, horizon=2, tolerance=0.1)
    with pytest.raises(
        ValueError, match=r"^truncated_t: expected a bool \(3, 2\) tensor, got torch.bool \(3, 1\)$"
    ):
        g = torch.zeros(3, 2, 1)
        segment_ends(step, g, g, z, z[:, :1], horizon=2, tolerance=0.1)
