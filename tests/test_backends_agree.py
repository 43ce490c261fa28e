"""Every registered backend against the `loops` reference: forward and all
gradients, float32 and float64, over the shape cases in cases.py (conv's
dilation and groups included)."""
import numpy as np
import pytest

from fastcnn import ops
from fastcnn.testing import assert_close

from cases import (CONV_CASES, CONV_DG_CASES, POOL_CASES, TOL, case_id, conv_dg_inputs,
                   conv_inputs, pool_inputs)

DTYPES = [np.float32, np.float64]


def _reference_conv(x, w, b, dy, **kw):
    """loops in float64: the float32 results are compared with exact-ish numbers."""
    f64 = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
    y, ctx = ops.conv2d_forward(f64(x), f64(w), f64(b), **kw, backend="loops")
    return (y, *ops.conv2d_backward(f64(dy), ctx))


def _check_conv(backend, dtype, x, w, b, **kw):
    """One conv on backend against loops: y, dx, dw, db, dtypes, inputs untouched."""
    originals = [a.copy() for a in (x, w, b) if a is not None]
    y, ctx = ops.conv2d_forward(x, w, b, **kw, backend=backend)
    assert ctx.backend == backend and y.dtype == dtype
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    dy_copy = dy.copy()
    dx, dw, db = ops.conv2d_backward(dy, ctx)
    ref = _reference_conv(x, w, b, dy, **kw)
    for name, got, want in zip(("y", "dx", "dw", "db"), (y, dx, dw, db), ref):
        assert got.dtype == dtype, f"{name} dtype {got.dtype}"
        assert_close(got, want, TOL[dtype], name)
    for a, orig in zip([a for a in (x, w, b) if a is not None], originals):
        np.testing.assert_array_equal(a, orig)      # inputs are never modified
    np.testing.assert_array_equal(dy, dy_copy)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CONV_CASES, ids=case_id)
def test_conv2d_matches_loops(backend, case, dtype):
    x, w, b, stride, padding = conv_inputs(case, dtype)
    _check_conv(backend, dtype, x, w, b, stride=stride, padding=padding)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CONV_DG_CASES, ids=case_id)
def test_conv2d_dilation_groups_match_loops(backend, case, dtype):
    x, w, b, kw = conv_dg_inputs(case, dtype)
    _check_conv(backend, dtype, x, w, b, **kw)


@pytest.mark.parametrize("op", ["max", "avg"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", POOL_CASES, ids=case_id)
def test_pool_matches_loops(backend, case, dtype, op):
    fwd = getattr(ops, f"{op}_pool2d_forward")
    bwd = getattr(ops, f"{op}_pool2d_backward")
    x, k, s, p = pool_inputs(case, dtype)
    x_copy = x.copy()
    y, ctx = fwd(x, k, s, p, backend=backend)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    dx = bwd(dy, ctx)
    y_ref, ctx_ref = fwd(x.astype(np.float64), k, s, p, backend="loops")
    dx_ref = bwd(dy.astype(np.float64), ctx_ref)
    assert y.dtype == dtype and dx.dtype == dtype
    assert_close(y, y_ref, TOL[dtype], "y")
    assert_close(dx, dx_ref, TOL[dtype], "dx")
    np.testing.assert_array_equal(x, x_copy)


@pytest.mark.parametrize("layout", ["fortran", "strided", "negative-stride"])
def test_noncontiguous_inputs(backend, layout):
    rng = np.random.default_rng(3)
    big = rng.standard_normal((2, 6, 14, 18))
    w = rng.standard_normal((4, 3, 3, 3))
    if layout == "fortran":
        x, w = np.asfortranarray(big[:, :3, :7, :9]), np.asfortranarray(w)
    elif layout == "strided":
        x = big[:, ::2, ::2, ::2]
    else:
        x = big[:, :3, ::-2, ::-2]
    xc = np.ascontiguousarray(x)
    y, ctx = ops.conv2d_forward(x, w, None, 1, 1, backend=backend)
    y_ref, ctx_ref = ops.conv2d_forward(xc, np.ascontiguousarray(w), None, 1, 1, backend="loops")
    dy = rng.standard_normal(y.shape)[:, :, ::-1]                 # a non-contiguous gradient too
    for got, want in zip(ops.conv2d_backward(dy, ctx),
                         ops.conv2d_backward(np.ascontiguousarray(dy), ctx_ref)):
        assert_close(got, want, 1e-9)
    assert_close(y, y_ref, 1e-9)
    for op in ("max", "avg"):
        yp, cp = getattr(ops, f"{op}_pool2d_forward")(x, 2, backend=backend)
        yr, cr = getattr(ops, f"{op}_pool2d_forward")(xc, 2, backend="loops")
        assert_close(yp, yr, 1e-9)
        dyp = np.asfortranarray(rng.standard_normal(yp.shape))
        assert_close(getattr(ops, f"{op}_pool2d_backward")(dyp, cp),
                     getattr(ops, f"{op}_pool2d_backward")(np.ascontiguousarray(dyp), cr), 1e-9)


def test_backward_twice_gives_same_result(backend):
    x, w, b, stride, padding = conv_inputs(CONV_CASES[0], np.float64)
    y, ctx = ops.conv2d_forward(x, w, b, stride, padding, backend=backend)
    dy = np.ones_like(y)
    first = ops.conv2d_backward(dy, ctx)
    second = ops.conv2d_backward(dy, ctx)
    for a, c in zip(first, second):
        np.testing.assert_array_equal(a, c)


def test_results_are_fresh_while_held_and_reused_once_dropped(backend):
    # The compiled backends serve results from a pool: no live result may
    # share memory with another, held or only viewed, however many are held.
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 8))
    held = []
    for i in range(12):                          # more than the pool keeps per shape
        y, ctx = ops.relu_forward(x + i, backend=backend)
        p, pctx = ops.max_pool2d_forward(y, 2, backend=backend)
        dx = ops.max_pool2d_backward(np.ones_like(p), pctx)
        held += [y[1:], p, dx]                   # a view keeps its result alive too
        del y
    for i, a in enumerate(held):
        for b in held[i + 1:]:
            assert not np.shares_memory(a, b)
    for i in range(12):
        np.testing.assert_array_equal(held[3 * i], np.maximum(x + i, 0)[1:])
    if backend not in ("cython", "numba"):
        return
    addresses = {a.__array_interface__["data"][0] for a in held[1::3]}
    del held, a, b, p, dx, ctx, pctx
    again = ops.max_pool2d_forward(x, 2, backend=backend)[0]
    assert again.__array_interface__["data"][0] in addresses     # dropped: served again
