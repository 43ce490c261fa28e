"""show_config() and warmup(): what this install is, and paying JIT costs up front.

Deliberately read-only apart from warmup(): reporting never changes a setting.
"""
import os
import platform
import sys
import time

import numpy as np

from fastcnn import _runtime, _threads
from fastcnn.backend import available_backends, get_backend, get_module, unavailable_backends


def config():
    """The configuration as a dict (what show_config prints)."""
    from threadpoolctl import threadpool_info
    import fastcnn
    info = {
        "fastcnn": fastcnn.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "backends": list(available_backends()),
        "unavailable": unavailable_backends(),
        "default_backend": get_backend(),
        "num_threads": _threads.get_num_threads(),
        "tuning": _runtime.describe(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT", "(unset)"),
        "blas": [{k: d.get(k) for k in ("internal_api", "version", "num_threads",
                                        "threading_layer", "architecture")}
                 for d in threadpool_info() if d.get("user_api") == "blas"],
    }
    for name in available_backends():
        mod = get_module(name)
        for attr in ("build_info", "info"):
            fn = getattr(mod, attr, None)
            if fn is not None:
                info[name] = fn()
    return info


def show_config(file=None):
    """Print backends, the Cython build, numba, BLAS, threads and the process tuning."""
    file = file or sys.stdout
    info = config()
    print(f"fastcnn {info['fastcnn']} (Python {info['python']}, numpy {info['numpy']}, "
          f"{info['platform']})", file=file)
    print(f"backends available: {', '.join(info['backends'])}; "
          f"default: {info['default_backend']}", file=file)
    for name, why in info["unavailable"].items():
        print(f"  {name}: unavailable - {why}", file=file)
    for name in info["backends"]:
        if name in info:
            details = ", ".join(f"{k}={v}" for k, v in info[name].items())
            print(f"  {name}: {details}", file=file)
    for b in info["blas"]:
        print(f"BLAS: {b['internal_api']} {b['version']} ({b['architecture']}, "
              f"{b['threading_layer']}), {b['num_threads']} threads", file=file)
    print(f"threads (set_num_threads / FASTCNN_NUM_THREADS): {info['num_threads']}", file=file)
    print(f"process: {info['tuning']}", file=file)
    print(f"OMP_WAIT_POLICY: {info['omp_wait_policy']}; OPENBLAS_THREAD_TIMEOUT: "
          f"{info['openblas_thread_timeout']}", file=file)


def warmup(backends=None):
    """Compile / load the JIT kernels of ``backends`` (default: every available
    one) now, so no later op pays for it; returns {backend: seconds} for
    those that have JIT kernels."""
    out = {}
    for name in available_backends() if backends is None else backends:
        fn = getattr(get_module(name), "warmup", None)
        if fn is not None:
            t0 = time.perf_counter()
            fn()
            out[name] = time.perf_counter() - t0
    return out
