"""Sliding windows of an NCHW array as a strided view (no copy).

The one step the im2col backend's convolution and pooling share ("conv2d is
a pooling op", tinygrad): ``windows(xp, ...)[i, j]`` is the (A, B, OH, OW)
array of the elements at kernel offset (i, j) of every window. Convolution
copies the view once into its column matrix; pooling reduces over (i, j)
offset by offset; a writeable view of a gradient buffer is the col2im
target. ``padded`` makes the array the views look into.

Deliberately not here: arithmetic, argument checks, anything about dtypes.
"""
import numpy as np
from numpy.lib.stride_tricks import as_strided


def padded(x, pads, fill):
    """x (N, C, H, W) copied into a fresh (N, C, PT+H+PB, PL+W+PR) array of ``fill``."""
    N, C, H, W = x.shape
    PT, PB, PL, PR = pads
    shape = (N, C, PT + H + PB, PL + W + PR)
    # np.zeros gets pages the OS has zeroed already; np.full writes them all
    xp = np.zeros(shape, x.dtype) if fill == 0 else np.full(shape, fill, x.dtype)
    xp[:, :, PT:PT + H, PL:PL + W] = x
    return xp


def windows(xp, kernel, stride, out_shape, writeable=False):
    """The (KH, KW, A, B, OH, OW) view v[i, j, a, b, p, q] = xp[a, b, p*SH + i, q*SW + j].

    xp is (A, B, Hp, Wp) with any strides; OH and OW must fit inside it. A
    writeable view aliases an element once per window holding it, so write
    through one offset ``v[i, j]`` at a time: within one offset no two
    positions share an element.
    """
    KH, KW = kernel
    SH, SW = stride
    OH, OW = out_shape
    A, B, _, _ = xp.shape
    sa, sb, sh, sw = xp.strides
    return as_strided(xp, (KH, KW, A, B, OH, OW), (sh, sw, sa, sb, SH * sh, SW * sw),
                      writeable=writeable)
