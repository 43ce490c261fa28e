"""Backend 'cython': compiled loops from ``fastcnn/_kernels/cy_*.pyx`` around numpy's BLAS.

conv2d is the shared GEMM driver (``backends/_gemm_conv``) over this
backend's kernel table (``_ConvKernels``): the loops read x itself and clip
each window at the image border, so nothing is padded; plus the shared
Winograd F(4x4, 3x3) path (``backends/_winograd``) over ``cy_winograd``'s
tile transforms. Pooling and relu call their loops directly; max pooling
saves C-int argmax planes (``backends/_pooling``).

Threads: the loops are single-threaded (built without OpenMP); pieces of
an op - batch chunks, ranges of image planes, element ranges - run
concurrently on fastcnn's pool (``backends/_concurrent``). Outputs come
from the output pool (``backends/_workspace.outputs``).

It deliberately does no validation (``fastcnn.ops`` did it) and never falls
back to another backend: if the extension modules are missing, importing
this module raises ImportError saying so, and the registry reports the
backend absent with that reason.
"""
from fastcnn.backends import _concurrent, _direct, _gemm_conv, _pooling, _relu, _winograd
from fastcnn.backends._workspace import outputs

try:
    from fastcnn._kernels import (cy_act, cy_conv, cy_depthwise, cy_direct, cy_info, cy_pool,
                                  cy_winograd)
except ImportError as e:  # the registry reports this message as the reason
    raise ImportError(
        "fastcnn was installed without its compiled Cython kernels "
        f"({e}); reinstall with `pip install .` on a machine with a C compiler, "
        "or build in place with `python setup.py build_ext --inplace`") from e


def build_info():
    """What the extension was compiled with."""
    return {"cython_version": cy_info.CYTHON_VERSION,
            "openmp": cy_info.OPENMP,
            "debug_build": cy_info.DEBUG_BUILD,
            "threads": "single-threaded loops; fastcnn's pool splits each op",
            # the loops this CPU runs for Winograd's products
            "winograd_products": ("numpy", "avx2+fma", "avx512")[cy_winograd._simd]}


class _ConvKernels:
    """The kernel table the shared conv driver calls (see _gemm_conv). Row
    pitch RP is always OW here."""
    padded_input = False
    winograd = _winograd
    direct = _direct
    # Every im2col conv with a batch that gives each thread images takes the
    # per-image path (it beat the whole-batch one here, 3x3 stride 2
    # included); Winograd is asked first (choose_path), above the shared
    # limit.
    per_image_max_taps = 1 << 62
    # Grouped 3x3 with more than 16 channels a group: Winograd's forward +
    # backward beat the direct loops' here since its backward sums dW along
    # the lanes (measured at batch 64 with 24 and 32 channels a group on
    # 8x8 to 32x32 maps; with 16 the direct loops still won); numba's
    # direct loops keep the shared limit.
    grouped_direct_max_taps = 144
    # Inference's Winograd chunks of at most 16 images: a chunk's tiles and
    # planes then stay in the caches between its transforms and products,
    # and its bands hold all four tile rows of the MNIST conv2, so a fused
    # 2x2 pooling runs inside the output transform (see
    # _winograd._pools_by_band). Measured on the MNIST CNN under no_grad,
    # interleaved in one process: with the AVX-512 products (chunks of 64 ->
    # 16) batch 1000 44.5 -> 40.5 ms, 256 12.3 -> 11.4, 64 4.05 -> 3.94;
    # with the AVX2 ones, once the transforms read and wrote NCHW and the
    # pooling ran by band, the fused conv2+ReLU+pool alone at batch 1000
    # 61.5 -> 50.6 ms, 256 13.7 -> 12.1, 64 unchanged (3.6). numba's loops
    # lost with them (batch 1000 58 -> 67 ms; 71 -> 73 with chunks of 32
    # after those changes) and keep the shared limit, as training does (see
    # _winograd.CHUNK). Not with BLAS's products (the fallback): they round
    # edge lanes differently, where this module's give the same bits
    # wherever an image's lanes fall (the forward's numbers then do not
    # depend on no_grad).
    winograd_no_grad_chunk = 16 if cy_winograd._simd else None

    @staticmethod
    def winograd_kernels():
        """The Winograd F(4x4, 3x3) tile transforms (see _winograd): the
        module itself follows the kernel contract."""
        return cy_winograd

    @staticmethod
    def depthwise():
        """The direct depthwise kernels (groups == C, see _depthwise)."""
        return cy_depthwise

    @staticmethod
    def direct_kernels():
        """The direct 3x3 loops (see _direct)."""
        return cy_direct

    @staticmethod
    def im2col(x, cols, g, RP):
        cy_conv.im2col(x, cols, g.KH, g.KW, g.SH, g.SW, g.DH, g.DW, g.PT, g.PL, g.OH, g.OW)

    @staticmethod
    def col2im(dcols, dx, g, RP):
        cy_conv.col2im(dcols, dx, g.KH, g.KW, g.SH, g.SW, g.DH, g.DW, g.PT, g.PL, g.OH, g.OW)

    @staticmethod
    def unpack_output(yF, b, y, RP):
        cy_conv.unpack_output(yF, b, y)

    @staticmethod
    def pack_grad_output(dy, dyF, db, RP):
        cy_conv.pack_grad_output(dy, dyF, db)

    # the fused conv+ReLU's: the batch path's epilogue, relu's loops
    @staticmethod
    def unpack_output_relu(yF, b, y, mask, RP):
        cy_conv.unpack_output_relu(yF, b, y, mask)

    relu_forward = staticmethod(cy_act.relu_forward)
    relu_backward = staticmethod(cy_act.relu_backward)


