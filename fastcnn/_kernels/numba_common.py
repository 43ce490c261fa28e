"""What every Numba kernel module shares: the jit options and the array
types of the signatures.

Every kernel compiles without ``parallel``: a kernel is one thread's loop,
and fastcnn runs pieces of an op concurrently on its own pool
(``fastcnn.backends._concurrent``). So Numba's threading layer never starts
- no OpenMP or TBB team in the process, nothing to break in a forked child,
no per-thread thread count to set.

This module deliberately holds no kernels and no thread policy.
"""
import os
import tempfile
import warnings

from numba import njit, types

_KERNELS_DIR = os.path.dirname(os.path.abspath(__file__))


def _cache_dir():
    """Where the compiled kernels are cached: $NUMBA_CACHE_DIR if set, else
    $XDG_CACHE_HOME/fastcnn/numba (default ~/.cache/fastcnn/numba)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("NUMBA_CACHE_DIR") or os.path.join(base, "fastcnn", "numba")


def _writable(folder):
    """Whether files can be created in ``folder`` (made if missing): tried,
    not judged from permission bits, which root and ACLs make misleading."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, path = tempfile.mkstemp(dir=folder, prefix=".fastcnn-probe-")
        os.close(fd)
        os.unlink(path)
        return True
    except OSError:
        return False


def _use_cache():
    """True when the kernels can be cached in ``_cache_dir()``. Otherwise
    they compile in memory, with one warning: Numba's own fallback would be
    __pycache__ beside the installed source, which is not fastcnn's to
    write into (and fails on a read-only install anyway)."""
    folder = _cache_dir()
    if _writable(folder):
        return True
    warnings.warn(f"fastcnn: the numba kernels' cache folder {folder} is not writable; "
                  f"compiling them without a cache (again in every process). Set "
                  f"NUMBA_CACHE_DIR to a writable folder to keep them.",
                  RuntimeWarning, stacklevel=2)
    return False


def _install_cache_locator():
    """Cache fastcnn's compiled kernels under the user's cache folder
    (``_cache_dir()``), not in __pycache__ beside the installed source as
    Numba would: files there are not the package's, so ``pip uninstall``
    leaves the folder behind, and that leftover ``fastcnn/`` in
    site-packages then shadows a later ``pip install -e .`` as an empty
    namespace package. NUMBA_CACHE_DIR, if set, is Numba's own business.
    A cached kernel is stale when its own file or this one (its options)
    changed. Uses Numba's locator list (numba.core.caching), which is not a
    public API: if it changes, Numba's default simply applies."""
    try:
        from numba.core import config as numba_config
        from numba.core.caching import CacheImpl, UserWideCacheLocator
    except ImportError:
        return
    common = os.stat(os.path.abspath(__file__))

    class FastcnnCacheLocator(UserWideCacheLocator):
        def __init__(self, py_func, py_file):
            super().__init__(py_func, py_file)
            self._cache_path = os.path.join(_cache_dir(), self.get_suitable_cache_subpath(py_file))

        def get_source_stamp(self):
            return super().get_source_stamp(), common.st_mtime, common.st_size

        @classmethod
        def from_function(cls, py_func, py_file):
            if numba_config.CACHE_DIR or \
                    os.path.dirname(os.path.abspath(py_file)) != _KERNELS_DIR:
                return None
            return super().from_function(py_func, py_file)

    if not any(c.__name__ == "FastcnnCacheLocator" for c in CacheImpl._locator_classes):
        CacheImpl._locator_classes.insert(0, FastcnnCacheLocator)


CACHE = _use_cache()
if CACHE:
    _install_cache_locator()

# cache: compiled once per installation, reloaded from disk later (see
# _install_cache_locator for where), when there is a writable place. fastmath stays off: no kernel needs
# reassociation: reductions accumulate into rows of partial sums instead.
# error_model='numpy': no ZeroDivisionError checks inside the loops.
JIT_OPTIONS = dict(cache=CACHE, nogil=True, fastmath=False, error_model="numpy",
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


def kernel(signature_of):
    """Eagerly compile a single-threaded kernel for float32 and float64.

    ``signature_of(dtype)`` returns the signature for one float type, so each
    kernel states its argument types once; a call with any other types raises
    TypeError instead of compiling a new specialisation.
    """
    sigs = [signature_of(t) for t in FLOATS]
    return njit(sigs, **JIT_OPTIONS)
