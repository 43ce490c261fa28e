"""The direct depthwise convolution (backends/_depthwise over the
cy_depthwise and numba_depthwise kernels), driven directly and through
fastcnn.ops, against PyTorch (when installed) and the loops backend.

Cases: channel multipliers 1-3, strides 1, 2, 3 and (2, 1), dilations 1-3,
no, symmetric and asymmetric padding, odd sizes, KH != KW, 1x1, batch 1,
planes narrower and wider than the kernels' flat-run threshold, and
batches split into several pieces (images and channels), float64 to
1e-9 and float32 to 1e-4; the Cython kernels' portable (non-AVX2) code
too. Also: the forward's relu epilogue against loops' conv then
np.maximum (NaN kept, -0 and negatives to +0); an inf in x that some taps
never meet leaves their dw finite (the flat dw runs meet it in a garbage
column), the inputs are never modified, and the backward computes with
the x and w the forward saw after the caller has overwritten them.
"""
import os

import numpy as np
import pytest

import fastcnn
from fastcnn import ops
from fastcnn.backends import _concurrent, _depthwise
from fastcnn.backends import loops

from _depthwise_kernels import kern, out_size  # noqa: F401 (kern: a fixture)

# (N, C, H, W, M, KH, KW, stride, (PT, PB, PL, PR), dilation)
CASES = [
    (2, 3, 7, 9, 1, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    (3, 4, 8, 8, 2, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1)),
    (1, 2, 9, 7, 3, 2, 3, (2, 1), (0, 1, 0, 1), (2, 2)),
    (10, 3, 11, 6, 2, 5, 3, (1, 2), (2, 1, 0, 2), (1, 2)),
    (2, 2, 5, 5, 1, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1)),
    (2, 3, 6, 6, 1, 3, 3, (3, 3), (1, 0, 2, 1), (2, 1)),
    (2, 3, 12, 10, 2, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2)),
    (3, 2, 9, 11, 1, 5, 3, (1, 1), (1, 2, 0, 3), (1, 2)),
    (2, 2, 10, 13, 2, 2, 4, (1, 1), (0, 1, 3, 0), (1, 1)),
    (1, 2, 3, 3, 1, 3, 3, (1, 1), (0, 0, 0, 0), (1, 1)),
    (2, 2, 9, 11, 1, 3, 3, (2, 2), (1, 2, 1, 0), (1, 1)),
    (2, 2, 13, 13, 2, 3, 3, (3, 2), (2, 1, 1, 2), (2, 3)),
    (2, 2, 12, 14, 1, 3, 5, (2, 2), (0, 3, 2, 0), (3, 1)),
    (9, 5, 17, 19, 1, 3, 3, (1, 1), (0, 1, 0, 1), (1, 1)),   # 'same'-like, odd
    (11, 4, 15, 15, 3, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1)),
    (9, 3, 16, 21, 2, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2)),
    (2, 2, 33, 34, 2, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1)),    # strided, rows of 17
    (2, 3, 40, 40, 1, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),    # dw runs past 256
    (1, 2, 70, 70, 1, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),    # past numba's 4096 (_dots9)
]
IDS = ["N{}C{}_{}x{}_M{}_k{}x{}_s{}_p{}_d{}".format(*c[:7], *["".join(map(str, t))
                                                             for t in c[7:]])
       for c in CASES]
TOL = {np.float64: 1e-9, np.float32: 1e-4}


def _problem(case, dtype, seed=0):
    N, C, H, W, M, KH, KW, stride, pad, dil = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((C * M, 1, KH, KW)).astype(dtype)
    b = rng.standard_normal(C * M).astype(dtype)
    y_shape = (N, C * M, out_size(H, KH, stride[0], pad[0], pad[1], dil[0]),
               out_size(W, KW, stride[1], pad[2], pad[3], dil[1]))
    dy = rng.standard_normal(y_shape).astype(dtype)
    return x, w, b, dy, stride, pad, dil, y_shape


