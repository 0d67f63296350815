"""``--capture-video`` with ``--num-seeds K > 1`` is refused with a clear error: the multi-seed PPO loop
records no video, and a flag must never be dropped silently."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from hrl_nested.algos import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train():
    spec = importlib.util.spec_from_file_location("train_video_seeds", REPO / "experiments" / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


def test_capture_video_with_many_seeds_is_a_config_error(train):
    with pytest.raises(ConfigError, match=r"capture[-_]video") as e:
        train.parse_config(["--num-seeds", "2", "--capture-video"])
    assert "num_seeds" in str(e.value) or "num-seeds" in str(e.value)


def test_capture_video_with_one_seed_and_many_seeds_without_it_parse(train):
    assert train.parse_config(["--capture-video"]).capture_video is True
    assert train.parse_config(["--num-seeds", "2"]).num_seeds == 2
