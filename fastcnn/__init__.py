"""fastcnn: CNN layers four ways behind one interface.

conv2d, max_pool2d and avg_pool2d, forward and backward, by the backends
``loops`` (the readable NumPy reference), ``im2col`` (strided windows +
matmul), ``cython`` and ``numba`` (compiled kernels). The public ops live in
``fastcnn.ops``; this module is the surface for choosing a backend, threads
and reporting the configuration.
"""
from fastcnn import _threads
# before anything loads OpenMP or OpenBLAS (numpy): they read these once
_threads.default_wait_policy()
_threads.default_blas_timeout()

from fastcnn import ops  # noqa: E402
from fastcnn._threads import get_num_threads, set_num_threads, init_from_env as _init_threads  # noqa: E402
from fastcnn.backend import (available_backends, get_backend, registered_backends,  # noqa: E402
                             set_backend, unavailable_backends, use_backend)
from fastcnn._config import show_config, warmup  # noqa: E402
from fastcnn._malloc import tune_malloc  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ops", "available_backends", "registered_backends", "unavailable_backends",
           "get_backend", "set_backend", "use_backend", "set_num_threads",
           "get_num_threads", "show_config", "warmup", "tune_malloc", "__version__"]

_init_threads()
