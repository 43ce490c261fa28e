"""tune_runtime(): the process-wide settings that make a training process fast,
applied only when a caller asks for them.

What it sets, and why each is process-wide:
  * OMP_WAIT_POLICY=PASSIVE - idle OpenMP workers sleep at once instead of
    spinning for a while after every parallel loop. libgomp reads it once,
    when it is loaded.
  * OPENBLAS_THREAD_TIMEOUT=16 - idle OpenBLAS workers spin 2**16 cycles
    instead of 2**28 (~0.1 s) after each multi-threaded matmul. OpenBLAS
    reads it once, when numpy loads it.
  * glibc malloc: no mmapped blocks and a 1 GB trim threshold, so freed
    arrays are reused by the next step instead of being handed back to the
    kernel and page-faulted in again. Takes effect at once.

Why it is not done at ``import fastcnn``: each changes behaviour the host
process owns - every later subprocess inherits the variables, PyTorch shares
libgomp, memory stays at its peak. fastcnn's own kernels are arranged to be
fast without it (they never leave a BLAS or OpenMP pool spinning against
another, see ``backends/_concurrent``); this call is the last few percent
for a process that is only training. The ``fastcnn`` command and the
benchmarks call it first thing (``--no-tune`` / ``FASTCNN_TUNE=0`` to
skip); a script calls it before ``import numpy`` to get all three.

A value the user already set is kept, never overwritten; a variable whose
library is already loaded is not written (it could no longer take effect)
and is reported as too late.
"""
import ctypes
import os
import platform
import threading

WAIT_POLICY = ("OMP_WAIT_POLICY", "PASSIVE", "openmp", "OpenMP runtime")
BLAS_TIMEOUT = ("OPENBLAS_THREAD_TIMEOUT", "16", "blas", "OpenBLAS (numpy)")
# from glibc's <malloc.h>
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
TRIM_THRESHOLD = 1 << 30

_lock = threading.Lock()
_state = None      # the result of the first tune_runtime() in this process


def _loaded(user_api, internal_api=None):
    """Paths of the loaded libraries of one kind (threadpoolctl only looks;
    it loads nothing)."""
    from threadpoolctl import ThreadpoolController
    return [c.filepath for c in ThreadpoolController().select(user_api=user_api).lib_controllers
            if internal_api is None or c.internal_api == internal_api]


def _tune_env(var, value, user_api, what, result):
    if var in os.environ:
        result["kept"][var] = os.environ[var]
        return
    libs = _loaded(user_api, "openblas" if user_api == "blas" else None)
    if libs:
        result["too_late"][var] = (f"{what} already loaded ({os.path.basename(libs[0])}); "
                                   f"call tune_runtime() before importing numpy or torch")
        return
    os.environ[var] = value
    result["set"][var] = value


def _tune_malloc(result):
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        result["unsupported"]["malloc"] = f"not glibc ({platform.system()})"
        return
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1:
        result["set"]["malloc"] = "glibc: no mmapped blocks, trim threshold 1 GB"
    else:
        result["unsupported"]["malloc"] = "glibc refused mallopt"


def tune_runtime(*, wait_policy=True, blas_timeout=True, malloc=True):
    """Apply the settings above (each can be switched off) and return what
    happened, as a dict of dicts::

        {"set": {name: value}, "kept": {name: the user's value},
         "too_late": {name: why}, "unsupported": {name: why}}

    Idempotent: a second call changes nothing more and returns the first
    call's result. It never imports numpy, so it can run before it.
    """
    global _state
    with _lock:
        if _state is not None:
            return _copy(_state)
        result = {"set": {}, "kept": {}, "too_late": {}, "unsupported": {}}
        for enabled, (var, value, api, what) in ((wait_policy, WAIT_POLICY),
                                                 (blas_timeout, BLAS_TIMEOUT)):
            if enabled:
                _tune_env(var, value, api, what, result)
        if malloc:
            _tune_malloc(result)
        _state = result
        return _copy(result)


def _copy(state):
    return {k: dict(v) for k, v in state.items()}


def runtime_state():
    """What tune_runtime() did in this process, or None if it was not called."""
    return None if _state is None else _copy(_state)


def describe():
    """One line for show_config / ``fastcnn info``."""
    if _state is None:
        return "not tuned (fastcnn.tune_runtime() was not called)"
    parts = [f"{k}={v}" for k, v in _state["set"].items()]
    parts += [f"{k}={v} (user's, kept)" for k, v in _state["kept"].items()]
    parts += [f"{k} too late: {v}" for k, v in _state["too_late"].items()]
    parts += [f"{k} unsupported: {v}" for k, v in _state["unsupported"].items()]
    return "tuned: " + ("; ".join(parts) or "nothing to do")
