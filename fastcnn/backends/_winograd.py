"""The Winograd F(2x2, 3x3) conv2d path around the kernels in
``fastcnn/_kernels/numba_winograd.py``: 16 batched matmuls over transformed
4x4 tiles for the forward, dx and dw alike (Lavin & Gray 2015; the
transforms and their adjoints are documented with the kernels).

``_gemm_conv`` takes this path, for a kernel table whose ``winograd`` is
this module, on 3x3 stride-1 convolutions (undilated, one group) with more
taps than its per-image path and at least MIN_BATCH images. Measured
against the whole-batch im2col path (fwd+bwd, float32, one thread, CPU
time): MNIST conv2 (64x32->64, 14x14) 13.1 vs 29.1 ms (torch 14.5); the
batch-innermost tile layout needs enough lanes: batch 8 1.4x faster,
batch 4 0.9x, batch 1 0.4x.

Chunks of the batch run concurrently on fastcnn's pool, one per core,
each with single-threaded BLAS and kernels (``backends/_concurrent``),
where OpenBLAS splitting dozens of small products and a kernel thread pool
waking for short loops kept both cores half idle. U and V, saved for the
backward, are derived from w and x: a caller changing them in place after
the forward changes nothing.

Deliberately not here: the im2col paths and the choice between paths
(``_gemm_conv``), argument checks (``fastcnn.ops``).
"""
import numpy as np

from fastcnn.backends import _concurrent
from fastcnn.backends._workspace import outputs, workspace

MIN_BATCH = 8
# Images per pass: the transformed tiles of a chunk stay in cache (MNIST
# conv2 forward at batch 1000, two threads: 123 ms in one pass).
CHUNK = 64
# Tiles per band: transforms and matmuls run band by band over whole tile
# rows, so a band's (16, F, tiles) products stay in cache between the kernel
# or matmul that writes them and the one that reads them (MNIST conv2, one
# thread, bands of one tile row against one band: fwd+bwd 17.7 -> 16.0 ms;
# 1024 tiles and more were slower).
BAND_TILES = 256

_wino = None


def _kernels():
    global _wino
    if _wino is None:
        from fastcnn._kernels import numba_winograd
        _wino = numba_winograd
    return _wino


def applies(g):
    """Whether geometry g is a convolution this path computes."""
    return g.KH == g.KW == 3 and g.SH == g.SW == 1 and g.DH == g.DW == 1 and g.G == 1


def forward(k, x, w, b, y, g):
    """y = conv(x, w) + b, chunks of the batch concurrently; returns what
    backward needs: U and, per chunk, its transformed input and bands."""
    wino = _kernels()
    U = np.empty((16, g.F, g.C), dtype=x.dtype)
    wino.weight_transform(w, U)
    slices = _chunks(g.N, _concurrent.num_threads())
    saved = _concurrent.run(lambda sl: _forward_chunk(x[sl], U, b, y[sl], g), slices)
    return U, list(zip(slices, saved))


def backward(k, dy, g, saved):
    """The exact adjoint of forward, chunk by chunk (concurrently): dx per
    chunk, dU and db summed over the chunks, then dw = G^T dU G."""
    wino = _kernels()
    U, chunks = saved
    dx = outputs.take((g.N, g.C, g.H, g.W), dy.dtype)

    def chunk(item):
        sl, (V, bands) = item
        dU = np.zeros((16, g.F, g.C), dtype=dy.dtype)
        db = np.zeros(g.F, dtype=np.float64)
        _backward_chunk(dy[sl], U, V, bands, g, dx[sl], dU, db)
        return dU, db

    parts = _concurrent.run(chunk, chunks)
    dU, db = parts[0]
    for dU_c, db_c in parts[1:]:
        dU += dU_c
        db += db_c
    dw = outputs.take((g.F, g.C, 3, 3), dy.dtype)
    wino.weight_grad_transform(dU, dw)
    return dx, dw, db.astype(dy.dtype)


