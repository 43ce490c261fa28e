"""PyTorch's pooling arguments beyond kernel/stride/padding: ceil_mode for
max and avg, dilation for max, count_include_pad and divisor_override for avg.

Hand-computed cases first, then ``loops`` against PyTorch (when installed)
and centred differences, then every backend against ``loops``, then the bad
inputs."""
import itertools

import numpy as np
import pytest

import fastcnn
from fastcnn import nn, ops
from fastcnn.testing import numerical_gradient

from cases import BACKENDS, FAST_BACKENDS, TOL

try:
    import torch
    import torch.nn.functional as F
except ImportError:      # the torch comparisons skip; everything else runs
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")


def _ramp(H, W, dtype=np.float64):
    return np.arange(H * W, dtype=dtype).reshape(1, 1, H, W)


# ------------------------------------------------------------------ by hand

def test_ceil_mode_adds_a_window_on_odd_sizes():
    # 5 wide, kernel 2, stride 2: floor keeps columns 0-1, 2-3; ceil adds 4 alone
    x = _ramp(1, 5)
    y, _ = ops.max_pool2d_forward(x, (1, 2), ceil_mode=True, backend="loops")
    np.testing.assert_array_equal(y[0, 0], [[1, 3, 4]])
    y, _ = ops.avg_pool2d_forward(x, (1, 2), ceil_mode=True, backend="loops")
    # count_include_pad: the last window is clipped to the padded input [0, 5): size 1
    np.testing.assert_array_equal(y[0, 0], [[0.5, 2.5, 4.0]])
    y, _ = ops.avg_pool2d_forward(x, (1, 2), ceil_mode=True, divisor_override=2,
                                  backend="loops")
    np.testing.assert_array_equal(y[0, 0], [[0.5, 2.5, 2.0]])


def test_ceil_mode_adds_nothing_when_the_last_window_would_start_in_the_right_padding():
    # H=4, K=2, S=3, P=1: ceil((4+2-2)/3)+1 = 3, but window 2 would start at
    # 2*3-1 = 5 >= H+P = 5, in the right padding: dropped, as in floor mode.
    x = _ramp(4, 4)
    y, _ = ops.max_pool2d_forward(x, 2, stride=3, padding=1, ceil_mode=True, backend="loops")
    assert y.shape == (1, 1, 2, 2)
    # rows/cols windows [-1, 1) and [2, 4)
    np.testing.assert_array_equal(y[0, 0], [[0, 3], [12, 15]])


def test_ceil_mode_divisors_by_hand():
    # 6x6, kernel 3, stride 2, padding 1, ceil: OH = ceil(5/2)+1 = 4; the last
    # window [5, 8) is clipped to the padded input [-1, 7) -> 2 rows
    # (count_include_pad) or to the input [0, 6) -> 1 row (not).
    x = _ramp(6, 6)
    y, _ = ops.avg_pool2d_forward(x, 3, 2, 1, ceil_mode=True, backend="loops")
    assert y.shape == (1, 1, 4, 4)
    # corner (3, 3): only x[5, 5] = 35 is real; divisor 2*2 (include pad)
    assert y[0, 0, 3, 3] == 35 / 4
    # corner (0, 0): x[0:2, 0:2] = 0+1+6+7; divisor 3*3
    assert y[0, 0, 0, 0] == 14 / 9
    y, _ = ops.avg_pool2d_forward(x, 3, 2, 1, ceil_mode=True, count_include_pad=False,
                                  backend="loops")
    assert y[0, 0, 3, 3] == 35.0
    assert y[0, 0, 0, 0] == 14 / 4


def test_ceil_mode_keeps_a_kernel_larger_than_the_input():
    # PyTorch: kernel 2 over a 1x1 input with ceil_mode gives one window
    y, _ = ops.max_pool2d_forward(np.full((1, 1, 1, 1), 7.0), 2, ceil_mode=True,
                                  backend="loops")
    np.testing.assert_array_equal(y, [[[[7.0]]]])


def test_dilation_by_hand():
    # 1x7 ramp, kernel 2, dilation 3, stride 2: windows {0, 3}, {2, 5}; OW = (7-3-1)//2+1 = 2
    x = _ramp(1, 7)
    y, ctx = ops.max_pool2d_forward(x, (1, 2), stride=(1, 2), dilation=(1, 3), backend="loops")
    np.testing.assert_array_equal(y[0, 0], [[3, 5]])
    np.testing.assert_array_equal(ops.max_pool2d_backward(np.ones_like(y), ctx)[0, 0],
                                  [[0, 0, 0, 1, 0, 1, 0]])
    # ceil_mode adds window {4, 7}: 7 is past the input, so it holds x[4] alone
    y, _ = ops.max_pool2d_forward(x, (1, 2), stride=(1, 2), dilation=(1, 3), ceil_mode=True,
                                  backend="loops")
    np.testing.assert_array_equal(y[0, 0], [[3, 5, 4]])


