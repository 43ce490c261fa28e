"""The depthwise convolution driver both compiled backends (cython, numba)
run: groups == C, w (F, 1, KH, KW) with F = M*C, any kernel size, stride,
padding and dilation. The shared GEMM driver (``backends/_gemm_conv``)
hands a depthwise call here with the backend's kernel module
(``fastcnn._kernels.cy_depthwise`` or ``numba_depthwise``: the same
functions, the same arguments).

Why direct loops: a depthwise filter has only KH*KW taps, so a matrix
product has a column matrix KH*KW times the input to fill for a product
with an inner dimension of 9: the copy costs more than the arithmetic.

Work split: blocks of (images, channels) on fastcnn's pool
(``backends/_concurrent``). Channels first: a block that holds every image
of its channels sums dw and db over the batch by itself, with no partial
sums to add; images are split too only when there are fewer channels than
threads, and then each image range writes its own partial dw and db,
added here.

Small maps: 3x3 filters with at most SMALL_MAX output pixels (the mobile
net's 7x7 layers) take the kernels' ``forward_small``/``backward_small``,
which pack each channel's planes with the images innermost (see
cy_depthwise): blocks of channels only, every block all images, so each
block writes its own filters' dw and db. Larger planes measured slower
there: the small-map kernels' cost per output stays flat, while the
per-plane kernels' falls as their rows grow long enough to fill vectors.

ctx keeps the forward's zero-padded copy of x (the kernels' phase layout
or the small-map packing, see cy_depthwise; a workspace array, handed out
again once ctx dies) and its own copy of w, so the backward computes with
what the forward saw even if the caller changed x or w in place since.
dw and db are summed in float64 and rounded once. Each piece takes its own scratch (the flat
output run, the dy planes at the kernels' pitches) from the workspace.

``relu=True`` (the fused conv+ReLU op) has the kernels put each output
plane through ReLU while it is in cache, and with ``mask`` write the
ReLU's mask [y > 0] there too; the backward given that mask applies it
to dy in the kernels' copy of each dy plane: no pass over y to make the
mask, none over dy to apply it. Without a mask the backward takes the
gradient of the conv's own output.

Deliberately not here: argument checks and output sizes (``fastcnn.ops``),
the choice of this path (``_gemm_conv``), loops over elements
(``fastcnn/_kernels``).
"""
from typing import NamedTuple

import numpy as np

from fastcnn.backends import _concurrent
from fastcnn.backends._workspace import outputs, workspace

# the kernels' mask argument when there is none (their ``masked`` False:
# never read)
_NO_MASK = np.zeros((1, 1, 1, 1), dtype=np.uint8)


class _Saved(NamedTuple):
    x_shape: tuple
    w: np.ndarray          # (F, KH, KW), a copy
    xp: np.ndarray         # (N, C, SH*SW*(HQ+1), WQ): x in the phase layout
    blocks: list           # [(n0, n1, c0, c1)]
    params: tuple          # (SH, SW, DH, DW, PT, PL)
    small: bool = False    # xp is the small-map layout (C, HP, WP, NP)


# output planes of at most this many pixels (3x3 filters) take the
# small-map kernels (forward_small / backward_small): images innermost
SMALL_MAX = 64


