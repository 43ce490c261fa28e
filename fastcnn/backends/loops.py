"""Backend 'loops': the executable specification.

Explicit Python loops over output positions, NumPy arithmetic inside. Every
other backend is tested against this file, and this file is tested against
finite differences, PyTorch and hand-computed cases. It is deliberately
slow and plain: no im2col matrix, nothing compiled, no clever strides.

Shapes: x (N, C, H, W), w (F, C // G, KH, KW), y (N, F, OH, OW); a conv
output pixel (i, j) reads the padded input's rows i*SH + kh*DH, kh < KH,
and columns j*SW + kw*DW, kw < KW (dilation (DH, DW) spaces the taps), in
the channels of its group (G groups, groups = C is depthwise).
"""
import numpy as np


def _pad(x, pads, value):
    PT, PB, PL, PR = pads
    return np.pad(x, ((0, 0), (0, 0), (PT, PB), (PL, PR)), constant_values=value)


def _unpad(xp, pads):
    PT, PB, PL, PR = pads
    return xp[:, :, PT:xp.shape[2] - PB, PL:xp.shape[3] - PR]


def _windows(OH, OW, stride, kernel, dilation):
    """Yield (i, j, rows, cols): each output pixel and the (strided) slices
    of its taps, rows i*SH + kh*DH for kh < KH, columns likewise."""
    (SH, SW), (KH, KW), (DH, DW) = stride, kernel, dilation
    for i in range(OH):
        for j in range(OW):
            yield (i, j, slice(i * SH, i * SH + DH * (KH - 1) + 1, DH),
                   slice(j * SW, j * SW + DW * (KW - 1) + 1, DW))


# ---------------------------------------------------------------- conv2d
# G groups split the channels: group g holds input channels g*Cg .. g*Cg+Cg-1
# (Cg = C // G) and output channels g*Fg .. g*Fg+Fg-1 (Fg = F // G), and
# each output channel sees only its group's input channels. The group axis
# is explicit below: x's channels as (G, Cg), w's filters as (G, Fg); in
# the einsum subscripts h and w are the kernel taps kh and kw.

