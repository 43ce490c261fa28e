"""The cupy backend's index arithmetic: which input element every window tap
reads, and which taps read every input element, as NumPy integer tables.

Every windowed op of the cupy backend (conv2d's im2col and col2im, max and
average pooling, adaptive pooling) is one of three gathers over such a
table (``_cupy_cuda``); all the geometry - strides, padding, dilation,
ceil_mode's windows past the input, adaptive windows of unequal size -
lives here, once, in plain NumPy that the CPU tests check against the
``loops`` backend. A table is built once per geometry and cached.

Per axis, a tap matrix ``(OUT, K)`` holds the input row (or column) of tap
k of window o, or -1 where that tap lies in the padding or past the input.
Two of them (rows, cols) make the 2-D tables:

* ``windows``  (OH*OW, KH*KW): the plane offset h*W + w of each tap of each
  window, -1 for padding: what pooling reads.
* ``im2col``   (KH*KW*OH*OW, 1): the same offsets in column-matrix order
  (kernel offset, then output pixel): what conv2d's im2col reads, per channel.
* ``inverse``  (H*W, T): for each input element, the (window, tap) pairs
  that read it, -1-padded to the largest count T: col2im and the pooling
  backward gather through it (gather-style, so no atomics and a fixed
  summation order).

Deliberately not here: CuPy (nothing in this file touches a device), the
kernels, argument checks (``fastcnn.ops``).
"""
import functools

import numpy as np

from fastcnn.backends._pool_modes import divisors


def index_dtype(largest):
    """int32 while every index fits, else int64 (the kernels read either)."""
    return np.dtype(np.int32 if largest < 2**31 - 1 else np.int64)


def _frozen(a):
    a.setflags(write=False)            # cached: shared by every later call
    return a


def axis_taps(size, K, S, P, D, OUT):
    """(OUT, K): input index o*S - P + k*D of tap k of window o, -1 outside [0, size)."""
    taps = np.arange(OUT)[:, None] * S - P + np.arange(K)[None, :] * D
    return np.where((taps >= 0) & (taps < size), taps, -1)


def adaptive_taps(size, OUT):
    """(OUT, K): window o holds floor(o*size/OUT) .. ceil((o+1)*size/OUT) - 1
    (PyTorch's adaptive bounds), -1-padded to the widest window K."""
    o = np.arange(OUT)
    start, end = (o * size) // OUT, -(-((o + 1) * size) // OUT)
    K = int((end - start).max())
    taps = start[:, None] + np.arange(K)[None, :]
    return np.where(taps < end[:, None], taps, -1)


def _axis_inverse(taps, size):
    """(size, T) positions o*K + k of the taps that read each index, -1-padded,
    in increasing position (window-major) order."""
    flat = taps.ravel()
    pos = np.flatnonzero(flat >= 0)
    elem = flat[pos]
    order = np.argsort(elem, kind="stable")
    pos, elem = pos[order], elem[order]
    counts = np.bincount(elem, minlength=size)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(elem.size) - starts[elem]
    inv = np.full((size, max(int(counts.max(initial=0)), 1)), -1, dtype=np.int64)
    inv[elem, rank] = pos
    return inv


def _both(a, b, value):
    """value where both a and b are real (>= 0), else -1."""
    return np.where((a >= 0) & (b >= 0), value, -1)


def _windows(rows, cols, W):
    """(OH*OW, KH*KW) plane offsets of every tap of every window."""
    (OH, KH), (OW, KW) = rows.shape, cols.shape
    r = rows[:, None, :, None]
    c = cols[None, :, None, :]
    return _both(r, c, r * W + c).reshape(OH * OW, KH * KW)


def _inverse(rows, cols, H, W):
    """(window, tap) of every read of each input element, as two (H*W, T)
    arrays: the window o = oh*OW + ow and the tap k = i*KW + j, -1-padded."""
    (OH, KH), (OW, KW) = rows.shape, cols.shape
    ri, ci = _axis_inverse(rows, H), _axis_inverse(cols, W)      # (H, TR), (W, TC)
    oh, i = np.divmod(ri, KH)
    ow, j = np.divmod(ci, KW)
    shape = (H * W, ri.shape[1] * ci.shape[1])
    real = (ri[:, None, :, None] >= 0) & (ci[None, :, None, :] >= 0)   # (H, W, TR, TC)
    o = np.where(real, oh[:, None, :, None] * OW + ow[None, :, None, :], -1).reshape(shape)
    k = np.where(real, i[:, None, :, None] * KW + j[None, :, None, :], -1).reshape(shape)
    return o, k


