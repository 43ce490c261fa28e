"""What every Numba kernel module shares: the jit options and the array
types of the signatures.

This module deliberately holds no kernels and no thread policy (the adapter
``fastcnn.backends.numba`` decides how many threads a call gets).
"""
import os

from numba import njit, prange, types

_KERNELS_DIR = os.path.dirname(os.path.abspath(__file__))


def _install_cache_locator():
    """Cache fastcnn's compiled kernels under the user's cache folder
    ($XDG_CACHE_HOME/fastcnn/numba, default ~/.cache/fastcnn/numba), not in
    __pycache__ beside the installed source as Numba would: files there are
    not the package's, so ``pip uninstall`` leaves the folder behind, and
    that leftover ``fastcnn/`` in site-packages then shadows a later
    ``pip install -e .`` as an empty namespace package. NUMBA_CACHE_DIR, if
    set, still wins; if the folder is not writable, Numba's own choice
    stands. Uses Numba's locator list (numba.core.caching), which is not a
    public API: if it changes, Numba's default simply applies."""
    try:
        from numba.core import config as numba_config
        from numba.core.caching import CacheImpl, UserWideCacheLocator
    except ImportError:
        return

    class FastcnnCacheLocator(UserWideCacheLocator):
        def __init__(self, py_func, py_file):
            super().__init__(py_func, py_file)
            base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
                os.path.expanduser("~"), ".cache")
            self._cache_path = os.path.join(base, "fastcnn", "numba",
                                            self.get_suitable_cache_subpath(py_file))

        @classmethod
        def from_function(cls, py_func, py_file):
            if numba_config.CACHE_DIR or \
                    os.path.dirname(os.path.abspath(py_file)) != _KERNELS_DIR:
                return None
            return super().from_function(py_func, py_file)

    if not any(c.__name__ == "FastcnnCacheLocator" for c in CacheImpl._locator_classes):
        CacheImpl._locator_classes.insert(0, FastcnnCacheLocator)


_install_cache_locator()

# cache=True: compiled once per installation, reloaded from disk later (see
# _install_cache_locator for where). fastmath stays off: no kernel needs
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