def _loops(x, w, b, dy, stride, pad, dil, y_shape):
    """The spec: the loops backend with groups = C (float64)."""
    f = [a.astype(np.float64) for a in (x, w, b, dy)]
    y, saved = loops.conv2d_forward(f[0], f[1], f[2], stride, pad, dil, x.shape[1], y_shape)
    return (y, *loops.conv2d_backward(f[3], saved))


def _torch(x, w, b, dy, stride, pad, dil):
    """PyTorch on an explicitly padded x (its padding is symmetric only)."""
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    PT, PB, PL, PR = pad
    H, W = x.shape[2:]
    xt = torch.tensor(np.pad(x.astype(np.float64), ((0, 0), (0, 0), (PT, PB), (PL, PR))),
                      requires_grad=True)
    wt = torch.tensor(w.astype(np.float64), requires_grad=True)
    bt = torch.tensor(b.astype(np.float64), requires_grad=True)
    yt = f.conv2d(xt, wt, bt, stride, 0, dil, x.shape[1])
    yt.backward(torch.tensor(dy.astype(np.float64)))
    dx = xt.grad.numpy()[:, :, PT:PT + H, PL:PL + W]
    return yt.detach().numpy(), dx, wt.grad.numpy(), bt.grad.numpy()


def _check(got, want, dtype):
    for name, g, r in zip(("y", "dx", "dw", "db"), got, want):
        assert g.shape == r.shape and g.dtype == dtype, name
        scale = max(1.0, float(np.abs(r).max()))
        np.testing.assert_allclose(g, r, rtol=TOL[dtype], atol=TOL[dtype] * scale,
                                   err_msg=name)


