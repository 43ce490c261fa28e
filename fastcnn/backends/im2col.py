"""Backend 'im2col': windows as strided views, then one matrix multiply.

conv2d copies the padded input's windows (``_windows.windows``) once into a
column matrix; the forward pass is one GEMM, y = w2 @ cols, and the
backward pass two, dw = dy2 @ cols.T and dcols = w2.T @ dy2, followed by
col2im: a scatter-add into the padded gradient that loops over the KH*KW
kernel offsets, never over pixels. Dilation reads every DH-th row and
DW-th column of the dilated span's windows (still a view). Groups split the
rows of cols into G blocks, one per group: each product becomes one GEMM
per group, all groups in one stacked matmul (groups = 1 stays one 2-D
product; depthwise is G products of (Fg, KH*KW) by (KH*KW, N*OH*OW)).
Pooling reads the same window view one kernel offset at a time: max keeps
the running maximum (np.maximum: where +0 and -0 tie for the maximum, the
value may have either sign, though argmax and so the gradient follow the
first-maximum rule) and the offset it came from, avg sums and divides by
KH*KW. Every step is a whole-array NumPy
operation in the input's dtype; ``saved`` keeps cols and a copy of w for the
backward pass. The products run through ``_concurrent.matmul`` (BLAS at one
thread, blocks across fastcnn's pool), so none leaves OpenBLAS's own
threads spinning.

The column matrix has two layouts (``_batched`` picks one per call, both
with rows ordered (C, KH, KW) = (G, Cg, KH, KW), so ``w.reshape(G, Fg, -1)``
needs no copy):
* wide, cols (G, Cg*KH*KW, N*OH*OW): one big GEMM for the batch; its output
  (F, N, OH, OW) reaches NCHW with one transposing copy that also adds the
  bias, and dy takes the opposite copy.
* batched, cols (N*G, Cg*KH*KW, OH*OW): one small GEMM per image that writes
  y in NCHW directly, and nothing to transpose.

Tried and measured no faster on the MNIST CNN (float32, batch 64, one
thread), so not here: extended rows for stride 1 (GEMMs over the padded
width, so that im2col and col2im move whole rows: those got 1.3-1.4x faster,
the GEMMs on 14% more columns 18-42% slower; conv2 forward+backward 40 ms vs
36 ms) and a CHWN layout (long runs in im2col/col2im, paid back by the
gathers to and from NCHW: conv2 within 3%, conv1 1.7x slower).

Deliberately not here: argument checks (``fastcnn.ops`` did them), threads
other than the products', loops over pixels, dtype conversions.
"""

import numpy as np

from fastcnn.backends import _pool_modes
from fastcnn.backends._concurrent import matmul
from fastcnn.backends._windows import padded, windows


# ---------------------------------------------------------------- conv2d

def _batched(C, KH, KW, F):
    """Batched layout when the output (F rows per pixel) outgrows cols (C*KH*KW rows).

    The wide layout moves y and dy once more than the batched one (the
    transposing copies); the batched one runs N small GEMMs instead of one
    big one, which BLAS threads poorly. Measured (float32, batch 64, one
    thread, forward+backward): MNIST conv1, F = 32 > 9, 3.1 ms batched vs
    9.5 ms wide; conv2, F = 64 < 288, 35 ms wide vs 39 ms batched, and the
    gap widens with two BLAS threads.
    """
    return F > C * KH * KW


def _conv_windows(xp, kernel, stride, dilation, out_shape, writeable=False):
    """The (KH, KW, A, B, OH, OW) view v[i, j, a, b, p, q] = xp[a, b, p*SH + i*DH, q*SW + j*DW]:
    the windows of the dilated kernel's span, every DH-th row and DW-th
    column of them (a view of a view, still no copy)."""
    (KH, KW), (DH, DW) = kernel, dilation
    span = (DH * (KH - 1) + 1, DW * (KW - 1) + 1)
    return windows(xp, span, stride, out_shape, writeable=writeable)[::DH, ::DW]


def _grouped(a, b):
    """matmul of (G, ., .) stacks, one product per group. One group stays a
    single 2-D product, which ``matmul`` splits into blocks across the pool
    (a stack of one it could not split)."""
    if a.shape[0] == 1:
        return matmul(a[0], b[0])[None]
    return matmul(a, b)


