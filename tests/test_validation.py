"""Bad input gets a clear TypeError/ValueError from the public ops, before any
kernel runs, on every backend (the kernels would crash or read out of bounds)."""
import numpy as np
import pytest

from fastcnn import ops
from fastcnn.backend import get_module

from cases import BACKENDS

x4 = np.zeros((2, 3, 8, 8))
w4 = np.zeros((4, 3, 3, 3))


x4c = np.zeros((2, 4, 8, 8))

# dilation and groups: each bad value names its argument (None: accepted)
CONV_DG_BAD = [
    (dict(x=x4, w=w4, groups=0), ValueError, r"groups must be positive, got 0"),
    (dict(x=x4, w=w4, groups=-3), ValueError, r"groups must be positive, got -3"),
    (dict(x=x4, w=w4, groups=1.0), TypeError, r"groups must be an int, got 1.0"),
    (dict(x=x4, w=w4, groups=True), TypeError, r"groups must be an int, got True"),
    (dict(x=x4, w=w4, groups=None), TypeError, r"groups must be an int, got None"),
    (dict(x=x4c, w=np.zeros((4, 2, 3, 3)), groups=3), ValueError,
     r"groups must divide both the input channels \(4, x.shape\[1\]\) and the output "
     r"channels \(4, w.shape\[0\]\), got groups=3"),
    (dict(x=x4, w=np.zeros((4, 1, 3, 3)), groups=3), ValueError,
     r"groups must divide .* output channels \(4, w.shape\[0\]\)"),
    (dict(x=x4c, w=np.zeros((4, 4, 3, 3)), groups=2), ValueError,
     r"w must have shape \(F, C // groups, KH, KW\) = \(4, 2, 3, 3\) for x's 4 channels and "
     r"groups=2, got \(4, 4, 3, 3\)"),
    (dict(x=x4, w=np.zeros((6, 3, 3, 3)), groups=3), ValueError,
     r"w must have shape \(F, C // groups, KH, KW\) = \(6, 1, 3, 3\)"),
    (dict(x=x4c, w=np.zeros((4, 2, 3, 3))), ValueError,          # groups=2's w, groups left at 1
     r"w must have shape .* = \(4, 4, 3, 3\) .* groups=1, got \(4, 2, 3, 3\)"),
    (dict(x=x4, w=np.zeros((6, 1, 3, 3)), groups=np.int64(3)), None, None),   # depthwise x2
    (dict(x=x4, w=w4, dilation=0), ValueError, r"dilation must be positive, got 0"),
    (dict(x=x4, w=w4, dilation=(1, 0)), ValueError, r"dilation must be positive, got \(1, 0\)"),
    (dict(x=x4, w=w4, dilation=(-2, 1)), ValueError, r"dilation must be positive"),
    (dict(x=x4, w=w4, dilation=1.5), TypeError, r"dilation must be an int or a pair"),
    (dict(x=x4, w=w4, dilation=(1, 2, 3)), TypeError, r"dilation must be an int or a pair"),
    (dict(x=x4, w=w4, dilation=2**31), ValueError, r"dilation must be at most"),
    (dict(x=x4, w=w4, dilation=4), ValueError,
     r"kernel w \(3x3\) with dilation=\(4, 4\) spans \(9x9\) is larger than the padded "
     r"input \(8x8"),
    (dict(x=x4, w=w4, dilation=4, padding=1), None, None),         # span 9 <= 8 + 2: fine
    (dict(x=x4, w=w4, dilation=(1, 4)), ValueError, r"spans \(3x9\) is larger"),
    (dict(x=x4, w=w4, padding="same", stride=2, dilation=2), ValueError,
     r"padding='same' requires stride 1, got stride=\(2, 2\)"),
    (dict(x=x4, w=w4, padding="same", stride=(1, 2)), ValueError,
     r"padding='same' requires stride 1, got stride=\(1, 2\)"),
    (dict(x=x4, w=w4, padding="same", dilation=(3, 2)), None, None),  # 'same' over any span
]


