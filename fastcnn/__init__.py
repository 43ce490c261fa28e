"""fastcnn: CNN layers four ways behind one interface.

conv2d, max/avg pooling (fixed and adaptive) and relu, forward and
backward, by the backends ``loops`` (the readable NumPy reference),
``im2col`` (strided windows + matmul), ``cython`` and ``numba`` (compiled
kernels). The public ops live in ``fastcnn.ops``; this module is the
surface for choosing a backend, threads, process tuning and reporting the
configuration.

Importing it changes nothing in the process (no environment variable, no
allocator setting, no thread pool) and does not even import numpy: the ops,
``show_config`` and the rest load on first use, so ``fastcnn.tune_runtime()``
can run before numpy does.
"""
import importlib

from fastcnn._grad import grad_enabled, no_grad
from fastcnn._runtime import tune_runtime
from fastcnn._threads import get_num_threads, set_num_threads
from fastcnn._version import __version__
from fastcnn.backend import (available_backends, get_backend, registered_backends,
                             set_backend, unavailable_backends, use_backend)

# name -> (module, attribute or None for the module itself), imported on first use
_LAZY = {
    "ops": ("fastcnn.ops", None),
    "show_config": ("fastcnn._config", "show_config"),
    "warmup": ("fastcnn._config", "warmup"),
    "auto_choices": ("fastcnn._auto", "auto_choices"),
    "pin_auto_choices": ("fastcnn._auto", "pin_auto_choices"),
}

__all__ = ["ops", "available_backends", "registered_backends", "unavailable_backends",
           "get_backend", "set_backend", "use_backend", "set_num_threads",
           "get_num_threads", "show_config", "warmup", "tune_runtime", "auto_choices",
           "pin_auto_choices", "no_grad", "grad_enabled",
           "__version__"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'fastcnn' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    value = value if attr is None else getattr(value, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
