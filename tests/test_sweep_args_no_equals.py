"""``wandb agent``'s ``${args_no_equals}`` form of a list value, ``--ppo.hidden "[32, 16]"`` (two tokens),
parses like ``--ppo.hidden=[32, 16]``; ordinary ``--ppo.hidden 32 16`` is left as it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from hrl_nested.tracking import normalize_agent_args
from tests._scripts import load_script

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train():
    return load_script("train.py", "train_no_equals")


@pytest.mark.parametrize("value", ["[32, 16]", "(32, 16)", "[32,16]"])
def test_a_bracketed_list_after_the_flag_is_split(train, value):
    assert normalize_agent_args(["--ppo.hidden", value], train.TrainConfig) == ["--ppo.hidden", "32", "16"]
    assert train.parse_config(["--ppo.hidden", value]).ppo.hidden == (32, 16)


def test_plain_items_and_other_flags_pass_unchanged(train):
    argv = ["--ppo.hidden", "32", "16", "--seed", "3", "--env", "hrl_nested/CartPole-v1"]
    assert normalize_agent_args(argv, train.TrainConfig) == argv
