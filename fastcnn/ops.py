"""The public ops: validate once, pick the backend, run its kernel.

    y, ctx = conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1,
                            *, backend=None)
    dx, dw, db = conv2d_backward(dy, ctx, *, input_grad=True)
    y, ctx = max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1,
                                ceil_mode=False, *, backend=None)
    dx = max_pool2d_backward(dy, ctx)
    y, ctx = avg_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                                count_include_pad=True, divisor_override=None, *, backend=None)
    dx = avg_pool2d_backward(dy, ctx)
    y, ctx = adaptive_avg_pool2d_forward(x, output_size, *, backend=None)
    dx = adaptive_avg_pool2d_backward(dy, ctx)
    y, ctx = adaptive_max_pool2d_forward(x, output_size, *, backend=None)
    dx = adaptive_max_pool2d_backward(dy, ctx)
    y, ctx = relu_forward(x, *, backend=None)       # any shape
    dx = relu_backward(dy, ctx)

Fused (the result and gradients of the composition, one op; see the
section at the end)::

    y, ctx = conv2d_relu_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1,
                                 *, backend=None)
    dx, dw, db = conv2d_relu_backward(dy, ctx, *, input_grad=True)
    y, ctx = conv2d_relu_max_pool2d_forward(x, w, b=None, stride=1, padding=0, dilation=1,
                                            groups=1, pool_kernel_size=2, pool_stride=None,
                                            pool_padding=0, pool_dilation=1,
                                            pool_ceil_mode=False, *, backend=None)
    dx, dw, db = conv2d_relu_max_pool2d_backward(dy, ctx, *, input_grad=True)

The conv backwards' input_grad=False returns (None, dw, db) without
computing dx: for a network's first layer, whose input (the images) needs
no gradient; PyTorch never computes it either. dw and db are the same.

Semantics are PyTorch's F.conv2d / F.max_pool2d / F.avg_pool2d (NCHW,
weights (F, C // groups, KH, KW)):

    OH = (H + PT + PB - DH*(KH-1) - 1) // SH + 1     (OW likewise)

Pooling's ceil_mode rounds up instead, keeping a last window only if it
starts inside the input or the left padding (PyTorch's rule).

Adaptive pooling is PyTorch's F.adaptive_avg_pool2d / F.adaptive_max_pool2d:
output_size (OH, OW) is given, and output row i pools input rows
floor(i*H/OH) .. ceil((i+1)*H/OH) - 1 (columns likewise); output_size 1 is
global pooling.

Every argument is checked here, before any kernel runs, so kernels trust
their input; arrays are made C-contiguous here too (a no-op when they are).
``ctx`` is opaque: it remembers the backend that ran the forward pass, and
backward runs on that same backend. Under ``fastcnn.no_grad()`` a forward
keeps nothing for its backward (the backends skip what only a backward
reads), and a backward of its ctx raises RuntimeError. This module
deliberately contains no arithmetic on the data.
"""
from fastcnn import _auto, _shapes
from fastcnn._grad import grad_enabled
from fastcnn.backend import AUTO, array_module, get_module, has_fused, resolve


# a ctx's saved under no_grad(): nothing for a backward
_NOT_KEPT = "not kept: the forward ran under fastcnn.no_grad()"


class Context:
    """What a forward pass leaves for its backward pass (treat as opaque)."""

    __slots__ = ("op", "backend", "saved", "y_shape", "dtype")

    def __init__(self, op, backend, saved, y_shape, dtype):
        self.op, self.backend = op, backend
        self.saved = saved if grad_enabled() else _NOT_KEPT
        self.y_shape, self.dtype = y_shape, dtype

    def __repr__(self):
        return (f"<fastcnn ctx op={self.op} backend={self.backend} "
                f"y_shape={self.y_shape} dtype={self.dtype}>")


def _contiguous(a):
    """a, or a C-contiguous copy by a's own module (NumPy's or CuPy's); unlike
    np.ascontiguousarray it keeps a 0-d array 0-d."""
    return a if a.flags.c_contiguous else a.copy(order="C")


