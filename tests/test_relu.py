"""relu_forward / relu_backward: every backend (from the registry) against
the formula, on any shape, with the special values that tell implementations
apart; and the public op's checks."""
import numpy as np
import pytest

import fastcnn
from fastcnn import ops

from cases import BACKENDS

SHAPES = [(7,), (3, 5), (2, 3, 4, 5), (64, 32, 28, 28), (1, 1, 1, 1)]
SPECIAL = np.array([0.0, -0.0, 1e-30, -1e-30, np.inf, -np.inf, np.nan, 2.5, -2.5])


def _x(shape, dtype, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    flat = x.reshape(-1)
    k = min(flat.size, SPECIAL.size)
    flat[:k] = SPECIAL[:k]                     # every special value, where room
    return x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_backward_are_the_formula(backend, dtype, shape):
    x = _x(shape, dtype)
    dy = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    k = min(3, dy.size)
    dy.reshape(-1)[:k] = [np.inf, -np.inf, np.nan][:k]   # at x = 0, -0, tiny: NaN
    x0, dy0 = x.copy(), dy.copy()
    y, ctx = ops.relu_forward(x, backend=backend)
    dx = ops.relu_backward(dy, ctx)
    want_y = np.where((x > 0) | np.isnan(x), x, 0).astype(dtype)
    with np.errstate(invalid="ignore"):
        want_dx = (dy * (x > 0)).astype(dtype)           # inf * 0 = NaN: kept
    assert y.dtype == dx.dtype == dtype and y.shape == dx.shape == shape
    np.testing.assert_array_equal(y, want_y)              # exact, NaN where x is NaN
    np.testing.assert_array_equal(dx, want_dx)
    np.testing.assert_array_equal(np.signbit(y), np.signbit(want_y))   # -0.0 -> +0.0
    np.testing.assert_array_equal(x, x0)                  # inputs untouched
    np.testing.assert_array_equal(dy, dy0)
    assert ctx.backend == backend


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("value, want_y, want_dx", [(-2.0, 0.0, 0.0), (3.5, 3.5, -1.5),
                                                     (np.nan, np.nan, 0.0)])
def test_a_0d_array_stays_0d(backend, dtype, value, want_y, want_dx):
    x = np.array(value, dtype=dtype)
    y, ctx = ops.relu_forward(x, backend=backend)
    dx = ops.relu_backward(np.array(-1.5, dtype=dtype), ctx)
    for got, want in ((y, want_y), (dx, want_dx)):
        assert type(got) is np.ndarray and got.shape == () and got.dtype == dtype
        np.testing.assert_array_equal(got, np.array(want, dtype=dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input(backend):
    x = _x((6, 8), np.float32)[:, ::2].T                 # strided, transposed view
    y, ctx = ops.relu_forward(x, backend=backend)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    dx = ops.relu_backward(np.ones_like(y), ctx)
    np.testing.assert_array_equal(dx, (x > 0).astype(np.float32))


def test_bad_input_is_refused_before_any_kernel():
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        ops.relu_forward([1.0, -1.0])
    with pytest.raises(TypeError, match="x must have dtype float32 or float64"):
        ops.relu_forward(np.arange(3))
    with pytest.raises(ValueError, match="x must not be empty"):
        ops.relu_forward(np.zeros((0, 3)))
    y, ctx = ops.relu_forward(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"dy must have the shape of the forward output \(2, 3\)"):
        ops.relu_backward(np.ones((3, 2)), ctx)
    with pytest.raises(TypeError, match="dy has dtype float32 but the input x is float64"):
        ops.relu_backward(np.ones((2, 3), np.float32), ctx)
    _, pctx = ops.max_pool2d_forward(np.ones((1, 1, 2, 2)), 2)
    with pytest.raises(TypeError, match="ctx must be the context returned by relu_forward"):
        ops.relu_backward(np.ones((1, 1, 1, 1)), pctx)


def test_auto_picks_a_compiled_or_numpy_backend_never_loops():
    _, ctx = ops.relu_forward(np.ones((4, 5)), backend="auto")
    assert ctx.backend in fastcnn.available_backends() and ctx.backend != "loops"
