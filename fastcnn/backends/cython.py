"""Backend 'cython': compiled loops from ``fastcnn/_kernels/cy_*.pyx`` around numpy's BLAS.

conv2d is the shared GEMM driver (``backends/_gemm_conv``) over this
backend's kernel table (``_ConvKernels``): the loops read x itself and clip
each window at the image border, so nothing is padded. Pooling and relu
call their loops directly; max pooling saves C-int argmax planes
(``backends/_pooling``).

Threads: the loops take an explicit OpenMP thread count, from
``_concurrent.threads_for`` under this thread's cap (the global one, or one
inside the driver's concurrent batch chunks).

It deliberately does no validation (``fastcnn.ops`` did it) and never falls
back to another backend: if the extension modules are missing, importing
this module raises ImportError saying so, and the registry reports the
backend absent with that reason.
"""
import numbers
import threading

import numpy as np

from fastcnn.backends import _concurrent, _gemm_conv, _pooling

try:
    from fastcnn._kernels import cy_act, cy_conv, cy_info, cy_pool
except ImportError as e:  # the registry reports this message as the reason
    raise ImportError(
        "fastcnn was installed without its compiled Cython kernels "
        f"({e}); reinstall with `pip install .` on a machine with a C compiler, "
        "or build in place with `python setup.py build_ext --inplace`") from e

_num_threads = cy_info.omp_max_threads()
_local = threading.local()      # .threads: this thread's own cap, if set


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


def _own_threads():
    return _local.__dict__.get("threads")


def _set_own_threads(n):
    """This thread's cap on the loops' threads (None: the global one)."""
    if n is None:
        _local.__dict__.pop("threads", None)
    else:
        _local.threads = n


def _available():
    n = _own_threads()
    return _num_threads if n is None else n


def _threads(work, items, per_thread=None):
    """OpenMP threads for a loop of ``items`` parallel items and ``work``."""
    return _concurrent.threads_for(_available(), work, items, per_thread)


class _ConvKernels:
    """The kernel table the shared conv driver calls (see _gemm_conv).
    im2col runs in parallel over rows k, col2im over (n, c) planes, the
    layout kernels over (n, f) or f. Row pitch RP is always OW here."""
    padded_input = False
    winograd = None
    num_threads = staticmethod(_available)
    get_own_threads = staticmethod(_own_threads)
    set_own_threads = staticmethod(_set_own_threads)

    @staticmethod
    def im2col(x, cols, g, RP):
        cy_conv.im2col(x, cols, g.KH, g.KW, g.SH, g.SW, g.PT, g.PL, g.OH, g.OW,
                       _threads(cols.size, cols.shape[0]))

    @staticmethod
    def col2im(dcols, dx, g, RP):
        cy_conv.col2im(dcols, dx, g.KH, g.KW, g.SH, g.SW, g.PT, g.PL, g.OH, g.OW,
                       _threads(dcols.size, dx.shape[0] * dx.shape[1]))

    @staticmethod
    def unpack_output(yF, b, y, RP):
        cy_conv.unpack_output(yF, b, y, _threads(yF.size, y.shape[0] * y.shape[1]))

    @staticmethod
    def pack_grad_output(dy, dyF, db, RP):
        cy_conv.pack_grad_output(dy, dyF, db, _threads(dyF.size, dy.shape[1]))


def conv2d_forward(x, w, b, stride, padding, y_shape):
    return _gemm_conv.forward(_ConvKernels, x, w, b, stride, padding, y_shape)


def conv2d_backward(dy, saved):
    return _gemm_conv.backward(_ConvKernels, dy, saved)


# ---------------------------------------------------------------- pooling

def max_pool2d_forward(x, kernel, stride, padding):
    N, C, _, _ = x.shape
    y, argmax = _pooling.max_pool_outputs(x, kernel, stride, padding)
    cy_pool.max_forward(x, y, argmax, *kernel, *stride, *padding,
                        _threads(y.size * kernel[0] * kernel[1], N * C))
    return y, (x.shape, argmax)


def max_pool2d_backward(dy, saved):
    x_shape, argmax = saved
    N, C, H, W = x_shape
    dx = np.empty(x_shape, dtype=dy.dtype)
    cy_pool.max_backward(dy, argmax, dx, _threads(N * C * H * W, N * C))
    return dx


def avg_pool2d_forward(x, kernel, stride, padding):
    N, C, _, _ = x.shape
    y = np.empty((N, C, *_pooling.out_hw(x.shape, kernel, stride, padding)), dtype=x.dtype)
    cy_pool.avg_forward(x, y, *kernel, *stride, *padding,
                        _threads(y.size * kernel[0] * kernel[1], N * C))
    return y, (x.shape, kernel, stride, padding)


def avg_pool2d_backward(dy, saved):
    x_shape, kernel, stride, padding = saved
    N, C, H, W = x_shape
    dx = np.empty(x_shape, dtype=dy.dtype)
    cy_pool.avg_backward(dy, dx, *kernel, *stride, *padding,
                         _threads(N * C * H * W * kernel[0] * kernel[1], N * C))
    return dx


# ---------------------------------------------------------------- relu

def relu_forward(x):
    y = np.empty_like(x)
    cy_act.relu_forward(x.reshape(-1), y.reshape(-1),
                        _threads(x.size, x.size, _concurrent.ELEMENTS_PER_THREAD))
    return y, y


def relu_backward(dy, y):
    dx = np.empty_like(dy)
    cy_act.relu_backward(dy.reshape(-1), y.reshape(-1), dx.reshape(-1),
                         _threads(dy.size, dy.size, _concurrent.ELEMENTS_PER_THREAD))
    return dx