def _place_error(name, where, backend):
    """The TypeError for an array of module ``where`` given to ``backend``."""
    if where == "numpy":
        return TypeError(f"{name} is a numpy.ndarray, but backend {backend!r} computes on the "
                         f"GPU and never copies between host and device inside an op: move "
                         f"the data first with cupy.asarray({name})")
    return TypeError(f"{name} is a {where}.ndarray, but backend {backend!r} computes on the "
                     f"CPU: use backend='{where}' (or 'auto'), or move the data with "
                     f"cupy.asnumpy({name})")


def _forward(op, backend, args, y_shape):
    name = resolve(backend)
    where = _shapes.array_module(args[0])
    if name == AUTO:
        name = _auto.choose(op, args, y_shape, where)   # among the backends where x lives
    if where != array_module(name):                # no hidden host<->device copies
        raise _place_error("x", where, name)
    y, saved = getattr(get_module(name), op + "_forward")(*args)
    return y, Context(op, name, saved, y_shape, args[0].dtype)


def _grad(dy, ctx, op, ndim=4):
    if not isinstance(ctx, Context) or ctx.op != op:
        got = ctx.op + "_forward" if isinstance(ctx, Context) else type(ctx).__name__
        raise TypeError(f"ctx must be the context returned by {op}_forward, got {got}")
    if ctx.saved is _NOT_KEPT:
        raise RuntimeError(f"ctx is from a {op}_forward run under fastcnn.no_grad(), which "
                           f"keeps nothing for a backward: run the forward outside it")
    dy = _shapes.array(dy, "dy", ndim, ctx.dtype)
    if _shapes.array_module(dy) != array_module(ctx.backend):
        raise _place_error("dy", _shapes.array_module(dy), ctx.backend)
    if dy.shape != ctx.y_shape:
        raise ValueError(f"dy must have the shape of the forward output {ctx.y_shape}, "
                         f"got {dy.shape}")
    return _contiguous(dy)


def _conv_args(x, w, b, stride, padding, dilation, groups):
    """conv2d's checked kernel arguments and y_shape."""
    x = _shapes.array(x, "x", 4)
    w = _shapes.array(w, "w", 4, x.dtype)
    _shapes.same_place(w, "w", x)
    N, C, H, W = x.shape
    F, Cw, KH, KW = w.shape
    groups = _shapes.groups(groups, C, F)
    if Cw * groups != C:
        raise ValueError(f"w must have shape (F, C // groups, KH, KW) = ({F}, {C // groups}, "
                         f"{KH}, {KW}) for x's {C} channels and groups={groups}, "
                         f"got {w.shape}")
    if b is not None:
        b = _shapes.array(b, "b", 1, x.dtype)
        _shapes.same_place(b, "b", x)
        if b.shape[0] != F:
            raise ValueError(f"b must have shape ({F},) to match w's {F} output channels, "
                             f"got {b.shape}")
        b = _contiguous(b)
    stride = _shapes.pair(stride, "stride", minimum=1)
    dilation = _shapes.pair(dilation, "dilation", minimum=1)
    EH, EW = (dilation[0] * (KH - 1) + 1, dilation[1] * (KW - 1) + 1)   # the dilated kernel's span
    pads = _shapes.conv_padding(padding, EH, EW, stride)
    _shapes.check_window_fits(H, W, pads, EH, EW, "kernel w" if dilation == (1, 1) else
                              f"kernel w ({KH}x{KW}) with dilation={dilation} spans")
    OH = _shapes.out_size(H, pads[0] + pads[1], EH, stride[0])
    OW = _shapes.out_size(W, pads[2] + pads[3], EW, stride[1])
    y_shape = (N, F, OH, OW)
    return (_contiguous(x), _contiguous(w), b, stride, pads, dilation, groups, y_shape), y_shape


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *, backend=None):
    """2-D cross-correlation (PyTorch's F.conv2d). x (N, C, H, W),
    w (F, C // groups, KH, KW), b (F,) or None -> y (N, F, OH, OW).
    padding: int, (h, w), 'same' (stride 1) or 'valid'; dilation: int or
    (h, w), the distance between kernel taps; groups: C and F split into
    that many independent convolutions (groups = C is depthwise)."""
    args, y_shape = _conv_args(x, w, b, stride, padding, dilation, groups)
    return _forward("conv2d", backend, args, y_shape)


