"""Per-op benchmarks: one group per (op, shape, dtype), one row per implementation.

Rows come from ``runners.implementations()`` (every available fastcnn backend,
then PyTorch and the tutorial code), so a new backend appears here without
edits. Run ``pytest benchmarks/test_ops.py --benchmark-only``; group by
something else with e.g. ``--benchmark-group-by=param:impl``.
"""
import numpy as np
import pytest

from benchmarks import common, machine, runners

IMPLS = runners.implementations()
OP_SHAPES = [(op, shape) for op in runners.OPS for shape in runners.shapes_for(op)]


@pytest.mark.parametrize("dtype", common.DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op,shape", OP_SHAPES)
def test_op(run, make, op, shape, impl, dtype):
    fn = make(runners.make_op, impl, op, shape, dtype)
    run(fn, f"{op} {shape} {dtype}", runners.op_work(op, shape, dtype),
        impl=impl, shape=common.shape(shape).label())


@pytest.mark.parametrize("dtype", common.DTYPES)
def test_matmul_peak(run, dtype):
    """The reference line: what this machine's BLAS reaches on a 1024^3 matmul."""
    n = 1024
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(dtype) for _ in range(2))
    out = np.empty((n, n), dtype)
    run(lambda: np.matmul(a, b, out=out), f"reference matmul {n} {dtype}",
        {"gflop": 2 * n ** 3 / 1e9, "images": 0}, impl="numpy", blas=machine.blas_name())
