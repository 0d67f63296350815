"""The torch Philox path makes no tensor from host data: a CUDA graph capture refuses host-to-device copies
(seen on an NVIDIA H200: every env reset inside ``capture="cuda_graph"`` failed). Checked on CPU by watching
the ops the draw dispatches: ``torch.tensor([...])`` shows up as ``aten.lift_fresh``."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from envs import rng


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_philox_torch_path_makes_no_tensor_from_host_data():
    e = torch.tensor([[1, 2, 3], [4, 5, 6]], dtype=torch.int64)
    o = torch.tensor([[7, 8, 9], [10, 11, 12]], dtype=torch.int64)
    k = torch.tensor([[13], [14]], dtype=torch.int64)
    expected = rng._philox_pairs_torch(e, o, k, rng.PHILOX_ROUNDS)
    with _RecordOps() as rec:
        out = rng._philox_pairs_torch(e, o, k, rng.PHILOX_ROUNDS)
    assert not [op for op in rec.ops if "lift_fresh" in op or "_to_copy" in op], rec.ops
    assert torch.equal(out, expected)
    # and still Philox-4x32-10: the numpy path (an independent implementation) agrees
    e2, o2 = rng._philox_numpy(e.numpy().astype("uint64"), o.numpy().astype("uint64"),
                               k.numpy().astype("uint64"), rng.PHILOX_ROUNDS)
    assert torch.equal(out[..., 0], torch.from_numpy(e2[0].astype("int64")))
    assert torch.equal(out[..., 3], torch.from_numpy(o2[1].astype("int64")))
