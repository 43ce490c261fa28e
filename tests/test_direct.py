"""The direct 3x3 stride-1 conv path (``backends/_direct``) on every backend
whose kernel table has it: forward, dx, dw and db against the `loops`
reference and PyTorch on the shapes its register blocks and plane sizes
have edges for (widths around the vector widths, filters not a multiple of
the weight or dw blocks, dilation, groups, padding 0 up to the filter's
reach, one image, channel counts of 1), every vector code the CPU has
(cython's ``simd`` levels), the fused ReLU, and NaN/inf in x where only the
vector lanes past the output width would read them.

test_conv_paths.py runs this path through the shared forced-path cases,
the batch split and the saved-inputs checks with the other paths.
"""
import numpy as np
import pytest

import fastcnn
from fastcnn import ops
from fastcnn.backend import get_module
from fastcnn.backends import _direct, _gemm_conv
from fastcnn.testing import assert_close

from cases import BACKENDS, TOL


def _table(name):
    return getattr(get_module(name), "_ConvKernels", None)


DIRECT = [b for b in BACKENDS if getattr(_table(b), "direct", None) is not None]

# (N, C, H, W, F, padding, dilation, groups)
SHAPES = [
    (2, 3, 7, 9, 5, 1, 1, 1),              # F under one weight block
    (3, 8, 16, 16, 16, 1, 1, 4),           # groups, width exactly one AVX-512 vector
    (2, 6, 17, 19, 9, 2, 2, 3),            # dilated, F/G = 3, odd sizes
    (1, 3, 5, 40, 17, (1, 2), (1, 2), 1),  # wide row: several vectors and a tail; F = 2*8 + 1
    (2, 1, 28, 28, 32, 1, 1, 1),           # one input channel (the MNIST first layer)
    (2, 5, 6, 6, 5, (0, 4), (2, 3), 5),    # depthwise shape, padding 0 and the full reach
    (2, 4, 3, 3, 6, 2, 1, 2),              # output larger than the input
    (4, 32, 14, 14, 64, 1, 1, 1),          # MNIST conv2
    (2, 2, 9, 33, 7, 0, (3, 1), 1),        # no padding, width one past four AVX2 vectors
]


def _ids(shape):
    return "x".join(str(v) for v in shape).replace(" ", "")


def _inputs(shape, dtype, seed=0):
    N, C, H, W, F, padding, dilation, groups = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F, C // groups, 3, 3)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    return x, w, b, 1, padding, dilation, groups


def _direct_run(backend, args, dy_seed=1, relu=False):
    with _gemm_conv.forced_path("direct"):
        fwd = ops.conv2d_relu_forward if relu else ops.conv2d_forward
        y, ctx = fwd(*args, backend=backend)
    dy = np.random.default_rng(dy_seed).standard_normal(y.shape).astype(y.dtype)
    bwd = ops.conv2d_relu_backward if relu else ops.conv2d_backward
    return (y, *bwd(dy, ctx)), dy


def _loops(args, dy, relu=False):
    f64 = [a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in args]
    fwd = ops.conv2d_relu_forward if relu else ops.conv2d_forward
    bwd = ops.conv2d_relu_backward if relu else ops.conv2d_backward
    y, ctx = fwd(*f64, backend="loops")
    return (y, *bwd(dy.astype(np.float64), ctx))


def _check(got, want, dtype):
    for name, g, e in zip(("y", "dx", "dw", "db"), got, want):
        assert g.dtype == dtype and g.shape == e.shape, name
        assert_close(g, e, TOL[dtype], name)


