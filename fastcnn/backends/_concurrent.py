"""Run independent pieces of one op on a few Python threads at once, each
piece single-threaded: one pool busy at a time instead of two fighting.

Why: a piece that alternates small matmuls with short compiled loops (the
numba Winograd convolution, band by band) cannot use two cores well from
one thread - OpenBLAS splits each small matmul across its threads for a few
microseconds, and each wake of the kernels' OpenMP pool costs ~50 us. Giving
each core a whole piece (a chunk of the batch) with single-threaded BLAS and
kernels keeps both cores busy with no hand-offs inside a piece. The pieces
must not write to shared memory; the caller combines their results.

``run(fn, items, threads)`` calls ``fn(item)`` for every item and returns
the results in order; the calling thread takes part. While pieces run, every
BLAS that was loaded when this module first ran pieces - numpy's, which
np.matmul calls, among them - runs one thread (threadpoolctl; restored when the
last concurrent caller leaves, so concurrent ops from several user threads
are safe) and each participating thread's kernels run one thread (the backend passes
its per-thread getter and setter, e.g. numba's).

``threads_for(available, work, items)`` is the one rule both compiled
backends use for how many threads a loop (or a batch split) gets.

Deliberately not here: deciding how to split an op (the driver or the
backend does).
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

_lock = threading.Lock()
_active = 0               # concurrent callers inside a single-threaded-BLAS section
_saved_blas = None        # [(controller, its thread count before)] while _active
_controllers = None
_executor = None
_executor_workers = 0


def _after_fork_in_child():
    """A forked child has none of the parent's worker threads: forget the
    executor (its dead workers would never run a piece) and the lock."""
    global _lock, _active, _saved_blas, _executor, _executor_workers
    _lock = threading.Lock()
    _active, _saved_blas = 0, None
    _executor, _executor_workers = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _blas_controllers():
    global _controllers
    if _controllers is None:
        from threadpoolctl import ThreadpoolController
        _controllers = ThreadpoolController().select(user_api="blas").lib_controllers
    return _controllers


def _enter():
    global _active, _saved_blas
    with _lock:
        if _active == 0:
            _saved_blas = [(c, c.num_threads) for c in _blas_controllers()]
            for c, _ in _saved_blas:
                c.set_num_threads(1)
        _active += 1


def _leave():
    global _active, _saved_blas
    with _lock:
        _active -= 1
        if _active == 0:
            for c, n in _saved_blas:
                c.set_num_threads(n)
            _saved_blas = None


def _pool(workers):
    global _executor, _executor_workers
    with _lock:
        if _executor is None or _executor_workers < workers:
            old = _executor
            _executor = ThreadPoolExecutor(max_workers=workers,
                                           thread_name_prefix="fastcnn")
            _executor_workers = workers
            if old is not None:
                old.shutdown(wait=False)
        return _executor


# Work (elements read or written: im2col copies, pooling window reads, the
# column matrix of a batch split) per extra thread: below about this much a
# fork/join of the kernels' pool costs more than it saves, so tiny problems
# run on one thread.
WORK_PER_THREAD = 1 << 16
# The same for an elementwise pass (relu), ~0.1-0.3 ns per element: numba and
# cython alike ran MNIST-sized activations (0.2-1.6M elements) faster on one
# thread than on two, and only numba gained at 4M.
ELEMENTS_PER_THREAD = 1 << 21


def threads_for(available, work, items, per_thread=None):
    """Threads for ``work`` spread over ``items`` independent pieces: one
    per ``per_thread`` of work (default WORK_PER_THREAD), never more than
    the items or ``available`` (the calling thread's kernel thread count)."""
    return max(1, min(available, items, work // (per_thread or WORK_PER_THREAD)))


def batch_slices(N, k):
    """range(N) as at most k contiguous slices of balanced sizes."""
    size = -(-N // max(1, min(k, N)))
    return [slice(n0, min(N, n0 + size)) for n0 in range(0, N, size)]


def run(fn, items, threads, get_threads, set_threads):
    """[fn(item) for item in items], up to ``threads`` at a time (see module
    doc); ``get_threads``/``set_threads`` read and set the calling thread's
    own kernel thread count (numba's is per thread)."""
    items = list(items)
    threads = max(1, min(threads, len(items)))
    if threads == 1:
        return [fn(item) for item in items]

    def piece(item):
        set_threads(1)
        return fn(item)

    results = [None] * len(items)
    own = get_threads()
    _enter()
    futures = {}
    try:
        set_threads(1)
        # the caller takes every threads-th item from 0, the workers the
        # others, so equal pieces finish together
        pool = _pool(threads - 1)
        futures = {i: pool.submit(piece, items[i]) for i in range(len(items)) if i % threads}
        for i in range(0, len(items), threads):
            results[i] = fn(items[i])
        for i, f in futures.items():
            results[i] = f.result()
    finally:
        for f in futures.values():      # never leave a piece running on our buffers
            f.exception()
        set_threads(own)
        _leave()
    return results