def _run(kern, x, w, b, dy, stride, pad, dil, y_shape):
    y, saved = _depthwise.forward(kern, x, w, b, stride, pad, dil, y_shape)
    return (y.copy(), *_depthwise.backward(kern, dy, saved))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_against_loops(kern, case, dtype):
    x, w, b, dy, stride, pad, dil, y_shape = _problem(case, dtype)
    _check(_run(kern, x, w, b, dy, stride, pad, dil, y_shape),
           _loops(x, w, b, dy, stride, pad, dil, y_shape), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_against_torch(kern, case, dtype):
    x, w, b, dy, stride, pad, dil, y_shape = _problem(case, dtype)
    want = _torch(x, w, b, dy, stride, pad, dil)
    _check(_run(kern, x, w, b, dy, stride, pad, dil, y_shape), want, dtype)


@pytest.fixture
def many_pieces(monkeypatch):
    """Two threads, and any work worth a piece: blocks split channels, and
    images as well when there is one channel (partial dw and db sums)."""
    before = fastcnn.get_num_threads()
    monkeypatch.setattr(_concurrent, "WORK_PER_THREAD", 1)
    fastcnn.set_num_threads(min(2, _cpus()))
    yield
    fastcnn.set_num_threads(before)


def _cpus():
    return os.cpu_count() or 1


@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pieces(kern, many_pieces, C, dtype):
    case = (9, C, 10, 11, 2, 3, 3, (2, 1), (1, 1, 1, 1), (1, 1))
    x, w, b, dy, stride, pad, dil, y_shape = _problem(case, dtype)
    if _cpus() > 1:
        assert len(_depthwise._blocks(9, C, 1 << 30)) == 2
    _check(_run(kern, x, w, b, dy, stride, pad, dil, y_shape),
           _loops(x, w, b, dy, stride, pad, dil, y_shape), dtype)


@pytest.mark.parametrize("case", [CASES[1], CASES[6]], ids=[IDS[1], IDS[6]])
def test_inputs_untouched_and_ctx_owns_its_copies(kern, case):
    x, w, b, dy, stride, pad, dil, y_shape = _problem(case, np.float64)
    want = _loops(x, w, b, dy, stride, pad, dil, y_shape)
    originals = [a.copy() for a in (x, w, b, dy)]
    y, saved = _depthwise.forward(kern, x, w, b, stride, pad, dil, y_shape)
    for a, o in zip((x, w, b), originals):
        np.testing.assert_array_equal(a, o)
    x[...] = 7.0            # the caller reuses its buffers before the backward
    w[...] = -3.0
    got = (y, *_depthwise.backward(kern, dy, saved))
    np.testing.assert_array_equal(dy, originals[3])
    _check(got, want, np.float64)


def test_no_bias_gives_zero_bias(kern):
    x, w, b, dy, stride, pad, dil, y_shape = _problem(CASES[0], np.float64)
    y, _ = _depthwise.forward(kern, x, w, None, stride, pad, dil, y_shape)
    y_b, _ = _depthwise.forward(kern, x, w, np.zeros_like(b), stride, pad, dil, y_shape)
    np.testing.assert_array_equal(y, y_b)


@pytest.mark.parametrize("backend", ["cython", "numba"])
@pytest.mark.parametrize("stride,padding,dilation,M", [
    (1, 1, 1, 1), (2, 1, 1, 1), ((2, 1), 0, 2, 2), (1, "same", 2, 3)])
def test_ops_take_the_depthwise_path(backend, stride, padding, dilation, M):
    if backend not in fastcnn.available_backends():
        pytest.skip(f"{backend} is not available")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 9, 10))
    w = rng.standard_normal((4 * M, 1, 3, 3))
    b = rng.standard_normal(4 * M)
    got_y, ctx = ops.conv2d_forward(x, w, b, stride, padding, dilation, groups=4,
                                    backend=backend)
    assert ctx.saved[0] == "depthwise"
    dy = rng.standard_normal(got_y.shape)
    got = (got_y, *ops.conv2d_backward(dy, ctx))
    want_y, ref = ops.conv2d_forward(x, w, b, stride, padding, dilation, groups=4,
                                     backend="loops")
    _check(got, (want_y, *ops.conv2d_backward(dy, ref)), np.float64)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_inf_in_x_only_reaches_the_taps_that_meet_it(kern, stride, dtype):
    """x[.., 0] = inf is met by the taps kw = 0, 1 of a 3x3 pad-1 filter
    (and kw = 2 never: its inputs start at column 1), but the flat dw run
    of tap kw = 2 passes it in a garbage column, times a zero of dy: its
    dw must come out finite and equal the loops' (valid columns only)."""
    case = (2, 3, 9, 10, 2, 3, 3, (stride, stride), (1, 1, 1, 1), (1, 1))
    x, w, b, dy, st, pad, dil, y_shape = _problem(case, dtype)
    x[0, 1, 4, 0] = np.inf
    got = _run(kern, x, w, b, dy, st, pad, dil, y_shape)
    want = _loops(x, w, b, dy, st, pad, dil, y_shape)
    assert np.isfinite(got[2][:, :, :, 2]).all()
    assert not np.isfinite(got[2][2:4, :, :, :2]).all()
    np.testing.assert_allclose(got[2], want[2], rtol=TOL[dtype], atol=TOL[dtype] * 10)
    np.testing.assert_allclose(got[3], want[3], rtol=TOL[dtype], atol=TOL[dtype] * 10)


