"""``--capture-video`` with ``--num-seeds K > 1`` is refused with a clear error: the multi-seed PPO loop
records no video, and a flag must never be dropped silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from hrl_nested.algos import ConfigError
from tests._scripts import load_script

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train():
    return load_script("train.py", "train_video_seeds")


def test_capture_video_with_many_seeds_is_a_config_error(train):
    with pytest.raises(ConfigError, match=r"capture[-_]video") as e:
        train.parse_config(["--num-seeds", "2", "--capture-video"])
    assert "num_seeds" in str(e.value) or "num-seeds" in str(e.value)


def test_capture_video_with_one_seed_and_many_seeds_without_it_parse(train):
    assert train.parse_config(["--capture-video"]).capture_video is True
    assert train.parse_config(["--num-seeds", "2"]).num_seeds == 2