def _chunks(N, threads):
    """Batch slices: at most CHUNK images each, at least one per thread
    while each keeps MIN_BATCH images, balanced."""
    return _concurrent.batch_slices(N, max(-(-N // CHUNK), min(threads, N // MIN_BATCH)))


def _bands(TH, TW, N):
    """(th0, th1) tile-row bands of about BAND_TILES tiles."""
    rows = max(1, BAND_TILES // (TW * N))
    return [(th0, min(TH, th0 + rows)) for th0 in range(0, TH, rows)]


def _band_buffer(rows, K, TW, N, dtype):
    """A contiguous (16, K, rows*TW, N) scratch array for one band: views of
    one flat workspace array, so the last, shorter band is contiguous too."""
    flat = workspace.take((16 * K * rows * TW * N,), dtype)
    return lambda r: flat[:16 * K * r * TW * N].reshape(16, K, r * TW, N)


def _band(V, th0, th1, C, TW, N):
    """Band (th0, th1) of the saved V: (16, C, (th1-th0)*TW, N), contiguous."""
    return V[16 * C * th0 * TW * N:16 * C * th1 * TW * N].reshape(16, C, (th1 - th0) * TW, N)


def _forward_chunk(x, U, b, y, g):
    """One chunk of the batch (x and y C-contiguous slices): returns what
    its backward needs (the transformed input V and the bands)."""
    wino = _wino
    N, C, F = x.shape[0], g.C, g.F
    TH, TW = (g.OH + 1) // 2, (g.OW + 1) // 2
    xs = workspace.take((C, 2 * TH + 2, 2 * TW + 2, N), x.dtype)
    wino.pack_planes(x, xs, g.PT, g.PL)
    # V band by band, each band contiguous (16, C, rows*TW, N): saved for dw
    V = workspace.take((16 * C * TH * TW * N,), x.dtype)
    bands = _bands(TH, TW, N)
    band_M = _band_buffer(bands[0][1], F, TW, N, x.dtype)
    ys = workspace.take((F, 2 * TH, 2 * TW, N), x.dtype)
    for th0, th1 in bands:
        L = (th1 - th0) * TW * N
        Vb = _band(V, th0, th1, C, TW, N)
        wino.input_transform(xs, Vb, th0)
        M = band_M(th1 - th0)
        np.matmul(U, Vb.reshape(16, C, L), out=M.reshape(16, F, L))
        wino.output_transform(M, b, ys, th0)
    wino.crop_planes(ys, y, 0, 0)
    return V, bands


def _backward_chunk(dy, U, V, bands, g, dx, dU, db):
    """One chunk, band by band: dM, then dU += dM V^T and dV = U^T dM,
    scatter-added into the chunk's dx; db += the chunk's sum of dy."""
    wino = _wino
    N, C, F = dy.shape[0], g.C, g.F
    TH, TW = (g.OH + 1) // 2, (g.OW + 1) // 2
    dU_band = np.empty_like(dU)
    UT = U.transpose(0, 2, 1)
    xs = workspace.take((C, 2 * TH + 2, 2 * TW + 2, N), dy.dtype)
    dys = workspace.take((F, 2 * TH, 2 * TW, N), dy.dtype)
    wino.pack_planes(dy, dys, 0, 0)
    band_dM = _band_buffer(bands[0][1], F, TW, N, dy.dtype)
    band_dV = _band_buffer(bands[0][1], C, TW, N, dy.dtype)
    for th0, th1 in bands:
        r = th1 - th0
        L = r * TW * N
        dM = band_dM(r)
        wino.grad_output_transform(dys, dM, db, th0)
        dM3 = dM.reshape(16, F, L)
        Vb = _band(V, th0, th1, C, TW, N).reshape(16, C, L)
        np.matmul(dM3, Vb.transpose(0, 2, 1), out=dU_band)
        dU += dU_band
        dV = band_dV(r)
        np.matmul(UT, dM3, out=dV.reshape(16, C, L))
        wino.grad_input_transform(dV, xs, th0)
    wino.crop_planes(xs, dx, g.PT, g.PL)