def _pool_axes(H, W, kernel, stride, padding, dilation, out_hw):
    return (axis_taps(H, kernel[0], stride[0], padding[0], dilation[0], out_hw[0]),
            axis_taps(W, kernel[1], stride[1], padding[1], dilation[1], out_hw[1]))


def _typed(a, largest):
    return _frozen(a.astype(index_dtype(largest)))


# ---------------------------------------------------------------- conv2d

@functools.lru_cache(maxsize=64)
def im2col(H, W, kernel, stride, pads, dilation, out_hw):
    """(KH*KW*OH*OW, 1): cols[k*P + o] = x_plane[table[k*P + o]] (0 for -1),
    P = OH*OW, k = i*KW + j; pads (PT, PB, PL, PR), only PT and PL place the taps."""
    rows = axis_taps(H, kernel[0], stride[0], pads[0], dilation[0], out_hw[0])
    cols = axis_taps(W, kernel[1], stride[1], pads[2], dilation[1], out_hw[1])
    return _typed(_windows(rows, cols, W).T.reshape(-1, 1), H * W)


@functools.lru_cache(maxsize=64)
def col2im(H, W, kernel, stride, pads, dilation, out_hw):
    """(H*W, T): the column-matrix entries k*P + o that read each element of a
    plane; dx_plane[e] = sum of dcols[table[e, t]] over the real t."""
    rows = axis_taps(H, kernel[0], stride[0], pads[0], dilation[0], out_hw[0])
    cols = axis_taps(W, kernel[1], stride[1], pads[2], dilation[1], out_hw[1])
    o, k = _inverse(rows, cols, H, W)
    P = out_hw[0] * out_hw[1]
    return _typed(_both(o, k, k * P + o), kernel[0] * kernel[1] * P)


# ---------------------------------------------------------------- pooling

@functools.lru_cache(maxsize=64)
def pool_windows(H, W, kernel, stride, padding, dilation, out_hw):
    """(OH*OW, KH*KW) plane offsets of each window's taps, -1 in the padding
    and past the input (ceil_mode's last windows)."""
    return _typed(_windows(*_pool_axes(H, W, kernel, stride, padding, dilation, out_hw), W),
                  H * W)


@functools.lru_cache(maxsize=64)
def pool_inverse(H, W, kernel, stride, padding, dilation, out_hw):
    """(H*W, T): the windows (oh*OW + ow) that read each element of a plane."""
    o, _ = _inverse(*_pool_axes(H, W, kernel, stride, padding, dilation, out_hw), H, W)
    return _typed(o, out_hw[0] * out_hw[1])


@functools.lru_cache(maxsize=64)
def pool_divisors(H, W, kernel, stride, padding, out_hw, count_include_pad,
                  divisor_override):
    """(OH*OW,) float64: average pooling's divisor per window (PyTorch's rule,
    ``_pool_modes.divisors``)."""
    return _frozen(divisors((1, 1, H, W), kernel, stride, padding, out_hw, count_include_pad,
                            divisor_override).reshape(-1))


@functools.lru_cache(maxsize=64)
def adaptive_windows(H, W, out_hw):
    """(OH*OW, KH*KW) plane offsets of each adaptive window, -1-padded to the widest."""
    return _typed(_windows(adaptive_taps(H, out_hw[0]), adaptive_taps(W, out_hw[1]), W),
                  H * W)


@functools.lru_cache(maxsize=64)
def adaptive_inverse(H, W, out_hw):
    """(H*W, T): the adaptive windows that hold each element of a plane."""
    o, _ = _inverse(adaptive_taps(H, out_hw[0]), adaptive_taps(W, out_hw[1]), H, W)
    return _typed(o, out_hw[0] * out_hw[1])


@functools.lru_cache(maxsize=64)
def adaptive_divisors(H, W, out_hw):
    """(OH*OW,) float64: each adaptive window's size."""
    rows = (adaptive_taps(H, out_hw[0]) >= 0).sum(axis=1)
    cols = (adaptive_taps(W, out_hw[1]) >= 0).sum(axis=1)
    return _frozen(np.outer(rows, cols).astype(np.float64).reshape(-1))
