"""The ``numba`` backend: a thin adapter around the @njit kernels in
``fastcnn/_kernels/numba_conv.py``, ``numba_winograd.py`` and
``numba_pool.py``.

It allocates outputs, picks a path and a thread count, and calls kernels;
the arithmetic is all in the kernels (and in BLAS matmuls for the
many-tap convolutions).

Paths for conv2d, chosen by shape (``_conv_path``):
  * K = C*KH*KW <= PER_IMAGE_MAX_TAPS: im2col (Numba) with per-image
    columns (N, K+1, P) and a batch of small products
    y[n] = [w | b] @ cols[n] that come out NCHW, the bias on a row of ones.
    Direct fused loops were measured and lost even on the 1->32 channel
    first MNIST layer (batch 64, one thread: fwd+bwd 6.5 ms against
    3.8-6.1 ms for this path), so there are none.
  * 3x3, stride 1, more taps, batch >= WINOGRAD_MIN_BATCH: Winograd
    F(2x2, 3x3) (numba_winograd), 16 batched matmuls over transformed tiles
    for the forward, dx and dw alike.
  * otherwise: im2col with whole-batch columns (K, N*L) and one large product
    per pass, with y and dy transposed by layout kernels (bias and db fused in).

Threads: the first two paths split the batch into chunks, one per thread,
that run concurrently with single-threaded kernels and BLAS
(``backends/_concurrent``): one pool busy at a time, where OpenBLAS splitting
dozens of small products and Numba's pool waking for short loops kept both
cores half idle (MNIST conv2 fwd+bwd 13 -> 8 ms). The third path and the
pooling kernels use Numba's parallel loops and multi-threaded BLAS.

Inputs are zero-padded once (``_padded``) so kernels never test bounds.

Compilation: the kernel modules compile eagerly for float32 and float64 when
imported, with ``cache=True`` (under ~/.cache/fastcnn/numba, see
numba_common), so the cost is paid once per installation and user.
Importing *this* module imports neither them nor Numba itself (0.4 s or
more), so ``fastcnn.available_backends()`` stays fast; the first kernel
call, ``warmup()`` or ``info()`` does.

Deliberately not here: argument checks (``fastcnn.ops``), backend choice
(``fastcnn.backend``).
"""
import os
import sys
import threading
import time

import numpy as np

from fastcnn.backends import _concurrent

# Taps up to which the per-image column layout beats the whole-batch one
# (batch 64, one thread, fwd+bwd: K=9 6.1 vs 14.0 ms, K=36 15.7 vs 22.1,
# K=72 27.4 vs 31.7 but noisy, K=288 about equal; above that the one large
# product should split better across BLAS threads - unmeasured, the machine
# was too loaded for two-thread timings).
PER_IMAGE_MAX_TAPS = 32
# Below this many inner-loop iterations a kernel runs on the calling thread:
# waking the thread pool costs more than the work.
SERIAL_BELOW = 1 << 16
# Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions with more taps than
# the per-image path takes. Measured against the whole-batch im2col path
# (fwd+bwd, float32, one thread, CPU time): MNIST conv2 (64x32->64, 14x14)
# 13.1 vs 29.1 ms (torch 14.5); the batch-innermost tile layout needs enough
# lanes: batch 8 1.4x faster, batch 4 0.9x, batch 1 0.4x.
WINOGRAD = True
WINOGRAD_MIN_BATCH = 8
# Images per Winograd pass: the transformed tiles of a chunk stay in cache
# (MNIST conv2 forward at batch 1000, two threads: 123 ms in one pass).
WINOGRAD_CHUNK = 64

numba = None              # the numba module, imported with the kernels
_conv = _pool = _wino = _act = None
_requested_threads = None  # set_num_threads() before numba was imported


def _kernels():
    """Import Numba and the kernel modules (compiling them, or loading them
    from the disk cache) once."""
    global numba, _conv, _pool, _wino, _act
    if _conv is None:
        import numba as nb
        from fastcnn._kernels import numba_act, numba_conv, numba_pool
        numba = nb
        if _requested_threads is not None:
            set_num_threads(_requested_threads)
        _conv, _pool, _act = numba_conv, numba_pool, numba_act
    if WINOGRAD and _wino is None:
        from fastcnn._kernels import numba_winograd
        _wino = numba_winograd
    return _conv, _pool


