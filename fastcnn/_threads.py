"""One thread knob: OpenMP (cython kernels), numba and BLAS together.

``set_num_threads(n)`` / ``$FASTCNN_NUM_THREADS`` set all three; a backend
imported later gets the same count when the registry loads it. Kernels may
still run a tiny problem on one thread (their own choice, by work size).
This module deliberately does not know any backend by name: a backend module
takes part by defining ``set_num_threads(n)``.

It also chooses how long idle workers spin (``default_wait_policy``,
``default_blas_timeout``): libgomp (the Cython kernels, Numba's 'omp'
threading layer) and OpenBLAS read that from the environment once, when
they are loaded, and have no API to change it later. A thread pool that
spins after its work holds a core the next kernel needs: with two pools
taking turns on a small machine, each makes the other wait.
"""
import numbers
import os
import sys

_requested = None   # set_num_threads(); None -> $FASTCNN_NUM_THREADS -> cpu count
_blas_limiter = None
# True when fastcnn, not the user, put OMP_WAIT_POLICY=PASSIVE in the environment.
WAIT_POLICY_SET_BY_FASTCNN = False
# The same for OPENBLAS_THREAD_TIMEOUT, and whether numpy (OpenBLAS) was loaded first.
BLAS_TIMEOUT_SET_BY_FASTCNN = False
BLAS_TIMEOUT_TOO_LATE = False


def default_wait_policy():
    """OMP_WAIT_POLICY=PASSIVE unless the user set OMP_WAIT_POLICY.

    Why: by default OpenMP workers spin after each parallel loop, and
    OpenBLAS's workers spin after each matmul; a layer alternates the two,
    so on a small machine each pool's spinners steal the cores the other
    needs. Measured (MNIST training step, batch 64, float32, 2 cores,
    ``python -m benchmarks.step numba,cython``): numba 52.9 -> 28.7 ms,
    cython 62.2 -> 35.6 ms with PASSIVE. Must run before libgomp is loaded
    (fastcnn's own backends load it lazily, after this; a library imported
    before fastcnn that loaded libgomp - PyTorch does - keeps its policy,
    and PyTorch imported after fastcnn shares it: one libgomp per process).
    """
    global WAIT_POLICY_SET_BY_FASTCNN
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        WAIT_POLICY_SET_BY_FASTCNN = True


def drop_default_wait_policy():
    """Undo default_wait_policy() (if fastcnn set it): for a process that
    will load OpenMP only for another library (a PyTorch-only benchmark)."""
    global WAIT_POLICY_SET_BY_FASTCNN
    if WAIT_POLICY_SET_BY_FASTCNN:
        os.environ.pop("OMP_WAIT_POLICY", None)
        WAIT_POLICY_SET_BY_FASTCNN = False


def default_blas_timeout():
    """OPENBLAS_THREAD_TIMEOUT=16 unless the user set it (OpenBLAS reads it
    when it is loaded, with numpy: so only if numpy is not imported yet).

    Why: after each multi-threaded matmul OpenBLAS's workers spin for 2**28
    cycles (~0.1 s) before sleeping, so a model's dense layers keep a core
    busy through the conv and pooling kernels that follow. 2**16 cycles
    (~20 us) still bridges back-to-back matmuls. Measured (MNIST training
    step, batch 64, float32, 2 cores, ``python -m benchmarks.step``): numba
    24 -> 15.7 ms, cython 28 -> 21.4 ms, im2col 28 -> 27.3 ms (timeouts 4, 10
    and 16 within noise, 20: 18.6 ms). PyTorch uses its own BLAS.
    """
    global BLAS_TIMEOUT_SET_BY_FASTCNN, BLAS_TIMEOUT_TOO_LATE
    if "OPENBLAS_THREAD_TIMEOUT" not in os.environ:
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = "16"
        BLAS_TIMEOUT_SET_BY_FASTCNN = True
    BLAS_TIMEOUT_TOO_LATE = "numpy" in sys.modules


def blas_timeout():
    """What OPENBLAS_THREAD_TIMEOUT says, who set it, and whether it counts."""
    value = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
    if value is None:
        return "(unset: OpenBLAS spins 2**28 cycles)"
    who = "fastcnn default" if BLAS_TIMEOUT_SET_BY_FASTCNN else "user"
    late = ", too late: numpy was imported before fastcnn" if BLAS_TIMEOUT_TOO_LATE else ""
    return f"{value} ({who}{late})"


def wait_policy():
    """What OMP_WAIT_POLICY says now, and who set it."""
    value = os.environ.get("OMP_WAIT_POLICY", "(unset: spin, then sleep)")
    return f"{value} ({'fastcnn default' if WAIT_POLICY_SET_BY_FASTCNN else 'user'})"


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
    """Give a freshly loaded backend module the current thread count."""
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


def init_from_env():
    """At import: honour $FASTCNN_NUM_THREADS for BLAS (backends get it on load)."""
    n = _from_env()
    if n is not None:
        _apply_blas(n)
