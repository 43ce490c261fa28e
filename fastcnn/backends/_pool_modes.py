"""PyTorch's ceil_mode, max pooling's dilation and average pooling's
divisors over pooling kernels that know only floor mode, adjacent taps and
the divisor KH*KW: the im2col backend's strided-view kernels.

(The cython and numba backends need none of it: their loops take out_hw,
clip each window to the input, and compute the divisors and dilated taps
inline. ``divisors``, PyTorch's divisor rule as a table, serves other
backends' tables too.)

A ceil_mode output needs windows that run past the padded input: the input
is extended at the bottom/right by the rows and columns those windows need
(-inf for max, 0 for avg), so the backend's own kernel, unchanged, computes
them; backward crops the extension off. Average pooling's other divisors
rescale the KH*KW-mean by KH*KW / divisor, one factor per output position
(the divisor depends only on the window's place; ``divisors`` is PyTorch's
rule). Dilated max pooling gathers each window's taps side by side and
pools those with stride = kernel. The default arguments pass straight
through: no copy, no rescale.

Deliberately not here: argument checks (``fastcnn.ops``), the loops
(the backend's kernels), and the spec (``backends/loops.py``).
"""
import numpy as np


def extension(x_shape, kernel, stride, padding, out_hw):
    """(EH, EW): rows and columns past the padded input that out_hw's last
    windows reach; (0, 0) in floor mode."""
    return tuple(max(0, (o - 1) * s + k - (n + 2 * p))
                 for n, k, s, p, o in zip(x_shape[2:], kernel, stride, padding, out_hw))


def _extend(x, ext, fill):
    N, C, H, W = x.shape
    xe = np.full((N, C, H + ext[0], W + ext[1]), fill, dtype=x.dtype)
    xe[:, :, :H, :W] = x
    return xe


def _crop(dx, x_shape):
    return np.ascontiguousarray(dx[:, :, :x_shape[2], :x_shape[3]])


def divisors(x_shape, kernel, stride, padding, out_hw, count_include_pad, divisor_override):
    """PyTorch's divisor for each output position, (OH, OW) float64."""
    if divisor_override is not None:
        return np.full(out_hw, float(divisor_override))
    sizes = []
    for n, k, s, p, o in zip(x_shape[2:], kernel, stride, padding, out_hw):
        start = np.arange(o) * s - p
        end = np.minimum(start + k, n + p)          # clipped to the padded input
        if not count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, n)
        sizes.append(end - start)
    return np.outer(*sizes).astype(np.float64)


def _dilated_taps(n, k, s, p, d, o):
    """(o, k): the input row (or column) of each tap of each window. A tap in
    the padding becomes its window's first real tap: a copy of an element
    already in the window changes neither its maximum nor which element is
    the first maximum."""
    taps = (np.arange(o) * s - p)[:, None] + d * np.arange(k)
    real = (taps >= 0) & (taps < n)
    first = taps[np.arange(o), real.argmax(axis=1)]
    return np.where(real, taps, first[:, None])


def max_forward(fwd, x, kernel, stride, padding, dilation, out_hw):
    N, C, H, W = x.shape
    if dilation != (1, 1):
        # Gather each window's taps side by side, (N, C, OH*KH, OW*KW), and
        # pool that with stride = kernel: the backend's own kernel finds the
        # maxima; backward scatters its gradient back through the gather.
        rows, cols = (_dilated_taps(n, k, s, p, d, o).reshape(-1) for n, k, s, p, d, o
                      in zip((H, W), kernel, stride, padding, dilation, out_hw))
        where = (rows[:, None] * W + cols[None, :]).reshape(-1)
        taps = np.ascontiguousarray(x.reshape(N, C, H * W)[:, :, where])
        y, inner = fwd(taps.reshape(N, C, rows.size, cols.size), kernel, kernel, (0, 0))
        return y, ((x.shape, where), inner)
    ext = extension(x.shape, kernel, stride, padding, out_hw)
    y, inner = fwd(x if ext == (0, 0) else _extend(x, ext, -np.inf), kernel, stride, padding)
    return y, (None if ext == (0, 0) else x.shape, inner)


def max_backward(bwd, dy, saved):
    undo, inner = saved
    dx = bwd(dy, inner)
    if undo is None:
        return dx
    if isinstance(undo[1], np.ndarray):            # the dilated gather
        (N, C, H, W), where = undo
        out = np.zeros((N * C, H * W), dtype=dy.dtype)
        np.add.at(out, (slice(None), where), dx.reshape(N * C, -1))
        return out.reshape(N, C, H, W)
    return _crop(dx, undo)


def avg_forward(fwd, x, kernel, stride, padding, out_hw, count_include_pad,
                divisor_override):
    ext = extension(x.shape, kernel, stride, padding, out_hw)
    if divisor_override is None and ext == (0, 0) and (count_include_pad or padding == (0, 0)):
        return _plain(fwd(x, kernel, stride, padding))
    div = divisors(x.shape, kernel, stride, padding, out_hw, count_include_pad,
                   divisor_override)
    area = kernel[0] * kernel[1]
    scale = None if np.all(div == area) else (area / div).astype(x.dtype)
    y, inner = fwd(x if ext == (0, 0) else _extend(x, ext, 0), kernel, stride, padding)
    if scale is not None:
        y *= scale
    return y, (None if ext == (0, 0) else x.shape, scale, inner)


def _plain(result):
    y, inner = result
    return y, (None, None, inner)


def avg_backward(bwd, dy, saved):
    x_shape, scale, inner = saved
    dx = bwd(dy if scale is None else dy * scale, inner)
    return dx if x_shape is None else _crop(dx, x_shape)


def public_kernels(max_fwd, max_bwd, avg_fwd, avg_bwd):
    """The four pooling kernels of the contract, from a backend's floor-mode
    ones: ``(max_pool2d_forward, max_pool2d_backward, avg_pool2d_forward,
    avg_pool2d_backward)``, each backend unpacking them under those names."""
    def max_pool2d_forward(x, kernel, stride, padding, dilation, out_hw):
        return max_forward(max_fwd, x, kernel, stride, padding, dilation, out_hw)

    def max_pool2d_backward(dy, saved):
        return max_backward(max_bwd, dy, saved)

    def avg_pool2d_forward(x, kernel, stride, padding, out_hw, count_include_pad,
                           divisor_override):
        return avg_forward(avg_fwd, x, kernel, stride, padding, out_hw, count_include_pad,
                           divisor_override)

    def avg_pool2d_backward(dy, saved):
        return avg_backward(avg_bwd, dy, saved)

    return max_pool2d_forward, max_pool2d_backward, avg_pool2d_forward, avg_pool2d_backward