class _Workspace:
    """Reusable scratch arrays (column matrices, padded inputs, transposes).

    Why: a fresh 16 MB ``np.empty`` is a fresh mmap, and touching it costs
    page faults - about 2.5 ms per column matrix of the MNIST conv2, more than
    the im2col that fills it. An array here is handed out again only when
    nothing outside holds it any more (a saved ``cols`` stays in use until its
    ctx dies). Kernel outputs (y, dx, dw, db) never come from here: they are
    fresh arrays, as the contract says.
    """

    PER_KEY = 3             # cols of this step and the last one, dcols (same shape)
    MAX_BYTES = 256 << 20   # least recently used shapes are dropped beyond this

    def __init__(self):
        self._arrays = {}
        self._lock = threading.Lock()
        self._free = self._refcounts_when_free()

    @staticmethod
    def _refcounts_when_free():
        """sys.getrefcount of an array and of its memory's owner when only
        the pool holds them, seen from the loop in take() (measured, not
        assumed: it differs across CPythons). Both count: a view of the
        array has the owner as its base, not the array."""
        for raw, a in [_aligned_empty((1,), np.float32)]:
            return sys.getrefcount(a), sys.getrefcount(raw)

    def take(self, shape, dtype):
        key = (shape, np.dtype(dtype).str)
        with self._lock:
            arrays = self._arrays.pop(key, [])
            self._arrays[key] = arrays          # most recently used last
            for raw, a in arrays:
                if (sys.getrefcount(a), sys.getrefcount(raw)) == self._free:
                    return a
            raw, a = _aligned_empty(shape, dtype)
            if len(arrays) < self.PER_KEY and a.nbytes <= self.MAX_BYTES:
                arrays.append((raw, a))
            while sum(b.nbytes for v in self._arrays.values() for _, b in v) > self.MAX_BYTES:
                del self._arrays[next(iter(self._arrays))]
            return a


def _aligned_empty(shape, dtype, align=4096):
    """(owner, array): an uninitialised array that starts on a page boundary,
    so where scratch buffers fall in the caches does not change from process
    to process with malloc's 16-byte alignment (one set of five runs: step
    15.5-19.8 ms unaligned, 16.4-17.7 aligned; the machine's own noise is
    about as large, so this is a precaution, not a measured win)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(n + align, dtype=np.uint8)
    off = -raw.ctypes.data % align
    return raw, raw[off:off + n].view(dtype).reshape(shape)


_workspace = _Workspace()


class _single_threaded_kernels:
    """The calling thread's Numba kernels on one thread inside the block."""

    def __enter__(self):
        self.threads = numba.get_num_threads()
        numba.set_num_threads(1)

    def __exit__(self, *exc):
        numba.set_num_threads(self.threads)


def _run(kernel, work, *args, serial_below=SERIAL_BELOW):
    """Call ``kernel``, on one thread when ``work`` is below ``serial_below``."""
    if work >= serial_below or numba.get_num_threads() == 1:
        kernel(*args)
        return
    with _single_threaded_kernels():
        kernel(*args)


# ---------------------------------------------------------------- conv2d ---

def _padded(x, PT, PB, PL, PR):
    """x zero-padded, plus one zero row (the stride-1 trick reads up to
    KW-1 elements past the last padded row), planes flattened:
    (N, C, (HP+1)*WP), in the workspace. Returns it with HP+1 and WP."""
    N, C, H, W = x.shape
    HPX, WP = H + PT + PB + 1, W + PL + PR
    xp = _workspace.take((N, C, HPX, WP), x.dtype)
    xp.fill(0)
    xp[:, :, PT:PT + H, PL:PL + W] = x
    return xp.reshape(N, C, HPX * WP), HPX, WP


def _per_image_chunks(fn, N, work):
    """fn(slice) over the batch: one chunk per thread, concurrently, when
    the work is worth it; else one chunk on this thread."""
    threads = numba.get_num_threads()
    if work < SERIAL_BELOW or threads == 1 or N < 2:
        with _single_threaded_kernels():
            return [fn(slice(0, N))]
    return _concurrently(fn, _concurrent.batch_slices(N, threads))


