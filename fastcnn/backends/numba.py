"""The ``numba`` backend: a thin adapter around the @njit kernels in
``fastcnn/_kernels/numba_conv.py``, ``numba_winograd.py``, ``numba_pool.py``
and ``numba_act.py``.

conv2d is the shared GEMM driver (``backends/_gemm_conv``) over this
backend's kernel table (``_ConvKernels``): im2col from a zero-padded copy
of x, so no loop tests bounds and stride-1 columns run over the padded
width; plus the Winograd F(4x4, 3x3) path (``backends/_winograd``) over
``numba_winograd`` and the direct 3x3 loops (``backends/_direct``) over
``numba_direct``. Pooling and relu call their kernels directly.

Threads: every kernel is compiled single-threaded (no ``parallel``), so
Numba's threading layer never starts: no GNU OpenMP or TBB team in the
process (a forked child that touched one was killed), and no per-thread
Numba thread count. Pieces of an op - batch chunks, ranges of image
planes, element ranges - run concurrently on fastcnn's pool
(``backends/_concurrent``). Outputs come from the output pool
(``backends/_workspace.outputs``).

Compilation: the kernel modules compile eagerly for float32 and float64 when
imported, with ``cache=True`` (under ~/.cache/fastcnn/numba, see
numba_common), so the cost is paid once per installation and user.
Importing *this* module imports neither them nor Numba itself (0.4 s or
more), so ``fastcnn.available_backends()`` stays fast; the first kernel
call, ``warmup()`` or ``info()`` does.

Deliberately not here: argument checks (``fastcnn.ops``), backend choice
(``fastcnn.backend``), the conv paths (``_gemm_conv``).
"""

import time

import numpy as np

from fastcnn.backends import _concurrent, _direct, _gemm_conv, _pooling, _relu, _winograd
from fastcnn.backends._workspace import outputs

numba = None              # the numba module, imported with the kernels
_conv = _pool = _act = None


def _kernels():
    """Import Numba and the kernel modules (compiling them, or loading them
    from the disk cache) once."""
    global numba, _conv, _pool, _act
    if _conv is None:
        import numba as nb
        from fastcnn._kernels import numba_act, numba_conv, numba_pool
        numba = nb
        _conv, _pool, _act = numba_conv, numba_pool, numba_act


class _ConvKernels:
    """The kernel table the shared conv driver calls (see _gemm_conv)."""
    padded_input = True
    winograd = _winograd
    direct = _direct

    @staticmethod
    def winograd_kernels():
        """The Winograd F(4x4, 3x3) tile transforms (see _winograd),
        compiled or loaded from the cache on the first Winograd conv."""
        _kernels()
        from fastcnn._kernels import numba_winograd
        return numba_winograd

    @staticmethod
    def direct_kernels():
        """The direct 3x3 loops (see _direct), compiled or loaded from the
        cache on the first direct conv."""
        _kernels()
        from fastcnn._kernels import numba_direct
        return numba_direct

    @staticmethod
    def depthwise():
        """The direct depthwise kernels (groups == C, see _depthwise),
        compiled or loaded from the cache on the first depthwise conv."""
        _kernels()
        from fastcnn._kernels import numba_depthwise
        return numba_depthwise

    @staticmethod
    def im2col(xp, cols, g, RP):
        _conv.im2col(xp, cols, g.KH, g.KW, g.SH, g.SW, g.DH, g.DW, g.OH, g.OW, g.WP, RP)

    @staticmethod
    def col2im(dcols, dx, g, RP):
        _conv.col2im(dcols, dx, g.KH, g.KW, g.SH, g.SW, g.DH, g.DW, g.PT, g.PL, g.OH, g.OW,
                     g.HP + 1, g.WP, RP)

    @staticmethod
    def unpack_output(yF, b, y, RP):
        _conv.unpack_output(yF, b, y, RP)

    @staticmethod
    def pack_grad_output(dy, dyF, db, RP):
        _conv.pack_grad_output(dy, dyF, db, RP)

    # the fused conv+ReLU's: the batch path's epilogue, relu's loops
    @staticmethod
    def unpack_output_relu(yF, b, y, mask, RP):
        _conv.unpack_output_relu(yF, b, y, mask, RP)

    @staticmethod
    def relu_forward(x, y, mask):
        _act.relu_forward(x, y, mask)

    @staticmethod
    def relu_backward(dy, mask, dx):
        _act.relu_backward(dy, mask, dx)


def conv2d_forward(x, w, b, stride, padding, dilation, groups, y_shape):
    _kernels()
    return _gemm_conv.forward(_ConvKernels, x, w, b, stride, padding, dilation, groups, y_shape)


def conv2d_backward(dy, saved, input_grad=True):
    _kernels()
    return _gemm_conv.backward(_ConvKernels, dy, saved, input_grad=input_grad)


# --------------------------------------------------------------- pooling ---
# The kernels see planes: x (N*C, H, W), y and argmax (N*C, OH, OW); ranges
# of planes run concurrently. They take out_hw as y's shape and clip each
# window to the input themselves, and avg's divisors and max's dilation are
# theirs too: ceil_mode and the other divisors cost no copy and no rescale.

