"""What the compiled backends' pooling shares: output sizes and the argmax.

argmax holds, per max-pool output (kernel or adaptive), the flat offset
ih*W + iw of the chosen element within its (H, W) input plane, as a C int:
the kernels of both backends compute and store it in 32 bits. A plane of more than 2**31 - 1
elements would wrap silently, so ``max_pool_outputs`` refuses it, for every
compiled backend alike, before any kernel runs.

Adaptive pooling's driver is here too, over a backend's table of kernels
(``AdaptiveKernels``): output 1x1 (global pooling) runs the global kernels
over flat (N*C, H*W) planes, any other size the windowed ones; max pooling's
argmax has max_pool2d's format, so its backward is max_pool2d's.

Deliberately not here: argument checks (``fastcnn.ops``), the loops
(``fastcnn/_kernels``).
"""
from typing import Callable, NamedTuple

import numpy as np

from fastcnn.backends._concurrent import over_rows
from fastcnn.backends._workspace import outputs

ARGMAX_DTYPE = np.dtype(np.intc)


def out_hw(x_shape, kernel, stride, padding):
    """(OH, OW) of a pooling of x (N, C, H, W): floor mode, symmetric padding."""
    _, _, H, W = x_shape
    (KH, KW), (SH, SW), (PH, PW) = kernel, stride, padding
    return (H + 2 * PH - KH) // SH + 1, (W + 2 * PW - KW) // SW + 1


def check_argmax_fits(H, W):
    """ValueError when an (H, W) plane has offsets its argmax cannot hold."""
    if H * W > np.iinfo(ARGMAX_DTYPE).max:
        raise ValueError(
            f"max_pool2d: an input plane of {H}x{W} = {H * W} elements is too large "
            f"for the compiled backends' {ARGMAX_DTYPE.itemsize * 8}-bit argmax (at most "
            f"{np.iinfo(ARGMAX_DTYPE).max} elements per plane); use backend='im2col'")


def max_outputs(x, out_hw):
    """Fresh (y, argmax), both (N, C, OH, OW), for a max pooling of x to
    out_hw = (OH, OW), from the output pool."""
    N, C, H, W = x.shape
    check_argmax_fits(H, W)
    shape = (N, C, *out_hw)
    return outputs.take(shape, x.dtype), outputs.take(shape, ARGMAX_DTYPE)


def max_pool_outputs(x, kernel, stride, padding):
    """max_outputs for a max pooling with a kernel."""
    return max_outputs(x, out_hw(x.shape, kernel, stride, padding))


class AdaptiveKernels(NamedTuple):
    """A backend's adaptive pooling kernels; ``planes`` views an (N, C, H, W)
    array as the image planes its windowed kernels take."""
    planes: Callable
    avg_forward: Callable          # (x planes, y planes)
    avg_backward: Callable         # (dy planes, dx planes)
    max_forward: Callable          # (x planes, y planes, argmax planes)
    global_avg_forward: Callable   # (x (N*C, H*W), y (N*C,))
    global_avg_backward: Callable  # (dy (N*C,), dx (N*C, H*W))
    global_max_forward: Callable   # (x (N*C, H*W), y (N*C,), argmax (N*C,))


def _flat(a):
    N, C, H, W = a.shape
    return a.reshape(N * C, H * W)


def adaptive_avg_forward(k, x, output_size):
    N, C, _, _ = x.shape
    y = outputs.take((N, C, *output_size), x.dtype)
    if output_size == (1, 1):
        over_rows(k.global_avg_forward, [_flat(x), y.reshape(-1)], (), x.size)
    else:
        over_rows(k.avg_forward, [k.planes(x), k.planes(y)], (), x.size + y.size)
    return y, x.shape


def adaptive_avg_backward(k, dy, x_shape):
    dx = outputs.take(x_shape, dy.dtype)
    if dy.shape[2:] == (1, 1):
        over_rows(k.global_avg_backward, [dy.reshape(-1), _flat(dx)], (), dx.size)
    else:
        over_rows(k.avg_backward, [k.planes(dy), k.planes(dx)], (), dx.size + dy.size)
    return dx


def adaptive_max_forward(k, x, output_size):
    y, argmax = max_outputs(x, output_size)
    if output_size == (1, 1):
        over_rows(k.global_max_forward, [_flat(x), y.reshape(-1), argmax.reshape(-1)],
                  (), x.size)
    else:
        over_rows(k.max_forward, [k.planes(x), k.planes(y), k.planes(argmax)], (),
                  x.size + y.size)
    return y, (x.shape, argmax)