def conv2d_backward(dy, ctx, *, input_grad=True):
    """dy (N, F, OH, OW) -> dx (N, C, H, W), dw (F, C // groups, KH, KW), db (F,).
    input_grad=False: dx is None and is not computed (the network's input)."""
    dy = _grad(dy, ctx, "conv2d")
    input_grad = _shapes.flag(input_grad, "input_grad")
    return get_module(ctx.backend).conv2d_backward(dy, ctx.saved, input_grad)


def _pool_args(x, kernel_size, stride, padding, ceil_mode, dilation=1):
    x = _shapes.array(x, "x", 4)
    params, y_shape = _pool_geometry(x.shape, kernel_size, stride, padding, ceil_mode, dilation)
    return (_contiguous(x), *params), y_shape


def _pool_geometry(shape, kernel_size, stride, padding, ceil_mode, dilation=1, prefix=""):
    """A pooling of an input of ``shape``: (kernel, stride, pad, dil,
    (OH, OW)) checked, and y_shape; errors name each argument with
    ``prefix`` before it (the fused ops' pool_ arguments)."""
    N, C, H, W = shape
    kernel = _shapes.pair(kernel_size, prefix + "kernel_size", minimum=1)
    stride = kernel if stride is None else _shapes.pair(stride, prefix + "stride", minimum=1)
    pad = _shapes.pair(padding, prefix + "padding", minimum=0)
    dil = _shapes.pair(dilation, prefix + "dilation", minimum=1)
    ceil_mode = _shapes.flag(ceil_mode, prefix + "ceil_mode")
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        raise ValueError(f"{prefix}padding must be at most half the kernel size: got "
                         f"{prefix}padding={pad} for {prefix}kernel_size={kernel}")
    if not ceil_mode and dil == (1, 1):   # ceil mode keeps a window that starts inside
        _shapes.check_window_fits(H, W, (pad[0], pad[0], pad[1], pad[1]), *kernel,
                                  prefix + "kernel_size")
    OH = _shapes.pool_out_size(H, pad[0], kernel[0], stride[0], ceil_mode, dil[0])
    OW = _shapes.pool_out_size(W, pad[1], kernel[1], stride[1], ceil_mode, dil[1])
    if min(OH, OW) < 1:
        raise ValueError(f"{prefix}kernel_size {kernel} with {prefix}dilation {dil} spans "
                         f"more than the padded input ({H + 2 * pad[0]}x{W + 2 * pad[1]}: "
                         f"input {H}x{W}, {prefix}padding {pad})")
    for n, k, s, p, d, o in zip((H, W), kernel, stride, pad, dil, (OH, OW)):
        # a dilated window starting in the padding can step over the whole
        # input (PyTorch returns -inf there with an argmax outside the input);
        # an undilated one cannot (padding <= kernel // 2)
        for start in range(-p, min(0, (o - 1) * s - p + 1) if d > 1 else -p, s):
            first = start + d * (-start // d + (-start % d > 0))   # first tap >= 0
            if first >= n or first > start + d * (k - 1):
                raise ValueError(
                    f"a pooling window holds no input element: {prefix}kernel_size "
                    f"{kernel} with {prefix}dilation {dil} and {prefix}padding {pad} steps "
                    f"over the {H}x{W} input from the padding")
    return (kernel, stride, pad, dil, (OH, OW)), (N, C, OH, OW)


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                       *, backend=None):
    """Max over each window; padding counts as -inf. x (N, C, H, W) -> y (N, C, OH, OW).
    stride=None means stride = kernel_size; window taps are dilation apart;
    ceil_mode as PyTorch's. Ties: the first maximum in row-major window order
    wins; a NaN in a window propagates."""
    args, y_shape = _pool_args(x, kernel_size, stride, padding, ceil_mode, dilation)
    return _forward("max_pool2d", backend, args, y_shape)


