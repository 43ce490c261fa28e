"""Backend 'cython': compiled loops from ``fastcnn/_kernels/cy_*.pyx`` around numpy's BLAS.

This adapter allocates every buffer, picks the column layout and the thread
count, and calls the compiled loops; the multiply-adds of conv2d are numpy
matrix products between them. It deliberately does no validation
(``fastcnn.ops`` did it) and never falls back to another backend: if the
extension modules are missing, importing this module raises ImportError
saying so, and the registry reports the backend absent with that reason.

* conv2d: compiled im2col packing, BLAS, compiled col2im, with the large
  temporaries in reused per-thread buffers (see "scratch buffers"); ctx
  holds x and w themselves, not copies, as the contract lets it. Direct
  loops were measured and lost even on the 1->32 channel 3x3 first MNIST
  layer (batch 64, one thread: direct fwd+dx+dw 10.8 ms, im2col +
  per-image BLAS about 1.3 ms), so there are none.
* conv2d runs the batch as one chunk per thread, concurrently, each with
  single-threaded loops and BLAS (``backends/_concurrent``).
* pooling: direct compiled loops; max pooling saves int32 argmax planes.

Shapes: x (N, C, H, W), w (F, C, KH, KW), y/dy (N, F, OH, OW); stride
(SH, SW); conv padding (PT, PB, PL, PR), pool padding (PH, PW).
"""
import math
import numbers
import threading

import numpy as np

from fastcnn.backends import _concurrent

try:
    from fastcnn._kernels import cy_act, cy_conv, cy_info, cy_pool
except ImportError as e:  # the registry reports this message as the reason
    raise ImportError(
        "fastcnn was installed without its compiled Cython kernels "
        f"({e}); reinstall with `pip install .` on a machine with a C compiler, "
        "or build in place with `python setup.py build_ext --inplace`") from e

# Up to this many taps per output (K = C*KH*KW) the per-image column layout
# wins (measured at K=9: 3x faster than one batch-wide product; at K=288
# the batch-wide product wins). See the two layouts at conv2d below.
_PER_IMAGE_MAX_K = 32
# Elements read or written per extra thread (im2col copies, pooling window
# reads): below about this much work an OpenMP fork/join costs more than it
# saves, so tiny problems run on one thread.
_WORK_PER_THREAD = 1 << 16

_num_threads = cy_info.omp_max_threads()


def set_num_threads(n):
    """Set the OpenMP thread count of the compiled loops (not BLAS's)."""
    global _num_threads
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    _num_threads = int(n) if cy_info.OPENMP else 1


def get_num_threads():
    """The OpenMP thread count the compiled loops use at most."""
    return _num_threads


def build_info():
    """What the extension was compiled with."""
    return {"cython_version": cy_info.CYTHON_VERSION,
            "openmp": cy_info.OPENMP,
            "debug_build": cy_info.DEBUG_BUILD}


