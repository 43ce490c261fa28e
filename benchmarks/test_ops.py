"""Per-op benchmarks: one group per (op, direction, case, dtype), one row per implementation.

Ops are the registry's kernels and cases the layers that call them
(``benchmarks.common``): a kernel that no case exercises fails here instead
of going unbenchmarked. Group otherwise with e.g. ``--benchmark-group-by=param:impl``.
"""
import numpy as np
import pytest

from benchmarks import common, runners

ROWS = [(op, c) for op in common.OPS for c in common.cases(op) or [None]]


@pytest.mark.parametrize("dtype", common.DTYPES)
@pytest.mark.parametrize("impl", runners.implementations())
@pytest.mark.parametrize("direction", ("forward", "backward"))
@pytest.mark.parametrize("op,case", ROWS, ids=[f"{op}-{c and c.name}" for op, c in ROWS])
def test_op(run, op, case, direction, impl, dtype):
    if case is None:
        pytest.fail(f"kernel {op} has no benchmark case: give it a layer in benchmarks/common.py")
    fn, work = runners.make_op(impl, case, dtype, direction == "backward")
    run(fn, f"{op}_{direction} {case.name} {dtype}", work, impl=impl, case=case.name, op=op,
        direction=direction, dtype=dtype, layer=f"{case.layer!r} on {case.x_shape}")


@pytest.mark.parametrize("dtype", common.DTYPES)
@pytest.mark.parametrize("n", common.MATMUL_SIZES)
@pytest.mark.parametrize("impl", ["numpy"])
def test_matmul_peak(run, impl, n, dtype):
    """The reference line: what this machine's BLAS reaches on an n^3 matmul with the suite's
    threads; the largest is the peak RESULTS.md sets the networks' GFLOP/s against."""
    a, b = (common.array(("matmul", i), (n, n), dtype) for i in range(2))
    out = np.empty((n, n), dtype)
    run(lambda: np.matmul(a, b, out=out), f"reference matmul {n} {dtype}",
        {"gflop": 2e-9 * n ** 3}, impl=impl, dtype=dtype, n=n)


@pytest.mark.parametrize("mbytes", common.COPY_MBYTES)
@pytest.mark.parametrize("impl", ["numpy"])
def test_copy_bandwidth(run, impl, mbytes):
    """The memory reference line: GB/s of one thread's np.copyto of mbytes MB of float32
    (read + write counted once each), cache-sized and memory-sized (``common.COPY_MBYTES``)."""
    n = mbytes << 18
    a = common.array(("copy", mbytes), (n,), "float32")
    out = np.empty_like(a)
    run(lambda: np.copyto(out, a), f"reference copy {mbytes} MB float32",
        {"gbyte": 8e-9 * n}, impl=impl, dtype="float32", mbytes=mbytes)
