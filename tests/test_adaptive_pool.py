"""Adaptive (and so global) average and max pooling: the `loops` spec against
hand-computed windows, finite differences and PyTorch; every other backend
against `loops`; ties, NaN and bad output_size on every backend."""
import numpy as np
import pytest

from fastcnn import nn, ops
from fastcnn.testing import assert_close, numerical_gradient

from cases import BACKENDS, TOL, case_id

L = {"backend": "loops"}
OPS = ["avg", "max"]

# (N, C, H, W, output_size)
ADAPTIVE_CASES = [
    (2, 3, 5, 5, 3),                 # windows [0,2) [1,4) [3,5): they overlap
    (2, 2, 7, 9, (3, 4)),
    (2, 2, 6, 8, (2, 4)),            # sizes divide: plain pooling windows
    (2, 3, 7, 7, 1),                 # global pooling
    (1, 2, 1, 1, 1),                 # a single element
    (2, 1, 3, 4, (5, 7)),            # output larger than the input
    (2, 2, 5, 6, (None, 4)),         # None keeps the input's height
    (1, 3, 6, 5, (2, None)),
    (3, 4, 4, 4, 4),                 # output = input: the identity
    (2, 2, 1, 9, (1, 4)),
]


def _fns(op):
    return (getattr(ops, f"adaptive_{op}_pool2d_forward"),
            getattr(ops, f"adaptive_{op}_pool2d_backward"))


def _input(case, dtype, seed=0):
    N, C, H, W, out = case
    return np.random.default_rng(seed).standard_normal((N, C, H, W)).astype(dtype), out


@pytest.fixture(params=BACKENDS)
def any_backend(request):
    return request.param


# ---------------------------------------------------------------- the spec, by hand

def test_bounds_by_hand_h5_to_3():
    # PyTorch's windows for 5 -> 3: [0, 2), [1, 4), [3, 5)
    x = np.arange(5, dtype=np.float64).reshape(1, 1, 5, 1) ** 2      # 0 1 4 9 16
    y, ctx = ops.adaptive_avg_pool2d_forward(x, (3, 1), **L)
    np.testing.assert_array_equal(y[0, 0, :, 0], [(0 + 1) / 2, (1 + 4 + 9) / 3, (9 + 16) / 2])
    dx = ops.adaptive_avg_pool2d_backward(np.array([2.0, 3.0, 4.0]).reshape(1, 1, 3, 1), ctx)
    np.testing.assert_array_equal(dx[0, 0, :, 0], [1, 1 + 1, 1, 1 + 2, 2])
    ym, ctxm = ops.adaptive_max_pool2d_forward(-x, (3, 1), **L)
    np.testing.assert_array_equal(ym[0, 0, :, 0], [0, -1, -9])
    dxm = ops.adaptive_max_pool2d_backward(np.array([2.0, 3.0, 4.0]).reshape(1, 1, 3, 1), ctxm)
    np.testing.assert_array_equal(dxm[0, 0, :, 0], [2, 3, 0, 4, 0])


def test_bounds_by_hand_output_larger_than_input():
    # 2 -> 3: windows [0, 1), [0, 2), [1, 2); 3 -> 2: [0, 2), [1, 3)
    x = np.array([[[[1.0, 2.0, 4.0], [8.0, 16.0, 32.0]]]])
    y, ctx = ops.adaptive_avg_pool2d_forward(x, (3, 2), **L)
    np.testing.assert_array_equal(y[0, 0], [[1.5, 3], [27 / 4, 54 / 4], [12, 24]])
    dx = ops.adaptive_avg_pool2d_backward(np.ones((1, 1, 3, 2)), ctx)
    # element (r, c) gets 1/area from every window holding it
    np.testing.assert_array_equal(dx[0, 0], [[1 / 2 + 1 / 4, 1 / 2 + 1 / 2 + 1 / 4 + 1 / 4, 1 / 2 + 1 / 4],
                                             [1 / 4 + 1 / 2, 1 / 4 + 1 / 4 + 1 / 2 + 1 / 2, 1 / 4 + 1 / 2]])


def test_global_pooling_is_plane_mean_and_max():
    x, _ = _input((3, 4, 6, 5, 1), np.float64, seed=3)
    y, _ = ops.adaptive_avg_pool2d_forward(x, 1, **L)
    np.testing.assert_allclose(y[:, :, 0, 0], x.mean(axis=(2, 3)), rtol=1e-15)
    ym, _ = ops.adaptive_max_pool2d_forward(x, (1, 1), **L)
    np.testing.assert_array_equal(ym[:, :, 0, 0], x.max(axis=(2, 3)))


# ---------------------------------------------------------------- the spec vs oracles

