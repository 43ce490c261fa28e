"""The depthwise driver's two layouts for 3x3 filters, each forced on the
same problems: the small-map kernels (``forward_small``/``backward_small``,
images innermost) and the per-plane phase-layout kernels, on the cython
and numba kernel modules, against the loops backend (float64 to 1e-9,
float32 to 1e-4).

Cases: output planes at and around the driver's threshold, batches that
are and are not a multiple of the kernels' 8 image lanes (1, 7, 8, 9, 17),
strides 1, 2, (2, 1), (3, 2), dilation 2, asymmetric and no padding and
padding wider than the filter reaches (stride 1 with M == 1 is the
backward's gather, the rest its scatter), channel multipliers 1-3; the fused ReLU and its mask (NaN and inf inputs,
-0.0); dy masked in the kernels; several channel blocks; Cython's portable
(non-AVX2) code; the inputs never modified and ctx's own copies.
What this is not: the per-plane kernels' own cases (tests/test_depthwise.py).
"""
import numpy as np
import pytest

import fastcnn
from fastcnn.backends import _concurrent, _depthwise, loops

from _depthwise_kernels import kern, out_size  # noqa: F401 (kern: a fixture)

# (N, C, H, W, M, stride, (PT, PB, PL, PR), dilation)
CASES = [
    (9, 3, 7, 7, 1, (1, 1), (1, 1, 1, 1), (1, 1)),       # the mobile 7x7, odd batch
    (8, 4, 14, 14, 1, (2, 2), (1, 1, 1, 1), (1, 1)),     # 14 -> 7, stride 2
    (17, 2, 8, 8, 2, (1, 1), (1, 1, 1, 1), (1, 1)),      # 64 outputs, M = 2
    (7, 3, 9, 7, 3, (1, 1), (1, 1, 0, 0), (1, 1)),       # 63 outputs, M = 3, odd sizes
    (1, 2, 9, 9, 1, (1, 1), (1, 1, 1, 1), (1, 1)),       # 81: past the threshold
    (10, 3, 11, 9, 1, (2, 1), (0, 1, 2, 0), (2, 1)),     # (2, 1), dilation, asymmetric
    (9, 2, 13, 11, 2, (3, 2), (2, 1, 1, 2), (2, 2)),     # (3, 2), dilation 2
    (8, 3, 5, 6, 1, (1, 1), (0, 0, 0, 0), (1, 1)),       # no padding
    (9, 2, 10, 9, 1, (1, 1), (2, 0, 1, 3), (2, 2)),      # stride 1 dilated: dx's gather
    (8, 2, 6, 6, 1, (1, 1), (0, 3, 3, 0), (1, 1)),       # padding past the taps' reach
]
IDS = ["N{}C{}_{}x{}_M{}".format(*c[:5]) + "_s{}{}".format(*c[5]) + "_d{}{}".format(*c[7])
       for c in CASES]
TOL = {np.float64: 1e-9, np.float32: 1e-4}


@pytest.fixture(params=["small", "planes"])
def layout(request, monkeypatch):
    """Every 3x3 depthwise conv on the small-map kernels, or none."""
    monkeypatch.setattr(_depthwise, "SMALL_MAX", 1 << 30 if request.param == "small" else -1)
    return request.param


def _problem(case, dtype, seed=0):
    N, C, H, W, M, stride, pad, dil = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((C * M, 1, 3, 3)).astype(dtype)
    b = rng.standard_normal(C * M).astype(dtype)
    y_shape = (N, C * M, out_size(H, 3, stride[0], pad[0], pad[1], dil[0]),
               out_size(W, 3, stride[1], pad[2], pad[3], dil[1]))
    dy = rng.standard_normal(y_shape).astype(dtype)
    return x, w, b, dy, stride, pad, dil, y_shape


def _loops(x, w, b, dy, stride, pad, dil, y_shape):
    """The spec: the loops backend with groups = C, in float64."""
    f = [a.astype(np.float64) for a in (x, w, b, dy)]
    y, saved = loops.conv2d_forward(f[0], f[1], f[2], stride, pad, dil, x.shape[1], y_shape)
    return (y, *loops.conv2d_backward(f[3], saved))


