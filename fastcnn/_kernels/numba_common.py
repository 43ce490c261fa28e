"""What every Numba kernel module shares: the jit options and the array
types of the signatures.

This module deliberately holds no kernels and no thread policy (the adapter
``fastcnn.backends.numba`` decides how many threads a call gets).
"""
from numba import njit, prange, types

# cache=True: compiled once per installation, reloaded from disk later (next
# to the source in __pycache__, or in NUMBA_CACHE_DIR / the user cache when the
# package directory is read-only). fastmath stays off: no kernel needs
# reassociation: reductions accumulate into rows of partial sums instead.
# error_model='numpy': no ZeroDivisionError checks inside the loops.
JIT_OPTIONS = dict(cache=True, nogil=True, fastmath=False, error_model="numpy",
                   boundscheck=False)

FLOATS = (types.float32, types.float64)
i32 = types.int32
i64 = types.int64
void = types.void


def ro(dtype, ndim, layout="C"):
    """A read-only array type (C-contiguous unless layout='A', any strides);
    writable arrays convert to it."""
    return types.Array(dtype, ndim, layout, readonly=True)


def rw(dtype, ndim, layout="C"):
    """A writable array type (C-contiguous unless layout='A', any strides)."""
    return types.Array(dtype, ndim, layout)


def kernel(signature_of, parallel=True):
    """Eagerly compile a kernel for float32 and float64.

    ``signature_of(dtype)`` returns the signature for one float type, so each
    kernel states its argument types once; a call with any other types raises
    TypeError instead of compiling a new specialisation.
    """
    sigs = [signature_of(t) for t in FLOATS]
    return njit(sigs, parallel=parallel, **JIT_OPTIONS)


@njit(types.int64(types.int64), parallel=True, **JIT_OPTIONS)
def thread_probe(n):
    """A minimal parallel loop: running it starts Numba's threading layer, so
    ``numba.threading_layer()`` can name it, without compiling the kernels."""
    s = 0
    for i in prange(n):
        s += i
    return s