@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=case_id)
def test_loops_matches_finite_differences(case, op):
    fwd, bwd = _fns(op)
    x, out = _input(case, np.float64, seed=7)   # distinct values: max is differentiable
    y, ctx = fwd(x, out, **L)
    dy = np.random.default_rng(8).standard_normal(y.shape)
    num = numerical_gradient(lambda x_: fwd(x_, out, **L)[0], x, dy)
    assert_close(bwd(dy, ctx), num, 1e-6, "dx")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=case_id)
def test_loops_matches_torch(case, op):
    torch = pytest.importorskip("torch")
    fwd, bwd = _fns(op)
    x, out = _input(case, np.float64, seed=13)
    y, ctx = fwd(x, out, **L)
    dy = np.random.default_rng(14).standard_normal(y.shape)
    tx = torch.tensor(x, requires_grad=True)
    ty = getattr(torch.nn.functional, f"adaptive_{op}_pool2d")(tx, out)
    ty.backward(torch.tensor(dy))
    assert_close(y, ty.detach().numpy(), 1e-9, "y")
    assert_close(bwd(dy, ctx), tx.grad.numpy(), 1e-9, "dx")


# ---------------------------------------------------------------- every backend vs the spec

@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=case_id)
def test_matches_loops(backend, case, dtype, op):
    fwd, bwd = _fns(op)
    x, out = _input(case, dtype)
    x_copy = x.copy()
    y, ctx = fwd(x, out, backend=backend)
    assert ctx.backend == backend
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    dx = bwd(dy, ctx)
    y_ref, ctx_ref = fwd(x.astype(np.float64), out, **L)
    dx_ref = bwd(dy.astype(np.float64), ctx_ref)
    assert y.dtype == dtype and dx.dtype == dtype
    assert_close(y, y_ref, TOL[dtype], "y")
    assert_close(dx, dx_ref, TOL[dtype], "dx")
    np.testing.assert_array_equal(x, x_copy)


@pytest.mark.parametrize("op", OPS)
def test_larger_planes_split_across_threads(backend, op):
    # enough planes and work for the compiled backends to split them over the pool
    fwd, bwd = _fns(op)
    x = np.random.default_rng(2).standard_normal((16, 64, 14, 14)).astype(np.float32)
    for out in (1, 3):
        y, ctx = fwd(x, out, backend=backend)
        dy = np.random.default_rng(3).standard_normal(y.shape).astype(np.float32)
        y_ref, ctx_ref = fwd(x.astype(np.float64), out, **L)
        assert_close(y, y_ref, 1e-4, "y")
        assert_close(bwd(dy, ctx), bwd(dy.astype(np.float64), ctx_ref), 1e-4, "dx")


# ---------------------------------------------------------------- max: ties and NaN