def _blocks(N, C, work):
    """(n0, n1, c0, c1) blocks: one per thread that ``work`` earns, over
    channels, and over images as well when there are fewer channels."""
    threads = _concurrent.threads_for(_concurrent.num_threads(), work, N * C)
    cs = _concurrent.batch_slices(C, threads)
    ns = _concurrent.batch_slices(N, -(-threads // len(cs)))
    return [(n.start, n.stop, c.start, c.stop) for n in ns for c in cs]


def _run(fn, blocks):
    if len(blocks) == 1:
        fn(blocks[0])
    else:
        _concurrent.run(fn, blocks)


def forward(kern, x, w, b, stride, padding, dilation, y_shape, relu=False, mask=None):
    """conv2d_forward of the kernel contract for groups == C on kernel
    module ``kern``: (y, saved). relu: y through ReLU as np.maximum(y, 0)
    (NaN stays NaN, +0 for the rest <= 0), in the kernels' pass over each
    plane; mask (uint8, y's shape), if given, filled with [y > 0] in that
    pass too."""
    (N, C, H, W), (F, _, KH, KW) = x.shape, w.shape
    (SH, SW), (PT, PB, PL, PR), (DH, DW) = stride, padding, dilation
    if _small(KH, KW, y_shape):
        return _forward_small(kern, x, w, b, stride, padding, dilation, y_shape, relu, mask)
    HQ, WQ = -(-(H + PT + PB) // SH), -(-(W + PL + PR) // SW)
    w3 = w.reshape(F, KH, KW).copy()
    bias = b if b is not None else np.zeros(F, dtype=x.dtype)
    xp = workspace.take((N, C, SH * SW * (HQ + 1), WQ), x.dtype)
    y = outputs.take(y_shape, x.dtype)
    params = (SH, SW, DH, DW, PT, PL)
    blocks = _blocks(N, C, y.size * KH * KW)
    L = y_shape[2] * WQ

    def piece(blk):
        kern.forward(x, w3, bias, xp, y, workspace.take((L,), x.dtype), *blk, *params,
                     bool(relu), _NO_MASK if mask is None else mask, mask is not None)

    _run(piece, blocks)
    return y, _Saved(x.shape, w3, xp, blocks, params)


def backward(kern, dy, saved, input_grad=True, mask=None):
    """conv2d_backward of the kernel contract for the saved forward:
    (dx, dw, db); input_grad=False gives dx None. mask (uint8, dy's shape),
    the fused ReLU's from forward, if given: the gradient is dy * mask
    (relu_backward's product), applied in the kernels."""
    if saved.small:
        return _backward_small(kern, dy, saved, input_grad, mask)
    N, C, H, W = saved.x_shape
    F, KH, KW = saved.w.shape
    OH, OW = dy.shape[2:]
    SH, SW, DH, DW, PT, PL = saved.params
    M, WQ = F // C, saved.xp.shape[3]
    # the kernels make dx and dw in one call, one pass over dy, with no way
    # to leave dx out (cy_depthwise.backward): input_grad=False still
    # computes dx, into a workspace array, and drops it
    dx = (outputs if input_grad else workspace).take(saved.x_shape, dy.dtype)
    image_ranges = sorted({blk[:2] for blk in saved.blocks})
    dw_parts = np.empty((len(image_ranges), F, KH * KW))
    db_parts = np.empty((len(image_ranges), F))
    # the kernels' scratch (see cy_depthwise.backward): partial sums; for
    # strides > 1 dy at the pitch WQ of xp and a plane of xp; for stride 1
    # the zero-padded dy plane at pitch WQ and dx at that pitch
    A = (KH - 1) * DH
    stride1 = (SH, SW) == (1, 1)
    acc_shape = ((KH * KW + 1) * OW,)
    dxp_shape = (1,) if stride1 else (saved.xp.shape[2] * WQ,)
    dyw_shape = (1,) if stride1 else (OH * WQ,)
    dyp_shape = (A + max(OH + 1, H + PT + 1), WQ) if stride1 else (1, 1)
    dq_shape = (H * WQ,) if stride1 else (1,)

    def piece(blk):
        r = image_ranges.index(blk[:2])
        take = workspace.take
        kern.backward(dy, saved.w, saved.xp, dx, dw_parts[r], db_parts[r],
                      take(acc_shape, dy.dtype), take(dxp_shape, dy.dtype),
                      take(dyw_shape, dy.dtype), take(dyp_shape, dy.dtype),
                      take(dq_shape, dy.dtype), *blk, *saved.params,
                      _NO_MASK if mask is None else mask, mask is not None)

    _run(piece, saved.blocks)
    dw = outputs.take((F, 1, KH, KW), dy.dtype)
    dw.reshape(F, KH * KW)[...] = dw_parts.sum(axis=0)
    return dx if input_grad else None, dw, db_parts.sum(axis=0).astype(dy.dtype)


def _small(KH, KW, y_shape):
    """Whether a conv takes the small-map kernels."""
    return KH == 3 and KW == 3 and y_shape[2] * y_shape[3] <= SMALL_MAX


def _channel_blocks(N, C, work):
    """(0, N, c0, c1) blocks: one per thread that ``work`` earns, over
    channels only (the small-map kernels take every image at once)."""
    threads = _concurrent.threads_for(_concurrent.num_threads(), work, C)
    return [(0, N, c.start, c.stop) for c in _concurrent.batch_slices(C, threads)]


def _forward_small(kern, x, w, b, stride, padding, dilation, y_shape, relu, mask):
    """forward on the small-map kernels: xp (C, HP, WP, NP) holds each
    channel's zero-padded planes with the images innermost, NP = N rounded
    up to 8 so that every loop runs over whole vectors of images."""
    (N, C, H, W), (F, _, KH, KW) = x.shape, w.shape
    (SH, SW), (PT, PB, PL, PR), (DH, DW) = stride, padding, dilation
    NP = -(-N // 8) * 8
    w3 = w.reshape(F, KH, KW).copy()
    bias = b if b is not None else np.zeros(F, dtype=x.dtype)
    xp = workspace.take((C, H + PT + PB, W + PL + PR, NP), x.dtype)
    y = outputs.take(y_shape, x.dtype)
    params = (SH, SW, DH, DW, PT, PL)
    blocks = _channel_blocks(N, C, y.size * KH * KW)
    tile = (y_shape[2] * y_shape[3] * NP,)

    def piece(blk):
        kern.forward_small(x, w3, bias, xp, y, workspace.take(tile, x.dtype), blk[2], blk[3],
                           *params, bool(relu), _NO_MASK if mask is None else mask,
                           mask is not None)

    _run(piece, blocks)
    return y, _Saved(x.shape, w3, xp, blocks, params, True)


def _backward_small(kern, dy, saved, input_grad, mask):
    """backward for a forward on the small-map kernels: each block of
    channels writes its own filters' dw and db (no partial sums)."""
    F = saved.w.shape[0]
    _, HP, WP, NP = saved.xp.shape
    N, C, H, W = saved.x_shape
    OH, OW = dy.shape[2:]
    _, _, DH, DW, PT, PL = saved.params
    # dy's scratch has room for stride 1's zero-padded copy (cy_depthwise.backward_small)
    HD = 2 * DH + OH + max(0, 2 * DH - (HP - H - PT))
    WD = 2 * DW + OW + max(0, 2 * DW - (WP - W - PL))
    dyt = (max(OH * OW, HD * WD) * NP,)
    dx = (outputs if input_grad else workspace).take(saved.x_shape, dy.dtype)
    dw64 = np.empty((F, 9))
    db64 = np.empty(F)

    def piece(blk):
        take = workspace.take
        kern.backward_small(dy, saved.w, saved.xp, dx, dw64, db64,
                            take(dyt, dy.dtype), take((HP * WP * NP,), dy.dtype),
                            blk[2], blk[3], *saved.params,
                            _NO_MASK if mask is None else mask, mask is not None)

    _run(piece, saved.blocks)
    dw = outputs.take((F, 1, 3, 3), dy.dtype)
    dw.reshape(F, 9)[...] = dw64
    return dx if input_grad else None, dw, db64.astype(dy.dtype)
