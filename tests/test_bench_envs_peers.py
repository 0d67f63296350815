"""``experiments/bench_envs.py --peer-tasks``: a name without a gymnax peer (`GYMNAX_PEERS`) is a clear error
naming the flag and the known names, raised before anything is measured, not Gymnasium's "Environment
doesn't exist" for an id nobody asked Gymnasium about."""

import pytest

from tests._scripts import load_script


def test_unknown_peer_task_is_a_clear_error():
    bench = load_script("bench_envs.py", "bench_envs_peers_under_test")
    cfg = bench.Config(tasks=(), peer_tasks=("FourRooms-misc", "Breakout-MinAtar"), num_envs_list=(1,))
    with pytest.raises(SystemExit, match=r"^--peer-tasks: expected names from \['FourRooms-misc'\], "
                                         r"got \['Breakout-MinAtar'\]$"):  # fmt: skip
        bench.main(cfg)
