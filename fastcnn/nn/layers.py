"""The layers: Conv2d, MaxPool2d, AvgPool2d, AdaptiveMaxPool2d, AdaptiveAvgPool2d,
ReLU, Flatten, Linear, Dropout.

Conv2d, the pooling layers and ReLU call only the public ``fastcnn.ops``,
never a backend: whichever backend is in force (``fastcnn.use_backend``) does
their work, and backward runs on the backend its forward ran on (the ctx
knows). Linear, Flatten and Dropout are a few NumPy lines each, identical for
every backend; Linear's products go through fastcnn's own ``matmul`` (BLAS
on one thread per piece, pieces on fastcnn's thread pool), because a
multi-threaded OpenBLAS product leaves its workers spinning on the cores the
next conv or pooling kernel needs. Every layer keeps its input dtype:
float32 in, float32 out.

Shapes: x (N, C, H, W) for conv/pool, (N, D) for Linear.

``backward(dy, input_grad=False)`` returns None instead of dx: Conv2d and
Linear still fill their grads but skip dx's work; a layer without
parameters then only drops its forward's state.
"""
import numpy as np

from fastcnn import ops
from fastcnn.backends._concurrent import matmul, matmuls
from fastcnn.nn import init as _init
from fastcnn.nn.module import Module, Parameter, input_grad_flag


def _rng(rng):
    return rng if rng is not None else np.random.default_rng()


def _repr_pair(v):
    """An int or pair as PyTorch's reprs show it, (h, w); a string ('same') as it is."""
    return v if isinstance(v, str) else tuple(int(i) for i in np.broadcast_to(v, 2))


class _Layer(Module):
    """Remembers the forward state and refuses a backward without a forward."""

    _saved = None

    def _take(self):
        saved, self._saved = self._saved, None
        if saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called without a "
                               f"preceding forward")
        return saved

    def _no_input_grad(self, input_grad):
        """Whether backward is asked for no dx (input_grad False), the
        forward's state then dropped: a layer without parameters has
        nothing left to do."""
        if input_grad_flag(input_grad):
            return False
        self._take()
        return True


class Conv2d(_Layer):
    """2-D convolution (PyTorch's nn.Conv2d): w (F, C // groups, KH, KW), b (F,).

    groups splits the channels into that many independent convolutions
    (groups = in_channels is depthwise); He init counts a filter's inputs,
    fan_in = (C // groups) * KH * KW, as the layer sees them."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, *, dtype="float32", rng=None):
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("groups", groups)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Conv2d: {name} must be a positive integer, got {value!r}")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if value % groups:
                raise ValueError(f"Conv2d: {name} ({value}) must be divisible by groups "
                                 f"({groups})")
        kh, kw = (kernel_size, kernel_size) if np.isscalar(kernel_size) else kernel_size
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        cg = in_channels // groups
        shape = (out_channels, cg, kh, kw)
        self.weight = Parameter(_init.kaiming_normal(shape, cg * kh * kw, _rng(rng), dtype))
        self.bias = Parameter(_init.zeros((out_channels,), dtype)) if bias else None

    def forward(self, x):
        b = None if self.bias is None else self.bias.data
        y, self._saved = ops.conv2d_forward(x, self.weight.data, b, self.stride, self.padding,
                                            self.dilation, self.groups)
        return y

    def backward(self, dy, input_grad=True):
        input_grad = input_grad_flag(input_grad)
        dx, dw, db = ops.conv2d_backward(dy, self._take(), input_grad=input_grad)
        self.weight.grad = dw
        if self.bias is not None:
            self.bias.grad = db
        return dx

    def __repr__(self):
        # PyTorch's form: pairs, and padding, dilation, groups, bias only when not the default
        F, Cg, KH, KW = self.weight.shape
        s = (f"Conv2d({Cg * self.groups}, {F}, kernel_size={(KH, KW)}, "
             f"stride={_repr_pair(self.stride)}")
        if _repr_pair(self.padding) != (0, 0):
            s += f", padding={_repr_pair(self.padding)}"
        if _repr_pair(self.dilation) != (1, 1):
            s += f", dilation={_repr_pair(self.dilation)}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + (", bias=False)" if self.bias is None else ")")


class _Pool2d(_Layer):
    _forward = _backward = None   # set by the subclasses to the ops pair
    _extra = ()                   # the op's arguments after padding, in its order

    def forward(self, x):
        y, self._saved = type(self)._forward(x, *self.op_args())
        return y

    def op_args(self):
        """What this layer passes to its op after x, in the op's order."""
        return (self.kernel_size, self.stride, self.padding,
                *(getattr(self, name) for name in self._extra))

    def backward(self, dy, input_grad=True):
        if self._no_input_grad(input_grad):
            return None
        return type(self)._backward(dy, self._take())

    def __repr__(self):
        extra = "".join(f", {name}={getattr(self, name)}" for name in self._extra)
        return (f"{type(self).__name__}(kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}{extra})")


