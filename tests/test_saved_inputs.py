"""Backward uses what forward saw: a caller who changes x, w (or relu's
output y) in place between the forward and the backward gets the gradients
of the forward that ran, on every backend and every conv path alike - the
same numbers as a run where nothing was touched."""
import numpy as np
import pytest

from fastcnn import ops
from fastcnn.backend import get_module
from fastcnn.backends import _gemm_conv

from cases import BACKENDS

DRIVEN = [b for b in BACKENDS if hasattr(get_module(b), "_ConvKernels")]
# (backend, forced path or None): every path of the shared driver, once each
CONV_RUNS = [(b, None) for b in BACKENDS] + [
    (b, p) for b in DRIVEN for p in _gemm_conv.PATHS
    if p in ("per_image", "batch")
    or p in ("winograd", "direct") and getattr(get_module(b)._ConvKernels, p, None) is not None]


def _rng(seed=0):
    return np.random.default_rng(seed)


def _conv(backend, path, x, w, b, dy, scribble):
    forced = _gemm_conv.forced_path(path) if path else _nothing()
    with forced:
        y, ctx = ops.conv2d_forward(x, w, b, 1, 1, backend=backend)
    y = y.copy()
    if scribble:
        x[...] = _rng(7).standard_normal(x.shape)
        w[...] = _rng(8).standard_normal(w.shape)
        b[...] = 5.0
    return (y, *ops.conv2d_backward(dy, ctx))


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("backend, path", CONV_RUNS, ids=[f"{b}-{p}" for b, p in CONV_RUNS])
def test_conv_backward_ignores_later_changes_to_x_and_w(backend, path):
    rng = _rng()
    x = rng.standard_normal((9, 4, 7, 6))           # 9 images: Winograd's MIN_BATCH
    w = rng.standard_normal((5, 4, 3, 3))
    b = rng.standard_normal(5)
    dy = rng.standard_normal((9, 5, 7, 6))
    clean = _conv(backend, path, x.copy(), w.copy(), b.copy(), dy, scribble=False)
    changed = _conv(backend, path, x.copy(), w.copy(), b.copy(), dy, scribble=True)
    for name, c, g in zip(("y", "dx", "dw", "db"), clean, changed):
        np.testing.assert_array_equal(g, c, err_msg=name)
    assert np.abs(clean[1]).max() > 0 and np.abs(clean[2]).max() > 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["max", "avg"])
def test_pool_backward_ignores_later_changes_to_x(backend, op):
    rng = _rng(1)
    x = rng.standard_normal((2, 3, 8, 8))
    dy = rng.standard_normal((2, 3, 4, 4))
    fwd = getattr(ops, f"{op}_pool2d_forward")
    bwd = getattr(ops, f"{op}_pool2d_backward")
    _, ctx = fwd(x.copy(), 3, 2, 1, backend=backend)
    want = bwd(dy, ctx)
    x2 = x.copy()
    _, ctx = fwd(x2, 3, 2, 1, backend=backend)
    x2[...] = -x2                                   # every argmax moves
    np.testing.assert_array_equal(bwd(dy, ctx), want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_backward_ignores_later_changes_to_x_and_y(backend, dtype):
    x = _rng(2).standard_normal((4, 3, 5, 5)).astype(dtype)
    dy = _rng(3).standard_normal(x.shape).astype(dtype)
    y, ctx = ops.relu_forward(x, backend=backend)
    want = np.where(x > 0, dy, 0).astype(dtype)
    y *= -1                                         # e.g. an in-place op on the activation
    y[0] = 7.0
    x[...] = -x
    np.testing.assert_array_equal(ops.relu_backward(dy, ctx), want)
