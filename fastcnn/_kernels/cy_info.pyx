"""What the compiled kernels were built with.

What this is: facts recorded at compile time (the FASTCNN_DEBUG compile-time
switch) so ``fastcnn.backends.cython.build_info()`` reports what was built,
not what the current environment would build. Every extension in this
package is compiled with the same flags, so one module speaks for all.
What this is not: no kernels, no thread policy. The kernels are built
without OpenMP: every loop is single-threaded, and fastcnn's own pool
(``fastcnn.backends._concurrent``) runs pieces of an op concurrently.
"""
import cython

OPENMP = False
DEBUG_BUILD = bool(FASTCNN_DEBUG)
CYTHON_VERSION = cython.__version__
