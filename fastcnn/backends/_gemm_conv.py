"""The convolution driver both compiled backends (cython, numba) run: im2col
into a column matrix, BLAS products, col2im. The layout choice, the bias
row, the batch split and the dw/db reduction are here once; a backend only
passes its kernel table.

Paths (``choose_path``; ``forced_path`` overrides it, for tests):
  * "per_image", K = C*KH*KW <= PER_IMAGE_MAX_TAPS: columns (n, K+1, P) and
    a batch of small products y[i] = [w | b] @ cols[i] that come out NCHW;
    the bias rides on a row of ones, so db falls out of the dw product as
    its column K. Direct fused loops were measured and lost even on the
    1->32 channel first MNIST layer, so there are none.
  * "winograd", for a backend whose table has it (numba): 3x3 stride 1 with
    more taps and a batch of at least its MIN_BATCH (``backends/_winograd``).
  * "batch" otherwise: columns (K, n*L) and one large product per pass, y
    and dy transposed by layout kernels that fuse in the bias add and db.
    A backend that reads a padded input runs stride-1 columns over the
    padded width (row pitch RP = WP, with WP-OW "garbage columns" per row,
    see numba_conv); else RP = OW.
Both im2col paths split the batch into chunks of n images, one per thread,
that run concurrently on fastcnn's pool (``backends/_concurrent``), each
with single-threaded BLAS and kernels. A batch too small to share is one
chunk on the calling thread, still with BLAS at one thread; its large
products (the whole-batch path's) split over row or column blocks instead
(``_concurrent.matmul``), so no op leaves OpenBLAS's own pool spinning.

y, dx and dw come from the output pool (``_workspace.outputs``). ctx keeps
each chunk's column matrix (a workspace array, handed out again once ctx
dies) and its own copy of w (``wb``: w with the bias column, made anyway):
the backward reuses the columns, chunk by chunk, and computes with the
x and w the forward saw even if the caller changed them in place since.

The kernel table ``k`` (one object per backend):
    padded_input       True: the kernels read x zero-padded with one extra
                       zero row, planes flattened (N, C, (HP+1)*WP); False:
                       they read x itself and clip at its borders
    winograd           the Winograd driver module, or None
    im2col(src, cols, g, RP)            cols (K, n, OH*RP), last axis contiguous
    col2im(dcols, dx, g, RP)            the adjoint, into dx (n, C, H, W)
    unpack_output(yF, b, y, RP)         yF (F, n*OH*RP) -> y (n, F, OH, OW) + b
    pack_grad_output(dy, dyF, db, RP)   the reverse, zero garbage columns, db
Every kernel runs single-threaded, on the thread that calls it.

Deliberately not here: argument checks and output sizes (``fastcnn.ops``
computes y_shape), loops over elements (``fastcnn/_kernels``), Winograd.
"""
import contextlib
import contextvars
from typing import NamedTuple

import numpy as np

from fastcnn.backends import _concurrent
from fastcnn.backends._workspace import outputs, workspace

# Taps up to which the per-image column layout beats the whole-batch one
# (measured at batch 64 on one thread, fwd+bwd: 2.3x faster at K=9, 1.4x at
# K=36, noisy at K=72, equal at K=288).
PER_IMAGE_MAX_TAPS = 32

PATHS = ("per_image", "batch", "winograd")
_forced = contextvars.ContextVar("fastcnn_forced_conv_path", default=None)


class Geometry(NamedTuple):
    """Every size of one convolution, named as in the kernel contract."""
    N: int
    C: int
    H: int
    W: int
    F: int
    KH: int
    KW: int
    SH: int
    SW: int
    PT: int
    PB: int
    PL: int
    PR: int
    OH: int
    OW: int

    @property
    def K(self):
        return self.C * self.KH * self.KW

    @property
    def P(self):
        return self.OH * self.OW

    @property
    def HP(self):
        return self.H + self.PT + self.PB

    @property
    def WP(self):
        return self.W + self.PL + self.PR