@pytest.fixture(params=BACKENDS)
def be(request):
    return {"backend": request.param}


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(x=np.zeros((3, 8, 8)), w=w4), ValueError, r"x must have 4 dimensions.*\(3, 8, 8\)"),
    (dict(x=x4, w=np.zeros((4, 3, 3))), ValueError, r"w must have 4 dimensions"),
    (dict(x=x4, w=np.zeros((4, 2, 3, 3))), ValueError, r"w must have shape \(F, C // groups, KH, KW\) = \(4, 3, 3, 3\).*got \(4, 2, 3, 3\)"),
    (dict(x=x4, w=w4, b=np.zeros(3)), ValueError, r"b must have shape \(4,\)"),
    (dict(x=x4, w=w4, b=np.zeros((4, 1))), ValueError, r"b must have 1 dimensions"),
    (dict(x=x4, w=np.zeros((4, 3, 9, 3))), ValueError, r"kernel w \(9x3\) is larger than the padded input \(8x8"),
    (dict(x=x4, w=np.zeros((4, 3, 9, 3)), padding=1), None, None),   # 9 <= 8 + 2: fine
    (dict(x=x4, w=w4, stride=0), ValueError, r"stride must be positive"),
    (dict(x=x4, w=w4, stride=(1, -2)), ValueError, r"stride must be positive"),
    (dict(x=x4, w=w4, stride=1.5), TypeError, r"stride must be an int or a pair"),
    (dict(x=x4, w=w4, stride=(1, 2, 3)), TypeError, r"stride must be an int or a pair"),
    (dict(x=x4, w=w4, padding=-1), ValueError, r"padding must be non-negative"),
    (dict(x=x4, w=w4, padding="full"), ValueError, r"padding must be an int.*'same' or 'valid'"),
    (dict(x=x4, w=w4, padding="same", stride=2), ValueError, r"padding='same' requires stride 1"),
    (dict(x=x4.astype(np.int64), w=w4), TypeError, r"x must have dtype float32 or float64, got int64"),
    (dict(x=x4, w=w4.astype(np.float32)), TypeError, r"w has dtype float32 but the input x is float64"),
    (dict(x=x4, w=w4, b=np.zeros(4, np.float32)), TypeError, r"b has dtype float32"),
    (dict(x=x4.tolist(), w=w4), TypeError, r"x must be a numpy.ndarray, got list"),
    (dict(x=np.zeros((0, 3, 8, 8)), w=w4), ValueError, r"x must not be empty"),
    (dict(x=x4.astype(np.float16), w=w4.astype(np.float16)), TypeError, r"float32 or float64, got float16"),
] + CONV_DG_BAD)
def test_conv_bad_input(be, kwargs, exc, match):
    if exc is None:
        ops.conv2d_forward(**kwargs, **be)
        return
    with pytest.raises(exc, match=match):
        ops.conv2d_forward(**kwargs, **be)


@pytest.mark.parametrize("op", ["max", "avg"])
@pytest.mark.parametrize("args, exc, match", [
    ((np.zeros((8, 8)), 2), ValueError, r"x must have 4 dimensions"),
    ((x4, 0), ValueError, r"kernel_size must be positive"),
    ((x4, 2, 0), ValueError, r"stride must be positive"),
    ((x4, 2, 2, -1), ValueError, r"padding must be non-negative"),
    ((x4, 3, 1, 2), ValueError, r"padding must be at most half the kernel size"),
    ((x4, (2, 4), 1, (1, 3)), ValueError, r"padding must be at most half the kernel size"),
    ((x4, 9), ValueError, r"kernel_size \(9x9\) is larger than the padded input"),
    ((x4.astype(np.int32), 2), TypeError, r"x must have dtype float32 or float64"),
    ((x4, 2.0), TypeError, r"kernel_size must be an int or a pair"),
    ((x4, True), TypeError, r"kernel_size must be an int or a pair"),
])
def test_pool_bad_input(be, op, args, exc, match):
    with pytest.raises(exc, match=match):
        getattr(ops, f"{op}_pool2d_forward")(*args, **be)


def test_bad_gradients(be):
    y, ctx = ops.conv2d_forward(x4, w4, None, 1, 1, **be)
    with pytest.raises(ValueError, match=r"dy must have the shape of the forward output \(2, 4, 8, 8\), got \(2, 4, 8, 7\)"):
        ops.conv2d_backward(np.zeros((2, 4, 8, 7)), ctx)
    with pytest.raises(TypeError, match=r"dy has dtype float32 but the input x is float64"):
        ops.conv2d_backward(np.zeros(y.shape, np.float32), ctx)
    with pytest.raises(TypeError, match=r"dy must have dtype float32 or float64, got int64"):
        ops.conv2d_backward(np.zeros(y.shape, np.int64), ctx)
    _, pctx = ops.max_pool2d_forward(x4, 2, **be)
    with pytest.raises(TypeError, match=r"ctx must be the context returned by conv2d_forward, got max_pool2d_forward"):
        ops.conv2d_backward(y, pctx)
    with pytest.raises(TypeError, match=r"ctx must be the context returned by avg_pool2d_forward, got max_pool2d_forward"):
        ops.avg_pool2d_backward(np.zeros((2, 3, 4, 4)), pctx)
    with pytest.raises(TypeError, match=r"ctx must be the context returned by max_pool2d_forward, got tuple"):
        ops.max_pool2d_backward(np.zeros((2, 3, 4, 4)), (1, 2))
    with pytest.raises(ValueError, match=r"dy must have the shape"):
        ops.max_pool2d_backward(np.zeros((2, 3, 4, 5)), pctx)   # no silent broadcast


def test_unknown_backend_lists_available():
    with pytest.raises(ValueError, match=r"unknown backend 'cuda'; available backends: loops"):
        ops.conv2d_forward(x4, w4, backend="cuda")
    with pytest.raises(TypeError, match=r"backend must be a str"):
        ops.conv2d_forward(x4, w4, backend=3)


@pytest.mark.parametrize("kwargs, exc, match", [c for c in CONV_DG_BAD if c[1] is not None])
def test_conv_bad_input_stops_before_any_kernel(monkeypatch, kwargs, exc, match):
    # every backend's kernel replaced by one that fails the test if it runs
    def kernel_ran(*args):
        raise AssertionError("a conv kernel ran on bad input")
    for name in BACKENDS:
        monkeypatch.setattr(get_module(name), "conv2d_forward", kernel_ran)
    for name in BACKENDS:
        with pytest.raises(exc, match=match):
            ops.conv2d_forward(**kwargs, backend=name)