def _threads(work, items):
    """Threads for a loop of `items` parallel items and `work` total work:
    one for tiny problems, never more than there are items (and one inside
    a chunk that runs concurrently with others, see _chunked)."""
    n = _local.__dict__.get("threads")
    return max(1, min(_num_threads if n is None else n, items, work // _WORK_PER_THREAD))


def _get_own_threads():
    return _local.__dict__.get("threads")


def _set_own_threads(n):
    """This thread's cap on the kernels' OpenMP threads (None: the global one)."""
    if n is None:
        _local.__dict__.pop("threads", None)
    else:
        _local.threads = n


def _chunked(fn, N, work):
    """fn(slice) over chunks of the batch: one chunk per thread, running
    concurrently, each single-threaded (OpenMP loops and BLAS; see
    backends/_concurrent) - or one chunk, with the usual OpenMP threads,
    when the problem is too small to share. Returns fn's results."""
    threads = min(_num_threads, N, work // _WORK_PER_THREAD)
    if threads < 2:
        return [fn(slice(0, N))]
    return _concurrent.run(fn, _concurrent.batch_slices(N, threads),
                           threads, _get_own_threads, _set_own_threads)


# ------------------------------------------------------- scratch buffers
# The column matrix of the 32->64 MNIST layer is 14 MB. Allocated afresh on
# every call, it and its gradient come back from the OS as new pages each
# time, and faulting those in cost more than building them (measured: 5.8 ms
# for 31 MB of fresh buffers against 0.75 ms to fill reused ones). So the
# temporaries live in per-thread buffers that are reused; what a kernel
# returns is always a fresh array, never a view of these.

_local = threading.local()
_SCRATCH_MAX_BYTES = 1 << 28      # larger temporaries are not kept around


def _scratch(name, shape, dtype):
    """An uninitialised array of `shape` in this thread's buffer `name`."""
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    if size * dtype.itemsize > _SCRATCH_MAX_BYTES:
        return np.empty(shape, dtype=dtype)
    buffers = _local.__dict__.setdefault("buffers", {})
    buf = buffers.get((name, dtype))
    if buf is None or buf.size < size:
        buf = buffers[(name, dtype)] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)


# ---------------------------------------------------------------- conv2d
# Two layouts of the column matrix, both filled by the same im2col loop
# (it writes cols[k, n, p] through any strides with p contiguous):
#   per image (N, K+1, P): y[n] = [w | b] @ cols[n], a batch of small products
#     whose result is already NCHW; row K is all ones, so the bias rides in
#     the forward product and db falls out of the dw product as column K.
#   whole batch (K, N*P): one large product per pass, best when K is large
#     (it keeps BLAS in its efficient regime), paid for by a transpose of y
#     and of dy (with the bias add and db fused into those two passes).
# The backward pass rebuilds the columns from x rather than keeping them in
# ctx: rebuilding is cheaper than a fresh 14 MB buffer per layer (above).

def _columns(x, KH, KW, stride, padding, OH, OW):
    """im2col of x into this thread's scratch buffer, in the layout for K."""
    N, C, _, _ = x.shape
    (SH, SW), (PT, _, PL, _) = stride, padding
    K, P = C * KH * KW, OH * OW
    nt = _threads(K * N * P, K)
    if K <= _PER_IMAGE_MAX_K:
        cols = _scratch("cols", (N, K + 1, P), x.dtype)
        cols[:, K, :] = 1
        cy_conv.im2col(x, cols.transpose(1, 0, 2)[:K], KH, KW, SH, SW, PT, PL, OH, OW, nt)
    else:
        cols = _scratch("cols", (K, N, P), x.dtype)
        cy_conv.im2col(x, cols, KH, KW, SH, SW, PT, PL, OH, OW, nt)
    return cols


def conv2d_forward(x, w, b, stride, padding):
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    (PT, PB, PL, PR) = padding
    OH = (H + PT + PB - KH) // stride[0] + 1
    OW = (W + PL + PR - KW) // stride[1] + 1
    bias = b if b is not None else np.zeros(F, dtype=x.dtype)
    y = np.empty((N, F, OH, OW), dtype=x.dtype)
    # chunks of the batch, one per core (MNIST conv1 fwd+bwd 2.2 -> 1.8 ms;
    # conv2, BLAS-bound, 13.4 -> 13.3 ms)
    _chunked(lambda sl: _forward(x[sl], w, bias, y[sl], stride, padding),
             N, N * F * C * KH * KW * OH * OW)
    return y, (x, w, stride, padding)


def _forward(x, w, bias, y, stride, padding):
    """The forward of one chunk: y (a C-contiguous slice) = conv(x) + bias."""
    N, C, _, _ = x.shape
    F, _, KH, KW = w.shape
    _, _, OH, OW = y.shape
    K, P = C * KH * KW, OH * OW
    cols = _columns(x, KH, KW, stride, padding, OH, OW)
    if K <= _PER_IMAGE_MAX_K:
        wb = np.empty((F, K + 1), dtype=x.dtype)
        wb[:, :K] = w.reshape(F, K)
        wb[:, K] = bias
        np.matmul(wb, cols, out=y.reshape(N, F, P))
    else:
        yF = np.matmul(w.reshape(F, K), cols.reshape(K, N * P),
                       out=_scratch("yF", (F, N * P), x.dtype))
        cy_conv.unpack_output(yF, bias, y.reshape(N, F, P), _threads(N * F * P, N * F))


def conv2d_backward(dy, saved):
    x, w, stride, padding = saved
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    _, _, OH, OW = dy.shape
    dx = np.empty(x.shape, dtype=dy.dtype)
    parts = _chunked(lambda sl: _backward(dy[sl], x[sl], w, stride, padding, dx[sl]),
                     N, N * F * C * KH * KW * OH * OW)
    dw, db = parts[0]
    for dw_c, db_c in parts[1:]:
        dw += dw_c
        db += db_c
    return dx, dw, db


def _backward(dy, x, w, stride, padding, dx):
    """The backward of one chunk: fills dx (a C-contiguous slice), returns
    the chunk's (dw, db)."""
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    (SH, SW), (PT, _, PL, _) = stride, padding
    _, _, OH, OW = dy.shape
    K, P = C * KH * KW, OH * OW
    dy3 = dy.reshape(N, F, P)
    w2 = w.reshape(F, K)
    cols = _columns(x, KH, KW, stride, padding, OH, OW)
    if K <= _PER_IMAGE_MAX_K:
        dwb = np.matmul(dy3, cols.transpose(0, 2, 1)).sum(axis=0)       # (F, K+1)
        dw = np.ascontiguousarray(dwb[:, :K]).reshape(w.shape)
        db = np.ascontiguousarray(dwb[:, K])
        dcols = np.matmul(w2.T, dy3, out=_scratch("dcols", (N, K, P), dy.dtype))
        dcols = dcols.transpose(1, 0, 2)                                 # (K, N, P) view
    else:
        dyF = _scratch("dyF", (F, N * P), dy.dtype)
        db = np.empty(F, dtype=dy.dtype)
        cy_conv.pack_grad_output(dy3, dyF, db, _threads(N * F * P, F))
        dw = np.matmul(dyF, cols.reshape(K, N * P).T).reshape(w.shape)
        dcols = np.matmul(w2.T, dyF, out=_scratch("dcols", (K, N * P), dy.dtype))
        dcols = dcols.reshape(K, N, P)
    cy_conv.col2im(dcols, dx, KH, KW, SH, SW, PT, PL, OH, OW, _threads(K * N * P, N * C))
    return dw, db


# ---------------------------------------------------------------- pooling

def _pool_shape(x, kernel, stride, padding):
    N, C, H, W = x.shape
    (KH, KW), (SH, SW), (PH, PW) = kernel, stride, padding
    OH = (H + 2 * PH - KH) // SH + 1
    OW = (W + 2 * PW - KW) // SW + 1
    return (N, C, OH, OW), N * C * OH * OW * KH * KW


def max_pool2d_forward(x, kernel, stride, padding):
    N, C, H, W = x.shape
    if H * W > np.iinfo(np.intc).max:
        raise ValueError(f"max_pool2d: an input plane of {H}x{W} elements is too "
                         "large for the cython backend's int32 argmax")
    shape, work = _pool_shape(x, kernel, stride, padding)
    y = np.empty(shape, dtype=x.dtype)
    argmax = np.empty(shape, dtype=np.intc)
    cy_pool.max_forward(x, y, argmax, *kernel, *stride, *padding,
                        _threads(work, N * C))
    return y, (x.shape, argmax)


def max_pool2d_backward(dy, saved):
    x_shape, argmax = saved
    N, C, H, W = x_shape
    dx = np.empty(x_shape, dtype=dy.dtype)
    cy_pool.max_backward(dy, argmax, dx, _threads(N * C * H * W, N * C))
    return dx


def avg_pool2d_forward(x, kernel, stride, padding):
    N, C, _, _ = x.shape
    shape, work = _pool_shape(x, kernel, stride, padding)
    y = np.empty(shape, dtype=x.dtype)
    cy_pool.avg_forward(x, y, *kernel, *stride, *padding, _threads(work, N * C))
    return y, (x.shape, kernel, stride, padding)


def avg_pool2d_backward(dy, saved):
    x_shape, kernel, stride, padding = saved
    N, C, H, W = x_shape
    dx = np.empty(x_shape, dtype=dy.dtype)
    cy_pool.avg_backward(dy, dx, *kernel, *stride, *padding,
                         _threads(N * C * H * W * kernel[0] * kernel[1], N * C))
    return dx


# ---------------------------------------------------------------- relu

# An elementwise element is cheaper than the im2col/pooling work _threads
# counts in: a second thread pays from about 512K elements (MNIST conv1
# output, 1.6M: forward 0.19 -> 0.17 ms, backward 0.45 -> 0.30 ms).
def relu_forward(x):
    y = np.empty_like(x)
    cy_act.relu_forward(x.reshape(-1), y.reshape(-1), _threads(x.size // 4, x.size))
    return y, y


def relu_backward(dy, y):
    dx = np.empty_like(dy)
    cy_act.relu_backward(dy.reshape(-1), y.reshape(-1), dx.reshape(-1),
                         _threads(dy.size // 4, dy.size))
    return dx