def _check(got, want, dtype):
    for name, g, r in zip(("y", "dx", "dw", "db"), got, want):
        assert g.shape == r.shape and g.dtype == dtype, name
        scale = max(1.0, float(np.abs(r).max()))
        np.testing.assert_allclose(g, r, rtol=TOL[dtype], atol=TOL[dtype] * scale,
                                   err_msg=name)


def test_threshold():
    """3x3 filters with at most SMALL_MAX output pixels take the small-map
    kernels; larger planes and other filter sizes do not."""
    S = _depthwise.SMALL_MAX
    assert _depthwise._small(3, 3, (64, 128, 7, 7))
    assert _depthwise._small(3, 3, (1, 1, 1, S))
    assert not _depthwise._small(3, 3, (1, 1, 1, S + 1))
    assert not _depthwise._small(5, 5, (64, 128, 7, 7))
    assert not _depthwise._small(3, 1, (64, 128, 7, 7))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_against_loops(kern, layout, case, dtype, relu):
    x, w, b, dy, stride, pad, dil, y_shape = _problem(case, dtype)
    want = _loops(x, w, b, dy, stride, pad, dil, y_shape)
    mask = np.full(y_shape, 7, dtype=np.uint8) if relu else None
    y, saved = _depthwise.forward(kern, x, w, b, stride, pad, dil, y_shape, relu=relu,
                                  mask=mask)
    assert saved.small == (layout == "small")
    y = y.copy()
    if not relu:
        _check((y, *_depthwise.backward(kern, dy, saved)), want, dtype)
        return
    ref = np.maximum(want[0], 0)
    np.testing.assert_array_equal(mask, y > 0)
    # the backward given the mask computes with dy * mask
    got = _depthwise.backward(kern, dy, saved, mask=mask)
    want = _loops(x, w, b, dy * mask, stride, pad, dil, y_shape)
    _check((y, *got), (ref, *want[1:]), dtype)


@pytest.fixture
def two_threads(monkeypatch):
    """Two threads, and any work worth a piece: two blocks of channels."""
    before = fastcnn.get_num_threads()
    monkeypatch.setattr(_concurrent, "WORK_PER_THREAD", 1)
    fastcnn.set_num_threads(2)
    yield
    fastcnn.set_num_threads(before)


@pytest.mark.parametrize("C", [5, 16])
def test_channel_blocks(kern, layout, two_threads, C):
    """Two threads' blocks of channels give loops' answer."""
    case = (9, C, 7, 7, 2, (1, 1), (1, 1, 1, 1), (1, 1))
    x, w, b, dy, stride, pad, dil, y_shape = _problem(case, np.float64, seed=3)
    want = _loops(x, w, b, dy, stride, pad, dil, y_shape)
    y, saved = _depthwise.forward(kern, x, w, b, stride, pad, dil, y_shape)
    assert len(saved.blocks) == 2
    got = (y.copy(), *_depthwise.backward(kern, dy, saved))
    _check(got, want, np.float64)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_relu_nan_inf_and_signed_zero(kern, layout, stride, dtype):
    """np.maximum(y, 0): a NaN output stays NaN with mask 0, +inf stays with
    mask 1, -inf and -0.0 come out +0.0 with mask 0; the rest as loops."""
    N, C, H, W = 9, 4, 8, 7
    x = np.random.default_rng(5).standard_normal((N, C, H, W)).astype(dtype)
    x[1, 2, 4, 5] = np.nan
    x[8, 3, 2, 2] = np.inf
    x[3, 3, 6, 1] = -np.inf
    w = np.ones((C, 1, 3, 3), dtype=dtype)
    w[0] = -1.0                               # channel 0: -sum of x's window
    b = np.zeros(C, dtype=dtype)
    x[0, 1] = -0.0                            # channel 1 of image 0: -0.0 everywhere
    y_shape = (N, C, out_size(H, 3, stride, 1, 1, 1), out_size(W, 3, stride, 1, 1, 1))
    mask = np.full(y_shape, 7, dtype=np.uint8)
    with np.errstate(invalid="ignore"):
        y, _ = _depthwise.forward(kern, x, w, b, (stride, stride), (1, 1, 1, 1), (1, 1),
                                  y_shape, relu=True, mask=mask)
        want = loops.conv2d_forward(x.astype(np.float64), w.astype(np.float64),
                                    b.astype(np.float64), (stride, stride), (1, 1, 1, 1),
                                    (1, 1), C, y_shape)[0]
    ref = np.maximum(want, 0)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    assert np.isnan(y).any() and np.isposinf(y).any()
    np.testing.assert_array_equal(mask, ref > 0)
    assert not np.signbit(y[~np.isnan(y)]).any()
    ok = np.isfinite(ref)
    np.testing.assert_allclose(y[ok], ref[ok], rtol=TOL[dtype], atol=TOL[dtype] * 10)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_masked_inf_dy_gives_nan(kern, layout, dtype):
    """An inf of dy where the mask is 0 is relu_backward's inf * 0 = NaN,
    as the plain backward of dy * mask gives, bitwise; dy is left alone."""
    x, w, b, dy, stride, pad, dil, y_shape = _problem(CASES[0], dtype)
    mask = np.empty(y_shape, dtype=np.uint8)
    y, saved = _depthwise.forward(kern, x, w, b, stride, pad, dil, y_shape, relu=True,
                                  mask=mask)
    mask[2, 1, 3, :2] = [0, 1]
    dy[2, 1, 3, :2] = [np.inf, np.nan]
    before = dy.copy()
    got = [a.copy() for a in _depthwise.backward(kern, dy, saved, mask=mask)]
    np.testing.assert_array_equal(dy, before)
    with np.errstate(invalid="ignore"):
        plain = _depthwise.backward(kern, dy * mask, saved)
    for g, p in zip(got, plain):
        np.testing.assert_array_equal(g, p)
    assert np.isnan(got[1][1]).all() and np.isnan(got[2][1])


