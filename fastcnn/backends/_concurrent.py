"""fastcnn's one thread pool: the independent pieces of one op (batch chunks,
plane ranges, element ranges, row or column blocks of a product) run on a
few Python threads at once, each piece single-threaded.

Why: every kernel of the compiled backends is single-threaded (numba compiles
without ``parallel``, the Cython loops without OpenMP), so this is the only
place fastcnn runs anything in parallel. Python threads wait on futexes and
never spin, so an idle pool steals no core from the next op - where idle
OpenBLAS workers spin (2**28 cycles by default) after every multi-threaded
product, and an OpenMP team after every loop. No OpenMP team means nothing to break in a forked
child either (a GNU OpenMP team does not survive fork); the pool itself
forgets its workers in a forked child and starts new ones.

``run(fn, items)`` calls ``fn(item)`` for every item and returns the results
in order; the calling thread takes part. While pieces run, every BLAS that
was loaded when this module first ran pieces - numpy's, which np.matmul
calls, among them - runs one thread (threadpoolctl; restored when the last
concurrent caller leaves, so concurrent ops from several user threads are
safe). A piece that itself calls ``run`` or ``matmul`` runs its items inline:
the cores are taken already.

``matmul(a, b, out=None)`` is a matrix product (or a stack of them) run the
same way: BLAS at one thread, row blocks of ``a`` (or column blocks of
``b``, or matrices of a stack) across the pool when the product is big
enough; ``matmuls(pairs)`` runs independent products as one piece each.

``threads_for(available, work, items)`` is the one rule for how many pieces
an op gets; ``slices(total, work)`` applies it with fastcnn's thread count
(``fastcnn._threads.get_num_threads()``, one value for the whole process, so
it holds in every Python thread).

Deliberately not here: deciding what a piece is (the drivers do), and any
change to BLAS outside a call of ``run`` or ``matmul``.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fastcnn import _threads

_lock = threading.Lock()
_active = 0               # concurrent callers inside a single-threaded-BLAS section
_saved_blas = None        # [(controller, its thread count before)] while _active
_controllers = None
_executor = None
_executor_workers = 0
_local = threading.local()  # .inside: this thread runs a piece (nested calls go inline)
# The most threads one op (a run() call or a slices() split) has used since
# the last reset: tests observe the thread knob through it.
most_threads = 0


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
            for c, n in _saved_blas:
                if n != 1:
                    c.set_num_threads(1)
        _active += 1


def _leave():
    global _active, _saved_blas
    with _lock:
        _active -= 1
        if _active == 0:
            for c, n in _saved_blas:
                if n != 1:
                    c.set_num_threads(n)
            _saved_blas = None


class _SingleThreadedBlas:
    """The context manager of ``single_threaded_blas``: a class, not a
    generator, because small ops enter it several times per call and a
    generator-based one costs several times as much as the work it guards
    there. Reentrant and shared: its state is the module's ``_active``."""

    __slots__ = ()

    def __enter__(self):
        _enter()

    def __exit__(self, *exc):
        _leave()


_SINGLE_THREADED_BLAS = _SingleThreadedBlas()


def single_threaded_blas():
    """BLAS at one thread inside the with-block (what ``run`` does around
    its pieces), for work on the calling thread that may still call ``run``
    or ``matmul``."""
    return _SINGLE_THREADED_BLAS


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
# column matrix of a batch split) per extra thread: below about this much
# handing a piece to another thread costs more than it saves, so tiny
# problems run on one thread.
WORK_PER_THREAD = 1 << 16
# The same for an elementwise pass (relu), ~0.1-0.3 ns per element.
ELEMENTS_PER_THREAD = 1 << 21
# The same for a matrix product, in multiply-adds.
MACS_PER_THREAD = 1 << 20
# OpenBLAS runs a product of at most this many multiply-adds on the calling
# thread by itself (interface/gemm.c: SMP_THRESHOLD_MIN * the default
# GEMM_MULTITHREAD_THRESHOLD), so matmul leaves BLAS's thread count alone
# there: switching it costs more than such a product.
BLAS_SERIAL_MACS = 65536 * 4