RELU_CASES = [CASES[i] for i in (0, 1, 3, 6, 13, 14, 16, 17)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", RELU_CASES, ids=[IDS[CASES.index(c)] for c in RELU_CASES])
def test_relu_epilogue_against_loops(kern, case, dtype):
    """relu=True: y is np.maximum(conv, 0); the backward is the conv's own
    (it takes the conv output's dy, as without relu)."""
    x, w, b, dy, stride, pad, dil, y_shape = _problem(case, dtype)
    want = _loops(x, w, b, dy, stride, pad, dil, y_shape)
    y, saved = _depthwise.forward(kern, x, w, b, stride, pad, dil, y_shape, relu=True)
    assert (y < 0).sum() == 0 and (y == 0).sum() > 0
    got = (y.copy(), *_depthwise.backward(kern, dy, saved))
    _check(got, (np.maximum(want[0], 0), *want[1:]), dtype)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_relu_epilogue_nan_and_signed_zero(kern, stride, dtype):
    """A NaN output stays NaN (np.maximum), and outputs of -0.0 and below
    come out as +0.0."""
    N, C, H, W = 2, 3, 9, 10
    x = np.random.default_rng(5).standard_normal((N, C, H, W)).astype(dtype)
    x[1, 2, 4, 5] = np.nan
    w = np.ones((C, 1, 3, 3), dtype=dtype)
    w[0] = -1.0                               # channel 0: -sum of x's window
    b = np.zeros(C, dtype=dtype)
    x[0, 1] = -0.0                            # channel 1 of image 0: -0.0 everywhere
    y_shape = (N, C, out_size(H, 3, stride, 1, 1, 1), out_size(W, 3, stride, 1, 1, 1))
    y, _ = _depthwise.forward(kern, x, w, b, (stride, stride), (1, 1, 1, 1), (1, 1), y_shape,
                              relu=True)
    plain, _ = _depthwise.forward(kern, x, w, b, (stride, stride), (1, 1, 1, 1), (1, 1),
                                  y_shape)
    want = np.maximum(plain, 0)
    assert np.isnan(want).sum() > 0
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    np.testing.assert_array_equal(y[~np.isnan(y)], want[~np.isnan(want)])
    assert not np.signbit(y[~np.isnan(y)]).any()
    assert (y[0, 1] == 0).all() and (plain[0, 1] == 0).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", RELU_CASES, ids=[IDS[CASES.index(c)] for c in RELU_CASES])
def test_relu_mask_in_the_kernels(kern, case, dtype):
    """With a mask array the forward fills it with the ReLU's [y > 0] (every
    element: it starts as 7s), and the backward given it computes with
    dy * mask, bitwise as the plain backward of that product and within
    tolerance of loops'; an inf or NaN of dy where the mask is 0 gives NaN,
    as relu_backward's product does, and dy itself is left alone."""
    x, w, b, dy, stride, pad, dil, y_shape = _problem(case, dtype)
    dy[0, 0, 0, :2] = [np.inf, np.nan]
    mask = np.full(y_shape, 7, dtype=np.uint8)
    y, saved = _depthwise.forward(kern, x, w, b, stride, pad, dil, y_shape, relu=True,
                                  mask=mask)
    np.testing.assert_array_equal(mask, y > 0)
    y = y.copy()
    mask[0, 0, 0, :2] = [0, 1]                # the inf meets a 0, the NaN a 1
    dy_before = dy.copy()
    got = [a.copy() for a in _depthwise.backward(kern, dy, saved, mask=mask)]
    np.testing.assert_array_equal(dy, dy_before)
    with np.errstate(invalid="ignore"):      # inf * 0: the NaN wanted
        masked = dy * mask
    plain = _depthwise.backward(kern, masked, saved)
    for g, p in zip(got, plain):
        np.testing.assert_array_equal(g, p)
    assert np.isnan(got[1][0]).all() and np.isnan(got[2][0])      # dw, db of filter 0
    # away from the NaNs, loops' gradients of dy * mask
    dy_ok = masked.copy()
    dy_ok[0, 0, 0, :2] = 0
    got_ok = _depthwise.backward(kern, dy_ok, saved, mask=(dy_ok != 0).astype(np.uint8))
    want = _loops(x, w, b, dy_ok, stride, pad, dil, y_shape)
    _check((y, *got_ok), (np.maximum(want[0], 0), *want[1:]), dtype)


@pytest.fixture
def cython_baseline():
    """The Cython kernels on their portable code path (no AVX2), put back
    to the CPU's best after the test."""
    cy = pytest.importorskip("fastcnn._kernels.cy_depthwise")
    before = cy.simd()
    assert cy.simd(0) == 0
    yield cy
    assert cy.simd(before) == before


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", [CASES[i] for i in (0, 1, 2, 6, 14, 16, 17)])
def test_cython_portable_code(cython_baseline, case, dtype, relu):
    x, w, b, dy, stride, pad, dil, y_shape = _problem(case, dtype)
    want = _loops(x, w, b, dy, stride, pad, dil, y_shape)
    y, saved = _depthwise.forward(cython_baseline, x, w, b, stride, pad, dil, y_shape,
                                  relu=relu)
    got = (y.copy(), *_depthwise.backward(cython_baseline, dy, saved))
    _check(got, (np.maximum(want[0], 0) if relu else want[0], *want[1:]), dtype)
