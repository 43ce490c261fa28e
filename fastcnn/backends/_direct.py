"""The direct 3x3 stride-1 conv2d path of the compiled backends: register-
blocked loops over zero-padded planes (``k.direct_kernels()``, e.g.
``fastcnn/_kernels/cy_direct.pyx``, where the loops and the plane layout are
documented), for the forward, dx (the same loops over dy with the filters
flipped and F and C/G swapped) and dw.

``_gemm_conv.choose_path`` takes it, for a kernel table whose ``direct`` is
this module, where a column matrix or Winograd's tiles cost more in memory
traffic than the products save: few channels per group (grouped, dilated,
the MNIST layers). Any dilation and groups; the padding at most the
filter's reach (PT <= 2*DH, PL <= 2*DW: then dx's padding is >= 0 too).

The forward keeps its padded planes of x (a workspace array) and a copy of
w for the backward, so a caller changing x or w in place after the forward
changes nothing. Chunks of the batch run concurrently on fastcnn's pool
(``backends/_concurrent``), one per thread; dw is summed over the chunks in
double, db from dy's plane sums (each in dy's dtype) in double.

Deliberately not here: argument checks (``fastcnn.ops``), the choice of
path (``_gemm_conv``), loops over elements (the kernel modules).
"""
import numpy as np

from fastcnn.backends import _concurrent
from fastcnn.backends._workspace import outputs, workspace


def applies(g):
    """Whether geometry g is a convolution this path computes."""
    return (g.KH == g.KW == 3 and g.SH == g.SW == 1
            and 0 <= g.PT <= 2 * g.DH and 0 <= g.PL <= 2 * g.DW)


def pack(w, G, FB):
    """Filters (F, Cg, 3, 3) as the kernels read them: flat (G, ceil(Fg/FB),
    Cg, 9, FB), block fb of group g holding filters g*Fg + fb*FB + j, zeros
    past Fg."""
    F, Cg = w.shape[:2]
    Fg = F // G
    blocks = -(-Fg // FB)
    src = w.reshape(G, Fg, Cg, 9)
    if blocks * FB > Fg:        # zero filters fill the last block
        src = np.concatenate([src, np.zeros((G, blocks * FB - Fg, Cg, 9), w.dtype)], axis=1)
    wp = np.empty((G, blocks, Cg, 9, FB), dtype=w.dtype)
    np.copyto(wp, src.reshape(G, blocks, FB, Cg, 9).transpose(0, 1, 3, 4, 2))
    return wp.reshape(-1)


def flipped(w, G):
    """dx's filters: (C, Fg, 3, 3) with [g*Cg + c, f] = w[g*Fg + f, c]
    turned by 180 degrees."""
    F, Cg = w.shape[:2]
    Fg = F // G
    return w.reshape(G, Fg, Cg, 3, 3)[:, :, :, ::-1, ::-1].transpose(
        0, 2, 1, 3, 4).reshape(G * Cg, Fg, 3, 3)


def _slices(N):
    return _concurrent.batch_slices(N, min(_concurrent.num_threads(), N))


def pools(k):
    """Whether kernel table k's loops can pool their output as they go
    (``forward``'s ``pooled``: cy_direct in registers, numba_direct from a
    cache-sized scratch)."""
    return k.direct_kernels().pools()


def forward(k, x, w, b, y, g, relu=False, pooled=None):
    """y = conv(x, w) + b (then max(., 0) if relu), chunks of the batch
    concurrently; returns what backward needs. pooled (N, F, OH // 2, OW //
    2), if given (only where ``pools(k)``; y is then None), receives the 2x2
    stride-2 max pooling of relu(conv) instead, pooled as the loops go,
    without the argmax a backward would need: for inference."""
    kd = k.direct_kernels()
    wp = pack(w, g.G, kd.FB)
    HP, WP = kd.padded_shape(g.H, g.W, g.PT, g.PL, g.OH, g.OW, g.DH, g.DW)
    xp = workspace.take((g.N, g.C, HP, WP), x.dtype)
    if pooled is not None:
        if pooled.size:
            _concurrent.run(lambda sl: kd.forward_pool22(x[sl], wp, b, pooled[sl], xp[sl], g.G,
                                                         g.PT, g.PL, g.DH, g.DW, g.OH, g.OW),
                            _slices(g.N))
    else:
        _concurrent.run(lambda sl: kd.forward(x[sl], wp, b, y[sl], xp[sl], g.G, g.PT, g.PL,
                                              g.DH, g.DW, int(relu)), _slices(g.N))
    return xp, w.copy()


def backward(k, dy, g, saved, input_grad=True):
    """(dx, dw, db) for the forward that saved ``saved`` (without its relu:
    the caller masks dy); input_grad=False: dx is None, its pass skipped."""
    kd = k.direct_kernels()
    xp, w = saved
    # dx = the forward's loops over dy padded by the filter's reach less PT, PL
    QT, QL = 2 * g.DH - g.PT, 2 * g.DW - g.PL
    HQ, WQ = kd.padded_shape(g.OH, g.OW, QT, QL, g.H, g.W, g.DH, g.DW)
    dq = workspace.take((g.N, g.F, HQ, WQ), dy.dtype)
    if input_grad:
        dx = outputs.take((g.N, g.C, g.H, g.W), dy.dtype)
        wt = pack(flipped(w, g.G), g.G, kd.FB)
        zeros = np.zeros(g.C, dtype=dy.dtype)
    else:
        dx = None

    def chunk(sl):
        if dx is not None:      # the dx pass pads dy into dq as it goes
            kd.forward(dy[sl], wt, zeros, dx[sl], dq[sl], g.G, QT, QL, g.DH, g.DW, 0)
        else:                   # dw's planes without it: the same zero-padded dy
            q = dq[sl]
            q.fill(0)
            q[:, :, QT:QT + g.OH, QL:QL + g.OW] = dy[sl]
        dw_c = np.zeros((g.F, g.C // g.G, 9))
        kd.weight_grad(xp[sl], dq[sl], dw_c, g.G, QT, QL, g.OH, g.OW, g.DH, g.DW)
        # db: each plane summed in dy's dtype (numpy's pairwise sum: a few
        # roundings), the planes in double; a double sum of every element
        # goes through numpy's casting buffers at twice the time
        d = dy[sl]
        return dw_c, d.reshape(d.shape[0], g.F, -1).sum(axis=2).sum(axis=0, dtype=np.float64)

    parts = _concurrent.run(chunk, _slices(g.N))
    dw64, db = parts[0]
    for dw_c, db_c in parts[1:]:
        dw64 += dw_c
        db = db + db_c
    dw = outputs.take((g.F, g.C // g.G, 3, 3), dy.dtype)
    np.copyto(dw.reshape(dw64.shape), dw64)
    return dx, dw, db.astype(dy.dtype)