# ------------------------------------------------------------------ loops vs torch

GRID = [(H, K, S, P) for H, K, S, P in itertools.product((4, 5, 7), (2, 3), (1, 2, 3), (0, 1))
        if P <= K // 2]


def _torch_avg(x, dy, K, S, P, ceil, cip, div):
    t = torch.tensor(x, requires_grad=True)
    y = F.avg_pool2d(t, K, S, P, ceil_mode=ceil, count_include_pad=cip, divisor_override=div)
    y.backward(torch.tensor(dy))
    return y.detach().numpy(), t.grad.numpy()


@needs_torch
@pytest.mark.parametrize("H,K,S,P", GRID)
@pytest.mark.parametrize("ceil", [False, True])
@pytest.mark.parametrize("cip,div", [(True, None), (False, None), (True, 5)])
def test_avg_loops_matches_torch(H, K, S, P, ceil, cip, div):
    rng = np.random.default_rng(H * 100 + K * 10 + S)
    x = rng.standard_normal((2, 2, H, H + 1))
    y, ctx = ops.avg_pool2d_forward(x, K, S, P, ceil, cip, div, backend="loops")
    dy = rng.standard_normal(y.shape)
    ty, tdx = _torch_avg(x, dy, K, S, P, ceil, cip, div)
    assert y.shape == ty.shape
    np.testing.assert_allclose(y, ty, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ops.avg_pool2d_backward(dy, ctx), tdx, rtol=1e-12, atol=1e-12)


@needs_torch
@pytest.mark.parametrize("H,K,S,P", GRID)
@pytest.mark.parametrize("ceil", [False, True])
def test_max_loops_matches_torch(H, K, S, P, ceil):
    rng = np.random.default_rng(H * 100 + K * 10 + S)
    x = rng.standard_normal((2, 2, H, H + 1))
    y, ctx = ops.max_pool2d_forward(x, K, S, P, ceil_mode=ceil, backend="loops")
    dy = rng.standard_normal(y.shape)
    t = torch.tensor(x, requires_grad=True)
    ty = F.max_pool2d(t, K, S, P, ceil_mode=ceil)
    ty.backward(torch.tensor(dy))
    assert y.shape == tuple(ty.shape)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_allclose(ops.max_pool2d_backward(dy, ctx), t.grad.numpy(), rtol=1e-12,
                               atol=1e-12)


@needs_torch
@pytest.mark.parametrize("H,K,S,P", GRID)
@pytest.mark.parametrize("D", [2, 3])
@pytest.mark.parametrize("ceil", [False, True])
def test_dilated_max_loops_matches_torch(H, K, S, P, D, ceil):
    rng = np.random.default_rng(H * 100 + K * 10 + S + D)
    x = rng.standard_normal((2, 2, H, H + 1))
    t = torch.tensor(x, requires_grad=True)
    try:
        ty = F.max_pool2d(t, K, S, P, D, ceil)
    except RuntimeError:                    # PyTorch refuses it: so must fastcnn
        with pytest.raises(ValueError, match="spans more than the padded input"):
            ops.max_pool2d_forward(x, K, S, P, D, ceil, backend="loops")
        return
    y, ctx = ops.max_pool2d_forward(x, K, S, P, D, ceil, backend="loops")
    dy = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(dy))
    assert y.shape == tuple(ty.shape)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_allclose(ops.max_pool2d_backward(dy, ctx), t.grad.numpy(), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("cip,div", [(True, None), (False, None), (True, 3)])
def test_avg_loops_gradient_is_the_numerical_one(cip, div):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 6, 5))
    def f(a):
        return ops.avg_pool2d_forward(a, 3, 2, 1, True, cip, div, backend="loops")[0]
    y, ctx = ops.avg_pool2d_forward(x, 3, 2, 1, True, cip, div, backend="loops")
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(ops.avg_pool2d_backward(dy, ctx),
                               numerical_gradient(f, x, dy), rtol=1e-6, atol=1e-8)