def _planes(a, flat=False):
    N, C, H, W = a.shape
    return a.reshape(N * C, H * W) if flat else a.reshape(N * C, H, W)


def max_pool2d_forward(x, kernel, stride, padding, dilation, out_hw):
    _kernels()
    y, argmax = _pooling.max_outputs(x, out_hw)
    planes = [_planes(x), _planes(y), _planes(argmax)]
    work = y.size * kernel[0] * kernel[1]
    if kernel == stride == (2, 2) and padding == (0, 0) and dilation == (1, 1) \
            and out_hw == (x.shape[2] // 2, x.shape[3] // 2):
        _concurrent.over_rows(_pool.max_pool2d_forward_2x2, planes, (), work)
    else:
        _concurrent.over_rows(_pool.max_pool2d_forward, planes,
                              (*kernel, *stride, *padding, *dilation), work)
    return y, (x.shape, argmax)


def max_pool2d_backward(dy, saved):
    _kernels()
    x_shape, argmax = saved
    dx = outputs.take(x_shape, dy.dtype)
    _concurrent.over_rows(_pool.max_pool2d_backward,
                          [_planes(dy), _planes(argmax), _planes(dx, flat=True)], (),
                          dx.size + dy.size)
    return dx


def avg_pool2d_forward(x, kernel, stride, padding, out_hw, count_include_pad,
                       divisor_override):
    _kernels()
    N, C, _, _ = x.shape
    y = outputs.take((N, C, *out_hw), x.dtype)
    params = (*kernel, *stride, *padding, int(count_include_pad), divisor_override or 0)
    _concurrent.over_rows(_pool.avg_pool2d_forward, [_planes(x), _planes(y)], params,
                          y.size * kernel[0] * kernel[1])
    return y, (x.shape, params)


def avg_pool2d_backward(dy, saved):
    _kernels()
    x_shape, params = saved
    dx = outputs.take(x_shape, dy.dtype)
    _concurrent.over_rows(_pool.avg_pool2d_backward, [_planes(dy), _planes(dx)], params,
                          dx.size + dy.size * params[0] * params[1])
    return dx


# ------------------------------------------------------ adaptive pooling ---
# The shared driver (backends/_pooling) over this backend's kernels, a table
# made once the kernels are loaded.

_adaptive = None


def _adaptive_kernels():
    global _adaptive
    if _adaptive is None:
        _kernels()
        _adaptive = _pooling.AdaptiveKernels(
            _planes, _pool.adaptive_avg_pool2d_forward, _pool.adaptive_avg_pool2d_backward,
            _pool.adaptive_max_pool2d_forward, _pool.global_avg_pool2d_backward,
            _pool.global_max_pool2d_forward, _pooling.gemv_plane_means)
    return _adaptive


def adaptive_avg_pool2d_forward(x, output_size):
    return _pooling.adaptive_avg_forward(_adaptive_kernels(), x, output_size)


def adaptive_avg_pool2d_backward(dy, x_shape):
    return _pooling.adaptive_avg_backward(_adaptive_kernels(), dy, x_shape)


def adaptive_max_pool2d_forward(x, output_size):
    return _pooling.adaptive_max_forward(_adaptive_kernels(), x, output_size)


adaptive_max_pool2d_backward = max_pool2d_backward   # the same argmax format


# ------------------------------------------------------------------ fused ---
# conv2d+ReLU: the conv driver with its ReLU epilogue. conv2d+ReLU+max-pool:
# the plain conv, pooled block by block on the per-image path while each
# block is in cache (else the whole output after), with the ReLU on the
# pooled values and marks on the outputs the ReLU stops (numba_pool's
# max_relu_pool2d_forward); the backward is one scatter into the conv's dy.

def conv2d_relu_forward(x, w, b, stride, padding, dilation, groups, y_shape):
    _kernels()
    return _gemm_conv.forward(_ConvKernels, x, w, b, stride, padding, dilation, groups,
                              y_shape, relu=True)


def conv2d_relu_backward(dy, saved, input_grad=True):
    _kernels()
    return _gemm_conv.backward(_ConvKernels, dy, saved, input_grad=input_grad)


def conv2d_relu_max_pool2d_forward(x, w, b, stride, padding, dilation, groups, conv_shape,
                                   kernel, pool_stride, pool_padding, pool_dilation, out_hw):
    _kernels()
    _pooling.check_argmax_fits(*conv_shape[2:])
    y = outputs.take((*conv_shape[:2], *out_hw), x.dtype)
    argmax = outputs.take(y.shape, _pooling.ARGMAX_DTYPE)
    if kernel == pool_stride == (2, 2) and pool_padding == (0, 0) \
            and pool_dilation == (1, 1) and out_hw == (conv_shape[2] // 2, conv_shape[3] // 2):
        pool, params = _pool.max_relu_pool2d_forward_2x2, ()
    else:
        pool = _pool.max_relu_pool2d_forward
        params = (*kernel, *pool_stride, *pool_padding, *pool_dilation)

    def consume(n0, z):              # a block of the per-image path, in cache
        n = z.shape[0]
        pool(_planes(z), _planes(y[n0:n0 + n]), _planes(argmax[n0:n0 + n]), *params)

    # a 2x2 stride-2 pooling that covers the whole output: the Winograd
    # path pools straight from its output planes (the others ignore it)
    two_by_two = kernel == pool_stride == (2, 2) and pool_padding == (0, 0) \
        and pool_dilation == (1, 1) and out_hw == (conv_shape[2] // 2, conv_shape[3] // 2)
    pool22 = (y, argmax) if two_by_two else None
    z, conv_saved = _gemm_conv.forward(_ConvKernels, x, w, b, stride, padding, dilation,
                                       groups, conv_shape, consume=consume, pool22=pool22)
    if z is not None:                # another path: the whole output, split by planes
        _concurrent.over_rows(pool, [_planes(z), _planes(y), _planes(argmax)], params,
                              y.size * kernel[0] * kernel[1])
    return y, (conv_saved, conv_shape, argmax, two_by_two)


def conv2d_relu_max_pool2d_backward(dy, saved, input_grad=True):
    _kernels()
    conv_saved, conv_shape, argmax, two_by_two = saved
    if _gemm_conv.takes_tiles(conv_saved):    # scattered straight into Winograd's planes
        return _gemm_conv.backward(_ConvKernels, None, conv_saved,
                                   unpool=(dy, argmax, two_by_two), input_grad=input_grad)
    if _gemm_conv.takes_blocks(conv_saved):
        def produce(n0, dz):         # the conv's dy for a block of images, in cache
            n = dz.shape[0]
            _pool.max_relu_pool2d_backward(_planes(dy[n0:n0 + n]), _planes(argmax[n0:n0 + n]),
                                           _planes(dz, flat=True))

        return _gemm_conv.backward(_ConvKernels, None, conv_saved, produce=produce,
                                   input_grad=input_grad)
    dz = outputs.take(conv_shape, dy.dtype)
    _concurrent.over_rows(_pool.max_relu_pool2d_backward,
                          [_planes(dy), _planes(argmax), _planes(dz, flat=True)], (),
                          dz.size + dy.size)
    return _gemm_conv.backward(_ConvKernels, dz, conv_saved, input_grad=input_grad)


# ------------------------------------------------------------------ relu ---

def relu_forward(x):
    _kernels()
    return _relu.forward(_act.relu_forward, x)


def relu_backward(dy, mask):
    _kernels()
    return _relu.backward(_act.relu_backward, dy, mask)


# --------------------------------------------------------- warmup, info ---

def warmup():
    """Compile (or load from the disk cache) every kernel for float32 and
    float64 (importing the kernel modules does that: explicit signatures)
    and run each conv path and pooling op once per dtype on tiny inputs.
    Returns the seconds it took."""
    t0 = time.perf_counter()
    _kernels()
    for dtype in (np.float32, np.float64):
        x = np.ones((2, 4, 8, 8), dtype=dtype)
        for path in ("per_image", "batch", "winograd", "direct"):
            with _gemm_conv.forced_path(path):
                y, s = conv2d_forward(x, np.ones((2, 4, 3, 3), dtype=dtype), None,
                                      (1, 1), (1, 1, 1, 1), (1, 1), 1, (2, 2, 8, 8))
            conv2d_backward(y, s)
        # the depthwise path where the table has it, else grouped columns
        y, s = conv2d_forward(x, np.ones((4, 1, 3, 3), dtype=dtype), None,
                              (1, 1), (1, 1, 1, 1), (1, 1), 4, (2, 4, 8, 8))
        conv2d_backward(y, s)
        for out_hw in ((4, 4), (3, 3)):      # the 2x2 kernel, the general one
            y, s = max_pool2d_forward(x, (2, 2), (2, 2), (0, 0), (1, 1), out_hw)
            max_pool2d_backward(y, s)
            y, s = avg_pool2d_forward(x, (2, 2), (2, 2), (0, 0), out_hw, True, None)
            avg_pool2d_backward(y, s)
        for fwd, bwd in ((adaptive_avg_pool2d_forward, adaptive_avg_pool2d_backward),
                         (adaptive_max_pool2d_forward, adaptive_max_pool2d_backward)):
            for out in ((3, 3), (1, 1)):
                y, s = fwd(x, out)
                bwd(y, s)
        y, s = relu_forward(x)
        relu_backward(y, s)
    return time.perf_counter() - t0


def info():
    """{numba_version, threading_layer, num_threads}: the kernels are
    single-threaded, so Numba's threading layer is never started."""
    _kernels()
    from fastcnn import _threads
    return {"numba_version": numba.__version__,
            "threading_layer": "none (single-threaded kernels; fastcnn's pool splits each op)",
            "num_threads": _threads.get_num_threads()}
