"""What the compiled backends' pooling shares: the argmax and the adaptive
pooling driver.

argmax holds, per max-pool output (kernel or adaptive), the flat offset
ih*W + iw of the chosen element within its (H, W) input plane, as a C int:
the kernels of both backends compute and store it in 32 bits. A plane of more than 2**31 - 1
elements would wrap silently, so ``max_outputs`` refuses it, for every
compiled backend alike, before any kernel runs.

Adaptive pooling's driver is here too, over a backend's table of kernels
(``AdaptiveKernels``): output 1x1 (global pooling) runs over flat
(N*C, H*W) planes, any other size the windowed kernels; max pooling's
argmax has max_pool2d's format, so its backward is max_pool2d's. Global
pooling is one pass over memory per direction, so its per-call cost is
kept small: a problem too small to earn a second thread runs directly,
with no split. Global average pooling's forward is a backend's
``global_avg_forward``: cython's sums several planes at a time in vectors
(cy_pool); ``gemv_plane_means`` (a matrix-vector product with a vector of
ones, which BLAS runs near memory speed, short planes of 49 elements at 7x7
included) serves numba, as LLVM does not vectorise a float reduction
without reassociation. The sums are in the input's precision, with several
running sums, as PyTorch's mean.

Deliberately not here: argument checks (``fastcnn.ops``), the loops
(``fastcnn/_kernels``), the windowed pooling's calls (each backend's own:
its kernels take ceil_mode's out_hw, the divisors and dilation themselves).
"""
import functools
from typing import Callable, NamedTuple

import numpy as np

from fastcnn.backends._concurrent import over_rows, single_threaded_blas
from fastcnn.backends._workspace import outputs

ARGMAX_DTYPE = np.dtype(np.intc)
# Elements per extra thread of global pooling, one streaming pass each: a
# split pays only once a thread's share outlasts the hand-over to another
# thread several times over. The average streams fastest (a sum of
# contiguous planes, or a fill), so it splits latest; the max (compares
# and selects) sooner. At the mobile net's (64, 256, 7, 7) none splits
# (each split measured slower than one thread there), at ResNet's
# (64, 512, 7, 7) only the max does.
GLOBAL_AVG_PER_THREAD = 1 << 21
GLOBAL_PER_THREAD = 1 << 19


@functools.lru_cache(maxsize=None)
def _largest(dtype):
    """np.iinfo(dtype).max, once per dtype: np.iinfo is a per-op cost."""
    return int(np.iinfo(dtype).max)


def check_argmax_fits(H, W):
    """ValueError when an (H, W) plane has offsets its argmax cannot hold."""
    largest = _largest(ARGMAX_DTYPE)     # looked up each call: a test narrows the dtype
    if H * W > largest:
        raise ValueError(
            f"max_pool2d: an input plane of {H}x{W} = {H * W} elements is too large "
            f"for the compiled backends' {ARGMAX_DTYPE.itemsize * 8}-bit argmax (at most "
            f"{largest} elements per plane); use backend='im2col'")


def max_outputs(x, out_hw):
    """Fresh (y, argmax), both (N, C, OH, OW), for a max pooling of x to
    out_hw = (OH, OW), from the output pool."""
    N, C, H, W = x.shape
    check_argmax_fits(H, W)
    shape = (N, C, *out_hw)
    return outputs.take(shape, x.dtype), outputs.take(shape, ARGMAX_DTYPE)


class AdaptiveKernels(NamedTuple):
    """A backend's adaptive pooling kernels; ``planes`` views an (N, C, H, W)
    array as the image planes its windowed kernels take."""
    planes: Callable
    avg_forward: Callable          # (x planes, y planes)
    avg_backward: Callable         # (dy planes, dx planes)
    max_forward: Callable          # (x planes, y planes, argmax planes)
    global_avg_backward: Callable  # (dy (N*C,), dx (N*C, H*W))
    global_max_forward: Callable   # (x (N*C, H*W), y (N*C,), argmax (N*C,))
    global_avg_forward: Callable   # (x (N*C, H*W), y (N*C,)): the planes' means


def _flat(a):
    N, C, H, W = a.shape
    return a.reshape(N * C, H * W)


def gemv_plane_means(x, y):
    """y[p] = mean of row x[p] (x (P, L), y (P,)): gemv with ones, then the
    division, so that a plane of equal values has exactly that mean. BLAS
    at one thread (fastcnn's pool splits the rows)."""
    with single_threaded_blas():
        np.matmul(x, np.ones(x.shape[1], x.dtype), out=y)
    np.divide(y, x.shape[1], out=y)


def _global(kernel, arrays, work, per_thread=GLOBAL_PER_THREAD):
    """kernel(*arrays), split over the pool only when ``work`` earns a
    second thread at ``per_thread`` elements a thread (over_rows' rule):
    below that the hand-over costs more than the split saves."""
    if work < 2 * per_thread:
        kernel(*arrays)
    else:
        over_rows(kernel, arrays, (), work, per_thread)


def adaptive_avg_forward(k, x, output_size):
    N, C, _, _ = x.shape
    y = outputs.take((N, C, *output_size), x.dtype)
    if output_size == (1, 1):
        _global(k.global_avg_forward, [_flat(x), y.reshape(-1)], x.size, GLOBAL_AVG_PER_THREAD)
    else:
        over_rows(k.avg_forward, [k.planes(x), k.planes(y)], (), x.size + y.size)
    return y, x.shape


def adaptive_avg_backward(k, dy, x_shape):
    dx = outputs.take(x_shape, dy.dtype)
    if dy.shape[2:] == (1, 1):
        _global(k.global_avg_backward, [dy.reshape(-1), _flat(dx)], dx.size,
                GLOBAL_AVG_PER_THREAD)
    else:
        over_rows(k.avg_backward, [k.planes(dy), k.planes(dx)], (), dx.size + dy.size)
    return dx


def adaptive_max_forward(k, x, output_size):
    y, argmax = max_outputs(x, output_size)
    if output_size == (1, 1):
        _global(k.global_max_forward, [_flat(x), y.reshape(-1), argmax.reshape(-1)], x.size)
    else:
        over_rows(k.max_forward, [k.planes(x), k.planes(y), k.planes(argmax)], (),
                  x.size + y.size)
    return y, (x.shape, argmax)
