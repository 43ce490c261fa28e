"""What the compiled backends' pooling shares: output sizes and the argmax.

argmax holds, per max-pool output, the flat offset ih*W + iw of the chosen
element within its (H, W) input plane, as a C int: the kernels of both
backends compute and store it in 32 bits. A plane of more than 2**31 - 1
elements would wrap silently, so ``max_pool_outputs`` refuses it, for every
compiled backend alike, before any kernel runs.

Deliberately not here: argument checks (``fastcnn.ops``), the loops
(``fastcnn/_kernels``), threads (the backends).
"""
import numpy as np

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


def max_pool_outputs(x, kernel, stride, padding):
    """Fresh (y, argmax), both (N, C, OH, OW), for a max pooling of x, from
    the output pool."""
    N, C, H, W = x.shape
    check_argmax_fits(H, W)
    shape = (N, C, *out_hw(x.shape, kernel, stride, padding))
    return outputs.take(shape, x.dtype), outputs.take(shape, ARGMAX_DTYPE)
