"""``experiments/bench_nested.py``'s memory measure: `TensorPeakBytes` (torch.profiler's memory events) counts
a known tensor's bytes exactly; through the hypergradient engine, unrolled's peak grows with n_inner while
truncated's (T = 1), cg's and neumann's do not; ``--n-inner`` writes the memory table."""

from __future__ import annotations

import json

import pytest
import torch

from hrl_nested.hypergrad import hypergrad
from tests._scripts import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_nested.py", "bench_nested_memory_test")


def test_the_counter_measures_known_tensors_exactly(bench):
    with bench.TensorPeakBytes() as m:
        a = torch.empty(1000, dtype=torch.float32)  # 4000 bytes
        b = torch.empty(3, 5, dtype=torch.float64)  # 120 bytes, alive together with a
        del a
        c = torch.empty(10, dtype=torch.int64)  # 80 bytes, after a is freed: no new peak
        del b, c
    assert m.peak_bytes == 4000 + 120
    assert m.end_bytes == 0  # everything allocated inside was freed inside


def test_the_counter_sees_what_torch_func_allocates(bench):
    x = torch.randn(256, dtype=torch.float64)
    with bench.TensorPeakBytes() as m:
        g = torch.func.grad(lambda w: (w.sin() ** 2).sum())(x)
    assert m.end_bytes >= g.numel() * 8  # the gradient itself is still alive
    assert m.peak_bytes >= 2 * 256 * 8  # at least sin(x) and the result were alive at once


def _problem(n_inner: int):
    """A small nonlinear inner problem on a fixed data set of 4 minibatches, cycled by the inner steps (as
    the nested loop does); its stationary loss is the full batch, whatever n_inner."""
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(64, 16, generator=g, dtype=torch.float64) for _ in range(4)]
    y = torch.randn(64, 8, generator=g, dtype=torch.float64)
    w0 = {"w": 0.1 * torch.randn(16, 8, generator=g, dtype=torch.float64)}
    hp = {"c": torch.zeros(8, dtype=torch.float64)}

    def inner(w, h, t):
        return ((xs[t % len(xs)] @ w["w"]).tanh() - y + h["c"]).square().mean()

    def stationary(w, h):
        return sum(inner(w, h, t) for t in range(len(xs)))

    def outer(w, h):
        return (xs[0] @ w["w"]).sin().mean()

    return inner, outer, stationary, w0, hp


def _peak(bench, method: str, n_inner: int, **opts) -> int:
    inner, outer, stationary, w0, hp = _problem(n_inner)
    if method in ("cg", "neumann"):
        opts["stationary_loss"] = stationary
    with bench.TensorPeakBytes() as m:
        hypergrad(inner, outer, w0, hp, method=method, inner_steps=n_inner, inner_lr=0.1, **opts)
    return m.peak_bytes


def test_unrolled_memory_grows_with_n_inner_and_truncated_cg_neumann_do_not(bench):
    n_inners = (2, 4, 8)
    unrolled = [_peak(bench, "unrolled", n) for n in n_inners]
    # each step keeps its activations on the tape: the growth is about linear in n_inner
    assert unrolled[0] < unrolled[1] < unrolled[2]
    assert unrolled[2] - unrolled[1] > 1.5 * (unrolled[1] - unrolled[0])
    for method, opts in (("truncated", {"truncate": 1}), ("cg", {"iters": 3}), ("neumann", {"terms": 3})):
        peaks = [_peak(bench, method, n, **opts) for n in n_inners]
        assert max(peaks) - min(peaks) <= 0.01 * min(peaks), (method, peaks)
        assert peaks[-1] < unrolled[-1]


def test_n_inner_option_writes_the_memory_table(bench, tmp_path, capsys):
    out = tmp_path / "mem.json"
    argv = ["--iterations", "1", "--num-envs", "4", "--num-steps", "8", "--methods", "truncated",
            "--n-inner", "1", "2", "--memory-iterations", "1", "--out", str(out)]  # fmt: skip
    bench.main(argv)
    report = json.loads(out.read_text())
    table = report["peak_memory_mib_by_n_inner"]
    assert set(table) == {"truncated"} and set(table["truncated"]) == {"1", "2"}
    assert all(v > 0 for v in table["truncated"].values())
    assert report["results"]["nested-hrl/truncated/n_inner=2"]["n_inner"] == 2
    assert "peak memory (MiB) by n_inner" in capsys.readouterr().out


def test_a_bad_n_inner_is_a_named_error(bench, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--n-inner", "0", "2"])
    assert e.value.code == 2 and "--n-inner" in capsys.readouterr().err
