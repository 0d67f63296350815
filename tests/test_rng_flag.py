"""``experiments/train.py --rng auto|generator|counter``: the K-seed run's noise source, from the CLI.

``--rng generator`` (``auto`` on the CPU) gives seed s of a K-seed run the first-rollout actions of a
single-seed run of seed s; ``--rng counter`` reaches `ppo_multiseed.train_seeds` (another stream); a
wrong value is a clear error naming the flag (exit code 2, nothing written).
"""

import json

import pytest
import torch

from hrl_nested.algos import ppo, ppo_multiseed
from tests._scripts import load_script

SEED, K, N, T = 4, 2, 16, 8
TINY = ["--total-steps", str(N * T), "--num-envs", str(N), "--ppo.num-steps", str(T),
        "--ppo.num-minibatches", "2", "--eval-episodes", "1", "--device", "cpu",
        "--wandb-mode", "disabled", "--seed", str(SEED)]  # fmt: skip


@pytest.fixture(scope="module")
def train():
    return load_script("train.py", "rng_flag_train_script", reuse=True)


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _first_rollout_actions(monkeypatch, module, run) -> torch.Tensor:
    """The actions of the first rollout that ``module``'s `make_rollout` collects while ``run()`` trains."""
    make, got = module.make_rollout, []

    def recording(*args, **kwargs):
        collect = make(*args, **kwargs)

        def recorded(*a, **kw):
            out = collect(*a, **kw)
            got.append(out.batch.actions.clone())
            return out

        recorded.state_dict, recorded.load_state_dict = collect.state_dict, collect.load_state_dict
        return recorded

    with monkeypatch.context() as mp:
        mp.setattr(module, "make_rollout", recording)
        run()
    return got[0]


def test_rng_generator_gives_each_seed_its_single_seed_actions(train, tmp_path, monkeypatch, keep_threads):
    def multi(rng):
        return lambda: train.main(
            [*TINY, "--num-seeds", str(K), "--rng", rng, "--run-dir", str(tmp_path / rng)]
        )

    generator = _first_rollout_actions(monkeypatch, ppo_multiseed, multi("generator"))
    assert generator.shape == (T, K * N)
    for k in range(K):
        args = [*TINY, "--seed", str(SEED + k), "--rng", "generator", "--run-dir", str(tmp_path / f"s{k}")]
        single = _first_rollout_actions(monkeypatch, ppo, lambda args=args: train.main(args))
        assert torch.equal(generator[:, k * N : (k + 1) * N], single), k
    assert not torch.equal(generator[:, :N], generator[:, N:])  # the seeds really differ
    config = json.loads((tmp_path / "generator" / f"seed-{SEED}" / "config.json").read_text())
    assert config["rng"] == "generator"

    # auto is the generator on the CPU; counter is another stream, so the flag reaches the K-seed loop
    auto = _first_rollout_actions(monkeypatch, ppo_multiseed, multi("auto"))
    counter = _first_rollout_actions(monkeypatch, ppo_multiseed, multi("counter"))
    assert torch.equal(auto, generator)
    assert not torch.equal(counter, generator)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-seeds", "2", "--rng", "philox"], "--rng"),
        (["--num-seeds", "1", "--rng", "counter"], "--rng: expected auto or generator with --num-seeds 1"),
    ],
)
def test_bad_rng_is_a_clear_error(train, tmp_path, capsys, args, message):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        train.main([*TINY, *args, "--run-dir", str(run_dir)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    if "philox" in args:  # tyro's own message lists the choices
        assert "philox" in err and all(mode in err for mode in ppo_multiseed.RNG_MODES)
    assert not run_dir.exists()


def test_a_bad_rng_in_library_use_names_the_flag(train):
    """`validate_config` checks the value itself (a config built in code, or read from a config.json)."""
    cfg = train.TrainConfig(num_seeds=2, rng="philox")
    with pytest.raises(
        train.ConfigError, match=r"--rng: expected one of auto, generator, counter, got 'philox'"
    ):
        train.validate_config(cfg)
