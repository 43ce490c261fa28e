"""The ``numba`` backend: a thin adapter around the @njit kernels in
``fastcnn/_kernels/numba_conv.py``, ``numba_winograd.py``, ``numba_pool.py``
and ``numba_act.py``.

conv2d is the shared GEMM driver (``backends/_gemm_conv``) over this
backend's kernel table (``_ConvKernels``): im2col from a zero-padded copy
of x, so no loop tests bounds and stride-1 columns run over the padded
width; plus the Winograd F(2x2, 3x3) path (``backends/_winograd``), which
only this backend has. Pooling and relu call their kernels directly.

Threads: Numba's thread count is per calling thread. Each kernel call runs
on ``_concurrent.threads_for`` threads (one for small work); the driver's
concurrent batch chunks set their own threads to one.

Compilation: the kernel modules compile eagerly for float32 and float64 when
imported, with ``cache=True`` (under ~/.cache/fastcnn/numba, see
numba_common), so the cost is paid once per installation and user.
Importing *this* module imports neither them nor Numba itself (0.4 s or
more), so ``fastcnn.available_backends()`` stays fast; the first kernel
call, ``warmup()`` or ``info()`` does.

Deliberately not here: argument checks (``fastcnn.ops``), backend choice
(``fastcnn.backend``), the conv paths (``_gemm_conv``).
"""
import os
import time

import numpy as np

from fastcnn.backends import _concurrent, _gemm_conv, _pooling, _winograd

numba = None              # the numba module, imported with the kernels
_conv = _pool = _act = None
_requested_threads = None  # set_num_threads() before numba was imported


def _kernels():
    """Import Numba and the kernel modules (compiling them, or loading them
    from the disk cache) once."""
    global numba, _conv, _pool, _act
    if _conv is None:
        import numba as nb
        from fastcnn._kernels import numba_act, numba_conv, numba_pool
        numba = nb
        if _requested_threads is not None:
            set_num_threads(_requested_threads)
        _conv, _pool, _act = numba_conv, numba_pool, numba_act


def _run(kernel, work, items, *args, per_thread=None):
    """kernel(*args) on threads_for(work, items) of this thread's threads."""
    own = numba.get_num_threads()
    n = _concurrent.threads_for(own, work, items, per_thread)
    if n == own:
        kernel(*args)
        return
    numba.set_num_threads(n)
    try:
        kernel(*args)
    finally:
        numba.set_num_threads(own)


class _ConvKernels:
    """The kernel table the shared conv driver calls (see _gemm_conv).
    im2col and col2im run in parallel over samples, the layout kernels over
    (n, f) or f."""
    padded_input = True
    winograd = _winograd
    num_threads = get_own_threads = staticmethod(lambda: numba.get_num_threads())
    set_own_threads = staticmethod(lambda n: numba.set_num_threads(n))

    @staticmethod
    def im2col(xp, cols, g, RP):
        _run(_conv.im2col, cols.size, cols.shape[1],
             xp, cols, g.KH, g.KW, g.SH, g.SW, g.OH, g.OW, g.WP, RP)

    @staticmethod
    def col2im(dcols, dx, g, RP):
        _run(_conv.col2im, dcols.size, dx.shape[0],
             dcols, dx, g.KH, g.KW, g.SH, g.SW, g.PT, g.PL, g.OH, g.OW, g.HP + 1, g.WP, RP)

    @staticmethod
    def unpack_output(yF, b, y, RP):
        _run(_conv.unpack_output, yF.size, y.shape[0] * y.shape[1], yF, b, y, RP)

    @staticmethod
    def pack_grad_output(dy, dyF, db, RP):
        _run(_conv.pack_grad_output, dyF.size, dy.shape[1], dy, dyF, db, RP)


def conv2d_forward(x, w, b, stride, padding, y_shape):
    _kernels()
    return _gemm_conv.forward(_ConvKernels, x, w, b, stride, padding, y_shape)


def conv2d_backward(dy, saved):
    _kernels()
    return _gemm_conv.backward(_ConvKernels, dy, saved)


# --------------------------------------------------------------- pooling ---
# The kernels see planes: x (N*C, H, W), y and argmax (N*C, OH, OW).

def max_pool2d_forward(x, kernel, stride, padding):
    _kernels()
    N, C, H, W = x.shape
    y, argmax = _pooling.max_pool_outputs(x, kernel, stride, padding)
    OH, OW = y.shape[2:]
    planes = (x.reshape(N * C, H, W), y.reshape(N * C, OH, OW), argmax.reshape(N * C, OH, OW))
    work = y.size * kernel[0] * kernel[1]
    if kernel == stride == (2, 2) and padding == (0, 0):
        _run(_pool.max_pool2d_forward_2x2, work, N * C, *planes)
    else:
        _run(_pool.max_pool2d_forward, work, N * C, *planes, *kernel, *stride, *padding)
    return y, (x.shape, argmax)


def max_pool2d_backward(dy, saved):
    _kernels()
    (N, C, H, W), argmax = saved
    _, _, OH, OW = dy.shape
    dx = np.empty((N, C, H, W), dtype=dy.dtype)
    _run(_pool.max_pool2d_backward, N * C * (H * W + OH * OW), N * C,
         dy.reshape(N * C, OH, OW), argmax.reshape(N * C, OH, OW), dx.reshape(N * C, H * W))
    return dx


def avg_pool2d_forward(x, kernel, stride, padding):
    _kernels()
    N, C, H, W = x.shape
    OH, OW = _pooling.out_hw(x.shape, kernel, stride, padding)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    _run(_pool.avg_pool2d_forward, y.size * kernel[0] * kernel[1], N * C,
         x.reshape(N * C, H, W), y.reshape(N * C, OH, OW), *kernel, *stride, *padding)
    return y, (x.shape, kernel, stride, padding)


def avg_pool2d_backward(dy, saved):
    _kernels()
    (N, C, H, W), kernel, stride, padding = saved
    _, _, OH, OW = dy.shape
    dx = np.empty((N, C, H, W), dtype=dy.dtype)
    _run(_pool.avg_pool2d_backward, N * C * (H * W + OH * OW * kernel[0] * kernel[1]), N * C,
         dy.reshape(N * C, OH, OW), dx.reshape(N * C, H, W), *kernel, *stride, *padding)
    return dx


# ------------------------------------------------------------------ relu ---

def relu_forward(x):
    _kernels()
    y = np.empty_like(x)
    _run(_act.relu_forward, x.size, x.size, x.reshape(-1), y.reshape(-1),
         per_thread=_concurrent.ELEMENTS_PER_THREAD)
    return y, y


def relu_backward(dy, y):
    _kernels()
    dx = np.empty_like(dy)
    _run(_act.relu_backward, dy.size, dy.size, dy.reshape(-1), y.reshape(-1), dx.reshape(-1),
         per_thread=_concurrent.ELEMENTS_PER_THREAD)
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
        for path in _gemm_conv.PATHS:
            with _gemm_conv.forced_path(path):
                y, s = conv2d_forward(x, np.ones((2, 4, 3, 3), dtype=dtype), None,
                                      (1, 1), (1, 1, 1, 1), (2, 2, 8, 8))
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