def _simd_levels(backend):
    """(kernel module, levels) to run: every vector code the CPU has where
    the module can switch (cython), else the one it runs."""
    kd = _table(backend).direct_kernels()
    if not hasattr(kd, "simd"):
        return kd, [None]
    best = kd.simd(9)              # the CPU's best (asking for more gives that)
    return kd, list(range(best + 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=[_ids(s) for s in SHAPES])
@pytest.mark.parametrize("backend", DIRECT)
def test_direct_matches_loops_at_every_vector_width(backend, shape, dtype):
    kd, levels = _simd_levels(backend)
    args = _inputs(shape, dtype)
    try:
        for level in levels:
            if level is not None:
                assert kd.simd(level) == level
            got, dy = _direct_run(backend, args)
            _check(got, _loops(args, dy), dtype)
    finally:
        if levels[0] is not None:
            kd.simd(9)


@pytest.mark.parametrize("shape", SHAPES[:6], ids=[_ids(s) for s in SHAPES[:6]])
@pytest.mark.parametrize("backend", DIRECT)
def test_direct_matches_torch(backend, shape):
    torch = pytest.importorskip("torch")
    x, w, b, stride, padding, dilation, groups = args = _inputs(shape, np.float64)
    got, dy = _direct_run(backend, args)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride, padding, dilation, groups)
    yt.backward(torch.tensor(dy))
    _check(got, [t.detach().numpy() for t in (yt, xt.grad, wt.grad, bt.grad)], np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("backend", DIRECT)
def test_direct_relu_matches_the_composition(backend, dtype):
    args = _inputs(SHAPES[3], dtype)
    got, dy = _direct_run(backend, args, relu=True)
    want = _loops(args, dy, relu=True)
    _check(got, want, dtype)
    assert not np.signbit(got[0]).any()      # +0, never -0, where the ReLU cut


def _pooled(backend, args):
    """conv2d_relu_max_pool2d_forward's 2x2 result on the direct path."""
    with _gemm_conv.forced_path("direct"):
        return ops.conv2d_relu_max_pool2d_forward(*args, pool_kernel_size=2,
                                                  backend=backend)[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=[_ids(s) for s in SHAPES])
@pytest.mark.parametrize("backend", DIRECT)
def test_pooling_as_the_loops_go_gives_the_pooled_conv(backend, shape, dtype, monkeypatch):
    """Under no_grad the fused ReLU + 2x2 max pooling runs as the direct
    loops go (cython: in registers; odd output sizes, whose last row or column pools
    nothing, widths under one vector, groups, dilation, every vector code):
    the values of the same loops' conv pooled by the pooling kernel, NaN and
    inf from x included, and close to loops."""
    kd, levels = _simd_levels(backend)
    x, *rest = args = _inputs(shape, dtype)
    x[0, 0, 1, 1:3] = np.nan, np.inf            # a NaN window, an inf one
    x[-1, -1, -1, -1] = -np.inf
    calls = []
    real = kd.forward_pool22
    monkeypatch.setattr(kd, "forward_pool22", lambda *a: calls.append(1) or real(*a))
    want_loops = _pooled("loops", [a.astype(np.float64) if isinstance(a, np.ndarray) else a
                                   for a in args])
    try:
        for level in levels:
            if level is not None:
                kd.simd(level)
            want = _pooled(backend, args)            # conv, then the pooling kernel
            assert not calls
            with fastcnn.no_grad():
                got = _pooled(backend, args)
            assert calls and got.dtype == dtype and got.shape == want.shape and got.size
            calls.clear()
            np.testing.assert_array_equal(got, want)   # NaN where want has NaN
            assert not np.signbit(got[~np.isnan(got)]).any()
            finite = np.isfinite(want_loops)
            assert_close(np.where(finite, got, 0), np.where(finite, want_loops, 0), TOL[dtype], "y")
            assert np.array_equal(np.isnan(got), np.isnan(want_loops))
    finally:
        if levels[0] is not None:
            kd.simd(9)


@pytest.mark.parametrize("backend", DIRECT)
def test_inference_pools_the_mnist_conv1_in_the_direct_loops(backend):
    """choose_path: the MNIST conv1 under no_grad with a 2x2 pooling to
    follow takes the direct loops (pooled as they go); with a backward to
    follow, or without the pooling, the per-image path as before."""
    x, w, b, *rest = _inputs((64, 1, 28, 28, 32, 1, 1, 1), np.float32)
    g = _gemm_conv.Geometry(64, 1, 28, 28, 32, 3, 3, 1, 1, 1, 1, 1, 1, 28, 28)
    table = _table(backend)
    assert _gemm_conv.choose_path(table, g) == "per_image"
    assert _gemm_conv.choose_path(table, g, pooled=True) == "per_image"
    with fastcnn.no_grad():
        assert _gemm_conv.choose_path(table, g, pooled=True) == "direct"
        assert _gemm_conv.choose_path(table, g) == "per_image"


@pytest.mark.parametrize("backend", DIRECT)
def test_inf_that_only_past_the_edge_lanes_read_leaves_dw_finite(backend):
    # padding 0, OW = W - 2: x's last two columns are read only by the taps
    # kw = 1, 2 at the last outputs, and by tap kw = 0 only in the lanes past
    # OW of a vector; an inf there must not turn dw[:, :, :, 0] into NaN
    kd, levels = _simd_levels(backend)
    x, w, b, *rest = _inputs((2, 3, 6, 21, 5, 0, 1, 1), np.float64)
    x[:, :, :, -1] = np.inf
    try:
        for level in levels:
            if level is not None:
                kd.simd(level)
            (y, dx, dw, db), dy = _direct_run(backend, (x, w, b, *rest))
            with np.errstate(invalid="ignore"):          # the reference's own inf * 0
                want = _loops((x, w, b, *rest), dy)
            assert np.isfinite(dw[:, :, :, :2]).all(), level
            for name, g, e in zip(("y", "dx", "dw", "db"), (y, dx, dw, db), want):
                np.testing.assert_array_equal(np.isnan(g), np.isnan(e), err_msg=name)
                ok = np.isfinite(e)
                assert_close(g[ok], e[ok], TOL[np.float64], name)
    finally:
        if levels[0] is not None:
            kd.simd(9)


def test_packed_weights_and_flipped_filters():
    w = np.arange(5 * 2 * 9, dtype=np.float64).reshape(5, 2, 3, 3)
    wp = _direct.pack(w, 1, 4).reshape(1, 2, 2, 9, 4)    # G, blocks, Cg, taps, FB
    assert wp[0, 0, 1, 4, 2] == w[2, 1, 1, 1]
    assert wp[0, 1, 0, 8, 0] == w[4, 0, 2, 2]
    assert (wp[0, 1, :, :, 1:] == 0).all()                 # filters past F are zero
    wt = _direct.flipped(np.arange(4 * 3 * 9.0).reshape(4, 3, 3, 3), 2)   # G=2: Fg=2, Cg=3
    assert wt.shape == (6, 2, 3, 3)
    assert wt[4, 1, 0, 2] == np.arange(4 * 3 * 9.0).reshape(4, 3, 3, 3)[3, 1, 2, 0]


@pytest.mark.parametrize("backend", DIRECT)
def test_dilated_convs_choose_the_direct_path(backend):
    x, w, b, *rest = _inputs((8, 32, 12, 12, 16, 2, 2, 1), np.float32)
    _, ctx = ops.conv2d_forward(x, w, b, *rest, backend=backend)
    assert ctx.saved[0] == "direct"
