"""The backend registry: name -> module, and which backend is in force.

A backend is a module in ``fastcnn.backends`` that defines the kernels (KERNELS below) of
the contract in ``fastcnn/backends/__init__.py``, and any of the fused ops
(FUSED_OPS; ``fused_ops(name)`` says which). It is registered once, by
name, in ``_MODULES`` below, and imported lazily on first use, so a missing
compiled extension only makes that backend absent (with the reason kept for
the error message) instead of breaking ``import fastcnn``.

Resolution order for the backend of a call::

    backend= argument  ->  innermost use_backend()  ->  set_backend()
                       ->  $FASTCNN_BACKEND  ->  'auto'

Nothing falls back silently: an unknown or unavailable name is an error.
This module deliberately holds no kernels and no argument checks.
"""
import contextlib
import contextvars
import importlib
import os
import threading

# Adding a backend = adding its module and one line here.
_MODULES = {
    "loops": "fastcnn.backends.loops",
    "im2col": "fastcnn.backends.im2col",
    "cython": "fastcnn.backends.cython",
    "numba": "fastcnn.backends.numba",
    "cupy": "fastcnn.backends.cupy",
}
# The array module of a backend that does not take NumPy arrays, known
# without importing it: choosing among the NumPy backends never imports CuPy.
_ARRAY_MODULES = {"cupy": "cupy"}
AUTO = "auto"
KERNELS = ("conv2d_forward", "conv2d_backward", "max_pool2d_forward",
           "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward",
           "adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward",
           "adaptive_max_pool2d_forward", "adaptive_max_pool2d_backward",
           "relu_forward", "relu_backward")
# Fused ops a backend may implement (each as a forward/backward pair, see
# the contract); one it leaves out, fastcnn.ops composes from the kernels
# above on the same backend.
FUSED_OPS = ("conv2d_relu", "conv2d_relu_max_pool2d")

_loaded = {}      # name -> module
_failed = {}      # name -> reason the module could not be imported
_lock = threading.Lock()
_scoped = contextvars.ContextVar("fastcnn_backend", default=None)  # use_backend()
_global = None    # set_backend(); process-wide, seen by every thread


def registered_backends():
    """Every backend fastcnn knows of, usable here or not."""
    return tuple(_MODULES)


def _load(name):
    """Import a backend module once; remember why if it fails."""
    if name in _loaded:
        return _loaded[name]
    if name in _failed:
        return None
    with _lock:
        if name in _loaded or name in _failed:
            return _loaded.get(name)
        try:
            mod = importlib.import_module(_MODULES[name])
            missing = [k for k in KERNELS if not callable(getattr(mod, k, None))]
            if missing:
                raise ImportError(f"module {mod.__name__} lacks kernels {missing}")
        except ImportError as e:
            _failed[name] = f"{type(e).__name__}: {e}"
            return None
        from fastcnn import _threads  # apply a thread count set before the import
        _threads.apply_to(mod)
        _loaded[name] = mod
        return mod


def fused_ops(name):
    """The fused ops (of FUSED_OPS) backend ``name`` has kernels for: the
    others run as their unfused ops on that same backend."""
    mod = get_module(name)
    return tuple(op for op in FUSED_OPS if has_fused(mod, op))


def has_fused(mod, op):
    """Whether backend module ``mod`` has the fused op ``op``'s kernels (the
    one question a fused call asks, looked up on the module each time: not
    cached, so the answer follows the module's attributes)."""
    return (callable(getattr(mod, _FUSED_NAMES[op][0], None))
            and callable(getattr(mod, _FUSED_NAMES[op][1], None)))


_FUSED_NAMES = {op: (op + "_forward", op + "_backward") for op in FUSED_OPS}


def array_module(name):
    """The array module backend ``name`` computes on: 'numpy' or 'cupy'."""
    return _ARRAY_MODULES.get(name, "numpy")


def available_backends(array_module=None):
    """Names of the backends usable on this install, in registry order; only
    those computing on ``array_module``'s arrays ('numpy', 'cupy') if given."""
    return tuple(n for n in _MODULES
                 if (array_module is None or _ARRAY_MODULES.get(n, "numpy") == array_module)
                 and _load(n) is not None)


def unavailable_backends():
    """{name: reason} for registered backends that could not be loaded."""
    available_backends()
    return dict(_failed)


def _check_name(name, *, allow_auto=True):
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str, got {type(name).__name__}")
    if allow_auto and name == AUTO:
        return name
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; available backends: "
                         f"{', '.join(available_backends())} (or 'auto')")
    if _load(name) is None:
        raise ValueError(f"backend {name!r} is not available on this install "
                         f"({_failed[name]}); available: {', '.join(available_backends())}")
    return name


def get_module(name):
    """The module of a concrete (non-auto) backend; raises if unavailable."""
    return _loaded.get(name) or _loaded[_check_name(name, allow_auto=False)]


def _env_default():
    name = os.environ.get("FASTCNN_BACKEND", "").strip()
    if not name:
        return AUTO
    try:
        return _check_name(name)
    except (ValueError, TypeError) as e:
        raise ValueError(f"environment variable FASTCNN_BACKEND: {e}") from None


def get_backend():
    """The backend name in force here ('auto' unless chosen otherwise)."""
    return _scoped.get() or _global or _env_default()


def set_backend(name):
    """Set the process-wide default backend (None: back to $FASTCNN_BACKEND/'auto')."""
    global _global
    _global = None if name is None else _check_name(name)


@contextlib.contextmanager
def use_backend(name):
    """Use backend ``name`` inside the with-block; the previous choice is restored after."""
    token = _scoped.set(_check_name(name))
    try:
        yield name
    finally:
        _scoped.reset(token)


def resolve(backend):
    """The name a call runs on: an explicit argument, else the one in force."""
    return get_backend() if backend is None else _check_name(backend)
