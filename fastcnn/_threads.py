"""One thread knob: OpenMP (cython kernels), numba and BLAS together.

``set_num_threads(n)`` / ``$FASTCNN_NUM_THREADS`` set all three; a backend
imported later gets the same count when the registry loads it. Kernels may
still run a tiny problem on one thread (their own choice, by work size).
This module deliberately does not know any backend by name: a backend module
takes part by defining ``set_num_threads(n)``. It deliberately does nothing
at import: the count from the environment reaches BLAS when the first
backend loads (``apply_to``), and a malformed value is reported then, not
as a failed ``import fastcnn``. How idle pools wait is ``fastcnn._runtime``'s
business, and only on request.
"""
import numbers
import os
import sys

_requested = None   # set_num_threads(); None -> $FASTCNN_NUM_THREADS -> cpu count
_blas_limiter = None
_env_applied = False


def _check(n, name):
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return int(n)


def _from_env():
    raw = os.environ.get("FASTCNN_NUM_THREADS", "").strip()
    if not raw:
        return None
    try:
        return _check(int(raw), "FASTCNN_NUM_THREADS")
    except ValueError:
        raise ValueError(f"environment variable FASTCNN_NUM_THREADS must be a positive "
                         f"integer, got {raw!r}") from None


def get_num_threads():
    """The thread count fastcnn uses (default: the number of CPUs)."""
    return _requested or _from_env() or (os.cpu_count() or 1)


def _apply_blas(n):
    global _blas_limiter
    from threadpoolctl import threadpool_limits
    _blas_limiter = threadpool_limits(limits=n, user_api="blas")


def apply_to(module):
    """Give a freshly loaded backend module the current thread count (and,
    the first time, BLAS the count from $FASTCNN_NUM_THREADS)."""
    global _env_applied
    if not _env_applied and _requested is None:
        _env_applied = True
        n = _from_env()
        if n is not None:
            _apply_blas(n)
    setter = getattr(module, "set_num_threads", None)
    if setter is not None:
        setter(get_num_threads())


def set_num_threads(n):
    """Set OpenMP, numba and BLAS thread counts to ``n`` together."""
    global _requested
    _requested = _check(n, "n")
    _apply_blas(_requested)
    for name, mod in list(sys.modules.items()):
        if name.startswith("fastcnn.backends.") and mod is not None:
            apply_to(mod)
