"""PyTorch's conv arguments beyond stride and padding: dilation and groups
(depthwise included), and padding='same' over a dilated kernel.

Hand-computed cases first, then two identities every backend must keep
(a dilated kernel is a zero-stuffed one; a grouped conv is its groups'
convs side by side), then ``loops`` against centred differences and
PyTorch (when installed). Every backend against ``loops`` on the shared
cases is in test_backends_agree.py; the bad inputs in test_validation.py.
Not here: speed, and which fast path a compiled backend takes.
"""
import itertools

import numpy as np
import pytest

from fastcnn import ops
from fastcnn.testing import assert_close, numerical_gradient

from cases import BACKENDS, CONV_DG_CASES, case_id, conv_dg_inputs

L = {"backend": "loops"}


def _ramp(H, W):
    return np.arange(H * W, dtype=np.float64).reshape(1, 1, H, W)


def _conv_all(x, w, b, dy, backend, **kw):
    """(y, dx, dw, db) of one conv on backend."""
    y, ctx = ops.conv2d_forward(x, w, b, **kw, backend=backend)
    return (y, *ops.conv2d_backward(dy, ctx))


# ------------------------------------------------------------------ by hand

@pytest.mark.parametrize("backend", BACKENDS)
def test_dilated_conv_by_hand(backend):
    # 5x5 ramp x[r, c] = 5r + c; w picks x[i, j] - x[i+2, j+2] (dilation 2):
    # span 3, OH = OW = 5 - 3 + 1 = 3, every output -(2*5 + 2) + 0.5
    x = _ramp(5, 5)
    w = np.array([[[[1.0, 0.0], [0.0, -1.0]]]])
    y, ctx = ops.conv2d_forward(x, w, np.array([0.5]), dilation=2, backend=backend)
    np.testing.assert_array_equal(y, np.full((1, 1, 3, 3), -11.5))
    dx, dw, db = ops.conv2d_backward(np.ones_like(y), ctx)
    # +1 on the 3x3 block the first tap reads, -1 on the block the last tap reads
    want = np.zeros((5, 5))
    want[0:3, 0:3] += 1
    want[2:5, 2:5] -= 1
    np.testing.assert_array_equal(dx[0, 0], want)
    # dw[kh, kw] = the sum of the 3x3 block x[2kh:2kh+3, 2kw:2kw+3]
    np.testing.assert_array_equal(dw[0, 0], [[54, 72], [144, 162]])
    np.testing.assert_array_equal(db, [9.0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_dilation_2_1_by_hand(backend):
    # rows 2 apart, columns adjacent: y[i, j] = x[i, j] + 10 x[i+2, j+1]
    x = _ramp(4, 3)
    w = np.array([[[[1.0, 0.0], [0.0, 10.0]]]])
    y, _ = ops.conv2d_forward(x, w, dilation=(2, 1), backend=backend)
    np.testing.assert_array_equal(y[0, 0], [[0 + 10 * 7, 1 + 10 * 8], [3 + 10 * 10, 4 + 10 * 11]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_depthwise_channel_multiplier_by_hand(backend):
    # groups = C = 2, F = 4: filters 0, 1 read channel 0, filters 2, 3 channel 1
    x = np.stack([np.full((3, 3), 1.0), np.full((3, 3), 2.0)])[None]     # (1, 2, 3, 3)
    w = np.array([1.0, 10.0, 100.0, 1000.0]).reshape(4, 1, 1, 1)
    y, ctx = ops.conv2d_forward(x, w, groups=2, backend=backend)
    np.testing.assert_array_equal(y[0, :, 0, 0], [1, 10, 200, 2000])
    dx, dw, db = ops.conv2d_backward(np.ones_like(y), ctx)
    assert dw.shape == (4, 1, 1, 1)
    np.testing.assert_array_equal(dx[0, :, 0, 0], [1 + 10, 100 + 1000])
    np.testing.assert_array_equal(dw.ravel(), [9, 9, 18, 18])
    np.testing.assert_array_equal(db, [9, 9, 9, 9])       # b None: db still (F,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_padding_with_dilation_puts_the_odd_pixel_bottom_right(backend):
    # kernel 2 at dilation 3 spans 4: 'same' pads 3 in total, 1 top/left and
    # 2 bottom/right (PyTorch). The bottom-right tap reads x[i + 3 - 1, j + 3 - 1].
    x = _ramp(4, 4)
    w = np.zeros((1, 1, 2, 2))
    w[0, 0, 1, 1] = 1.0
    y, _ = ops.conv2d_forward(x, w, padding="same", dilation=3, backend=backend)
    want = np.zeros((4, 4))
    want[:2, :2] = x[0, 0, 2:, 2:]
    np.testing.assert_array_equal(y[0, 0], want)


# ------------------------------------------------------------------ identities

def _stuffed(w, dilation):
    """w with DH-1 zero rows (DW-1 zero columns) between its taps: the dense
    kernel a dilated conv is."""
    F, Cg, KH, KW = w.shape
    DH, DW = dilation
    s = np.zeros((F, Cg, DH * (KH - 1) + 1, DW * (KW - 1) + 1), w.dtype)
    s[:, :, ::DH, ::DW] = w
    return s


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride,padding,dilation,groups", [
    (1, 1, (2, 1), 1), (1, 0, (2, 3), 1), (2, 1, 2, 1), (1, "same", 3, 2), (2, 2, (3, 2), 4)])
def test_dilation_is_a_zero_stuffed_kernel(backend, stride, padding, dilation, groups):
    rng = np.random.default_rng(21)
    x = rng.standard_normal((2, 4, 11, 10))
    w = rng.standard_normal((8, 4 // groups, 3, 2))
    b = rng.standard_normal(8)
    D = (dilation, dilation) if isinstance(dilation, int) else dilation
    kw = dict(stride=stride, padding=padding, groups=groups)
    y, ctx = ops.conv2d_forward(x, w, b, dilation=dilation, **kw, backend=backend)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = ops.conv2d_backward(dy, ctx)
    ys, dxs, dws, dbs = _conv_all(x, _stuffed(w, D), b, dy, backend, **kw)
    assert_close(y, ys, 1e-12, "y")
    assert_close(dx, dxs, 1e-12, "dx")
    assert_close(dw, dws[:, :, ::D[0], ::D[1]], 1e-12, "dw")
    assert_close(db, dbs, 1e-12, "db")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("C,F,groups", [(4, 6, 2), (8, 8, 4), (3, 6, 3), (4, 12, 4), (6, 3, 3)])
@pytest.mark.parametrize("dilation", [1, 2])
def test_groups_are_independent_convs_side_by_side(backend, C, F, groups, dilation):
    rng = np.random.default_rng(C * 10 + F)
    x = rng.standard_normal((3, C, 7, 8))
    w = rng.standard_normal((F, C // groups, 3, 3))
    b = rng.standard_normal(F)
    kw = dict(stride=1, padding=2, dilation=dilation)
    y, ctx = ops.conv2d_forward(x, w, b, groups=groups, **kw, backend=backend)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = ops.conv2d_backward(dy, ctx)
    Cg, Fg = C // groups, F // groups
    for g in range(groups):
        xs, fs = slice(g * Cg, (g + 1) * Cg), slice(g * Fg, (g + 1) * Fg)
        one = _conv_all(np.ascontiguousarray(x[:, xs]), w[fs], b[fs],
                        np.ascontiguousarray(dy[:, fs]), backend, **kw)
        for name, got, want in zip(("y", "dx", "dw", "db"),
                                   (y[:, fs], dx[:, xs], dw[fs], db[fs]), one):
            assert_close(got, want, 1e-12, f"{name} of group {g}")


# ------------------------------------------------------------------ what every backend keeps

@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_grouped_dilated_inputs(backend):
    rng = np.random.default_rng(23)
    x = rng.standard_normal((2, 8, 18, 14))[:, ::2, ::-2, ::2]      # (2, 4, 9, 7)
    w = np.asfortranarray(rng.standard_normal((8, 2, 3, 3)))
    kw = dict(stride=1, padding=1, dilation=(2, 1), groups=2)
    y, ctx = ops.conv2d_forward(x, w, None, **kw, backend=backend)
    dy = rng.standard_normal(y.shape)[:, :, ::-1]
    want = _conv_all(np.ascontiguousarray(x), np.ascontiguousarray(w), None,
                     np.ascontiguousarray(dy), "loops", **kw)
    for name, got, ref in zip(("y", "dx", "dw", "db"), (y, *ops.conv2d_backward(dy, ctx)), want):
        assert_close(got, ref, 1e-9, name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_uses_the_weights_forward_saw(backend):
    # depthwise, multiplier 2: w changed in place after the forward pass
    rng = np.random.default_rng(24)
    x = rng.standard_normal((2, 4, 6, 6))
    w = rng.standard_normal((8, 1, 3, 3))
    kw = dict(stride=1, padding=2, dilation=2, groups=4)
    dy = rng.standard_normal((2, 8, 6, 6))
    want = _conv_all(x, w, None, dy, backend, **kw)
    y, ctx = ops.conv2d_forward(x, w, None, **kw, backend=backend)
    w[...] = 0.0
    x[...] = 0.0
    for name, got, ref in zip(("dx", "dw", "db"), ops.conv2d_backward(dy, ctx), want[1:]):
        np.testing.assert_array_equal(got, ref, err_msg=name)


# ------------------------------------------------------------------ loops vs oracles

SMALL_DG_CASES = [c for c in CONV_DG_CASES if c[0] <= 2]


@pytest.mark.parametrize("case", SMALL_DG_CASES, ids=case_id)
def test_loops_matches_finite_differences(case):
    x, w, b, kw = conv_dg_inputs(case, np.float64, seed=5)
    if x.size > 300:                 # centred differences cost two forwards per element
        x = np.ascontiguousarray(x[:1])
    y, ctx = ops.conv2d_forward(x, w, b, **kw, **L)
    dy = np.random.default_rng(6).standard_normal(y.shape)
    dx, dw, db = ops.conv2d_backward(dy, ctx)
    bb = b if b is not None else np.zeros(w.shape[0])
    f_x = lambda x_: ops.conv2d_forward(x_, w, b, **kw, **L)[0]    # noqa: E731
    f_w = lambda w_: ops.conv2d_forward(x, w_, b, **kw, **L)[0]    # noqa: E731
    f_b = lambda b_: ops.conv2d_forward(x, w, b_, **kw, **L)[0]    # noqa: E731
    assert_close(dx, numerical_gradient(f_x, x, dy), 1e-6, "dx")
    assert_close(dw, numerical_gradient(f_w, w, dy), 1e-6, "dw")
    assert_close(db, numerical_gradient(f_b, bb, dy), 1e-6, "db")


def _torch_conv(x, w, b, dy, **kw):
    torch = pytest.importorskip("torch")
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b if b is not None else np.zeros(w.shape[0]), requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, tb if b is not None else None, **kw)
    ty.backward(torch.tensor(dy))
    db = tb.grad if b is not None else torch.tensor(dy).sum(dim=(0, 2, 3))
    return [t.detach().numpy() for t in (ty, tx.grad, tw.grad, db)]


def _check_loops_against_torch(x, w, b, seed, **kw):
    pytest.importorskip("torch")
    y, ctx = ops.conv2d_forward(x, w, b, **kw, **L)
    dy = np.random.default_rng(seed).standard_normal(y.shape)
    ours = (y, *ops.conv2d_backward(dy, ctx))
    for name, got, want in zip(("y", "dx", "dw", "db"), ours, _torch_conv(x, w, b, dy, **kw)):
        assert_close(got, want, 1e-9, name)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("case", CONV_DG_CASES, ids=case_id)
def test_loops_matches_torch(case):
    x, w, b, kw = conv_dg_inputs(case, np.float64, seed=11)
    _check_loops_against_torch(x, w, b, 12, **kw)


# 'same' over every span parity: kernel 1..4 at dilation 1..3, totals
# D*(K-1) odd (extra pixel bottom/right) and even, with and without groups
SAME_GRID = list(itertools.product((1, 2, 3, 4), (1, 2, 3), (1, 2)))


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("K,D,groups", SAME_GRID)
def test_loops_same_padding_matches_torch(K, D, groups):
    rng = np.random.default_rng(K * 100 + D * 10 + groups)
    x = rng.standard_normal((2, 2, 7, 6))
    w = rng.standard_normal((4, 2 // groups, K, 5 - K))
    b = rng.standard_normal(4)
    _check_loops_against_torch(x, w, b, 13, padding="same", dilation=(D, 4 - D), groups=groups)