class MaxPool2d(_Pool2d):
    """Max pooling (PyTorch's nn.MaxPool2d, its arguments in its order).
    return_indices=True is refused: the argmax stays inside the op's ctx,
    which backward uses, and there is no max-unpooling to hand it to."""
    _forward, _backward = staticmethod(ops.max_pool2d_forward), staticmethod(ops.max_pool2d_backward)
    _extra = ("dilation", "ceil_mode")

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        if return_indices:
            raise ValueError("MaxPool2d: return_indices=True is not supported (fastcnn keeps "
                             "the argmax inside the op's ctx for backward)")
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode


class AvgPool2d(_Pool2d):
    """Average pooling (PyTorch's nn.AvgPool2d)."""
    _forward, _backward = staticmethod(ops.avg_pool2d_forward), staticmethod(ops.avg_pool2d_backward)
    _extra = ("ceil_mode", "count_include_pad", "divisor_override")

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad
        self.divisor_override = divisor_override


class _AdaptivePool2d(_Layer):
    _forward = _backward = None   # set by the subclasses to the ops pair

    def __init__(self, output_size):
        self.output_size = output_size

    def forward(self, x):
        y, self._saved = type(self)._forward(x, self.output_size)
        return y

    def backward(self, dy, input_grad=True):
        if self._no_input_grad(input_grad):
            return None
        return type(self)._backward(dy, self._take())

    def __repr__(self):
        return f"{type(self).__name__}(output_size={self.output_size})"


class AdaptiveMaxPool2d(_AdaptivePool2d):
    """Max pooling to a given output size (PyTorch's nn.AdaptiveMaxPool2d)."""
    _forward = staticmethod(ops.adaptive_max_pool2d_forward)
    _backward = staticmethod(ops.adaptive_max_pool2d_backward)


class AdaptiveAvgPool2d(_AdaptivePool2d):
    """Average pooling to a given output size (PyTorch's nn.AdaptiveAvgPool2d);
    output_size 1 is global average pooling."""
    _forward = staticmethod(ops.adaptive_avg_pool2d_forward)
    _backward = staticmethod(ops.adaptive_avg_pool2d_backward)


class ReLU(_Layer):
    """max(x, 0) through ``fastcnn.ops.relu_forward`` (a NaN reaches the loss)."""

    def forward(self, x):
        y, self._saved = ops.relu_forward(x)
        return y

    def backward(self, dy, input_grad=True):
        if self._no_input_grad(input_grad):
            return None
        return ops.relu_backward(dy, self._take())

    def __repr__(self):
        return "ReLU()"


class Flatten(_Layer):
    """(N, C, H, W) -> (N, C*H*W)."""

    def forward(self, x):
        self._saved = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, input_grad=True):
        if self._no_input_grad(input_grad):
            return None
        return dy.reshape(self._take())

    def __repr__(self):
        return "Flatten()"


class Linear(_Layer):
    """y = x @ w.T + b with w (out_features, in_features), as PyTorch's nn.Linear.
    ``init``: "kaiming" (He, for a layer followed by ReLU) or "logits" (small
    weights, for the output layer; see ``fastcnn.nn.init``)."""

    def __init__(self, in_features, out_features, bias=True, *, init="kaiming",
                 dtype="float32", rng=None):
        if init not in _init.WEIGHT_INITS:
            raise ValueError(f"Linear: init must be one of {', '.join(_init.WEIGHT_INITS)}, "
                             f"got {init!r}")
        draw = _init.WEIGHT_INITS[init]
        self.weight = Parameter(draw((out_features, in_features), in_features, _rng(rng), dtype))
        self.bias = Parameter(_init.zeros((out_features,), dtype)) if bias else None

    def forward(self, x):
        if x.dtype != self.weight.dtype:
            # the conv ops refuse mixed dtypes too; silent upcasting would hide a bug
            raise TypeError(f"Linear: x is {x.dtype} but the weights are {self.weight.dtype}")
        self._saved = x
        y = matmul(x, self.weight.data.T)
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, dy, input_grad=True):
        input_grad = input_grad_flag(input_grad)
        x = self._take()
        if input_grad:              # dw and dx side by side, one product a thread
            self.weight.grad, dx = matmuls([(dy.T, x), (dy, self.weight.data)])
        else:
            self.weight.grad, dx = matmul(dy.T, x), None
        if self.bias is not None:
            self.bias.grad = dy.sum(axis=0)
        return dx

    def __repr__(self):
        out_f, in_f = self.weight.shape
        return f"Linear({in_f}, {out_f}, bias={self.bias is not None})"


class Dropout(_Layer):
    """Inverted dropout: in training, zero each value with probability p and
    scale the rest by 1/(1-p); the identity in eval mode. The masks come from
    the layer's own generator, reset by ``seed()``, so runs are repeatable."""

    def __init__(self, p=0.5, *, rng=None):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.rng = _rng(rng)

    def seed(self, seed):
        self.rng = np.random.default_rng(seed)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._saved = False     # backward is the identity
            return x
        # drawn in float64 whatever the dtype, so float32 and float64 runs share masks
        keep = self.rng.random(x.shape) >= self.p
        self._saved = keep
        return x * keep * x.dtype.type(1.0 / (1.0 - self.p))

    def backward(self, dy, input_grad=True):
        if self._no_input_grad(input_grad):
            return None
        keep = self._take()
        if keep is False:
            return dy
        return dy * keep * dy.dtype.type(1.0 / (1.0 - self.p))

    def __repr__(self):
        return f"Dropout(p={self.p})"