def max_pool2d_backward(dy, ctx):
    """dy (N, C, OH, OW) -> dx (N, C, H, W): each window's gradient goes to its argmax."""
    dy = _grad(dy, ctx, "max_pool2d")
    return get_module(ctx.backend).max_pool2d_backward(dy, ctx.saved)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                       count_include_pad=True, divisor_override=None, *, backend=None):
    """Mean over each window: x (N, C, H, W) -> y (N, C, OH, OW); stride=None
    means stride = kernel_size. The divisor is PyTorch's: divisor_override if
    given; else the window clipped to the padded input [-P, H+P) when
    count_include_pad (KH*KW unless a ceil_mode window runs past it), or to
    the input [0, H) when not."""
    args, y_shape = _pool_args(x, kernel_size, stride, padding, ceil_mode)
    x, kernel, stride, pad, _, out_hw = args         # avg pooling has no dilation
    args = (x, kernel, stride, pad, out_hw, _shapes.flag(count_include_pad, "count_include_pad"),
            _shapes.divisor(divisor_override))
    return _forward("avg_pool2d", backend, args, y_shape)


def avg_pool2d_backward(dy, ctx):
    """dy (N, C, OH, OW) -> dx (N, C, H, W)."""
    dy = _grad(dy, ctx, "avg_pool2d")
    return get_module(ctx.backend).avg_pool2d_backward(dy, ctx.saved)


def _adaptive_args(x, output_size):
    x = _shapes.array(x, "x", 4)
    N, C, H, W = x.shape
    OH, OW = _shapes.adaptive_size(output_size, H, W)
    return (_contiguous(x), (OH, OW)), (N, C, OH, OW)


def adaptive_avg_pool2d_forward(x, output_size, *, backend=None):
    """Mean over adaptive windows: x (N, C, H, W) -> y (N, C, OH, OW).
    output_size: int, (h, w), or a pair with None (keep that input size);
    output row i averages input rows floor(i*H/OH) .. ceil((i+1)*H/OH) - 1."""
    args, y_shape = _adaptive_args(x, output_size)
    return _forward("adaptive_avg_pool2d", backend, args, y_shape)


def adaptive_avg_pool2d_backward(dy, ctx):
    """dy (N, C, OH, OW) -> dx (N, C, H, W)."""
    dy = _grad(dy, ctx, "adaptive_avg_pool2d")
    return get_module(ctx.backend).adaptive_avg_pool2d_backward(dy, ctx.saved)


def adaptive_max_pool2d_forward(x, output_size, *, backend=None):
    """Max over adaptive windows (as adaptive_avg_pool2d_forward); ties and
    NaN as max_pool2d_forward: the first maximum wins, a NaN propagates."""
    args, y_shape = _adaptive_args(x, output_size)
    return _forward("adaptive_max_pool2d", backend, args, y_shape)


def adaptive_max_pool2d_backward(dy, ctx):
    """dy (N, C, OH, OW) -> dx (N, C, H, W): each window's gradient goes to its argmax."""
    dy = _grad(dy, ctx, "adaptive_max_pool2d")
    return get_module(ctx.backend).adaptive_max_pool2d_backward(dy, ctx.saved)


def relu_forward(x, *, backend=None):
    """y = max(x, 0) elementwise, any shape; a NaN stays NaN (as np.maximum
    and PyTorch's relu)."""
    x = _shapes.array(x, "x", None)
    return _forward("relu", backend, (_contiguous(x),), x.shape)


def relu_backward(dy, ctx):
    """dy -> dx = dy * [y > 0]: zero where x <= 0 or x was NaN (as PyTorch),
    except that an inf or NaN in dy there gives NaN (PyTorch: 0)."""
    dy = _grad(dy, ctx, "relu", ndim=None)
    return get_module(ctx.backend).relu_backward(dy, ctx.saved)


# ---------------------------------------------------------------- fused ops
# conv2d -> relu and conv2d -> relu -> max_pool2d as one op each, with the
# semantics of that composition exactly (ReLU's and max pooling's rules for
# ties, zeros and NaN included). A backend that has the fused kernels
# (``fastcnn.backend.fused_ops``) runs them; on any other the op runs the
# unfused kernels one after the other on that same backend (``ctx.fused``
# says which happened, ``ctx.backend`` where). Arguments are checked here,
# all of them, before any kernel runs.

class FusedContext(Context):
    """A fused op's context: ``fused`` is True when the backend's fused
    kernels ran, False when its unfused ones were composed."""

    __slots__ = ("fused",)

    def __init__(self, op, backend, saved, y_shape, dtype, fused):
        super().__init__(op, backend, saved, y_shape, dtype)
        self.fused = fused

    def __repr__(self):
        return super().__repr__()[:-1] + f" fused={self.fused}>"