@contextlib.contextmanager
def forced_path(path):
    """Inside the block every conv2d forward of the compiled backends takes
    ``path`` (one of PATHS), whatever the shapes would choose: for tests.
    A call that cannot take it raises ValueError instead of choosing another."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    token = _forced.set(path)
    try:
        yield
    finally:
        _forced.reset(token)


def choose_path(k, g):
    """The path for geometry g on the backend with kernel table k."""
    forced = _forced.get()
    if forced == "winograd" and (k.winograd is None or not k.winograd.applies(g)):
        raise ValueError(f"forced path 'winograd' does not apply: {g}")
    if forced is not None:
        return forced
    if g.K <= PER_IMAGE_MAX_TAPS:
        return "per_image"
    if k.winograd is not None and k.winograd.applies(g) and g.N >= k.winograd.MIN_BATCH:
        return "winograd"
    return "batch"


def forward(k, x, w, b, stride, padding, y_shape):
    """conv2d_forward of the kernel contract on kernel table k."""
    (N, C, H, W), (F, _, KH, KW), (_, _, OH, OW) = x.shape, w.shape, y_shape
    g = Geometry(N, C, H, W, F, KH, KW, *stride, *padding, OH, OW)
    bias = b if b is not None else np.zeros(F, dtype=x.dtype)
    y = outputs.take(y_shape, x.dtype)
    path = choose_path(k, g)
    if path == "winograd":
        return y, (path, g, k.winograd.forward(k, x, w, bias, y, g))
    src = _padded(x, g) if k.padded_input else x
    if path == "per_image":
        RP, fn = OW, _per_image_forward
    else:
        RP, fn = (g.WP if k.padded_input and stride == (1, 1) else OW), _batch_forward
    # [w | b]: the per-image products' matrix, and backward's copy of w
    wb = np.empty((F, g.K + 1), dtype=x.dtype)
    wb[:, :g.K] = w.reshape(F, g.K)
    wb[:, g.K] = bias
    slices = _concurrent.slices(N, N * g.K * OH * RP)
    cols = _map(lambda sl: fn(k, g, src[sl], wb, bias, y[sl], RP), slices)
    return y, (path, g, (wb, list(zip(slices, cols)), RP))


def backward(k, dy, saved):
    """conv2d_backward of the kernel contract: (dx, dw, db)."""
    path, g, data = saved
    if path == "winograd":
        return k.winograd.backward(k, dy, g, data)
    wb, chunks, RP = data
    dx = outputs.take((g.N, g.C, g.H, g.W), dy.dtype)
    fn = _per_image_backward if path == "per_image" else _batch_backward
    parts = _map(lambda item: fn(k, g, dy[item[0]], wb, item[1], RP, dx[item[0]]), chunks)
    # summed over the chunks: dw and db (only they) depend on the thread
    # count, in their last bits (another rounding order)
    dw = outputs.take((g.F, g.C, g.KH, g.KW), dy.dtype)
    dw2, db = dw.reshape(g.F, g.K), parts[0][1]
    np.copyto(dw2, parts[0][0])
    for dw_c, db_c in parts[1:]:
        dw2 += dw_c
        db = db + db_c
    return dx, dw, np.ascontiguousarray(db)


def _padded(x, g):
    """x zero-padded, plus one zero row (the stride-1 trick reads up to KW-1
    elements past the last padded row), planes flattened: (N, C, (HP+1)*WP),
    in the workspace."""
    xp = workspace.take((g.N, g.C, g.HP + 1, g.WP), x.dtype)
    xp.fill(0)
    xp[:, :, g.PT:g.PT + g.H, g.PL:g.PL + g.W] = x
    return xp.reshape(g.N, g.C, (g.HP + 1) * g.WP)


def _map(fn, items):
    """[fn(item)]: one item per thread, concurrently (see _concurrent) when
    there are several; else on this thread, BLAS at one thread, where its
    products (``_concurrent.matmul``) may still split across the pool."""
    if len(items) == 1:
        with _concurrent.single_threaded_blas():
            return [fn(items[0])]
    return _concurrent.run(fn, items)


# One chunk of the batch each: src, y, dy, dx are C-contiguous slices of
# n images, wb is [w | b] (F, K+1); a forward returns its column matrix, a
# backward its (dw, db).

def _per_image_forward(k, g, src, wb, bias, y, RP):
    n, F, K = y.shape[0], g.F, g.K
    cols = workspace.take((n, K + 1, g.P), y.dtype)
    cols[:, K, :] = 1
    k.im2col(src, cols.transpose(1, 0, 2)[:K], g, RP)
    np.matmul(wb, cols, out=y.reshape(n, F, g.P))
    return cols


def _per_image_backward(k, g, dy, wb, cols, RP, dx):
    n, F, K, P = dy.shape[0], g.F, g.K, g.P
    dy3 = dy.reshape(n, F, P)
    dwb = np.matmul(dy3, cols.transpose(0, 2, 1)).sum(axis=0)         # (F, K+1)
    dcols = np.matmul(wb[:, :K].T, dy3, out=workspace.take((n, K, P), dy.dtype))
    k.col2im(dcols.transpose(1, 0, 2), dx, g, RP)
    return dwb[:, :K], dwb[:, K]


def _batch_forward(k, g, src, wb, bias, y, RP):
    n, K, F, L = y.shape[0], g.K, g.F, g.OH * RP
    cols = workspace.take((K, n * L), y.dtype)
    k.im2col(src, cols.reshape(K, n, L), g, RP)
    yF = _concurrent.matmul(wb[:, :K], cols, out=workspace.take((F, n * L), y.dtype))
    k.unpack_output(yF, bias, y, RP)
    return cols


def _batch_backward(k, g, dy, wb, cols, RP, dx):
    n, K, F, L = dy.shape[0], g.K, g.F, g.OH * RP
    db = np.empty(F, dtype=dy.dtype)
    dyF = workspace.take((F, n * L), dy.dtype)
    k.pack_grad_output(dy, dyF, db, RP)
    # dw^T = cols @ dyF^T rather than dw = dyF @ cols^T: the same product,
    # but its long inner dimension N*L stays whole in every block when it
    # splits over the rows of cols (dw's columns).
    dwT = _concurrent.matmul(cols, dyF.T, out=np.empty((K, F), dtype=dy.dtype))
    dcols = _concurrent.matmul(wb[:, :K].T, dyF, out=workspace.take((K, n * L), dy.dtype))
    k.col2im(dcols.reshape(K, n, L), dx, g, RP)
    return dwT.T, db