@pytest.mark.parametrize("out", [1, 2, 3])
def test_max_first_maximum_wins_ties(any_backend, out):
    x = np.ones((2, 3, 5, 5))
    y, ctx = ops.adaptive_max_pool2d_forward(x, out, backend=any_backend)
    dx = ops.adaptive_max_pool2d_backward(np.ones_like(y), ctx)
    starts = [(i * 5) // out for i in range(out)]          # each window's top-left
    expected = np.zeros((5, 5))
    for r in starts:
        for c in starts:
            expected[r, c] += 1
    np.testing.assert_array_equal(dx, np.broadcast_to(expected, x.shape))


@pytest.mark.parametrize("out", [1, 2])
def test_max_nan_propagates_to_first_nan(any_backend, out):
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    x[0, 0, 1, 1] = x[0, 0, 3, 3] = np.nan
    x[0, 0, 0, 3] = np.inf
    y, ctx = ops.adaptive_max_pool2d_forward(x, out, backend=any_backend)
    dx = ops.adaptive_max_pool2d_backward(np.ones_like(y), ctx)
    if out == 1:
        assert np.isnan(y[0, 0, 0, 0])
        assert dx[0, 0, 1, 1] == 1 and dx.sum() == 1
    else:   # windows: top-left NaN, top-right inf, bottom-left 13, bottom-right NaN
        np.testing.assert_array_equal(np.isnan(y[0, 0]), [[True, False], [False, True]])
        assert y[0, 0, 0, 1] == np.inf and y[0, 0, 1, 0] == 13
        expected = np.zeros((4, 4))
        expected[1, 1] = expected[0, 3] = expected[3, 1] = expected[3, 3] = 1
        np.testing.assert_array_equal(dx[0, 0], expected)


def test_max_all_minus_inf_sends_gradient_to_first_element(any_backend):
    x = np.full((1, 1, 3, 3), -np.inf)
    y, ctx = ops.adaptive_max_pool2d_forward(x, 1, backend=any_backend)
    dx = ops.adaptive_max_pool2d_backward(np.array([[[[5.0]]]]), ctx)
    assert y[0, 0, 0, 0] == -np.inf and dx[0, 0, 0, 0] == 5 and dx.sum() == 5


def test_max_tie_goes_to_the_earlier_row_before_the_earlier_column(any_backend):
    # window 0 of (1, 2) over 4x6 is rows 0-3, columns 0-2; its maximum 5
    # sits at (1, 0) and (0, 2): row-major order takes (0, 2), although its
    # column comes later (the compiled kernels reduce columns first)
    x = np.zeros((1, 1, 4, 6))
    x[0, 0, 1, 0] = x[0, 0, 0, 2] = 5.0
    x[0, 0, 2, 3] = x[0, 0, 1, 4] = np.nan    # NaNs in window 1 (columns 3-5): the
    x[0, 0, 3, 3] = np.nan                    # first in row-major order, (1, 4), wins
    y, ctx = ops.adaptive_max_pool2d_forward(x, (1, 2), backend=any_backend)
    dx = ops.adaptive_max_pool2d_backward(np.array([[[[1.0, 2.0]]]]), ctx)
    assert y[0, 0, 0, 0] == 5 and np.isnan(y[0, 0, 0, 1])
    expected = np.zeros((4, 6))
    expected[0, 2], expected[1, 4] = 1.0, 2.0
    np.testing.assert_array_equal(dx[0, 0], expected)


# Global pooling reduces a whole plane with independent running sums and
# maxima: plane sizes around their widths (4, 8, 16), a single element,
# and long planes.
PLANES = [(1, 1), (1, 3), (2, 4), (3, 5), (4, 4), (1, 17), (7, 7), (8, 8), (33, 33), (1, 4099)]


@pytest.mark.parametrize("H,W", PLANES, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_pooling_plane_sizes(backend, H, W, dtype):
    rng = np.random.default_rng(H * W)
    x = rng.standard_normal((2, 3, H, W)).astype(dtype)
    L = H * W
    x[0, 1] = 2.0                                        # a constant plane: ties
    x[1, 0].flat[L // 2] = np.nan                        # a NaN mid-plane ...
    x[1, 0].flat[L - 1] = np.nan                         # ... and a later one
    x[1, 1].flat[L - 1] = np.inf                         # +inf and -inf: the sum is NaN,
    x[1, 1].flat[0] = -np.inf                            # but no element is
    x[1, 2].flat[::3] = x[1, 2].max() + 1                # the maximum repeated
    dy = rng.standard_normal((2, 3, 1, 1)).astype(dtype)
    with np.errstate(invalid="ignore"):       # the references' inf - inf
        _check_global_plane(backend, x, dy, dtype)


def _check_global_plane(backend, x, dy, dtype):
    L = x.shape[2] * x.shape[3]
    for op in OPS:
        fwd, bwd = _fns(op)
        y, ctx = fwd(x, 1, backend=backend)
        y_ref, ctx_ref = fwd(x, 1, backend="loops")
        assert y.dtype == dtype and y.shape == (2, 3, 1, 1)
        np.testing.assert_allclose(y, y_ref, rtol=TOL[dtype], atol=TOL[dtype])
        np.testing.assert_allclose(bwd(dy, ctx), bwd(dy, ctx_ref), rtol=TOL[dtype],
                                   atol=TOL[dtype])
    ym, ctx = ops.adaptive_max_pool2d_forward(x, 1, backend=backend)
    dx = ops.adaptive_max_pool2d_backward(np.ones_like(ym), ctx)
    assert dx[0, 1].flat[0] == 1                         # the first of equal maxima
    if L > 1:
        assert np.isnan(ym[1, 0, 0, 0]) and dx[1, 0].flat[L // 2] == 1   # the first NaN
        assert ym[1, 1, 0, 0] == np.inf and dx[1, 1].flat[L - 1] == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cython_global_average_at_every_vector_width(dtype):
    # cy_pool sums 16, 8, 4 or 2 planes at a time in vectors (by the CPU's
    # level and dtype): 37 planes are whole blocks and a remainder at every
    # width, against the plane means in float64; a NaN or inf plane in a
    # block must stay in its own lane
    cy = pytest.importorskip("fastcnn._kernels.cy_pool")
    best = cy.simd(9)
    rng = np.random.default_rng(11)
    try:
        for level in range(best + 1):
            assert cy.simd(level) == level
            for H, W in PLANES:
                x = rng.standard_normal((1, 37, H, W)).astype(dtype)
                x[0, 5].flat[-1] = np.nan
                x[0, 18].flat[0] = np.inf
                y, _ = ops.adaptive_avg_pool2d_forward(x, 1, backend="cython")
                want = x.astype(np.float64).mean(axis=(2, 3), keepdims=True)
                np.testing.assert_allclose(y, want, rtol=TOL[dtype], atol=TOL[dtype],
                                           err_msg=f"level {level}, plane {H}x{W}")
                assert np.isnan(y[0, 5, 0, 0]) and y[0, 18, 0, 0] == np.inf
    finally:
        cy.simd(9)


@pytest.mark.parametrize("op", OPS)
def test_global_pooling_long_planes_split_across_threads(backend, op):
    # enough elements for the pool to split the planes; planes long enough
    # (with a mean far from 0) for float32 running sums to lose precision
    fwd, bwd = _fns(op)
    x = (np.random.default_rng(4).standard_normal((8, 16, 37, 37)) + 3).astype(np.float32)
    y, ctx = fwd(x, 1, backend=backend)
    dy = np.random.default_rng(5).standard_normal(y.shape).astype(np.float32)
    y_ref, ctx_ref = fwd(x.astype(np.float64), 1, **L)
    assert_close(y, y_ref, 1e-5, "y")
    assert_close(bwd(dy, ctx), bwd(dy.astype(np.float64), ctx_ref), 1e-5, "dx")


# ---------------------------------------------------------------- bad input, layers

x4 = np.zeros((2, 3, 8, 8))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("args, exc, match", [
    ((x4, 0), ValueError, r"output_size must be positive, got 0"),
    ((x4, -2), ValueError, r"output_size must be positive"),
    ((x4, (3, 0)), ValueError, r"output_size must be positive, got \(3, 0\)"),
    ((x4, (None, -1)), ValueError, r"output_size must be positive"),
    ((x4, True), TypeError, r"output_size must be an int or a pair"),
    ((x4, (2, False)), TypeError, r"output_size must be an int or a pair"),
    ((x4, 2.0), TypeError, r"output_size must be an int or a pair"),
    ((x4, (2, 2.5)), TypeError, r"output_size must be an int or a pair"),
    ((x4, (2, 2, 2)), TypeError, r"output_size must be an int or a pair"),
    ((x4, (2,)), TypeError, r"output_size must be an int or a pair"),
    ((x4, None), TypeError, r"output_size must be an int or a pair"),
    ((x4, "2"), TypeError, r"output_size must be an int or a pair"),
    ((x4, 2**31), ValueError, r"output_size must be at most"),
    ((np.zeros((8, 8)), 2), ValueError, r"x must have 4 dimensions"),
    ((x4.astype(np.int32), 2), TypeError, r"x must have dtype float32 or float64"),
])
def test_bad_input(any_backend, op, args, exc, match):
    with pytest.raises(exc, match=match):
        _fns(op)[0](*args, backend=any_backend)


def test_bad_gradient_and_context(any_backend):
    y, ctx = ops.adaptive_avg_pool2d_forward(x4, 3, backend=any_backend)
    with pytest.raises(ValueError, match=r"dy must have the shape of the forward output \(2, 3, 3, 3\)"):
        ops.adaptive_avg_pool2d_backward(np.zeros((2, 3, 3, 4)), ctx)
    with pytest.raises(TypeError, match=r"ctx must be the context returned by "
                                        r"adaptive_max_pool2d_forward, got adaptive_avg_pool2d_forward"):
        ops.adaptive_max_pool2d_backward(y, ctx)
    _, pctx = ops.max_pool2d_forward(x4, 2, backend=any_backend)
    with pytest.raises(TypeError, match=r"by adaptive_avg_pool2d_forward, got max_pool2d_forward"):
        ops.adaptive_avg_pool2d_backward(y, pctx)


@pytest.mark.parametrize("cls, op", [(nn.AdaptiveAvgPool2d, "avg"), (nn.AdaptiveMaxPool2d, "max")])
def test_layers_call_the_ops(cls, op):
    x, _ = _input((2, 3, 7, 6, None), np.float64, seed=4)
    layer = cls((3, None))
    y = layer.forward(x)
    dy = np.random.default_rng(5).standard_normal(y.shape)
    fwd, bwd = _fns(op)
    y_ref, ctx = fwd(x, (3, None), **L)
    assert y.shape == (2, 3, 3, 6) and repr(layer) == f"{cls.__name__}(output_size=(3, None))"
    assert_close(y, y_ref, 1e-12, "y")
    assert_close(layer.backward(dy), bwd(dy, ctx), 1e-12, "dx")
    with pytest.raises(RuntimeError, match="without a preceding forward"):
        layer.backward(dy)
