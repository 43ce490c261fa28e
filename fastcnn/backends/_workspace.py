"""Pools of reusable arrays for the compiled backends: ``workspace`` for
scratch (column matrices, padded inputs, transposes, Winograd tiles) and
``outputs`` for what the kernels return (y, dx, dw, argmax, relu's y/dx).

Why: a fresh 16 MB ``np.empty`` is a fresh mmap, and touching it costs page
faults - about 2.5 ms per column matrix of the MNIST conv2, more than the
im2col that fills it. An array here is handed out again only when nothing
outside the pool holds it any more (a ``cols`` saved in a ctx stays in use
until that ctx dies), so callers on any thread, concurrent chunks included,
never share a buffer. The pool is bounded: at most ``PER_KEY`` arrays per
(shape, dtype) and ``MAX_BYTES`` in all, least recently used shapes dropped
first; a larger request gets a fresh array that the pool does not keep.

Outputs come from a pool of their own, with more arrays per shape (a
training step holds several activations and gradients of one shape at
once) and its own byte cap, so they never push the scratch arrays out.
Serving them from a pool, not ``np.empty``, is what keeps a training step
free of page faults without tuning glibc's malloc (``fastcnn.tune_runtime``):
a freed big block goes back to the kernel and the next step faults it in
again. "Fresh" keeps its meaning: an output is handed out again only when
no one holds it (nor a view of it), so nothing a caller holds is ever
overwritten.

Deliberately not here: any knowledge of what the arrays are for.
"""
import sys
import threading

import numpy as np


def aligned_empty(shape, dtype, align=4096):
    """(owner, array): an uninitialised array that starts on a page boundary,
    so where scratch buffers fall in the caches does not change from process
    to process with malloc's 16-byte alignment (a precaution: the one
    measurement was within the machine's noise)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(n + align, dtype=np.uint8)
    off = -raw.ctypes.data % align
    return raw, raw[off:off + n].view(dtype).reshape(shape)


class Workspace:
    """Thread-safe pool of page-aligned scratch arrays; ``take`` one."""

    PER_KEY = 3             # cols of this step and the last one, dcols (same shape)
    MAX_BYTES = 256 << 20   # least recently used shapes are dropped beyond this

    def __init__(self, per_key=PER_KEY, max_bytes=MAX_BYTES):
        self.PER_KEY, self.MAX_BYTES = per_key, max_bytes
        self._arrays = {}       # (shape, dtype) -> [(owner, array)], most recent key last
        self._lock = threading.Lock()
        self._free = self._refcounts_when_free()

    @staticmethod
    def _refcounts_when_free():
        """sys.getrefcount of an array and of its memory's owner when only
        the pool holds them, seen from the loop in take() (measured, not
        assumed: it differs across CPythons). Both count: a view of the
        array has the owner as its base, not the array."""
        for raw, a in [aligned_empty((1,), np.float32)]:
            return sys.getrefcount(a), sys.getrefcount(raw)

    def take(self, shape, dtype):
        """An uninitialised C-contiguous array that no one else holds."""
        # the dtype itself keys (equal dtypes hash alike, byte order included): its .str is
        # a new string per call, half the cost of a take
        key = (shape if type(shape) is tuple else tuple(shape), np.dtype(dtype))
        free_a, free_raw = self._free
        with self._lock:
            arrays = self._arrays.pop(key, None)
            if arrays is None:
                arrays = []
            self._arrays[key] = arrays          # the most recently used key goes last
            for raw, a in arrays:
                if sys.getrefcount(a) == free_a and sys.getrefcount(raw) == free_raw:
                    return a
            raw, a = aligned_empty(shape, dtype)
            if len(arrays) < self.PER_KEY and a.nbytes <= self.MAX_BYTES:
                arrays.append((raw, a))
            while self.held_bytes() > self.MAX_BYTES:
                del self._arrays[next(iter(self._arrays))]
            return a

    def held_bytes(self):
        """Bytes of the arrays the pool keeps (in use or not)."""
        return sum(a.nbytes for v in self._arrays.values() for _, a in v)


workspace = Workspace()     # scratch, for both compiled backends
# Kernel outputs: a layer's y, the next layer's y, their gradients and last
# step's still referenced ones can share a shape.
outputs = Workspace(per_key=8, max_bytes=256 << 20)
