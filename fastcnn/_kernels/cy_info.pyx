"""What the compiled kernels were built with, and OpenMP's default thread count.

What this is: facts recorded at compile time (the FASTCNN_OPENMP macro that
setup.py defines after its OpenMP probe, and the FASTCNN_DEBUG compile-time
switch) so ``fastcnn.backends.cython.build_info()`` reports what was built,
not what the current environment would build. Every extension in this
package is compiled with the same flags, so one module speaks for all.
What this is not: no kernels, no thread-count policy (that is the adapter).
"""
import cython

cdef extern from *:
    """
    #ifndef FASTCNN_OPENMP
    #define FASTCNN_OPENMP 0
    #endif
    #if FASTCNN_OPENMP
    #include <omp.h>
    static int fastcnn_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int fastcnn_omp_max_threads(void) { return 1; }
    #endif
    """
    int FASTCNN_OPENMP
    int fastcnn_omp_max_threads() noexcept nogil

OPENMP = bool(FASTCNN_OPENMP)
DEBUG_BUILD = bool(FASTCNN_DEBUG)
CYTHON_VERSION = cython.__version__


def omp_max_threads():
    """OpenMP's default team size (OMP_NUM_THREADS or the core count); 1
    without OpenMP."""
    return fastcnn_omp_max_threads()
