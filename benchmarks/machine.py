"""The machine under test: thread settings, versions, matmul peak, a median timer.

Fairness lives here: ``limit_threads(n)`` gives fastcnn (numba, Cython/OpenMP),
PyTorch and every BLAS the same thread count, and ``describe()`` reports what
was actually set, so a results table always says what it was measured with.
This module deliberately does not time any fastcnn op itself.
"""
import os
import platform
import statistics
import sys
import time
from importlib import metadata

import numpy as np

_LIMITS = []        # keeps the threadpoolctl limiter alive for the whole process


def default_threads():
    """Threads to use: $FASTCNN_BENCH_THREADS, else every CPU this process may run on."""
    env = os.environ.get("FASTCNN_BENCH_THREADS")
    if env:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def limit_threads(n):
    """Give every library the same ``n`` threads; returns what each one reports it uses."""
    import fastcnn
    from threadpoolctl import threadpool_limits

    _LIMITS.append(threadpool_limits(limits=n))   # BLAS and OpenMP pools
    fastcnn.set_num_threads(n)
    import numba
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    torch = optional_torch()
    if torch is not None:
        torch.set_num_threads(n)
    return thread_report()


def prepare(threads, warm=True):
    """Threads for everyone, glibc told to keep freed memory (for every
    implementation alike, see fastcnn/_malloc.py), then every JIT kernel
    compiled (timed; ``warm=False`` skips it): call before timing anything."""
    import fastcnn
    fastcnn.tune_malloc()
    limit_threads(threads)
    t0 = time.perf_counter()
    per_backend = fastcnn.warmup() if warm else {}
    # importing numba loads SciPy's OpenBLAS when SciPy is installed; threadpoolctl
    # only limits libraries already loaded, so limit again now that it is
    limit_threads(threads)
    return {"threads": threads, "warmup_s": time.perf_counter() - t0, "warmup": per_backend}


def thread_report():
    """Threads each library will use right now, as {library: count}."""
    import numba
    from threadpoolctl import threadpool_info

    import fastcnn
    out = {"fastcnn": fastcnn.get_num_threads(), "numba": numba.get_num_threads()}
    torch = optional_torch()
    if torch is not None:
        out["torch"] = torch.get_num_threads()
    for pool in threadpool_info():
        key = f"{pool['internal_api']} ({os.path.basename(pool['filepath'])})"
        out[key] = pool["num_threads"]
    return out


def optional_torch():
    """PyTorch if it is importable, else None (it is an optional reference row)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions():
    out = {"python": platform.python_version()}
    for dist in ("numpy", "numba", "Cython", "torch", "threadpoolctl", "fastcnn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def blas_name():
    from threadpoolctl import threadpool_info
    libs = [f"{p['internal_api']} {p.get('version') or ''} ({p.get('architecture') or '?'})"
            for p in threadpool_info() if p["user_api"] == "blas"]
    return ", ".join(libs) or "unknown"


def numba_threading_layer():
    """The layer numba picked; it is only decided once a parallel kernel has run."""
    import numba
    try:
        return numba.threading_layer()
    except ValueError:
        return f"not yet chosen (config: {numba.config.THREADING_LAYER})"


def describe():
    """Everything a results header needs, as an ordered dict of strings."""
    import fastcnn
    from fastcnn import _malloc, _threads
    v = versions()
    return {
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "cpu": cpu_name(),
        "python": f"{v['python']} ({sys.implementation.name})",
        "versions": ", ".join(f"{k} {v[k]}" for k in
                              ("numpy", "numba", "Cython", "torch", "threadpoolctl")),
        "blas": blas_name(),
        "numba threading layer": numba_threading_layer(),
        "OpenMP wait policy": _threads.wait_policy(),
        "OPENBLAS_THREAD_TIMEOUT": _threads.blas_timeout(),
        "malloc": _malloc.malloc_state(),
        "threads": ", ".join(f"{k}={n}" for k, n in thread_report().items()),
        "fastcnn backends": ", ".join(fastcnn.available_backends()),
    }


def median_times(fns, target_s=0.2, repeat=5, min_repeat=5, warm_s=0.3):
    """timeit-style seconds per call for each of ``fns`` ({key: callable}), interleaved.

    Each row first runs for ``warm_s`` seconds (at least twice, untimed): the
    first calls of a large batch still grow the heap and fault its pages in
    (numba inference at batch 1000: 200-650 ms for the first calls, ~90 ms
    after). A probe call then sizes each row: as many calls per repeat as fit in
    ``target_s / repeat``; a row slower than that is timed one call at a time,
    ``min_repeat`` times. The repeats of all rows take turns (round-robin,
    rotating who goes first), so load from other processes lands on every row
    alike; each row's result is the median of its repeats. Callers still run
    one call first (JIT compilation); none of this is counted.
    """
    number, reps = {}, {}
    for key, fn in fns.items():
        t_end, calls = time.perf_counter() + warm_s, 0
        while calls < 2 or time.perf_counter() < t_end:
            fn()
            calls += 1
        t0 = time.perf_counter()
        fn()
        once = max(time.perf_counter() - t0, 1e-7)
        number[key] = max(1, int((target_s / repeat) / once))
        reps[key] = repeat if once * min_repeat < target_s else min_repeat
    times = {key: [] for key in fns}
    keys = list(fns)
    for r in range(max(reps.values(), default=0)):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            if len(times[key]) < reps[key]:
                fn, n = fns[key], number[key]
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                times[key].append((time.perf_counter() - t0) / n)
    return {key: statistics.median(v) for key, v in times.items()}


def median_time(fn, target_s=0.2, repeat=5, warm=True):
    """``median_times`` for a single callable (warmed up first unless ``warm=False``)."""
    if warm:
        fn()
    return median_times({0: fn}, target_s, repeat)[0]


def matmul_peak(dtype, n=1024, target_s=0.3):
    """Achieved GFLOP/s of an n x n BLAS matmul: the ceiling a matmul-bound kernel can reach."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype=dtype)
    t = median_time(lambda: np.matmul(a, b, out=out), target_s=target_s)
    return 2.0 * n ** 3 / t / 1e9