def _conv_path(N, C, KH, KW, stride):
    if C * KH * KW <= PER_IMAGE_MAX_TAPS:
        return "per_image"
    if WINOGRAD and KH == KW == 3 and stride == (1, 1) and N >= WINOGRAD_MIN_BATCH:
        return "winograd"
    return "batch"


def conv2d_forward(x, w, b, stride, padding):
    conv, _ = _kernels()
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    SH, SW = stride
    PT, PB, PL, PR = padding
    OH = (H + PT + PB - KH) // SH + 1
    OW = (W + PL + PR - KW) // SW + 1
    K = C * KH * KW
    bias = b if b is not None else np.zeros(F, dtype=x.dtype)
    y = np.empty((N, F, OH, OW), dtype=x.dtype)
    path = _conv_path(N, C, KH, KW, stride)
    if path == "winograd":
        return y, _winograd_forward(x, w, bias, y, padding)
    xp, HPX, WP = _padded(x, PT, PB, PL, PR)
    if path == "per_image":
        # y[n] = [w | b] @ cols[n]: the product is NCHW already, and the
        # bias rides on a row of ones (db then falls out of the dw product).
        # Chunks of the batch run concurrently, one per core (its im2col and
        # its small matmuls single-threaded): MNIST conv1 fwd+bwd 3.1 -> 1.9 ms.
        P = OH * OW
        cols = _workspace.take((N, K + 1, P), x.dtype)
        wb = np.empty((F, K + 1), dtype=x.dtype)
        wb[:, :K] = w.reshape(F, K)
        wb[:, K] = bias
        y3 = y.reshape(N, F, P)

        def chunk(sl):
            c = cols[sl]
            c[:, K, :] = 1
            conv.im2col(xp[sl], c.transpose(1, 0, 2)[:K], KH, KW, OH, OW, SH, SW, WP, OW)
            np.matmul(wb, c, out=y3[sl])

        _per_image_chunks(chunk, N, K * N * P)
        return y, (path, x.shape, w, cols, stride, padding, HPX, WP)
    RP = conv.pitch(OW, SH, SW, WP)          # column row pitch (see numba_conv)
    NL = N * OH * RP
    cols = _workspace.take((K, NL), x.dtype)
    _run(conv.im2col, K * NL, xp, cols.reshape(K, N, OH * RP), KH, KW, OH, OW, SH, SW, WP, RP)
    yT = np.matmul(w.reshape(F, K), cols, out=_workspace.take((F, NL), x.dtype))
    _run(conv.bias_from_fnp, F * NL, yT, bias, y, RP)
    return y, (path, x.shape, w, cols, stride, padding, HPX, WP)


def conv2d_backward(dy, saved):
    conv, _ = _kernels()
    if saved[0] == "winograd":
        return _winograd_backward(dy, saved)
    path, x_shape, w, cols, (SH, SW), (PT, PB, PL, PR), HPX, WP = saved
    N, F, OH, OW = dy.shape
    _, C, KH, KW = w.shape
    K = C * KH * KW
    dx = np.empty(x_shape, dtype=dy.dtype)
    if path == "per_image":
        P = OH * OW
        dy3 = dy.reshape(N, F, P)
        dcols = _workspace.take((N, K, P), dy.dtype)
        wT = w.reshape(F, K).T

        def chunk(sl):
            dwb = np.matmul(dy3[sl], cols[sl].transpose(0, 2, 1)).sum(axis=0)   # (F, K+1)
            np.matmul(wT, dy3[sl], out=dcols[sl])
            conv.col2im(dcols[sl].transpose(1, 0, 2), dx[sl],
                        KH, KW, OH, OW, SH, SW, PT, PL, HPX, WP, OW)
            return dwb

        dwb = sum(_per_image_chunks(chunk, N, K * N * P))
        return dx, np.ascontiguousarray(dwb[:, :K]).reshape(w.shape), dwb[:, K].copy()
    RP = conv.pitch(OW, SH, SW, WP)
    NL = N * OH * RP
    db = np.empty(F, dtype=dy.dtype)
    dyT = _workspace.take((F, NL), dy.dtype)
    _run(conv.fnp_and_sum, F * NL, dy, dyT, db, RP)
    # dw^T = cols @ dyT^T rather than dw = dyT @ cols^T: the same product,
    # but OpenBLAS splits this orientation across threads far better (the
    # other one, with its 64x288 output and inner dimension N*L, collapsed
    # to ~1 GFLOP/s on 2 threads of a loaded machine).
    dwT = np.matmul(cols, dyT.T, out=np.empty((K, F), dtype=dy.dtype))
    dcols = np.matmul(w.reshape(F, K).T, dyT, out=_workspace.take((K, NL), dy.dtype))
    _run(conv.col2im, K * NL, dcols.reshape(K, N, OH * RP), dx,
         KH, KW, OH, OW, SH, SW, PT, PL, HPX, WP, RP)
    return dx, np.ascontiguousarray(dwT.T).reshape(w.shape), db


