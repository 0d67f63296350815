"""The θ/φ step code moved from nested_hrl to nested_steps; its old names still import from nested_hrl."""

from hrl_nested.algos import nested_hrl, nested_steps


def test_old_names_are_the_moved_objects():
    pairs = {
        "OuterStep": "OuterStep",
        "NextOuterStep": "NextOuterStep",
        "_inner_outer": "inner_outer",
        "_outer_step": "outer_step",
        "_next_outer_step": "next_outer_step",
        "_plain_inner": "plain_inner",
        "_live_check": "live_check",
        "_check_neumann_alpha": "check_neumann_alpha",
    }
    for old, new in pairs.items():
        assert getattr(nested_hrl, old) is getattr(nested_steps, new), old
