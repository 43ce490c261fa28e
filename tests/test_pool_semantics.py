"""Max-pool edge semantics on every backend: ties, -inf padding, NaN; and
the compiled backends' refusal of planes their argmax cannot index."""
import numpy as np
import pytest

from fastcnn import ops
from fastcnn.backends import _pooling

from cases import BACKENDS


@pytest.fixture(params=BACKENDS)
def any_backend(request):
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_first_maximum_wins_ties(any_backend, dtype):
    x = np.ones((2, 3, 4, 4), dtype=dtype)                   # every window is one big tie
    y, ctx = ops.max_pool2d_forward(x, 2, backend=any_backend)
    dx = ops.max_pool2d_backward(np.ones_like(y), ctx)
    expected = np.zeros((4, 4)); expected[::2, ::2] = 1       # top-left of each window
    np.testing.assert_array_equal(dx, np.broadcast_to(expected, x.shape))


def test_ties_with_overlapping_windows(any_backend):
    x = np.array([[[[3, 3, 3], [1, 3, 0], [3, 2, 3]]]], dtype=np.float64)
    y, ctx = ops.max_pool2d_forward(x, 2, stride=1, backend=any_backend)
    np.testing.assert_array_equal(y[0, 0], [[3, 3], [3, 3]])
    dx = ops.max_pool2d_backward(np.array([[[[1.0, 10.0], [100.0, 1000.0]]]]), ctx)
    # windows: (0,0)->x[0,0]; (0,1)->x[0,1]; (1,0)->x[1,1]; (1,1)->x[1,1]
    np.testing.assert_array_equal(dx[0, 0], [[1, 10, 0], [0, 1100, 0], [0, 0, 0]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_negative_inputs_with_padding_pad_is_minus_inf(any_backend, dtype):
    x = -1.0 - np.arange(9, dtype=dtype).reshape(1, 1, 3, 3)  # all negative
    y, ctx = ops.max_pool2d_forward(x, 3, stride=2, padding=1, backend=any_backend)
    # zero padding would give 0 everywhere; -inf padding gives the real maxima
    np.testing.assert_array_equal(y[0, 0], [[-1, -2], [-4, -5]])
    dx = ops.max_pool2d_backward(np.ones_like(y), ctx)
    np.testing.assert_array_equal(dx[0, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


def test_avg_pool_padding_counts_zeros(any_backend):
    x = np.full((1, 1, 2, 2), 4.0)
    y, ctx = ops.avg_pool2d_forward(x, 2, stride=2, padding=1, backend=any_backend)
    np.testing.assert_array_equal(y[0, 0], [[1, 1], [1, 1]])  # one real 4 per window / 4
    dx = ops.avg_pool2d_backward(np.ones_like(y), ctx)
    np.testing.assert_array_equal(dx[0, 0], [[0.25, 0.25], [0.25, 0.25]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_propagates_and_takes_the_gradient(any_backend, dtype):
    x = np.arange(16, dtype=dtype).reshape(1, 1, 4, 4)
    x[0, 0, 1, 0] = np.nan                                   # in window (0, 0), not first
    x[0, 0, 3, 3] = np.nan                                   # in window (1, 1), last
    y, ctx = ops.max_pool2d_forward(x, 2, backend=any_backend)
    assert np.isnan(y[0, 0, 0, 0]) and np.isnan(y[0, 0, 1, 1])
    np.testing.assert_array_equal(y[0, 0, 0, 1], 7)
    np.testing.assert_array_equal(y[0, 0, 1, 0], 13)
    dx = ops.max_pool2d_backward(np.ones_like(y), ctx)
    assert dx[0, 0, 1, 0] == 1 and dx[0, 0, 3, 3] == 1
    assert dx.sum() == 4


def test_nan_first_in_window_gets_gradient(any_backend):
    x = np.array([[[[np.nan, 5.0], [np.nan, 9.0]]]])
    y, ctx = ops.max_pool2d_forward(x, 2, backend=any_backend)
    assert np.isnan(y[0, 0, 0, 0])
    dx = ops.max_pool2d_backward(np.ones_like(y), ctx)
    np.testing.assert_array_equal(dx[0, 0], [[1, 0], [0, 0]])


def test_avg_pool_nan_propagates(any_backend):
    x = np.zeros((1, 1, 4, 4)); x[0, 0, 0, 0] = np.nan
    y, _ = ops.avg_pool2d_forward(x, 2, backend=any_backend)
    assert np.isnan(y[0, 0, 0, 0]) and np.isnan(y).sum() == 1


def test_all_minus_inf_window_sends_gradient_to_first_real_element(any_backend):
    # padding is -inf too, but it is never chosen: PyTorch sends the gradient to
    # the first real element of the window
    x = np.array([[[[-np.inf, -np.inf], [1.0, 2.0]]]])
    y, ctx = ops.max_pool2d_forward(x, 2, stride=1, padding=(1, 0), backend=any_backend)
    np.testing.assert_array_equal(y[0, 0], [[-np.inf], [2.0], [2.0]])
    dx = ops.max_pool2d_backward(np.array([[[[1.0], [10.0], [100.0]]]]), ctx)
    np.testing.assert_array_equal(dx[0, 0], [[1, 0], [0, 110]])


def test_argmax_guard_names_the_plane_size():
    _pooling.check_argmax_fits(46340, 46340)                 # 2147395600 elements: fits
    with pytest.raises(ValueError, match=r"plane of 65536x32768 = 2147483648 elements"):
        _pooling.check_argmax_fits(65536, 32768)             # 2**31: would wrap


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("cython", "numba")])
def test_compiled_backends_refuse_planes_their_argmax_cannot_index(backend, monkeypatch):
    # an 8-bit argmax stands in for the 32-bit one, so no 8 GB plane is needed
    monkeypatch.setattr(_pooling, "ARGMAX_DTYPE", np.dtype(np.int8))
    with pytest.raises(ValueError, match=r"plane of 12x12 = 144 elements.*8-bit argmax"):
        ops.max_pool2d_forward(np.zeros((1, 1, 12, 12)), 2, backend=backend)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("cython", "numba")])
@pytest.mark.parametrize("first", [0.0, -0.0])
def test_tie_of_zeros_returns_the_first_element_itself(backend, first):
    # 0.0 == -0.0: the first of the two is the maximum, sign and all (the
    # compiled kernels may carry the other zero while they compare, so they
    # read y back at argmax); loops is the spec
    x = np.array([[[[first, -first, -first, first, -1.0]]]])
    for args in [((1, 2),), ((1, 3), 1, (0, 1), 1, True)]:
        y, _ = ops.max_pool2d_forward(x, *args, backend=backend)
        ry, _ = ops.max_pool2d_forward(x, *args, backend="loops")
        np.testing.assert_array_equal(np.signbit(y), np.signbit(ry))
    for out in [(1, 2), 1]:
        y, _ = ops.adaptive_max_pool2d_forward(np.tile(x, 4), out, backend=backend)
        ry, _ = ops.adaptive_max_pool2d_forward(np.tile(x, 4), out, backend="loops")
        np.testing.assert_array_equal(np.signbit(y), np.signbit(ry))


WIDTHS = [2, 3, 4, 7, 8, 9, 14, 15, 16, 17, 28, 31, 32, 33, 40, 67]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_plain_2x2_pooling_at_every_row_width(any_backend, dtype):
    # the compiled backends' 2x2/2 loops take rows in vectors of 16, 8 or 4
    # outputs with an overlapping last vector, and shorter rows one by one:
    # widths around each, odd input sizes (a row and a column left over),
    # ties, NaN, -inf, -0.0 and windows of negatives against the spec
    rng = np.random.default_rng(5)
    for W in WIDTHS:
        x = rng.integers(-3, 3, size=(2, 3, 5, W)).astype(dtype)   # many ties
        x[0, 0, rng.integers(0, 5, 4), rng.integers(0, W, 4)] = np.nan
        x[0, 1, 0, :] = -np.inf
        x[1, 2] = -np.abs(x[1, 2]) - 1                              # negatives only
        x[1, 0, 1, ::2] = -0.0
        y, ctx = ops.max_pool2d_forward(x, 2, backend=any_backend)
        want, wctx = ops.max_pool2d_forward(x, 2, backend="loops")
        np.testing.assert_array_equal(y, want, err_msg=f"W={W}")
        if any_backend != "im2col":      # its np.maximum may give +0 for -0 (its docstring)
            assert (np.signbit(y) == np.signbit(want)).all()
        dy = rng.standard_normal(y.shape).astype(dtype)
        np.testing.assert_array_equal(ops.max_pool2d_backward(dy, ctx),
                                      ops.max_pool2d_backward(dy, wctx), err_msg=f"W={W}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_relu_2x2_pooling_at_every_row_width(any_backend, dtype):
    # conv (1x1, weight 1: the pooled input is x itself) + ReLU + 2x2 max
    # pooling fused, against the composition on `loops`: the fused loops'
    # ReLU marks (windows of negatives, -0.0 and NaN) at every row width
    rng = np.random.default_rng(6)
    w = np.ones((1, 1, 1, 1), dtype=dtype)
    for W in WIDTHS:
        x = rng.integers(-3, 3, size=(2, 1, 6, W)).astype(dtype)
        x[0, 0, rng.integers(0, 6, 3), rng.integers(0, W, 3)] = np.nan
        x[1, 0, 2:4] = -np.abs(x[1, 0, 2:4]) - 1
        x[1, 0, 0, ::3] = -0.0
        y, ctx = ops.conv2d_relu_max_pool2d_forward(x, w, None, pool_kernel_size=2,
                                                    backend=any_backend)
        z, c1 = ops.conv2d_forward(x, w, None, backend="loops")
        r, c2 = ops.relu_forward(z, backend="loops")
        want, c3 = ops.max_pool2d_forward(r, 2, backend="loops")
        np.testing.assert_array_equal(y, want, err_msg=f"W={W}")
        assert (np.signbit(y) == np.signbit(want)).all()
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx = ops.conv2d_relu_max_pool2d_backward(dy, ctx)[0]
        d = ops.relu_backward(ops.max_pool2d_backward(dy, c3), c2)
        np.testing.assert_array_equal(dx, ops.conv2d_backward(d, c1)[0], err_msg=f"W={W}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_cython_2x2_pooling_at_every_vector_width(fused, dtype):
    cy = pytest.importorskip("fastcnn._kernels.cy_pool")
    best = cy.simd(9)                       # the CPU's best (asking for more gives that)
    test = test_fused_relu_2x2_pooling_at_every_row_width if fused else \
        test_plain_2x2_pooling_at_every_row_width
    try:
        for level in range(best + 1):
            assert cy.simd(level) == level
            test("cython", dtype)
    finally:
        cy.simd(9)