def test_inputs_untouched_and_ctx_owns_its_copies(kern, layout):
    x, w, b, dy, stride, pad, dil, y_shape = _problem(CASES[1], np.float64)
    want = _loops(x, w, b, dy, stride, pad, dil, y_shape)
    copies = [a.copy() for a in (x, w, b, dy)]
    y, saved = _depthwise.forward(kern, x, w, b, stride, pad, dil, y_shape)
    y = y.copy()
    x[...] = 5.0
    w[...] = -3.0
    got = (y, *_depthwise.backward(kern, dy, saved))
    _check(got, want, np.float64)
    for a, c in zip((b, dy), copies[2:]):
        np.testing.assert_array_equal(a, c)


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
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cython_portable_code(cython_baseline, monkeypatch, case, dtype, relu):
    monkeypatch.setattr(_depthwise, "SMALL_MAX", 1 << 30)
    x, w, b, dy, stride, pad, dil, y_shape = _problem(case, dtype)
    want = _loops(x, w, b, dy, stride, pad, dil, y_shape)
    y, saved = _depthwise.forward(cython_baseline, x, w, b, stride, pad, dil, y_shape,
                                  relu=relu)
    assert saved.small
    got = (y.copy(), *_depthwise.backward(cython_baseline, dy, saved))
    _check(got, (np.maximum(want[0], 0) if relu else want[0], *want[1:]), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[2]], ids=IDS[:3])
def test_inf_in_x_gives_loops_infs(kern, layout, case, dtype):
    """An inf of x makes the dw of the taps that meet it inf (or NaN) as
    loops' does, and leaves the other taps' dw and db finite and equal."""
    x, w, b, dy, stride, pad, dil, y_shape = _problem(case, dtype, seed=7)
    x[0, 0, 3, 0] = np.inf                   # image 0: lane 0 of the packed planes
    with np.errstate(invalid="ignore"):
        want = _loops(x, w, b, dy, stride, pad, dil, y_shape)
        y, saved = _depthwise.forward(kern, x, w, b, stride, pad, dil, y_shape)
        got = _depthwise.backward(kern, dy, saved)
    np.testing.assert_array_equal(np.isfinite(got[1]), np.isfinite(want[2]))
    assert not np.isfinite(got[1]).all()
    ok = np.isfinite(want[2])
    np.testing.assert_allclose(got[1][ok], want[2][ok], rtol=TOL[dtype], atol=TOL[dtype] * 10)
    np.testing.assert_array_equal(np.isposinf(got[1]), np.isposinf(want[2]))
    np.testing.assert_allclose(got[2], want[3], rtol=TOL[dtype], atol=TOL[dtype] * 10)