def test_max_loops_gradient_is_the_numerical_one():
    rng = np.random.default_rng(2)
    x = rng.permutation(60).reshape(1, 2, 6, 5).astype(np.float64)   # no ties
    def f(a):
        return ops.max_pool2d_forward(a, 2, 2, 1, ceil_mode=True, backend="loops")[0]
    y, ctx = ops.max_pool2d_forward(x, 2, 2, 1, ceil_mode=True, backend="loops")
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(ops.max_pool2d_backward(dy, ctx),
                               numerical_gradient(f, x, dy), rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------ every backend vs loops

AGREE = [(5, 2, 2, 0), (7, 3, 2, 1), (6, 3, 2, 1), (4, 2, 3, 1), (9, 3, 3, 1), (1, 2, 2, 0)]


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H,K,S,P,ceil,cip,div", [
    (*shape, *mode) for shape, mode in itertools.product(AGREE, [
        (True, True, None), (True, False, None), (False, False, None), (True, True, 7),
        (False, True, -2)])
    if mode[0] or shape[1] <= shape[0]])   # floor mode refuses a kernel larger than H
def test_avg_backends_agree_with_loops(backend, dtype, H, K, S, P, ceil, cip, div):
    rng = np.random.default_rng(H + K + S)
    x = rng.standard_normal((2, 3, H, H + 2)).astype(dtype)
    dy = None
    got, want = [], []
    for name, out in ((backend, got), ("loops", want)):
        y, ctx = ops.avg_pool2d_forward(x, K, S, P, ceil, cip, div, backend=name)
        dy = rng.standard_normal(y.shape).astype(dtype) if dy is None else dy
        out += [y, ops.avg_pool2d_backward(dy, ctx)]
    tol = TOL[dtype]
    for g, w in zip(got, want):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H,K,S,P", AGREE)
def test_max_ceil_mode_backends_agree_with_loops(backend, dtype, H, K, S, P):
    rng = np.random.default_rng(H + K + S)
    x = rng.standard_normal((2, 3, H, H + 2)).astype(dtype)
    x[0, 0] = -np.inf                       # all -inf plane: the first real element wins
    y, ctx = ops.max_pool2d_forward(x, K, S, P, ceil_mode=True, backend=backend)
    ry, rctx = ops.max_pool2d_forward(x, K, S, P, ceil_mode=True, backend="loops")
    dy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_array_equal(y, ry)
    # overlapping windows sum their gradients in another order
    np.testing.assert_allclose(ops.max_pool2d_backward(dy, ctx),
                               ops.max_pool2d_backward(dy, rctx), rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K,S,P,D,ceil", [(2, 1, 1, 2, False), (3, 2, 1, 2, True),
                                          (2, 3, 1, 3, True), ((2, 3), (1, 2), (1, 0), (3, 2),
                                                               True)])
def test_dilated_max_backends_agree_with_loops(backend, dtype, K, S, P, D, ceil):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 9, 8)).astype(dtype)
    x[0, 0] = -np.inf                       # all -inf plane: the first real element wins
    x[1, 1, ::2] = 1.0                      # ties: the first maximum wins
    y, ctx = ops.max_pool2d_forward(x, K, S, P, D, ceil, backend=backend)
    ry, rctx = ops.max_pool2d_forward(x, K, S, P, D, ceil, backend="loops")
    dy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_array_equal(y, ry)
    dx = ops.max_pool2d_backward(dy, ctx)
    assert dx.dtype == dtype
    np.testing.assert_allclose(dx, ops.max_pool2d_backward(dy, rctx), rtol=TOL[dtype],
                               atol=TOL[dtype])


# Windows past every edge: the compiled kernels clip each window to the
# input themselves (no padded or extended copy), so top/left windows start
# in the padding and ceil_mode's bottom/right ones end past it, with a
# different kernel, stride and padding per axis.
EDGES = [((3, 4), (2, 3), (1, 2), (8, 11)),     # ceil adds a row and a column
         ((2, 3), (3, 2), (1, 1), (7, 6)),
         ((3, 3), (2, 2), (1, 1), (2, 2)),     # a window larger than the rest of the input
         ((1, 3), (1, 3), (0, 1), (1, 8))]


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K,S,P,HW", EDGES)
@pytest.mark.parametrize("ceil", [False, True])
def test_windows_past_every_edge_agree_with_loops(backend, dtype, K, S, P, HW, ceil):
    rng = np.random.default_rng(sum(HW))
    x = rng.standard_normal((2, 3, *HW)).astype(dtype)
    x[1, 2] = -np.inf                       # all -inf plane: the first real element wins
    tol = TOL[dtype]
    for cip, div in ((True, None), (False, None), (True, -3), (False, 1)):
        y, ctx = ops.avg_pool2d_forward(x, K, S, P, ceil, cip, div, backend=backend)
        ry, rctx = ops.avg_pool2d_forward(x, K, S, P, ceil, cip, div, backend="loops")
        dy = rng.standard_normal(y.shape).astype(dtype)
        np.testing.assert_allclose(y, ry, rtol=tol, atol=tol)
        np.testing.assert_allclose(ops.avg_pool2d_backward(dy, ctx),
                                   ops.avg_pool2d_backward(dy, rctx), rtol=tol, atol=tol)
    for D in (1, 2):
        if not ceil and any(h + 2 * p < d * (k - 1) + 1 for h, k, p, d in zip(HW, K, P, (D, D))):
            continue                        # floor mode has no window there
        y, ctx = ops.max_pool2d_forward(x, K, S, P, D, ceil, backend=backend)
        ry, rctx = ops.max_pool2d_forward(x, K, S, P, D, ceil, backend="loops")
        dy = rng.standard_normal(y.shape).astype(dtype)
        np.testing.assert_array_equal(y, ry)
        np.testing.assert_allclose(ops.max_pool2d_backward(dy, ctx),
                                   ops.max_pool2d_backward(dy, rctx), rtol=tol, atol=tol)