def _per_image(wg, N):
    """The batched layout's left operand for a (N*G, ., .) stack of column
    blocks: w's groups (G, ., .) repeated for every image (a copy, as small as
    w times N); one group is w itself, a 2-D operand the stack broadcasts."""
    G = wg.shape[0]
    if G == 1:
        return wg[0]
    return np.broadcast_to(wg, (N,) + wg.shape).reshape((N * G,) + wg.shape[1:])


def conv2d_forward(x, w, b, stride, padding, dilation, groups, y_shape):
    # G = groups; group g's Cg = C // G input and Fg = F // G output channels
    # cols[(c, i, j), (n, p, q)] = xp[n, c, p*SH + i*DH, q*SW + j*DW]
    # y[n, g*Fg+f, p, q] = b[g*Fg+f]
    #                      + sum_{c<Cg,i,j} w[g*Fg+f, c, i, j] * cols[(g*Cg+c, i, j), (n, p, q)]
    # The rows of cols are (C, KH, KW) = (G, Cg, KH, KW): each group's rows
    # are one block, so the product is one GEMM per group, all in one stack.
    N, C, H, W = x.shape
    F, Cg, KH, KW = w.shape
    _, _, OH, OW = y_shape
    G, Fg, K = groups, F // groups, Cg * KH * KW              # K: one group's rows of cols
    xp = padded(x, padding, 0) if any(padding) else x       # (N, C, Hp, Wp)
    win = _conv_windows(xp, (KH, KW), stride, dilation, (OH, OW))   # (KH, KW, N, C, OH, OW)
    wg = w.reshape(G, Fg, K)
    batched = _batched(Cg, KH, KW, Fg)
    if batched:
        cols = np.empty((N, C, KH, KW, OH, OW), x.dtype)
        np.copyto(cols, win.transpose(2, 3, 0, 1, 4, 5))
        cols = cols.reshape(N * G, K, OH * OW)
        y = matmul(_per_image(wg, N), cols).reshape(N, F, OH, OW)
        if b is not None:
            y += b[:, None, None]
    else:
        cols = np.empty((C, KH, KW, N, OH, OW), x.dtype)
        np.copyto(cols, win.transpose(3, 0, 1, 2, 4, 5))
        cols = cols.reshape(G, K, N * OH * OW)
        yt = _grouped(wg, cols).reshape(F, N, OH, OW).transpose(1, 0, 2, 3)
        y = np.empty((N, F, OH, OW), x.dtype)
        if b is None:
            np.copyto(y, yt)
        else:
            np.add(yt, b[:, None, None], out=y)             # the bias rides on the copy
    # w: backward's own copy
    return y, (cols, batched, w.copy(), x.shape, stride, padding, dilation, groups)


