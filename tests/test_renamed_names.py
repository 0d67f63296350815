"""Issue 9, item 6 (names): each renamed public name keeps its old one as a deprecated alias.

- ``ObsNormalizer.normalize(obs, stats=None)`` is the one observation entry point; ``apply(obs, stats)``
  and ``RunningMeanStd.normalize(x)`` warn and give the same values. Reference: the float64 formula
  ``clip((x - mean) / sqrt(var + 1e-8), -10, 10)`` from statistics computed with numpy.
- ``Hierarchy.obs_normalizer`` (was ``rms``) and ``ppo.evaluate(..., obs_normalizer)`` (was ``rms``).
- A checkpoint written by the code before the renames (commit a76450f, tests/data) still resumes with its
  observation statistics.
- `hrl_nested.deprecation`: the helpers themselves, and no warning (no graph break) under torch.compile.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from hrl_nested.algos import Task
from hrl_nested.algos.ppo import PPOConfig, evaluate, train
from hrl_nested.deprecation import deprecated_alias, renamed_attribute, renamed_kwargs
from hrl_nested.hierarchy import Hierarchy
from hrl_nested.networks import ActorCritic
from hrl_nested.obs_norm import ObsNormalizer, RunningMeanStd
from tests._ppo_runs import ppo_run

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread

OLD_RUN = Path(__file__).parent / "data" / "ppo_norm_obs_a76450f"


def _reference(x: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """The normalization of ``x`` by the population mean / variance of ``seen`` (float64, numpy)."""
    mean, var = seen.mean(0), seen.var(0)
    return np.clip((x - mean) / np.sqrt(var + 1e-8), -10.0, 10.0)


@pytest.fixture
def data():
    g = np.random.default_rng(0)
    seen = g.normal([1.0, -2.0, 5.0], [0.5, 3.0, 0.1], size=(4000, 3))
    x = g.normal([1.0, -2.0, 5.0], [1.0, 3.0, 0.3], size=(7, 3))
    return seen, x


def test_normalize_with_current_or_given_stats_matches_the_formula(data):
    seen, x = data
    norm = ObsNormalizer(gym.spaces.Box(-np.inf, np.inf, (3,)))
    norm.update(torch.as_tensor(seen))
    want = _reference(x, seen)
    xt = torch.as_tensor(x)
    got_current = norm.normalize(xt).numpy()
    got_given = norm.normalize(xt, norm.stats()).numpy()
    # float32 statistics (stats()) and the 1e-4 prior pseudo-count of the running estimate
    np.testing.assert_allclose(got_current, want, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(got_given, got_current)
    # given stats are used, not the current ones: shifted mean, shifted result
    shifted = {k: (v + 1.0 if k.endswith(".mean") else v) for k, v in norm.stats().items()}
    moved = norm.normalize(xt, shifted).numpy()
    assert np.all(moved < got_current)


def test_apply_is_a_deprecated_alias_of_normalize_with_stats(data):
    seen, x = data
    space = gym.spaces.Dict(
        {"observation": gym.spaces.Box(-np.inf, np.inf, (3,)), "skill": gym.spaces.Discrete(4)}
    )
    norm = ObsNormalizer(space)
    norm.update({"observation": torch.as_tensor(seen), "skill": torch.zeros(len(seen), dtype=torch.int64)})
    obs = {"observation": torch.as_tensor(x), "skill": torch.arange(7) % 4}
    stats = norm.stats()
    with pytest.warns(DeprecationWarning, match=r"ObsNormalizer\.apply.*ObsNormalizer\.normalize"):
        old = norm.apply(obs, stats)
    new = norm.normalize(obs, stats)
    torch.testing.assert_close(old["observation"], new["observation"], rtol=0, atol=0)
    assert torch.equal(old["skill"], obs["skill"])  # a Discrete leaf passes through


def test_running_mean_std_normalize_is_deprecated_and_unchanged(data):
    seen, x = data
    rms = RunningMeanStd((3,))
    rms.update(torch.as_tensor(seen))
    with pytest.warns(DeprecationWarning, match=r"RunningMeanStd\.normalize"):
        got = rms.normalize(torch.as_tensor(x, dtype=torch.float32))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), _reference(x, seen), rtol=1e-4, atol=1e-4)


def _hierarchy(norm_obs: bool) -> Hierarchy:
    return Hierarchy(
        gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2), None, num_subpolicies=1, hidden=(4,),
        relative_goals=False, horizon=3, tolerance=0.2, norm_obs=norm_obs, device=torch.device("cpu"),
    )  # fmt: skip


def test_hierarchy_rms_is_a_deprecated_alias_of_obs_normalizer():
    h = _hierarchy(norm_obs=True)
    assert isinstance(h.obs_normalizer, ObsNormalizer)
    with pytest.warns(DeprecationWarning, match=r"Hierarchy\.rms.*Hierarchy\.obs_normalizer"):
        assert h.rms is h.obs_normalizer
    other = ObsNormalizer(gym.spaces.Box(-1, 1, (3,)))
    with pytest.warns(DeprecationWarning):
        h.rms = other
    assert h.obs_normalizer is other
    assert _hierarchy(norm_obs=False).obs_normalizer is None
    with warnings.catch_warnings():  # the new name itself never warns
        warnings.simplefilter("error")
        h.stats(), h.obs_normalizer


def test_ppo_evaluate_takes_obs_normalizer_and_the_old_rms_keyword():
    import envs

    env = envs.make("hrl_nested/CartPole-v1", 4, autoreset_mode="same_step", validate=False)
    torch.manual_seed(0)
    agent = ActorCritic(env.single_observation_space, env.single_action_space, hidden=(8,))
    norm = ObsNormalizer(env.single_observation_space)
    norm.update(torch.randn(100, 4) * 3)
    new = evaluate(agent, env, obs_normalizer=norm, seed=3)
    with pytest.warns(DeprecationWarning, match=r"evaluate\(rms=\.\.\.\).*obs_normalizer="):
        old = evaluate(agent, env, rms=norm, seed=3)
    assert old == new == evaluate(agent, env, norm, seed=3)
    with pytest.raises(TypeError, match="obs_normalizer= alone"):
        evaluate(agent, env, obs_normalizer=norm, rms=norm, seed=3)


def test_a_checkpoint_written_before_the_renames_resumes_with_its_statistics(tmp_path):
    """tests/data/ppo_norm_obs_a76450f: two iterations (8 envs x 8 steps) of PPO with norm_obs, written by
    commit a76450f. Resumed for a third, the statistics count 128 + 64 samples (a fresh normalizer
    would count 64): the saved statistics were restored, not rebuilt."""
    run_dir = tmp_path / "run"
    shutil.copytree(OLD_RUN, run_dir)
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert saved["obs_norm"]["obs"]["count"].item() == pytest.approx(128.0001)
    task = Task(total_steps=3 * 64, num_envs=8, seed=0, device="cpu", eval_episodes=2)
    cfg = PPOConfig(num_steps=8, hidden=(8,), norm_obs=True, eval_every=100)
    with ppo_run(run_dir, task, resume=True, checkpoint_every_s=0.0) as run:
        summary = train(task, cfg, run)
    assert summary["iterations"] == 3 and summary["env_steps"] == 192
    after = torch.load(run_dir / "checkpoint.pt", weights_only=True)["obs_norm"]["obs"]
    assert after["count"].item() == pytest.approx(192.0001)
    assert not torch.equal(after["mean"], saved["obs_norm"]["obs"]["mean"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in rows] == [64, 128, 192]


# ------------------------------------------------------------------ the helpers
def test_deprecated_alias_and_renamed_kwargs():
    def scale(x, *, factor=2):
        return factor * x

    old = deprecated_alias(scale, "old_scale")
    with pytest.warns(DeprecationWarning, match="old_scale is deprecated; use scale"):
        assert old(3, factor=5) == 15
    new_kw = renamed_kwargs(k="factor")(scale)
    with pytest.warns(DeprecationWarning, match=r"\(k=\.\.\.\)"):
        assert new_kw(3, k=4) == 12
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert new_kw(3, factor=4) == 12


def test_renamed_attribute_reads_writes_and_deletes():
    class Holder:
        old = renamed_attribute("old", "new")

    h = Holder()
    h.new = 1
    with pytest.warns(DeprecationWarning, match=r"Holder\.old is deprecated; use Holder\.new"):
        assert h.old == 1
    with pytest.warns(DeprecationWarning):
        del h.old
    assert not hasattr(h, "new")


def test_no_warning_inside_a_compiled_function():
    """A warning would break a ``fullgraph=True`` compile (a captured policy): skipped while compiling."""
    norm = ObsNormalizer(gym.spaces.Box(-1, 1, (3,)))
    norm.update(torch.randn(50, 3))
    stats = norm.stats()
    compiled = torch.compile(lambda x, s: norm.apply(x, s), fullgraph=True, backend="eager")
    x = torch.randn(4, 3)
    torch.testing.assert_close(compiled(x, stats), norm.normalize(x, stats))