# ------------------------------------------------------------------ layers

def test_layers_take_pytorchs_arguments():
    x = _ramp(6, 6)
    layer = nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)
    with fastcnn.use_backend("loops"):
        np.testing.assert_array_equal(layer.forward(x), ops.avg_pool2d_forward(
            x, 3, 2, 1, True, False)[0])
        assert layer.forward(x)[0, 0, 3, 3] == 35.0
        assert nn.MaxPool2d(2, ceil_mode=True).forward(_ramp(5, 5)).shape == (1, 1, 3, 3)
        assert nn.MaxPool2d(2, 1, 0, 2).forward(_ramp(5, 5)).shape == (1, 1, 3, 3)
    assert "divisor_override=None" in repr(nn.AvgPool2d(2))


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("kwargs,error,match", [
    (dict(ceil_mode=1), TypeError, "ceil_mode must be a bool"),
    (dict(ceil_mode="yes"), TypeError, "ceil_mode must be a bool"),
    (dict(count_include_pad=None), TypeError, "count_include_pad must be a bool"),
    (dict(divisor_override=0), ValueError, "divisor_override must not be zero"),
    (dict(divisor_override=2.0), TypeError, "divisor_override must be None or an int"),
    (dict(divisor_override=True), TypeError, "divisor_override must be None or an int"),
])
def test_bad_avg_arguments_are_refused_before_any_kernel(monkeypatch, kwargs, error, match):
    from fastcnn import backend as registry
    for name in BACKENDS:   # a kernel that runs fails the test
        monkeypatch.setattr(registry.get_module(name), "avg_pool2d_forward",
                            lambda *a: pytest.fail("a kernel ran"))
    with pytest.raises(error, match=match):
        ops.avg_pool2d_forward(np.ones((1, 1, 4, 4)), 2, **kwargs)


@pytest.mark.parametrize("dilation,error", [(0, ValueError), ((1, 0), ValueError),
                                            (1.5, TypeError), ((1, 2, 3), TypeError)])
def test_bad_dilation_is_refused(dilation, error):
    with pytest.raises(error, match="dilation"):
        ops.max_pool2d_forward(np.ones((1, 1, 4, 4)), 2, dilation=dilation)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,K,S,P,D", [
    ((1, 1, 1, 1), 2, 1, 1, 2),          # taps -1, 1: the input is row 0 alone
    ((1, 1, 2, 9), (2, 1), 1, (1, 0), (3, 1)),   # taps -1, 2 over 2 rows
])
def test_dilated_window_that_steps_over_the_input_is_refused(backend, shape, K, S, P, D):
    # PyTorch returns -inf there with an argmax outside the input; a window
    # must hold an input element, before any kernel runs
    with pytest.raises(ValueError, match="holds no input element"):
        ops.max_pool2d_forward(np.ones(shape), K, S, P, D, backend=backend)


def test_dilated_windows_that_reach_the_input_pass():
    # windows at -1 (taps -1, 1) and 0 (taps 0, 2) over 2 rows: rows 1 and 0
    y, _ = ops.max_pool2d_forward(np.arange(4.0).reshape(1, 1, 2, 2), 2, 1, 1, 2,
                                  backend="loops")
    np.testing.assert_array_equal(y[0, 0], [[3.0, 2.0], [1.0, 0.0]])


def test_bad_ceil_mode_for_max_is_refused():
    with pytest.raises(TypeError, match="ceil_mode must be a bool"):
        ops.max_pool2d_forward(np.ones((1, 1, 4, 4)), 2, ceil_mode=0)
    with pytest.raises(ValueError, match="padding must be at most half"):
        ops.max_pool2d_forward(np.ones((1, 1, 4, 4)), 2, padding=2, ceil_mode=True)
