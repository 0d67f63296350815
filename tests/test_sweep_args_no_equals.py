"""``wandb agent``'s ``${args_no_equals}`` form of a list value, ``--ppo.hidden "[32, 16]"`` (two tokens),
parses like ``--ppo.hidden=[32, 16]``; ordinary ``--ppo.hidden 32 16`` is left as it is."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from hrl_nested.tracking import normalize_agent_args

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train():
    spec = importlib.util.spec_from_file_location("train_no_equals", REPO / "experiments" / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("value", ["[32, 16]", "(32, 16)", "[32,16]"])
def test_a_bracketed_list_after_the_flag_is_split(train, value):
    assert normalize_agent_args(["--ppo.hidden", value], train.TrainConfig) == ["--ppo.hidden", "32", "16"]
    assert train.parse_config(["--ppo.hidden", value]).ppo.hidden == (32, 16)


def test_plain_items_and_other_flags_pass_unchanged(train):
    argv = ["--ppo.hidden", "32", "16", "--seed", "3", "--env", "hrl_nested/CartPole-v1"]
    assert normalize_agent_args(argv, train.TrainConfig) == argv