def conv2d_forward(x, w, b, stride, padding, dilation, groups, y_shape):
    return _gemm_conv.forward(_ConvKernels, x, w, b, stride, padding, dilation, groups, y_shape)


def conv2d_backward(dy, saved, input_grad=True):
    return _gemm_conv.backward(_ConvKernels, dy, saved, input_grad=input_grad)


# ---------------------------------------------------------------- pooling
# The loops take (N, C, H, W) arrays; ranges of planes run concurrently as
# (N*C, 1, H, W) slices (argmax offsets are within a plane either way). They
# take out_hw as y's shape and clip each window to the input themselves, and
# avg's divisors and max's dilation are theirs too: ceil_mode and the other
# divisors cost no copy and no rescale.

def _planes(a):
    N, C, H, W = a.shape
    return a.reshape(N * C, 1, H, W)


def max_pool2d_forward(x, kernel, stride, padding, dilation, out_hw):
    y, argmax = _pooling.max_outputs(x, out_hw)
    _concurrent.over_rows(cy_pool.max_forward, [_planes(x), _planes(y), _planes(argmax)],
                          (*kernel, *stride, *padding, *dilation),
                          y.size * kernel[0] * kernel[1])
    return y, (x.shape, argmax)


def max_pool2d_backward(dy, saved):
    x_shape, argmax = saved
    dx = outputs.take(x_shape, dy.dtype)
    _concurrent.over_rows(cy_pool.max_backward, [_planes(dy), _planes(argmax), _planes(dx)],
                          (), dx.size)
    return dx


def avg_pool2d_forward(x, kernel, stride, padding, out_hw, count_include_pad,
                       divisor_override):
    N, C, _, _ = x.shape
    y = outputs.take((N, C, *out_hw), x.dtype)
    params = (*kernel, *stride, *padding, count_include_pad, divisor_override or 0)
    _concurrent.over_rows(cy_pool.avg_forward, [_planes(x), _planes(y)], params,
                          y.size * kernel[0] * kernel[1])
    return y, (x.shape, params)


def avg_pool2d_backward(dy, saved):
    x_shape, params = saved
    dx = outputs.take(x_shape, dy.dtype)
    _concurrent.over_rows(cy_pool.avg_backward, [_planes(dy), _planes(dx)], params,
                          dx.size + dy.size * params[0] * params[1])
    return dx


# ---------------------------------------------------------------- adaptive pooling
# The shared driver (backends/_pooling) over this backend's kernels.

_ADAPTIVE = _pooling.AdaptiveKernels(
    _planes, cy_pool.adaptive_avg_forward, cy_pool.adaptive_avg_backward,
    cy_pool.adaptive_max_forward, cy_pool.global_avg_backward, cy_pool.global_max_forward,
    cy_pool.global_avg_forward)


def adaptive_avg_pool2d_forward(x, output_size):
    return _pooling.adaptive_avg_forward(_ADAPTIVE, x, output_size)