def conv2d_backward(dy, saved, input_grad=True):
    # input_grad=False skips dcols and the col2im (dx is None)
    # dw[g*Fg+f, (c, i, j)] = sum_{n,p,q} dy[n, g*Fg+f, p, q] * cols[(g*Cg+c, i, j), (n, p, q)]
    # dcols[group g's rows] = wg[g].T @ dy[group g's filters]
    # dxp[n, c, p*SH + i*DH, q*SW + j*DW] += dcols[(c, i, j), (n, p, q)]
    cols, batched, w, (N, C, H, W), stride, (PT, PB, PL, PR), dilation, G = saved
    F, Cg, KH, KW = w.shape
    _, _, OH, OW = dy.shape
    Hp, Wp = H + PT + PB, W + PL + PR
    wg = w.reshape(G, F // G, Cg * KH * KW)
    if batched:
        dy3 = dy.reshape(N * G, F // G, OH * OW)
        db = dy.sum(axis=(0, 2, 3))
        dw = matmul(dy3, cols.transpose(0, 2, 1)).reshape(N, F, -1).sum(axis=0)
        if not input_grad:
            return None, dw.reshape(F, Cg, KH, KW), db
        dcols = matmul(_per_image(wg.transpose(0, 2, 1), N), dy3).reshape(N, C, KH, KW, OH, OW)
        dxp = np.zeros((N, C, Hp, Wp), dy.dtype)
        _col2im(dxp, dcols.transpose(2, 3, 0, 1, 4, 5), stride, dilation)
        dx = dxp[:, :, PT:PT + H, PL:PL + W].copy() if Hp > H or Wp > W else dxp
        return dx, dw.reshape(F, Cg, KH, KW), db
    dy2 = np.empty((F, N, OH, OW), dy.dtype)
    np.copyto(dy2, dy.transpose(1, 0, 2, 3))
    dy2 = dy2.reshape(G, F // G, N * OH * OW)
    db = dy2.sum(axis=2).reshape(F)
    dw = _grouped(dy2, cols.transpose(0, 2, 1)).reshape(F, Cg, KH, KW)
    if not input_grad:
        return None, dw, db
    dcols = _grouped(wg.transpose(0, 2, 1), dy2).reshape(C, KH, KW, N, OH, OW)
    # col2im into a (C, N, Hp, Wp) buffer, dcols' own axis order, so that the
    # adds run along whole output rows; one transposing copy makes it NCHW.
    dxp = np.zeros((C, N, Hp, Wp), dy.dtype)
    _col2im(dxp, dcols.transpose(1, 2, 0, 3, 4, 5), stride, dilation)
    dx = np.empty((N, C, H, W), dy.dtype)
    np.copyto(dx, dxp[:, :, PT:PT + H, PL:PL + W].transpose(1, 0, 2, 3))
    return dx, dw, db


def _col2im(dxp, dcols, stride, dilation):
    """dxp[a, b, p*SH + i*DH, q*SW + j*DW] += dcols[i, j, a, b, p, q]: one add per kernel offset."""
    KH, KW, _, _, OH, OW = dcols.shape
    target = _conv_windows(dxp, (KH, KW), stride, dilation, (OH, OW), writeable=True)
    for i in range(KH):
        for j in range(KW):
            target[i, j] += dcols[i, j]


# ---------------------------------------------------------------- pooling

def _pool_geometry(x_shape, kernel, stride, padding):
    _, _, H, W = x_shape
    (KH, KW), (SH, SW), (PH, PW) = kernel, stride, padding
    return (H + 2 * PH - KH) // SH + 1, (W + 2 * PW - KW) // SW + 1


def _pool_windows(x, kernel, stride, padding, fill):
    PH, PW = padding
    xp = padded(x, (PH, PH, PW, PW), fill) if PH or PW else x
    return windows(xp, kernel, stride, _pool_geometry(x.shape, kernel, stride, padding))


def _pool_gradient(x_shape, kernel, stride, padding, dtype):
    """(dxp, its window view): a zero padded gradient to scatter-add into."""
    N, C, H, W = x_shape
    PH, PW = padding
    dxp = np.zeros((N, C, H + 2 * PH, W + 2 * PW), dtype)
    OH, OW = _pool_geometry(x_shape, kernel, stride, padding)
    return dxp, windows(dxp, kernel, stride, (OH, OW), writeable=True)


def _unpad(dxp, x_shape, padding):
    _, _, H, W = x_shape
    PH, PW = padding
    return dxp[:, :, PH:PH + H, PW:PW + W].copy() if PH or PW else dxp


def _disjoint(kernel, stride):
    """True when no two windows share an element: plain stores replace adds."""
    return stride[0] >= kernel[0] and stride[1] >= kernel[1]


def _max_pool2d_forward(x, kernel, stride, padding):
    # x (N, C, H, W) -> y, arg (N, C, OH, OW); xp is x padded to (N, C, H+2PH, W+2PW)
    # y[n, c, p, q] = max_{i,j} xp[n, c, p*SH + i, q*SW + j]   (padding is -inf)
    # arg[n, c, p, q] = the first (i*KW + j) in row-major order that holds it;
    # the first NaN if the window has one (then y is NaN), like np.argmax;
    # the first real element if y is -inf (padding is never the maximum).
    KH, KW = kernel
    win = _pool_windows(x, kernel, stride, padding, -np.inf)  # (KH, KW, N, C, OH, OW)
    y = win[0, 0].copy()
    arg = np.zeros(y.shape, np.min_scalar_type(KH * KW - 1))
    v = np.empty_like(y)
    better = np.empty(y.shape, bool)
    y_is_number = np.empty(y.shape, bool)
    step = np.empty(y.shape, arg.dtype)
    # One pass per offset in row-major order, all whole-array ufuncs: no
    # boolean-mask writes (they run at mask-run speed on random data).
    for k in range(1, KH * KW):
        np.copyto(v, win[k // KW, k % KW])                    # one strided read, then contiguous
        # v takes over if larger, or NaN while y is not: not (v <= y) holds
        # for larger v and for any NaN; y == y keeps an earlier NaN in place.
        np.less_equal(v, y, out=better)
        np.logical_not(better, out=better)
        np.equal(y, y, out=y_is_number)
        better &= y_is_number
        # k exceeds every offset seen so far, so max() writes k where better.
        np.multiply(better, arg.dtype.type(k), out=step)
        np.maximum(arg, step, out=arg)
        np.maximum(y, v, out=y)                               # propagates NaN
    _first_real_if_minus_inf(y, arg, kernel, stride, padding)
    return y, (arg, x.shape, kernel, stride, padding)


def _first_real_if_minus_inf(y, arg, kernel, stride, padding):
    """Padding is never the maximum: a window whose maximum is -inf takes its
    first real element (as PyTorch does), not the -inf padding before it that
    the first-offset tie rule picked. Any other maximum is real already."""
    (KH, KW), (SH, SW), (PH, PW) = kernel, stride, padding
    if not (PH or PW):
        return
    at_minus_inf = y == -np.inf
    if not at_minus_inf.any():
        return
    _, _, OH, OW = y.shape
    i0 = np.maximum(PH - SH * np.arange(OH), 0)              # padded rows before the input
    j0 = np.maximum(PW - SW * np.arange(OW), 0)
    first_real = (i0[:, None] * KW + j0[None, :]).astype(arg.dtype)
    np.copyto(arg, np.broadcast_to(first_real, arg.shape), where=at_minus_inf)


def _max_pool2d_backward(dy, saved):
    # dy, arg (N, C, OH, OW) -> dx (N, C, H, W)
    # dxp[n, c, p*SH + i, q*SW + j] += dy[n, c, p, q] where arg[n, c, p, q] == i*KW + j
    arg, x_shape, kernel, stride, padding = saved
    KH, KW = kernel
    dxp, target = _pool_gradient(x_shape, kernel, stride, padding, dy.dtype)
    # Route dy by bit mask, not dy * (arg == k): 0 * inf would be NaN.
    uint = np.dtype(f"u{dy.itemsize}")
    dy_bits = dy.view(uint)
    hit = np.empty(dy.shape, bool)
    mask = np.empty(dy.shape, uint)
    routed = np.empty(dy.shape, dy.dtype)
    disjoint = _disjoint(kernel, stride)
    for k in range(KH * KW):
        np.equal(arg, k, out=hit)
        np.negative(hit.view(np.uint8), out=mask, dtype=uint)  # 1 -> all ones
        t = target[k // KW, k % KW]
        if disjoint:
            np.bitwise_and(dy_bits, mask, out=t.view(uint))
        else:
            np.bitwise_and(dy_bits, mask, out=routed.view(uint))
            t += routed
    return _unpad(dxp, x_shape, padding)


def _avg_pool2d_forward(x, kernel, stride, padding):
    # x (N, C, H, W) -> y (N, C, OH, OW); xp is x padded to (N, C, H+2PH, W+2PW)
    # y[n, c, p, q] = sum_{i,j} xp[n, c, p*SH + i, q*SW + j] / (KH*KW)   (padding is 0)
    KH, KW = kernel
    win = _pool_windows(x, kernel, stride, padding, 0)
    y = win[0, 0].copy()
    for k in range(1, KH * KW):
        y += win[k // KW, k % KW]
    y /= KH * KW
    return y, (x.shape, kernel, stride, padding)


def _avg_pool2d_backward(dy, saved):
    # dy (N, C, OH, OW) -> dx (N, C, H, W)
    # dxp[n, c, p*SH + i, q*SW + j] += dy[n, c, p, q] / (KH*KW) for every (i, j)
    x_shape, kernel, stride, padding = saved
    KH, KW = kernel
    dxp, target = _pool_gradient(x_shape, kernel, stride, padding, dy.dtype)
    g = dy / (KH * KW)
    disjoint = _disjoint(kernel, stride)
    for k in range(KH * KW):
        t = target[k // KW, k % KW]
        if disjoint:
            np.copyto(t, g)
        else:
            t += g
    return _unpad(dxp, x_shape, padding)


# PyTorch's ceil_mode and divisors, over the floor-mode kernels above
# (backends/_pool_modes).

(max_pool2d_forward, max_pool2d_backward,
 avg_pool2d_forward, avg_pool2d_backward) = _pool_modes.public_kernels(
    _max_pool2d_forward, _max_pool2d_backward, _avg_pool2d_forward, _avg_pool2d_backward)


# ---------------------------------------------------------------- adaptive pooling
# Windows of unequal sizes do not fit a strided view. Averages are products
# with window-membership matrices instead: M (OH, H) holds M[i, r] = 1 when
# row r lies in window i, so the window sums are M_h @ x @ M_w.T and the
# backward is M_h.T @ g @ M_w. Maxima loop over the OH x OW windows, each a
# reduction over all (N, C) at once.

def _adaptive_bounds(size, out):
    """Starts and ends of the out windows along an axis of length size:
    floor(i*size/out), ceil((i+1)*size/out)."""
    i = np.arange(out)
    return (i * size) // out, -(-((i + 1) * size) // out)


def _membership(size, out, dtype):
    """(out, size): 1 where input index r lies in window i."""
    r0, r1 = _adaptive_bounds(size, out)
    r = np.arange(size)
    return ((r0[:, None] <= r) & (r < r1[:, None])).astype(dtype)


def adaptive_avg_pool2d_forward(x, output_size):
    # x (N, C, H, W) -> y (N, C, OH, OW) = M_h @ x @ M_w.T / (window sizes)
    N, C, H, W = x.shape
    (OH, OW) = output_size
    Mh, Mw = _membership(H, OH, x.dtype), _membership(W, OW, x.dtype)
    area = Mh.sum(axis=1)[:, None] * Mw.sum(axis=1)[None, :]          # (OH, OW)
    rows = matmul(x.reshape(N * C * H, W), Mw.T).reshape(N * C, H, OW)
    y = matmul(Mh, rows).reshape(N, C, OH, OW)
    y /= area
    return y, x.shape


def adaptive_avg_pool2d_backward(dy, x_shape):
    # dx (N, C, H, W) = M_h.T @ (dy / window sizes) @ M_w
    N, C, H, W = x_shape
    _, _, OH, OW = dy.shape
    Mh, Mw = _membership(H, OH, dy.dtype), _membership(W, OW, dy.dtype)
    area = Mh.sum(axis=1)[:, None] * Mw.sum(axis=1)[None, :]
    g = (dy / area).reshape(N * C * OH, OW)
    cols = matmul(g, Mw).reshape(N * C, OH, W)
    return matmul(Mh.T, cols).reshape(x_shape)


def adaptive_max_pool2d_forward(x, output_size):
    # y[n, c, i, j] = max over window (i, j); saved: the flat offset r*W + c of
    # each maximum in its plane. np.argmax: first maximum, or first NaN.
    N, C, H, W = x.shape
    OH, OW = output_size
    (r0, r1), (c0, c1) = _adaptive_bounds(H, OH), _adaptive_bounds(W, OW)
    where = np.empty((N, C, OH, OW), dtype=np.intp)
    for i in range(OH):
        for j in range(OW):
            win = x[:, :, r0[i]:r1[i], c0[j]:c1[j]]
            k = np.argmax(win.reshape(N, C, -1), axis=2)       # (N, C)
            rows, cols = np.divmod(k, c1[j] - c0[j])
            where[:, :, i, j] = (r0[i] + rows) * W + c0[j] + cols
    y = np.take_along_axis(x.reshape(N, C, -1), where.reshape(N, C, -1),
                           axis=2).reshape(N, C, OH, OW)
    return y, (x.shape, where)


def adaptive_max_pool2d_backward(dy, saved):
    # dx[n, c].flat[where[n, c, i, j]] += dy[n, c, i, j]; np.add.at, because
    # overlapping windows can pick the same element
    x_shape, where = saved
    N, C, H, W = x_shape
    dx = np.zeros((N * C, H * W), dtype=dy.dtype)
    planes = np.arange(N * C)[:, None]
    np.add.at(dx, (planes, where.reshape(N * C, -1)), dy.reshape(N * C, -1))
    return dx.reshape(x_shape)


# ---------------------------------------------------------------- relu
# One NumPy expression each: nothing for im2col to do differently from the
# reference, so it uses the reference's.
from fastcnn.backends.loops import relu_backward, relu_forward  # noqa: E402,F401
