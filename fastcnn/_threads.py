"""One thread knob: how many pieces fastcnn's thread pool runs an op in, and
BLAS's thread count, together.

``set_num_threads(n)`` / ``$FASTCNN_NUM_THREADS`` set one process-wide
count (default: the number of CPUs); it holds in every Python thread, since
the compiled kernels are single-threaded and all parallelism is fastcnn's
own pool (``fastcnn.backends._concurrent``), which reads the count here on
every op. A count above the number of CPUs is capped there, with a
warning. The count also goes to BLAS (threadpoolctl), for the user's own
NumPy products; fastcnn's products run BLAS at one thread per piece anyway.

It deliberately does nothing at import: the count from the environment
reaches BLAS when the first backend loads (``apply_to``), and a malformed
value is reported then, not as a failed ``import fastcnn``. How idle pools
wait is ``fastcnn._runtime``'s business, and only on request.
"""
import functools
import numbers
import os
import warnings

_requested = None   # set_num_threads(); None -> $FASTCNN_NUM_THREADS -> cpu count
_blas_limiter = None
_env_applied = False
_env_seen = (None, None)    # (raw $FASTCNN_NUM_THREADS, its capped count)


def _check(n, name):
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return int(n)


@functools.lru_cache(maxsize=None)
def _cpus():
    # asked on every op: os.cpu_count() reads /sys each time (~6 us), and a
    # process's CPU count does not change
    return os.cpu_count() or 1


def _capped(n, name):
    if n > _cpus():
        warnings.warn(f"fastcnn: {name}={n} is more than the {_cpus()} CPUs here; "
                      f"using {_cpus()}", RuntimeWarning, stacklevel=4)
        return _cpus()
    return n


def _from_env():
    global _env_seen
    raw = os.environ.get("FASTCNN_NUM_THREADS", "").strip()
    if not raw:
        return None
    if raw == _env_seen[0]:         # parsed (and warned about) once per value
        return _env_seen[1]
    try:
        n = _check(int(raw), "FASTCNN_NUM_THREADS")
    except ValueError:
        raise ValueError(f"environment variable FASTCNN_NUM_THREADS must be a positive "
                         f"integer, got {raw!r}") from None
    n = _capped(n, "FASTCNN_NUM_THREADS")
    _env_seen = (raw, n)
    return n


def get_num_threads():
    """The thread count fastcnn uses (default: the number of CPUs)."""
    return _requested or _from_env() or _cpus()


def _apply_blas(n):
    global _blas_limiter
    from threadpoolctl import threadpool_limits
    _blas_limiter = threadpool_limits(limits=n, user_api="blas")


def apply_to(module):
    """Called by the registry when it loads a backend module: the first
    time, BLAS gets the count from $FASTCNN_NUM_THREADS. A backend module
    that defines ``set_num_threads(n)`` is told the count as well."""
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
    """Set fastcnn's thread count (and BLAS's) to ``n``, at most the number
    of CPUs (more is capped, with a RuntimeWarning)."""
    global _requested
    _requested = _capped(_check(n, "n"), "n")
    _apply_blas(_requested)