def adaptive_avg_pool2d_backward(dy, x_shape):
    return _pooling.adaptive_avg_backward(_ADAPTIVE, dy, x_shape)


def adaptive_max_pool2d_forward(x, output_size):
    return _pooling.adaptive_max_forward(_ADAPTIVE, x, output_size)


adaptive_max_pool2d_backward = max_pool2d_backward   # the same argmax format


# ---------------------------------------------------------------- fused
# conv2d+ReLU: the conv driver with its ReLU epilogue. conv2d+ReLU+max-pool:
# the plain conv, pooled block by block on the per-image path while each
# block is in cache (else the whole output after), with the ReLU on the
# pooled values and marks on the outputs the ReLU stops (cy_pool's
# max_relu_forward); the backward is one scatter into the conv's dy.

def conv2d_relu_forward(x, w, b, stride, padding, dilation, groups, y_shape):
    return _gemm_conv.forward(_ConvKernels, x, w, b, stride, padding, dilation, groups,
                              y_shape, relu=True)


def conv2d_relu_backward(dy, saved, input_grad=True):
    return _gemm_conv.backward(_ConvKernels, dy, saved, input_grad=input_grad)


def conv2d_relu_max_pool2d_forward(x, w, b, stride, padding, dilation, groups, conv_shape,
                                   kernel, pool_stride, pool_padding, pool_dilation, out_hw):
    _pooling.check_argmax_fits(*conv_shape[2:])
    y = outputs.take((*conv_shape[:2], *out_hw), x.dtype)
    argmax = outputs.take(y.shape, _pooling.ARGMAX_DTYPE)
    params = (*kernel, *pool_stride, *pool_padding, *pool_dilation)

    def consume(n0, z):              # a block of the per-image path, in cache
        n = z.shape[0]
        cy_pool.max_relu_forward(_planes(z), _planes(y[n0:n0 + n]),
                                 _planes(argmax[n0:n0 + n]), *params)

    # a 2x2 stride-2 pooling that covers the whole output: the Winograd
    # path pools straight from its output planes (the others ignore it)
    two_by_two = kernel == pool_stride == (2, 2) and pool_padding == (0, 0) \
        and pool_dilation == (1, 1) and out_hw == (conv_shape[2] // 2, conv_shape[3] // 2)
    pool22 = (y, argmax) if two_by_two else None
    z, conv_saved = _gemm_conv.forward(_ConvKernels, x, w, b, stride, padding, dilation,
                                       groups, conv_shape, consume=consume, pool22=pool22)
    if z is not None:                # another path: the whole output, split by planes
        _concurrent.over_rows(cy_pool.max_relu_forward,
                              [_planes(z), _planes(y), _planes(argmax)], params,
                              y.size * kernel[0] * kernel[1])
    return y, (conv_saved, conv_shape, argmax, two_by_two)


def conv2d_relu_max_pool2d_backward(dy, saved, input_grad=True):
    conv_saved, conv_shape, argmax, two_by_two = saved
    if _gemm_conv.takes_tiles(conv_saved):    # scattered straight into Winograd's planes
        return _gemm_conv.backward(_ConvKernels, None, conv_saved,
                                   unpool=(dy, argmax, two_by_two), input_grad=input_grad)
    if _gemm_conv.takes_blocks(conv_saved):
        def produce(n0, dz):         # the conv's dy for a block of images, in cache
            n = dz.shape[0]
            cy_pool.max_relu_backward(_planes(dy[n0:n0 + n]), _planes(argmax[n0:n0 + n]),
                                      _planes(dz))

        return _gemm_conv.backward(_ConvKernels, None, conv_saved, produce=produce,
                                   input_grad=input_grad)
    dz = outputs.take(conv_shape, dy.dtype)
    _concurrent.over_rows(cy_pool.max_relu_backward,
                          [_planes(dy), _planes(argmax), _planes(dz)], (), dz.size + dy.size)
    return _gemm_conv.backward(_ConvKernels, dz, conv_saved, input_grad=input_grad)


# ---------------------------------------------------------------- relu

def relu_forward(x):
    return _relu.forward(cy_act.relu_forward, x)


def relu_backward(dy, mask):
    return _relu.backward(cy_act.relu_backward, dy, mask)