# Tiles per band: transforms and matmuls run band by band over whole tile
# rows, so a band's (16, F, tiles) products stay in cache between the kernel
# or matmul that writes them and the one that reads them (MNIST conv2, one
# thread, bands of one tile row against one band: matmuls fwd 3.0 -> 2.6 ms,
# bwd 7.2 -> 5.5 ms; fwd+bwd 17.7 -> 16.0 ms; 1024 tiles and more were slower).
WINOGRAD_BAND_TILES = 256


def _bands(TH, TW, N):
    """(th0, th1) tile-row bands of about WINOGRAD_BAND_TILES tiles."""
    rows = max(1, WINOGRAD_BAND_TILES // (TW * N))
    return [(th0, min(TH, th0 + rows)) for th0 in range(0, TH, rows)]


def _band_buffer(rows, K, TW, N, dtype):
    """A contiguous (16, K, rows*TW, N) scratch array for one band: views of
    one flat workspace array, so the last, shorter band is contiguous too."""
    flat = _workspace.take((16 * K * rows * TW * N,), dtype)
    return lambda r: flat[:16 * K * r * TW * N].reshape(16, K, r * TW, N)


def _band(V, th0, th1, C, TW, N):
    """Band (th0, th1) of the saved V: (16, C, (th1-th0)*TW, N), contiguous."""
    return V[16 * C * th0 * TW * N:16 * C * th1 * TW * N].reshape(16, C, (th1 - th0) * TW, N)


def _chunks(N, threads):
    """Batch slices for the Winograd path: at most WINOGRAD_CHUNK images
    each, at least one per thread while each keeps WINOGRAD_MIN_BATCH
    images, balanced."""
    return _concurrent.batch_slices(
        N, max(-(-N // WINOGRAD_CHUNK), min(threads, N // WINOGRAD_MIN_BATCH)))


def _concurrently(fn, items):
    """fn over items, one chunk per thread at a time, each single-threaded
    (see backends/_concurrent)."""
    return _concurrent.run(fn, items, numba.get_num_threads(),
                           numba.get_num_threads, numba.set_num_threads)


def _winograd_forward(x, w, b, y, padding):
    """3x3 stride-1 conv as 16 matmuls on transformed 4x4 tiles (batch as
    the innermost, vectorised axis; see numba_winograd), chunks of the batch
    running concurrently."""
    _kernels()
    F, C = w.shape[:2]
    U = np.empty((16, F, C), dtype=x.dtype)
    _wino.weight_transform(w, U)
    slices = _chunks(x.shape[0], numba.get_num_threads())
    saved = _concurrently(lambda sl: _winograd_forward_chunk(x[sl], U, b, y[sl], padding),
                          slices)
    return ("winograd", x.shape, w.shape, U, list(zip(slices, saved)), padding)


def _winograd_forward_chunk(x, U, b, y, padding):
    """One chunk of the batch (x and y C-contiguous slices): returns what
    its backward needs (the transformed input V and the bands)."""
    wino = _wino
    N, C, H, W = x.shape
    F = U.shape[1]
    PT, _, PL, _ = padding
    _, _, OH, OW = y.shape
    TH, TW = (OH + 1) // 2, (OW + 1) // 2
    P = TH * TW
    xs = _workspace.take((C, 2 * TH + 2, 2 * TW + 2, N), x.dtype)
    wino.pack_planes(x, xs, PT, PL)
    # V band by band, each band contiguous (16, C, rows*TW, N): saved for dw
    V = _workspace.take((16 * C * P * N,), x.dtype)
    bands = _bands(TH, TW, N)
    band_M = _band_buffer(bands[0][1], F, TW, N, x.dtype)
    ys = _workspace.take((F, 2 * TH, 2 * TW, N), x.dtype)
    for th0, th1 in bands:
        L = (th1 - th0) * TW * N
        Vb = _band(V, th0, th1, C, TW, N)
        wino.input_transform(xs, Vb, th0)
        M = band_M(th1 - th0)
        np.matmul(U, Vb.reshape(16, C, L), out=M.reshape(16, F, L))
        wino.output_transform(M, b, ys, th0)
    wino.crop_planes(ys, y, 0, 0)
    return V, bands


def _winograd_backward(dy, saved):
    """The exact adjoint of _winograd_forward (see numba_winograd), chunk by
    chunk (concurrently): dx per chunk, dU and db summed over the chunks,
    then dw = G^T dU G."""
    _kernels()
    _, x_shape, w_shape, U, chunks, padding = saved
    F, C = w_shape[:2]
    dx = np.empty(x_shape, dtype=dy.dtype)

    def chunk(item):
        sl, (V, bands) = item
        dU = np.zeros((16, F, C), dtype=dy.dtype)
        db = np.zeros(F, dtype=np.float64)
        _winograd_backward_chunk(dy[sl], U, V, bands, padding, dx[sl], dU, db)
        return dU, db

    parts = _concurrently(chunk, chunks)
    dU, db = parts[0]
    for dU_c, db_c in parts[1:]:
        dU += dU_c
        db += db_c
    dw = np.empty(w_shape, dtype=dy.dtype)
    _wino.weight_grad_transform(dU, dw)
    return dx, dw, db.astype(dy.dtype)


def _winograd_backward_chunk(dy, U, V, bands, padding, dx, dU, db):
    """One chunk, band by band: dM, then dU += dM V^T and dV = U^T dM,
    scatter-added into the chunk's dx; db += the chunk's sum of dy."""
    wino = _wino
    PT, _, PL, _ = padding
    N, F, OH, OW = dy.shape
    C = U.shape[2]
    TH, TW = (OH + 1) // 2, (OW + 1) // 2
    dU_band = np.empty_like(dU)
    UT = U.transpose(0, 2, 1)
    xs = _workspace.take((C, 2 * TH + 2, 2 * TW + 2, N), dy.dtype)
    dys = _workspace.take((F, 2 * TH, 2 * TW, N), dy.dtype)
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
    wino.crop_planes(xs, dx, PT, PL)


# --------------------------------------------------------------- pooling ---

def _pool_out(x_shape, kernel, stride, padding):
    N, C, H, W = x_shape
    (KH, KW), (SH, SW), (PH, PW) = kernel, stride, padding
    return (H + 2 * PH - KH) // SH + 1, (W + 2 * PW - KW) // SW + 1


def max_pool2d_forward(x, kernel, stride, padding):
    _, pool = _kernels()
    N, C, H, W = x.shape
    OH, OW = _pool_out(x.shape, kernel, stride, padding)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    argmax = np.empty((N, C, OH, OW), dtype=np.int32)   # offset ih*W + iw in the plane
    planes = (x.reshape(N * C, H, W), y.reshape(N * C, OH, OW), argmax.reshape(N * C, OH, OW))
    work = N * C * OH * OW * kernel[0] * kernel[1]
    if kernel == stride == (2, 2) and padding == (0, 0):
        _run(pool.max_pool2d_forward_2x2, work, *planes)
    else:
        _run(pool.max_pool2d_forward, work, *planes, *kernel, *stride, *padding)
    return y, (x.shape, argmax)


def max_pool2d_backward(dy, saved):
    _, pool = _kernels()
    (N, C, H, W), argmax = saved
    _, _, OH, OW = dy.shape
    dx = np.empty((N, C, H, W), dtype=dy.dtype)
    _run(pool.max_pool2d_backward, N * C * (H * W + OH * OW),
         dy.reshape(N * C, OH, OW), argmax.reshape(N * C, OH, OW),
         dx.reshape(N * C, H * W))
    return dx


def avg_pool2d_forward(x, kernel, stride, padding):
    _, pool = _kernels()
    N, C, H, W = x.shape
    OH, OW = _pool_out(x.shape, kernel, stride, padding)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    _run(pool.avg_pool2d_forward, N * C * OH * OW * kernel[0] * kernel[1],
         x.reshape(N * C, H, W), y.reshape(N * C, OH, OW), *kernel, *stride, *padding)
    return y, (x.shape, kernel, stride, padding)


def avg_pool2d_backward(dy, saved):
    _, pool = _kernels()
    (N, C, H, W), kernel, stride, padding = saved
    _, _, OH, OW = dy.shape
    dx = np.empty((N, C, H, W), dtype=dy.dtype)
    _run(pool.avg_pool2d_backward, N * C * (H * W + OH * OW * kernel[0] * kernel[1]),
         dy.reshape(N * C, OH, OW), dx.reshape(N * C, H, W), *kernel, *stride, *padding)
    return dx


# ------------------------------------------------------------------ relu ---
# An elementwise pass is ~0.1-0.3 ns per element: below this many elements
# (the MNIST activations included: 1 thread 0.17 ms, 2 threads 0.21 ms for
# the conv1 output's forward) the pool's wake-up costs more than it saves.
RELU_SERIAL_BELOW = 1 << 22


def relu_forward(x):
    _kernels()
    y = np.empty_like(x)
    _run(_act.relu_forward, x.size, x.reshape(-1), y.reshape(-1),
         serial_below=RELU_SERIAL_BELOW)
    return y, y


def relu_backward(dy, y):
    _kernels()
    dx = np.empty_like(dy)
    _run(_act.relu_backward, dy.size, dy.reshape(-1), y.reshape(-1), dx.reshape(-1),
         serial_below=RELU_SERIAL_BELOW)
    return dx


# ------------------------------------------------- threads, warmup, info ---

def set_num_threads(n):
    """Threads for the parallel kernels (capped at Numba's pool size; like
    ``numba.set_num_threads`` it applies to the calling thread)."""
    global _requested_threads
    _requested_threads = int(n)
    if numba is not None:
        numba.set_num_threads(min(_requested_threads, numba.config.NUMBA_NUM_THREADS))


def get_num_threads():
    if numba is None:       # what the pool will get once Numba is imported
        pool = int(os.environ.get("NUMBA_NUM_THREADS") or os.cpu_count() or 1)
        return min(_requested_threads or pool, pool)
    return numba.get_num_threads()


def warmup():
    """Compile (or load from the disk cache) every kernel for float32 and
    float64 (importing the kernel modules does that: explicit signatures),
    run each conv path and pooling op once per dtype on tiny inputs, and
    start the thread pool. Returns the seconds it took."""
    t0 = time.perf_counter()
    _kernels()
    for dtype in (np.float32, np.float64):
        x = np.ones((2, 4, 8, 8), dtype=dtype)
        for C, stride in ((1, 1), (4, 1), (4, 2)):    # per image, winograd, batch
            y, s = conv2d_forward(np.ones((WINOGRAD_MIN_BATCH, C, 8, 8), dtype=dtype),
                                  np.ones((2, C, 3, 3), dtype=dtype),
                                  None, (stride, stride), (1, 1, 1, 1))
            conv2d_backward(y, s)
        for fwd, bwd in ((max_pool2d_forward, max_pool2d_backward),
                         (avg_pool2d_forward, avg_pool2d_backward)):
            y, s = fwd(x, (2, 2), (2, 2), (0, 0))
            bwd(y, s)
        y, s = relu_forward(x)
        relu_backward(y, s)
    _threading_layer()
    return time.perf_counter() - t0


def _threading_layer():
    _kernels()
    from fastcnn._kernels.numba_common import thread_probe
    thread_probe(numba.get_num_threads())
    return numba.threading_layer()


def info():
    """{numba_version, threading_layer, num_threads}."""
    layer = _threading_layer()
    return {"numba_version": numba.__version__,
            "threading_layer": layer,
            "num_threads": numba.get_num_threads()}
