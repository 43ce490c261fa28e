"""The `loops` reference against independent oracles: finite differences,
hand-computed values, and PyTorch when it is installed."""
import numpy as np
import pytest

from fastcnn import ops
from fastcnn.testing import assert_close, numerical_gradient

from cases import CONV_CASES, POOL_CASES, case_id, conv_inputs, pool_inputs

L = {"backend": "loops"}


@pytest.mark.parametrize("case", CONV_CASES[:8], ids=case_id)
def test_conv_loops_matches_finite_differences(case):
    x, w, b, stride, padding = conv_inputs(case, np.float64, seed=5)
    y, ctx = ops.conv2d_forward(x, w, b, stride, padding, **L)
    dy = np.random.default_rng(6).standard_normal(y.shape)
    dx, dw, db = ops.conv2d_backward(dy, ctx)
    f_x = lambda x_: ops.conv2d_forward(x_, w, b, stride, padding, **L)[0]  # noqa: E731
    f_w = lambda w_: ops.conv2d_forward(x, w_, b, stride, padding, **L)[0]  # noqa: E731
    assert_close(dx, numerical_gradient(f_x, x, dy), 1e-6, "dx")
    assert_close(dw, numerical_gradient(f_w, w, dy), 1e-6, "dw")
    bb = b if b is not None else np.zeros(w.shape[0])
    f_b = lambda b_: ops.conv2d_forward(x, w, b_, stride, padding, **L)[0]  # noqa: E731
    assert_close(db, numerical_gradient(f_b, bb, dy), 1e-6, "db")


@pytest.mark.parametrize("op", ["max", "avg"])
@pytest.mark.parametrize("case", POOL_CASES[:5], ids=case_id)
def test_pool_loops_matches_finite_differences(case, op):
    x, k, s, p = pool_inputs(case, np.float64, seed=7)   # distinct values: max is differentiable
    fwd, bwd = getattr(ops, f"{op}_pool2d_forward"), getattr(ops, f"{op}_pool2d_backward")
    y, ctx = fwd(x, k, s, p, **L)
    dy = np.random.default_rng(8).standard_normal(y.shape)
    num = numerical_gradient(lambda x_: fwd(x_, k, s, p, **L)[0], x, dy)
    assert_close(bwd(dy, ctx), num, 1e-6, "dx")


def test_conv_hand_computed():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    w = np.array([[[[1.0, 0.0], [0.0, -1.0]]]])             # x[i, j] - x[i+1, j+1]
    y, ctx = ops.conv2d_forward(x, w, np.array([0.5]), stride=2, **L)
    np.testing.assert_array_equal(y, [[[[-4.5, -4.5], [-4.5, -4.5]]]])
    dx, dw, db = ops.conv2d_backward(np.ones_like(y), ctx)
    np.testing.assert_array_equal(dx[0, 0], [[1, 0, 1, 0], [0, -1, 0, -1]] * 2)
    # dw[kh, kw] = sum of the inputs each tap saw: x[0::2, 0::2] etc.
    np.testing.assert_array_equal(dw[0, 0], [[0 + 2 + 8 + 10, 1 + 3 + 9 + 11],
                                             [4 + 6 + 12 + 14, 5 + 7 + 13 + 15]])
    np.testing.assert_array_equal(db, [4.0])


def test_conv_same_padding_even_kernel_pads_bottom_right():
    # a 2x2 kernel picking the bottom-right tap reads one row/col past the end
    x = np.arange(9, dtype=np.float64).reshape(1, 1, 3, 3)
    w = np.zeros((1, 1, 2, 2)); w[0, 0, 1, 1] = 1.0
    y, _ = ops.conv2d_forward(x, w, padding="same", **L)
    np.testing.assert_array_equal(y[0, 0], [[4, 5, 0], [7, 8, 0], [0, 0, 0]])


def test_pool_hand_computed():
    x = np.array([[[[1, 2, 5, 3], [4, 0, 1, 1], [-1, -2, 7, 7], [-3, -4, 7, 6]]]], dtype=np.float64)
    y, ctx = ops.max_pool2d_forward(x, 2, **L)
    np.testing.assert_array_equal(y[0, 0], [[4, 5], [-1, 7]])
    dx = ops.max_pool2d_backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), ctx)
    np.testing.assert_array_equal(dx[0, 0], [[0, 0, 2, 0], [1, 0, 0, 0], [3, 0, 4, 0], [0, 0, 0, 0]])
    ya, ctxa = ops.avg_pool2d_forward(x, 2, **L)
    np.testing.assert_array_equal(ya[0, 0], [[7 / 4, 10 / 4], [-10 / 4, 27 / 4]])
    # padding 1 counts the zeros: the corner window holds just x[0, 0] = 1
    yp, _ = ops.avg_pool2d_forward(x, 3, stride=3, padding=1, **L)
    assert yp[0, 0, 0, 0] == pytest.approx((1 + 2 + 4 + 0) / 9)


# ---------------------------------------------------------------- PyTorch oracle


def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("case", CONV_CASES, ids=case_id)
def test_conv_loops_matches_torch(case):
    torch = _torch()
    F = torch.nn.functional
    x, w, b, stride, padding = conv_inputs(case, np.float64, seed=11)
    y, ctx = ops.conv2d_forward(x, w, b, stride, padding, **L)
    dy = np.random.default_rng(12).standard_normal(y.shape)
    dx, dw, db = ops.conv2d_backward(dy, ctx)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b if b is not None else np.zeros(w.shape[0]), requires_grad=True)
    ty = F.conv2d(tx, tw, tb, stride=stride, padding=padding)
    ty.backward(torch.tensor(dy))
    for name, got, want in (("y", y, ty), ("dx", dx, tx.grad), ("dw", dw, tw.grad),
                            ("db", db, tb.grad)):
        assert_close(got, want.detach().numpy(), 1e-9, name)


@pytest.mark.parametrize("op", ["max", "avg"])
@pytest.mark.parametrize("case", POOL_CASES, ids=case_id)
def test_pool_loops_matches_torch(case, op):
    torch = _torch()
    x, k, s, p = pool_inputs(case, np.float64, seed=13)
    fwd, bwd = getattr(ops, f"{op}_pool2d_forward"), getattr(ops, f"{op}_pool2d_backward")
    y, ctx = fwd(x, k, s, p, **L)
    dy = np.random.default_rng(14).standard_normal(y.shape)
    tx = torch.tensor(x, requires_grad=True)
    tf = getattr(torch.nn.functional, f"{op}_pool2d")
    ty = tf(tx, k, s, p)
    ty.backward(torch.tensor(dy))
    assert_close(y, ty.detach().numpy(), 1e-9, "y")
    assert_close(bwd(dy, ctx), tx.grad.numpy(), 1e-9, "dx")


def test_max_pool_minus_inf_window_matches_torch():
    torch = _torch()
    x = np.array([[[[-np.inf, -np.inf, -np.inf], [1.0, -2.0, 2.0], [-np.inf, 0.5, -np.inf]]]])
    y, ctx = ops.max_pool2d_forward(x, 2, 1, 1, **L)
    dy = np.arange(1.0, 1.0 + y.size).reshape(y.shape)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.max_pool2d(tx, 2, 1, 1)
    ty.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(ops.max_pool2d_backward(dy, ctx), tx.grad.numpy())