def conv2d_forward(x, w, b, stride, padding, dilation, groups, y_shape):
    # y[n, g*Fg+f, i, j] = b[g*Fg+f] + sum_{c<Cg, kh<KH, kw<KW}
    #                        xp[n, g*Cg+c, i*SH + kh*DH, j*SW + kw*DW] * w[g*Fg+f, c, kh, kw]
    # saved: xp (a padded copy of x) and a copy of w, backward's own
    F, Cg, KH, KW = w.shape
    N, _, OH, OW = y_shape
    G = groups                                                 # Cg = C // G, Fg = F // G
    xp = _pad(x, padding, 0)                                   # (N, C, H+PT+PB, W+PL+PR)
    wg = w.reshape(G, F // G, Cg, KH, KW)                      # (G, Fg, Cg, KH, KW)
    y = np.zeros(y_shape, dtype=x.dtype)
    for i, j, rows, cols in _windows(OH, OW, stride, (KH, KW), dilation):
        patch = xp[:, :, rows, cols].reshape(N, G, Cg, KH, KW)    # window (i, j), by group
        y[:, :, i, j] = np.einsum("ngchw,gfchw->ngf", patch, wg).reshape(N, F)
    if b is not None:
        y += b[None, :, None, None]
    return y, (xp, w.copy(), stride, padding, dilation, groups)


def conv2d_backward(dy, saved, input_grad=True):
    # dw[g*Fg+f, c, kh, kw] = sum_{n,i,j}
    #                          dy[n, g*Fg+f, i, j] * xp[n, g*Cg+c, i*SH + kh*DH, j*SW + kw*DW]
    # dxp[n, g*Cg+c, i*SH + kh*DH, j*SW + kw*DW] += sum_{f<Fg}
    #                          dy[n, g*Fg+f, i, j] * w[g*Fg+f, c, kh, kw]
    # db[f] = sum_{n,i,j} dy[n, f, i, j]
    xp, w, stride, padding, dilation, G = saved
    F, Cg, KH, KW = w.shape
    N, _, OH, OW = dy.shape
    wg = w.reshape(G, F // G, Cg, KH, KW)                      # (G, Fg, Cg, KH, KW)
    dxp = np.zeros_like(xp) if input_grad else None           # input_grad=False: no dx
    dwg = np.zeros_like(wg)
    for i, j, rows, cols in _windows(OH, OW, stride, (KH, KW), dilation):
        d = dy[:, :, i, j].reshape(N, G, F // G)               # (N, G, Fg)
        patch = xp[:, :, rows, cols].reshape(N, G, Cg, KH, KW)
        dwg += np.einsum("ngf,ngchw->gfchw", d, patch)
        if input_grad:
            dxp[:, :, rows, cols] += np.einsum("ngf,gfchw->ngchw", d, wg).reshape(
                N, G * Cg, KH, KW)
    db = dy.sum(axis=(0, 2, 3))                                # (F,)
    dx = _unpad(dxp, padding).copy() if input_grad else None
    return dx, dwg.reshape(F, Cg, KH, KW), db


# ---------------------------------------------------------------- max pooling

def _real_taps(i, S, P, K, D, size):
    """Window i's rows (or columns) that lie inside the input: its taps
    i*S - P + D*t, t < K, that fall in [0, size)."""
    taps = i * S - P + D * np.arange(K)
    return taps[(taps >= 0) & (taps < size)]


def max_pool2d_forward(x, kernel, stride, padding, dilation, out_hw):
    # y[n, c, i, j] = max of x over the window's real (unpadded) taps, which
    # lie dilation apart; out_hw (OH, OW) is given (ceil_mode's last windows
    # run past the padding).
    # The padding is -inf, so it can never be the (first) maximum: looking at
    # the real elements only is the same thing, and sends the gradient of an
    # all -inf window to its first real element, as PyTorch does.
    # np.argmax returns the first maximum in row-major order, and the first
    # NaN if there is one (NaN compares as the maximum).
    N, C, H, W = x.shape
    OH, OW = out_hw
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    rows = np.empty((N, C, OH, OW), dtype=np.intp)             # where each max came from
    cols = np.empty((N, C, OH, OW), dtype=np.intp)
    for i in range(OH):
        rr = _real_taps(i, stride[0], padding[0], kernel[0], dilation[0], H)
        for j in range(OW):
            cc = _real_taps(j, stride[1], padding[1], kernel[1], dilation[1], W)
            win = x[:, :, rr[:, None], cc[None, :]].reshape(N, C, -1)   # (N, C, real taps)
            k = np.argmax(win, axis=2)                          # (N, C)
            y[:, :, i, j] = np.take_along_axis(win, k[..., None], axis=2)[..., 0]
            rows[:, :, i, j] = rr[k // len(cc)]
            cols[:, :, i, j] = cc[k % len(cc)]
    return y, (x.shape, rows, cols)


def max_pool2d_backward(dy, saved):
    # dx[n, c, rows[n, c, i, j], cols[n, c, i, j]] += dy[n, c, i, j]
    x_shape, rows, cols = saved
    N, C, OH, OW = dy.shape
    dx = np.zeros(x_shape, dtype=dy.dtype)
    n, c = np.indices((N, C))                                 # (N, C) each
    for i in range(OH):
        for j in range(OW):
            # one target per (n, c) within a window, so plain += loses no update
            dx[n, c, rows[:, :, i, j], cols[:, :, i, j]] += dy[:, :, i, j]
    return dx


# ---------------------------------------------------------------- average pooling

def _avg_window(i, S, P, K, size, count_include_pad):
    """Window i's real rows [lo, hi) and its divisor's share: the window
    clipped to the padded input [-P, size + P), or to the input [0, size)."""
    start = i * S - P
    end = min(start + K, size + P)
    lo, hi = max(start, 0), min(end, size)
    return lo, hi, (end - start) if count_include_pad else (hi - lo)


def avg_pool2d_forward(x, kernel, stride, padding, out_hw, count_include_pad,
                       divisor_override):
    # y[n, c, i, j] = sum of x over the window's real elements / divisor(i, j),
    # divisor = divisor_override, or PyTorch's window size (_avg_window);
    # out_hw (OH, OW) is given (ceil_mode's last windows run past the padding)
    N, C, H, W = x.shape
    OH, OW = out_hw
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    spans = []
    for i in range(OH):
        r0, r1, dh = _avg_window(i, stride[0], padding[0], kernel[0], H, count_include_pad)
        for j in range(OW):
            c0, c1, dw = _avg_window(j, stride[1], padding[1], kernel[1], W, count_include_pad)
            d = divisor_override if divisor_override is not None else dh * dw
            y[:, :, i, j] = x[:, :, r0:r1, c0:c1].sum(axis=(2, 3)) / d
            spans.append((i, j, r0, r1, c0, c1, d))
    return y, (x.shape, spans)


def avg_pool2d_backward(dy, saved):
    # every real element of window (i, j) receives dy[n, c, i, j] / divisor(i, j)
    x_shape, spans = saved
    dx = np.zeros(x_shape, dtype=dy.dtype)
    for i, j, r0, r1, c0, c1, d in spans:
        dx[:, :, r0:r1, c0:c1] += dy[:, :, i, j, None, None] / d
    return dx


# ---------------------------------------------------------------- adaptive pooling

def _adaptive_windows(H, W, OH, OW):
    """Yield (i, j, rows, cols): output (i, j) pools input rows
    [floor(i*H/OH), ceil((i+1)*H/OH)) and columns likewise (PyTorch's bounds;
    neighbouring windows overlap when the sizes do not divide)."""
    for i in range(OH):
        r0, r1 = (i * H) // OH, -(-((i + 1) * H) // OH)
        for j in range(OW):
            c0, c1 = (j * W) // OW, -(-((j + 1) * W) // OW)
            yield i, j, slice(r0, r1), slice(c0, c1)


def adaptive_avg_pool2d_forward(x, output_size):
    # y[n, c, i, j] = mean of x[n, c, rows(i), cols(j)]
    N, C, H, W = x.shape
    OH, OW = output_size
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    for i, j, rows, cols in _adaptive_windows(H, W, OH, OW):
        y[:, :, i, j] = x[:, :, rows, cols].mean(axis=(2, 3))
    return y, x.shape


def adaptive_avg_pool2d_backward(dy, x_shape):
    # every element of window (i, j) receives dy[n, c, i, j] / (its window's size)
    _, _, H, W = x_shape
    _, _, OH, OW = dy.shape
    dx = np.zeros(x_shape, dtype=dy.dtype)
    for i, j, rows, cols in _adaptive_windows(H, W, OH, OW):
        area = (rows.stop - rows.start) * (cols.stop - cols.start)
        dx[:, :, rows, cols] += dy[:, :, i, j, None, None] / area
    return dx


def adaptive_max_pool2d_forward(x, output_size):
    # y[n, c, i, j] = max of x[n, c, rows(i), cols(j)]; np.argmax takes the
    # first maximum in row-major order, and the first NaN if there is one.
    # saved: (rows, cols) of each maximum, as max_pool2d_forward saves them
    N, C, H, W = x.shape
    OH, OW = output_size
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    at_row = np.empty((N, C, OH, OW), dtype=np.intp)
    at_col = np.empty((N, C, OH, OW), dtype=np.intp)
    for i, j, rows, cols in _adaptive_windows(H, W, OH, OW):
        win = x[:, :, rows, cols].reshape(N, C, -1)           # (N, C, window taps)
        k = np.argmax(win, axis=2)                              # (N, C)
        y[:, :, i, j] = np.take_along_axis(win, k[..., None], axis=2)[..., 0]
        width = cols.stop - cols.start
        at_row[:, :, i, j] = rows.start + k // width
        at_col[:, :, i, j] = cols.start + k % width
    return y, (x.shape, at_row, at_col)


def adaptive_max_pool2d_backward(dy, saved):
    # dx[n, c, rows[n, c, i, j], cols[n, c, i, j]] += dy[n, c, i, j]: the same
    # scatter as max pooling's
    return max_pool2d_backward(dy, saved)


# ---------------------------------------------------------------- relu

def relu_forward(x):
    # y = max(x, 0) elementwise; a NaN stays NaN. Backward needs [y > 0]
    # (y > 0 exactly where x > 0), saved as a mask of its own: the caller
    # holds y and may change it before the backward. out=: a 0-d x gives a
    # 0-d array, not a NumPy scalar.
    y = np.maximum(x, 0, out=np.empty_like(x))
    return y, np.greater(y, 0)


def relu_backward(dy, mask):
    # dx = dy * mask; dtype= casts the 0/1 mask inside the loop. An inf in
    # dy where y <= 0 gives NaN (inf * 0), where PyTorch's select gives 0.
    with np.errstate(invalid="ignore"):           # inf * 0 is the documented NaN
        return np.multiply(dy, mask, dtype=dy.dtype, out=np.empty_like(dy))
