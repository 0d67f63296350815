"""The tree helpers have one home each (`envs.pytree`, `hrl_nested.pytree`); the old names still import."""

import dataclasses
import subprocess
import sys
from typing import NamedTuple

import pytest
import torch
from torch.utils import _pytree as torch_pytree


class Pair(NamedTuple):
    a: torch.Tensor
    b: object


@dataclasses.dataclass
class Box:
    x: torch.Tensor
    y: object = None


def _tree():
    return {"obs": torch.arange(6.0).view(3, 2), "goal": Pair(torch.ones(3), [torch.zeros(3, 1), None])}


def test_old_names_are_the_one_implementation():
    import envs.core
    import hrl_nested.batch
    import hrl_nested.hypergrad.unrolled
    import hrl_nested.networks
    import hrl_nested.obs_norm
    import hrl_nested.rollout
    from envs import pytree as env_tree
    from hrl_nested import pytree

    assert hrl_nested.batch.tree_map is pytree.tree_map
    assert hrl_nested.rollout.where_rows is pytree.where_rows is env_tree.where_rows
    assert hrl_nested.hypergrad.unrolled.detach_tree is pytree.detach_tree
    for module in (envs.core, hrl_nested.batch, hrl_nested.rollout, hrl_nested.networks, hrl_nested.obs_norm):
        assert module.Obs is env_tree.Obs


def test_tree_map_and_leaves_agree_with_torch_pytree_on_tensor_trees():
    from hrl_nested.pytree import tree_leaves, tree_map

    tree = _tree()
    ref = [t for t in torch_pytree.tree_leaves(tree) if t is not None]  # torch's: None is a leaf
    got = tree_leaves(tree)
    assert len(got) == len(ref) == 3 and all(a is b for a, b in zip(got, ref))
    doubled = tree_map(lambda t: t * 2, tree)
    goal = doubled["goal"]
    assert isinstance(goal, Pair) and isinstance(goal.b, list) and goal.b[1] is None
    want = torch_pytree.tree_map_only(torch.Tensor, lambda t: t * 2, tree)
    want = [t for t in torch_pytree.tree_leaves(want) if t is not None]
    assert all(torch.equal(a, b) for a, b in zip(tree_leaves(doubled), want, strict=True))


def test_tree_map_recurses_into_dataclasses_and_rejects_other_leaves():
    from hrl_nested.pytree import tree_leaves, tree_map

    box = tree_map(lambda t: t + 1, Box(torch.zeros(2), (torch.ones(1),)))
    assert isinstance(box, Box) and box.x.tolist() == [1.0, 1.0] and box.y[0].tolist() == [2.0]
    assert [t.tolist() for t in tree_leaves(box)] == [[1.0, 1.0], [2.0]]
    with pytest.raises(TypeError, match="expected a pytree of tensors.*got int"):
        tree_map(lambda t: t, {"step": 3})


def test_where_rows_matches_a_row_by_row_reference():
    from envs.pytree import where_rows

    mask = torch.tensor([True, False, True])
    a = {"x": torch.randn(3, 2, 2), "y": {"z": torch.randn(3)}}
    b = {"x": torch.randn(3, 2, 2), "y": {"z": torch.randn(3)}}
    out = where_rows(mask, a, b)
    for i, m in enumerate(mask.tolist()):
        src = a if m else b
        assert torch.equal(out["x"][i], src["x"][i]) and torch.equal(out["y"]["z"][i], src["y"]["z"][i])


def test_contiguous_makes_every_leaf_row_major():
    from envs.pytree import contiguous

    t = torch.zeros(2, 3).t()
    out = contiguous({"o": t, "g": torch.zeros(3, 2)})
    assert not t.is_contiguous() and all(v.is_contiguous() for v in out.values())


def test_detach_tree_keeps_non_tensor_leaves():
    from hrl_nested.pytree import detach_tree

    w = torch.ones(2, requires_grad=True)
    out = detach_tree({"w": w * 2, "count": 3, "m": (None, w)})
    assert not out["w"].requires_grad and not out["m"][1].requires_grad
    assert out["count"] == 3 and out["m"][0] is None


def test_envs_pytree_does_not_import_the_library():
    code = "import sys, envs.pytree; print(any(m.split('.')[0] == 'hrl_nested' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