def threads_for(available, work, items, per_thread=None):
    """Threads for ``work`` spread over ``items`` independent pieces: one
    per ``per_thread`` of work (default WORK_PER_THREAD), never more than
    the items or ``available``."""
    return max(1, min(available, items, work // (per_thread or WORK_PER_THREAD)))


def batch_slices(N, k, align=1):
    """range(N) as at most k contiguous slices of balanced sizes, each but
    the last a multiple of align images."""
    size = -(-N // max(1, min(k, N)))
    size = -(-size // align) * align
    return [slice(n0, min(N, n0 + size)) for n0 in range(0, N, size)]


def num_threads():
    """Threads an op may use here: fastcnn's count, or 1 inside a piece."""
    return 1 if getattr(_local, "inside", False) else _threads.get_num_threads()


def slices(total, work, per_thread=None):
    """range(total) as one slice per thread that ``work`` earns (threads_for)."""
    global most_threads
    parts = batch_slices(total, threads_for(num_threads(), work, total, per_thread))
    most_threads = max(most_threads, len(parts))
    return parts


def _piece(fn, item):
    outer = getattr(_local, "inside", False)
    _local.inside = True
    try:
        return fn(item)
    finally:
        _local.inside = outer


def run(fn, items, threads=None):
    """[fn(item) for item in items], up to ``threads`` (default: all the
    items, within ``num_threads()``) at a time, BLAS at one thread meanwhile
    (see module doc)."""
    global most_threads
    items = list(items)
    if getattr(_local, "inside", False):
        return [fn(item) for item in items]
    threads = max(1, min(num_threads() if threads is None else threads, len(items)))
    most_threads = max(most_threads, threads)
    results = [None] * len(items)
    futures = {}
    _enter()
    try:
        if threads > 1:
            # the caller takes every threads-th item from 0, the workers the
            # others, so equal pieces finish together
            pool = _pool(threads - 1)
            futures = {i: pool.submit(_piece, fn, items[i])
                       for i in range(len(items)) if i % threads}
        for i in range(0, len(items), threads):
            results[i] = _piece(fn, items[i])
        for i, f in futures.items():
            results[i] = f.result()
    finally:
        for f in futures.values():      # never leave a piece running on our buffers
            f.exception()
        _leave()
    return results


def matmul(a, b, out=None):
    """np.matmul(a, b, out) for (M, K) @ (K, N), or a stack of them (a or b
    (B, ., .), the other 2-D or a stack too). ``out`` may be a strided view
    with unit last stride, as BLAS allows; None makes one. BLAS runs one
    thread; a product of at least 2 * MACS_PER_THREAD multiply-adds splits
    across the pool: a stack over its matrices, a single product into row
    blocks of ``a`` (or column blocks of ``b``, if it has more). K is never
    split. Returns out."""
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    if max(a.ndim, b.ndim) == 2 and M * N * K <= BLAS_SERIAL_MACS:
        return np.matmul(a, b, out=out)
    if out is None:
        shape = (a.shape[0],) if a.ndim == 3 else (b.shape[0],) if b.ndim == 3 else ()
        out = np.empty(shape + (M, N), dtype=np.result_type(a, b))
    if out.ndim == 3:
        B = out.shape[0]
        parts = slices(B, B * M * N * K, MACS_PER_THREAD)
        block = lambda sl: np.matmul(a[sl] if a.ndim == 3 else a,   # noqa: E731
                                     b[sl] if b.ndim == 3 else b, out=out[sl])
    elif M >= N:
        parts = slices(M, M * N * K, MACS_PER_THREAD)
        block = lambda sl: np.matmul(a[sl], b, out=out[sl])        # noqa: E731
    else:
        parts = slices(N, M * N * K, MACS_PER_THREAD)
        block = lambda sl: np.matmul(a, b[:, sl], out=out[:, sl])  # noqa: E731
    if len(parts) == 1:
        with single_threaded_blas():
            np.matmul(a, b, out=out)
    else:
        run(block, parts)
    return out


def matmuls(pairs):
    """[a @ b for (a, b) in pairs], independent 2-D products: when there
    are no more threads than products and each earns a thread, each is one
    whole piece on the pool (one hand-over for all, no product split);
    else one after another through ``matmul``."""
    if 1 < num_threads() <= len(pairs) and all(
            a.shape[0] * a.shape[1] * b.shape[1] >= MACS_PER_THREAD for a, b in pairs):
        return run(lambda ab: np.matmul(*ab), pairs)
    return [matmul(a, b) for a, b in pairs]


def over_rows(kernel, arrays, params=(), work=0, per_thread=None):
    """kernel(*(a[sl] for a in arrays), *params) over slices sl of the
    arrays' first axis (one length for all: image planes, or elements of a
    flat array), one slice per thread that ``work`` earns, concurrently."""
    global most_threads
    if work < 2 * (per_thread or WORK_PER_THREAD):
        # one thread's worth (threads_for's rule): no split to plan, no slices to cut
        most_threads = max(most_threads, 1)
        kernel(*arrays, *params)
        return
    parts = slices(arrays[0].shape[0], work, per_thread)
    if len(parts) == 1:
        kernel(*arrays, *params)
    else:
        run(lambda sl: kernel(*(a[sl] for a in arrays), *params), parts)