def _fused_backend(op, backend, conv_args, conv_shape):
    """(name, module, whether it has op's fused kernels); auto chooses by the
    convolution, which is most of the work."""
    name = resolve(backend)
    where = _shapes.array_module(conv_args[0])
    if name == AUTO:
        name = _auto.choose("conv2d", conv_args, conv_shape, where)
    if where != array_module(name):
        raise _place_error("x", where, name)
    mod = get_module(name)
    return name, mod, has_fused(mod, op)


def conv2d_relu_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *,
                        backend=None):
    """relu(conv2d(x, w, b, ...)) as one op: the arguments and the result of
    conv2d_forward followed by relu_forward."""
    args, y_shape = _conv_args(x, w, b, stride, padding, dilation, groups)
    name, mod, fused = _fused_backend("conv2d_relu", backend, args, y_shape)
    if fused:
        y, saved = mod.conv2d_relu_forward(*args)
    else:
        z, conv_saved = mod.conv2d_forward(*args)
        y, saved = mod.relu_forward(z)
        saved = (conv_saved, saved)
    return y, FusedContext("conv2d_relu", name, saved, y_shape, args[0].dtype, fused)


def conv2d_relu_backward(dy, ctx, *, input_grad=True):
    """dy (N, F, OH, OW) -> dx, dw, db of conv2d_relu_forward; dx None,
    not computed, with input_grad=False."""
    dy = _grad(dy, ctx, "conv2d_relu")
    input_grad = _shapes.flag(input_grad, "input_grad")
    mod = get_module(ctx.backend)
    if ctx.fused:
        return mod.conv2d_relu_backward(dy, ctx.saved, input_grad)
    conv_saved, relu_saved = ctx.saved
    return mod.conv2d_backward(mod.relu_backward(dy, relu_saved), conv_saved, input_grad)


def conv2d_relu_max_pool2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1,
                                   pool_kernel_size=2, pool_stride=None, pool_padding=0,
                                   pool_dilation=1, pool_ceil_mode=False, *, backend=None):
    """max_pool2d(relu(conv2d(x, w, b, stride, padding, dilation, groups)),
    pool_kernel_size, pool_stride, pool_padding, pool_dilation,
    pool_ceil_mode) as one op: the arguments of conv2d_forward, then
    max_pool2d_forward's with pool_ before their names; the result is the
    composition's, its ties, zeros and NaN included."""
    args, conv_shape = _conv_args(x, w, b, stride, padding, dilation, groups)
    pool, y_shape = _pool_geometry(conv_shape, pool_kernel_size, pool_stride, pool_padding,
                                   pool_ceil_mode, pool_dilation, prefix="pool_")
    name, mod, fused = _fused_backend("conv2d_relu_max_pool2d", backend, args, conv_shape)
    if fused:
        y, saved = mod.conv2d_relu_max_pool2d_forward(*args, *pool)
    else:
        z, conv_saved = mod.conv2d_forward(*args)
        r, relu_saved = mod.relu_forward(z)
        del z
        y, pool_saved = mod.max_pool2d_forward(r, *pool)
        saved = (conv_saved, relu_saved, pool_saved)
    return y, FusedContext("conv2d_relu_max_pool2d", name, saved, y_shape, args[0].dtype, fused)


def conv2d_relu_max_pool2d_backward(dy, ctx, *, input_grad=True):
    """dy (N, F, POH, POW) -> dx, dw, db of conv2d_relu_max_pool2d_forward;
    dx None, not computed, with input_grad=False."""
    dy = _grad(dy, ctx, "conv2d_relu_max_pool2d")
    input_grad = _shapes.flag(input_grad, "input_grad")
    mod = get_module(ctx.backend)
    if ctx.fused:
        return mod.conv2d_relu_max_pool2d_backward(dy, ctx.saved, input_grad)
    conv_saved, relu_saved, pool_saved = ctx.saved
    dr = mod.max_pool2d_backward(dy, pool_saved)
    return mod.conv2d_backward(mod.relu_backward(dr, relu_saved), conv_saved, input_grad)
