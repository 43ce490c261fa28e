"""Backend 'cupy': the kernels on an NVIDIA GPU, CuPy arrays in, CuPy arrays out.

conv2d is im2col + cuBLAS (``cupy.matmul``) + gather-style col2im; pooling
and relu are ElementwiseKernels. The kernels themselves are
``_cupy_kernels`` (shared with the host mirror the CPU tests run), the
device code is ``_cupy_cuda`` (five ElementwiseKernel specs: every thread
writes one output, so no atomics and results do not vary between runs),
the index tables ``_cupy_tables``. This file is only the CuPy side: the
import probe, the engine that launches those kernels, the device cache of
the tables, and the refusal of host arrays.

Absent, with the reason, where it cannot run: importing this module raises
ImportError when CuPy is not installed (``pip install 'fastcnn[gpu]'``) or
finds no usable CUDA device, so the registry leaves ``cupy`` out of
``available_backends()`` and ``unavailable_backends()['cupy']`` says why.
``import fastcnn`` never imports this module.

Arrays stay where they are: every kernel runs on the device of its input
and returns arrays on that device; a NumPy input is a TypeError that says
to move the data with ``cupy.asarray`` - nothing here copies between host
and device behind the caller's back. (That check sits here, in the
kernels, until ``fastcnn.ops`` checks the array module at the door.)

Checked on CPU by tests/test_cupy_backend.py: ``_cupy_kernels`` and
``_cupy_tables`` (through ``_cupy_mirror``), the ElementwiseKernel bodies of
``_cupy_cuda`` (compiled as C), and this file's own code (imported over a
host stand-in for CuPy). GPU-only, so untested by CI: CuPy itself - NVRTC
compiling those bodies, the launches, cuBLAS, device memory and devices -
which tests/test_cupy_backend.py ('cupy-gpu') and benchmarks/gpu_check.sh
check on a machine with a GPU.
"""
import collections
import threading


def _probe():
    """The cupy module, or ImportError saying why this backend cannot run here."""
    try:
        import cupy
    except ImportError as e:
        raise ImportError(f"CuPy is not installed ({e}); install it with "
                          f"pip install 'fastcnn[gpu]' (CUDA 12) or cupy-cuda13x") from None
    except Exception as e:      # a broken install (missing CUDA libraries) fails otherwise
        raise ImportError(f"CuPy failed to import: {type(e).__name__}: {e}") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        if count > 0:
            cupy.zeros(1)       # a context on device 0: the driver works, not only the runtime
    except Exception as e:      # CUDARuntimeError: no driver, no device, driver too old
        raise ImportError(f"CuPy is installed but no CUDA device is usable: "
                          f"{type(e).__name__}: {e}") from None
    if count < 1:
        raise ImportError("CuPy is installed but finds no CUDA device")
    return cupy


cupy = _probe()

from fastcnn.backends import _cupy_cuda, _cupy_kernels  # noqa: E402

TABLES_PER_DEVICE = 128        # device copies of index tables kept, per device


def _flat(a):
    """A C-contiguous array as 1-D (a view): the kernels index raw arrays flat."""
    return a.reshape(-1)


class CupyEngine:
    """``_cupy_kernels``' engine on the current CUDA device."""

    xp = cupy

    def __init__(self):
        self._kernels = {s.name: cupy.ElementwiseKernel(*s) for s in _cupy_cuda.SPECS}
        self._tables = collections.OrderedDict()      # (device, builder, args, dtype) -> array
        self._lock = threading.Lock()

    def table(self, builder, args, dtype=None):
        key = (cupy.cuda.runtime.getDevice(), builder.__name__, args,
               None if dtype is None else str(dtype))
        with self._lock:
            t = self._tables.get(key)
            if t is not None:
                self._tables.move_to_end(key)
                return t
        host = builder(*args)
        t = cupy.asarray(host if dtype is None else host.astype(dtype))
        with self._lock:
            self._tables[key] = t
            while len(self._tables) > TABLES_PER_DEVICE * cupy.cuda.runtime.getDeviceCount():
                self._tables.popitem(last=False)
        return t

    def gather_sum(self, src, table):
        B, S = src.shape
        R, T = table.shape
        out = cupy.empty(B * R, dtype=src.dtype)
        self._kernels["fastcnn_gather_sum"](_flat(src), _flat(table), S, R, T, out)
        return out.reshape(B, R)

    def window_max(self, src, table):
        B, S = src.shape
        R, T = table.shape
        val = cupy.empty(B * R, dtype=src.dtype)
        arg = cupy.empty(B * R, dtype=table.dtype)
        self._kernels["fastcnn_window_max"](_flat(src), _flat(table), S, R, T, val, arg)
        return val.reshape(B, R), arg.reshape(B, R)

    def route_sum(self, dy, arg, inverse):
        B, R = dy.shape
        S, T = inverse.shape
        dx = cupy.empty(B * S, dtype=dy.dtype)
        self._kernels["fastcnn_route_sum"](_flat(dy), _flat(arg), _flat(inverse), S, R, T, dx)
        return dx.reshape(B, S)

    def relu_forward(self, x):
        y = cupy.empty_like(x)
        mask = cupy.empty(x.shape, dtype=bool)
        self._kernels["fastcnn_relu_forward"](x, y, mask)
        return y, mask

    def relu_backward(self, dy, mask):
        dx = cupy.empty_like(dy)
        self._kernels["fastcnn_relu_backward"](dy, mask, dx)
        return dx


def _on_device(a, name):
    if not isinstance(a, cupy.ndarray):
        raise TypeError(f"{name} is a {type(a).__module__}.{type(a).__name__}, but backend "
                        f"'cupy' computes on the GPU and never copies between host and "
                        f"device inside an op: move the data first with cupy.asarray({name})")
    return a


def _on_its_device(kernel, names):
    """kernel, run on the device of its first array, after checking that the
    arrays named in ``names`` (positions -> names) are CuPy arrays there."""
    def run(*args):
        for i, name in names.items():
            if args[i] is not None:
                _on_device(args[i], name)
        device = args[0].device
        for i, name in names.items():
            if args[i] is not None and args[i].device != device:
                raise ValueError(f"{name} is on {args[i].device}, but {names[0]} is on "
                                 f"{device}: move it with cupy.asarray inside "
                                 f"'with {device}:'")
        with device:
            return kernel(*args)
    run.__name__ = run.__qualname__ = kernel.__name__
    return run


def info():
    """{cupy_version, cuda_runtime, devices} for ``fastcnn info``."""
    runtime = cupy.cuda.runtime
    names = []
    for i in range(runtime.getDeviceCount()):
        name = runtime.getDeviceProperties(i)["name"]
        names.append(f"{i}: {name.decode() if isinstance(name, bytes) else name}")
    return {"cupy_version": cupy.__version__, "cuda_runtime": runtime.runtimeGetVersion(),
            "devices": ", ".join(names)}


_kernels = _cupy_kernels.Kernels(CupyEngine())
_ARRAYS = {"conv2d_forward": {0: "x", 1: "w", 2: "b"}}
for _name in _cupy_kernels.KERNELS:
    _first = "dy" if _name.endswith("_backward") else "x"
    globals()[_name] = _on_its_device(getattr(_kernels, _name),
                                      _ARRAYS.get(_name, {0: _first}))
