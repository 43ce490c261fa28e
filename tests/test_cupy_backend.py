"""Backend 'cupy': absent with its reason where it cannot run, imported by
nothing else, and its arithmetic checked against ``loops`` and PyTorch.

The arithmetic runs four ways, each registered for these tests only:

* ``cupy-mirror``: the backend's kernels (``_cupy_kernels``) over the NumPy
  engine (``_cupy_mirror``): the index tables, GEMM layout, groups,
  dilation and divisors, on any machine;
* ``cupy-c``: the same kernels over the backend's CUDA loop bodies
  (``_cupy_cuda``) compiled as C with the host compiler: the device code
  itself, on CPU (skipped without a C compiler);
* ``cupy-fake``: ``backends/cupy.py`` itself, imported over a host stand-in
  for CuPy whose ElementwiseKernels are those C builds: the launches' argument
  order, the table cache, the device wrapper (skipped without a C compiler);
* ``cupy-gpu``: the real backend on the GPU (skipped, with the reason,
  without CuPy and a device).

The three host ways and ``cupy-gpu`` see NumPy in and out through an adapter
that moves the data, so the suite's NumPy cases run unchanged. Only CuPy
itself (NVRTC compiling the bodies, the launches, cuBLAS, device memory) is
left to ``cupy-gpu`` and benchmarks/gpu_check.sh.
"""
import ctypes
import importlib
import re
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

import fastcnn
from fastcnn import backend as registry, ops
from fastcnn.backends import _cupy_cuda, _cupy_kernels, _cupy_tables
from fastcnn.backends._cupy_mirror import NumpyEngine

from cases import CONV_CASES, POOL_CASES, TOL, case_id, conv_inputs, pool_inputs

try:
    import torch
    import torch.nn.functional as F
except ImportError:      # the torch comparisons skip; everything else runs
    torch = None

GPU = "cupy" in fastcnn.available_backends()
GPU_REASON = fastcnn.unavailable_backends().get("cupy", "")
CC = shutil.which("cc") or shutil.which("gcc")


# ------------------------------------------------------------------ absent cleanly

def _python(code):
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_import_fastcnn_and_the_ops_import_no_cupy():
    out = _python("import sys, numpy as np, fastcnn; from fastcnn import ops; "
                  "ops.relu_forward(np.ones(3), backend='loops'); "
                  "import fastcnn.backends._cupy_mirror, fastcnn.backends._cupy_tables; "
                  "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cupy' "
                  "or m == 'fastcnn.backends.cupy'))")
    assert out == "[]"


def test_the_registry_lists_cupy_only_where_it_runs():
    out = _python("import sys, fastcnn; a = fastcnn.available_backends(); "
                  "print('cupy' in a, 'cupy' in sys.modules, "
                  "fastcnn.unavailable_backends().get('cupy', ''))")
    listed, imported, reason = out.split(" ", 2)
    assert "cupy" in fastcnn.registered_backends()
    assert listed == str(GPU)
    if not GPU:
        assert reason.startswith("ImportError: CuPy ") and reason == GPU_REASON
        if importlib.util.find_spec("cupy") is None:
            assert imported == "False"


def _import_backend(monkeypatch, fake_cupy):
    """Import fastcnn.backends.cupy afresh with ``sys.modules['cupy'] = fake_cupy``."""
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.delitem(sys.modules, "fastcnn.backends.cupy", raising=False)
    return importlib.import_module("fastcnn.backends.cupy")


def _fake_cupy(count=1, error=None):
    def device_count():
        if error is not None:
            raise error
        return count
    runtime = types.SimpleNamespace(getDeviceCount=device_count)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime),
                                 zeros=lambda n: None)


@pytest.mark.parametrize("fake, reason", [
    (None, r"CuPy is not installed .*pip install 'fastcnn\[gpu\]'"),
    (_fake_cupy(error=RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")),
     "CuPy is installed but no CUDA device is usable: RuntimeError: cudaErrorNoDevice"),
    (_fake_cupy(count=0), "CuPy is installed but finds no CUDA device"),
], ids=["no-cupy", "no-driver", "no-device"])
def test_without_cupy_or_a_device_the_import_fails_with_the_reason(monkeypatch, fake, reason):
    with pytest.raises(ImportError, match=reason):
        _import_backend(monkeypatch, fake)


def test_an_absent_cupy_is_a_clear_error_everywhere(monkeypatch):
    monkeypatch.setattr(registry, "_loaded", {k: v for k, v in registry._loaded.items()
                                              if k != "cupy"})
    monkeypatch.setattr(registry, "_failed", {})
    monkeypatch.setitem(sys.modules, "cupy", None)          # import cupy -> ImportError
    monkeypatch.delitem(sys.modules, "fastcnn.backends.cupy", raising=False)
    assert "cupy" not in fastcnn.available_backends()
    reason = fastcnn.unavailable_backends()["cupy"]
    assert reason.startswith("ImportError: CuPy is not installed")
    with pytest.raises(ValueError, match=r"backend 'cupy' is not available on this install "
                                         r"\(ImportError: CuPy is not installed"):
        with fastcnn.use_backend("cupy"):
            pass
    with pytest.raises(ValueError, match="backend 'cupy' is not available"):
        ops.relu_forward(np.ones(3), backend="cupy")


@pytest.mark.skipif(GPU, reason="CuPy runs here: the CLI takes --backend cupy")
def test_the_cli_refuses_an_absent_cupy_with_the_reason():
    r = subprocess.run([sys.executable, "-m", "fastcnn", "train", "--backend", "cupy",
                        "--epochs", "1"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "--backend: backend 'cupy' is not available on this install" in r.stderr
    assert "CuPy" in r.stderr


# ------------------------------------------------------------------ the engines

def _c_source(spec):
    """spec's ElementwiseKernel as a C function looping i over n: raw params
    are pointers, elementwise ones pointer[i] (a macro), scalars values."""
    params, macros = [], []
    for text, out in ((spec.in_params, False), (spec.out_params, True)):
        for p in text.split(","):
            words = p.split()
            raw = words[0] == "raw"
            typ, name = words[-2], words[-1]
            ctype = {"int64": "long long"}.get(typ, typ)      # T, I, A: typedefs
            if raw:
                params.append(f"const {ctype}* {name}")
            elif typ == "int64":
                params.append(f"{ctype} {name}")
            else:
                params.append(f"{'' if out else 'const '}{ctype}* {name}_")
                macros.append(name)
    define = "".join(f"#define {m} ({m}_[i])\n" for m in macros)
    undef = "".join(f"#undef {m}\n" for m in macros)
    return (f"void {spec.name}({', '.join(params)}, long long n) {{\n"
            f"  for (ptrdiff_t i = 0; i < n; ++i) {{\n{define}{spec.operation}\n{undef}  }}\n}}\n")


@pytest.fixture(scope="module")
def c_kernels(tmp_path_factory):
    """{(T, I): ctypes library of every _cupy_cuda spec compiled as C}."""
    if CC is None:
        pytest.skip("no C compiler (cc) to compile the CUDA loop bodies on the host")
    libs = {}
    folder = tmp_path_factory.mktemp("cuda_as_c")
    for T in ("float", "double"):
        for I in ("int", "long long"):
            src = folder / f"k_{T}_{I.replace(' ', '_')}.c"
            src.write_text("#include <stddef.h>\n#include <stdbool.h>\n"
                           f"typedef {T} T;\ntypedef {I} I;\ntypedef {I} A;\n"
                           + "".join(_c_source(s) for s in _cupy_cuda.SPECS))
            lib = src.with_suffix(".so")
            subprocess.run([CC, "-std=c99", "-O1", "-Wall", "-Werror", "-shared", "-fPIC",
                            "-o", str(lib), str(src)], check=True)
            libs[(T, I)] = ctypes.CDLL(str(lib))
    return libs


class CEngine(NumpyEngine):
    """The NumPy engine with its gathers and relu replaced by the CUDA bodies as C."""

    def __init__(self, libs):
        self.libs = libs

    def _call(self, name, arrays, scalars, outs):
        T = "float" if outs[0].dtype == np.float32 else "double"
        index = [a for a in arrays if a.dtype.kind == "i"]
        I = "int" if not index or index[0].dtype == np.int32 else "long long"
        args = [a.ctypes.data_as(ctypes.c_void_p) for a in arrays]
        args += [ctypes.c_longlong(s) for s in scalars]
        args += [o.ctypes.data_as(ctypes.c_void_p) for o in outs]
        getattr(self.libs[(T, I)], name)(*args, ctypes.c_longlong(outs[0].size))

    def gather_sum(self, src, table):
        (B, S), (R, T) = src.shape, table.shape
        out = np.empty((B, R), src.dtype)
        self._call("fastcnn_gather_sum", [src, table], [S, R, T], [out])
        return out

    def window_max(self, src, table):
        (B, S), (R, T) = src.shape, table.shape
        val, arg = np.empty((B, R), src.dtype), np.empty((B, R), table.dtype)
        self._call("fastcnn_window_max", [src, table], [S, R, T], [val, arg])
        return val, arg

    def route_sum(self, dy, arg, inverse):
        (B, R), (S, T) = dy.shape, inverse.shape
        assert arg.dtype == inverse.dtype       # the C build has one index type
        dx = np.empty((B, S), dy.dtype)
        self._call("fastcnn_route_sum", [dy, arg, inverse], [S, R, T], [dx])
        return dx

    def relu_forward(self, x):
        y, m = np.empty_like(x), np.empty(x.shape, bool)
        self._call("fastcnn_relu_forward", [x], [], [y, m])
        return y, m

    def relu_backward(self, dy, m):
        dx = np.empty_like(dy)
        self._call("fastcnn_relu_backward", [dy, m], [], [dx])
        return dx


def _hosted(cupy, gpu, name):
    """Backend module ``gpu`` (CuPy arrays in and out) behind NumPy in and out:
    the data moves here, in the test, so the suite's NumPy cases run on it."""
    mod = types.ModuleType(name)

    def host(v):
        if isinstance(v, tuple):
            return tuple(host(a) for a in v)
        return cupy.asnumpy(v) if isinstance(v, cupy.ndarray) else v

    def wrap(kernel_name):
        kernel = getattr(gpu, kernel_name)

        def run(*args):
            moved = [cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
            result = kernel(*moved)
            if kernel_name.endswith("_forward"):
                return host(result[0]), result[1]      # saved stays on the device
            return host(result)
        return run
    for kernel_name in _cupy_kernels.KERNELS:
        setattr(mod, kernel_name, wrap(kernel_name))
    return mod


class _FakeDevice:
    def __init__(self, i):
        self.id = i

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __eq__(self, other):
        return isinstance(other, _FakeDevice) and other.id == self.id

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


class _FakeArray(np.ndarray):
    """A host array that calls itself a CuPy array on device 0."""

    @property
    def device(self):
        return _FakeDevice(0)


def _fake_cupy(libs):
    """Just enough of CuPy for backends/cupy.py, on the host: its
    ElementwiseKernels are the _cupy_cuda bodies compiled as C (``libs``)."""
    cp = types.ModuleType("cupy")
    cp.__version__ = "host stand-in"
    cp.ndarray = _FakeArray
    cp.asarray = lambda a: np.asarray(a, order="C").view(_FakeArray)
    cp.asnumpy = lambda a: np.asarray(a).copy()
    cp.empty = lambda shape, dtype: np.empty(shape, dtype).view(_FakeArray)
    cp.empty_like = lambda a: np.empty_like(np.asarray(a)).view(_FakeArray)
    cp.zeros = lambda n: np.zeros(n).view(_FakeArray)
    cp.matmul = np.matmul

    class ElementwiseKernel:
        def __init__(self, in_params, out_params, operation, name):
            self.name = name

        def __call__(self, *args):
            arrays = [a for a in args if isinstance(a, np.ndarray)]
            T = "float" if any(a.dtype == np.float32 for a in arrays) else "double"
            I = "long long" if any(a.dtype == np.int64 for a in arrays) else "int"
            c = [a.ctypes.data_as(ctypes.c_void_p) if isinstance(a, np.ndarray)
                 else ctypes.c_longlong(a) for a in args]
            getattr(libs[(T, I)], self.name)(*c, ctypes.c_longlong(args[-1].size))

    cp.ElementwiseKernel = ElementwiseKernel
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, getDevice=lambda: 0,
                                    runtimeGetVersion=lambda: 12000,
                                    getDeviceProperties=lambda i: {"name": b"host"})
    cp.cuda = types.SimpleNamespace(runtime=runtime)
    return cp


def _fake_cupy_backend(libs):
    """backends/cupy.py itself, imported over the fake CuPy (then forgotten)."""
    saved = {k: sys.modules.get(k) for k in ("cupy", "fastcnn.backends.cupy")}
    cp = sys.modules["cupy"] = _fake_cupy(libs)
    sys.modules.pop("fastcnn.backends.cupy", None)
    try:
        return cp, importlib.import_module("fastcnn.backends.cupy")
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler (cc) to compile the CUDA "
                                                 "loop bodies on the host")
ENGINES = ["cupy-mirror", pytest.param("cupy-c", marks=needs_cc),
           pytest.param("cupy-fake", marks=needs_cc),
           pytest.param("cupy-gpu", marks=pytest.mark.skipif(
               not GPU, reason=f"backend 'cupy' is not available here: {GPU_REASON}"))]


@pytest.fixture(scope="module")
def _registered(request):
    """Register the engines as backends for this module's tests."""
    names = {"cupy-mirror": "fastcnn.backends._cupy_mirror"}
    modules = {}
    if CC is not None:
        libs = request.getfixturevalue("c_kernels")
        c_mod = types.ModuleType("fastcnn_test_cupy_c")
        _cupy_kernels.bind(CEngine(libs), c_mod.__dict__)
        modules["cupy-c"] = c_mod
        modules["cupy-fake"] = _hosted(*_fake_cupy_backend(libs), "fastcnn_test_cupy_fake")
    if GPU:
        import cupy
        modules["cupy-gpu"] = _hosted(cupy, registry.get_module("cupy"),
                                      "fastcnn_test_cupy_gpu")
    for name, mod in modules.items():
        sys.modules[mod.__name__] = mod
        names[name] = mod.__name__
    registry._MODULES.update(names)
    yield
    for name in names:
        registry._MODULES.pop(name, None)
        registry._loaded.pop(name, None)
        registry._failed.pop(name, None)
    for mod in modules.values():
        sys.modules.pop(mod.__name__, None)


@pytest.fixture(params=ENGINES)
def engine(request, _registered):
    return request.param


# ------------------------------------------------------------------ against loops

def _close(got, want, dtype, what):
    np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype], err_msg=what)
    assert got.dtype == want.dtype and got.shape == want.shape, what


def _grad(shape, dtype, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CONV_CASES, ids=case_id)
def test_conv2d_agrees_with_loops(engine, case, dtype):
    x, w, b, stride, padding = conv_inputs(case, dtype)
    y0, c0 = ops.conv2d_forward(x, w, b, stride, padding, backend="loops")
    y1, c1 = ops.conv2d_forward(x, w, b, stride, padding, backend=engine)
    _close(y1, y0, dtype, "y")
    dy = _grad(y0.shape, dtype)
    for name, got, want in zip(("dx", "dw", "db"), ops.conv2d_backward(dy, c1),
                               ops.conv2d_backward(dy, c0)):
        _close(got, want, dtype, name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", POOL_CASES, ids=case_id)
@pytest.mark.parametrize("op, extra", [
    ("max_pool2d", {}), ("max_pool2d", {"ceil_mode": True}),
    ("max_pool2d", {"dilation": 2}), ("max_pool2d", {"dilation": (1, 2), "ceil_mode": True}),
    ("avg_pool2d", {}), ("avg_pool2d", {"ceil_mode": True}),
    ("avg_pool2d", {"count_include_pad": False}),
    ("avg_pool2d", {"ceil_mode": True, "count_include_pad": False}),
    ("avg_pool2d", {"divisor_override": 3})], ids=str)
def test_pooling_agrees_with_loops(engine, case, dtype, op, extra):
    x, k, s, p = pool_inputs(case, dtype)
    fwd, bwd = getattr(ops, op + "_forward"), getattr(ops, op + "_backward")
    try:
        y0, c0 = fwd(x, k, s, p, **extra, backend="loops")
    except ValueError as e:      # this case cannot take the variant (too small when dilated)
        with pytest.raises(ValueError, match=re.escape(str(e))):
            fwd(x, k, s, p, **extra, backend=engine)
        return
    y1, c1 = fwd(x, k, s, p, **extra, backend=engine)
    _close(y1, y0, dtype, "y")
    dy = _grad(y0.shape, dtype)
    _close(bwd(dy, c1), bwd(dy, c0), dtype, "dx")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, out", [((2, 3, 7, 9), (3, 4)), ((1, 2, 5, 5), 1),
                                        ((2, 1, 4, 6), (7, 5)), ((1, 3, 10, 3), (4, None))],
                         ids=str)
@pytest.mark.parametrize("op", ["adaptive_avg_pool2d", "adaptive_max_pool2d"])
def test_adaptive_pooling_agrees_with_loops(engine, shape, out, dtype, op):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    fwd, bwd = getattr(ops, op + "_forward"), getattr(ops, op + "_backward")
    y0, c0 = fwd(x, out, backend="loops")
    y1, c1 = fwd(x, out, backend=engine)
    _close(y1, y0, dtype, "y")
    dy = _grad(y0.shape, dtype)
    _close(bwd(dy, c1), bwd(dy, c0), dtype, "dx")


def _ties_nan_inf():
    """4x4 planes that tell max-pool implementations apart: ties, NaNs, -inf."""
    planes = [np.ones((4, 4)),                                     # all tie
              np.array([[1, 5, 5, 0], [5, 2, 0, 5], [0, 0, 3, 3], [3, 3, 0, 0]], float),
              np.full((4, 4), -np.inf),                            # only the padding's -inf
              np.arange(16.0).reshape(4, 4)]
    nan = np.arange(16.0).reshape(4, 4)
    nan[1, 1] = nan[2, 3] = nan[0, 3] = np.nan                     # first NaN wins
    planes.append(nan)
    return np.stack(planes)[None]                                  # (1, 5, 4, 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("args", [(2, 2, 0), (3, 1, 1), (2, 1, 1), (3, 2, 1)], ids=str)
def test_max_pool_ties_nan_and_minus_inf_padding_as_loops(engine, args, dtype):
    x = _ties_nan_inf().astype(dtype)
    for fwd, bwd, kw in ((ops.max_pool2d_forward, ops.max_pool2d_backward, {}),
                         (ops.adaptive_max_pool2d_forward, ops.adaptive_max_pool2d_backward,
                          None)):
        call = (lambda b: fwd(x, *args, backend=b)) if kw is not None else \
            (lambda b: fwd(x, (3, 2), backend=b))
        (y0, c0), (y1, c1) = call("loops"), call(engine)
        np.testing.assert_array_equal(y1, y0)                     # NaN where loops has NaN
        dy = _grad(y0.shape, dtype)
        np.testing.assert_array_equal(bwd(dy, c1), bwd(dy, c0))   # the same element chosen


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(), (9,), (2, 3, 4, 5)], ids=str)
def test_relu_is_loops_bit_for_bit(engine, shape, dtype):
    special = np.array([0.0, -0.0, 1e-30, -1e-30, np.inf, -np.inf, np.nan, 2.5, -2.5])
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    x.reshape(-1)[:min(x.size, 9)] = special[:min(x.size, 9)]
    dy = _grad(shape, dtype)
    dy.reshape(-1)[:min(dy.size, 3)] = [np.inf, -np.inf, np.nan][:min(dy.size, 3)]
    (y0, c0), (y1, c1) = ops.relu_forward(x, backend="loops"), ops.relu_forward(x, backend=engine)
    dx0, dx1 = ops.relu_backward(dy, c0), ops.relu_backward(dy, c1)
    for got, want in ((y1, y0), (dx1, dx0)):
        assert type(got) is np.ndarray and got.shape == shape and got.dtype == dtype
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


def test_backward_uses_what_forward_saw(engine):
    x, w, b, stride, padding = conv_inputs(CONV_CASES[0], np.float64)
    y, ctx = ops.conv2d_forward(x, w, b, stride, padding, backend=engine)
    dy = _grad(y.shape, np.float64)
    want = ops.conv2d_backward(dy, ctx)
    y2, ctx2 = ops.conv2d_forward(x, w, b, stride, padding, backend=engine)
    x += 1.0                    # the caller changes its arrays between forward and backward
    w *= 2.0
    for got, ref in zip(ops.conv2d_backward(dy, ctx2), want):
        np.testing.assert_array_equal(got, ref)


@needs_cc
def test_the_backend_refuses_host_arrays(c_kernels):
    cp, gpu = _fake_cupy_backend(c_kernels)
    with pytest.raises(TypeError, match=r"x is a numpy.ndarray, but backend 'cupy' computes "
                                        r"on the GPU .* cupy\.asarray\(x\)"):
        gpu.relu_forward(np.ones(3))
    with pytest.raises(TypeError, match=r"w is a numpy.ndarray, .* cupy\.asarray\(w\)"):
        gpu.conv2d_forward(cp.asarray(np.ones((1, 1, 3, 3))), np.ones((1, 1, 1, 1)), None,
                           (1, 1), (0, 0, 0, 0), (1, 1), 1, (1, 1, 3, 3))
    assert gpu.info() == {"cupy_version": "host stand-in", "cuda_runtime": 12000,
                          "devices": "0: host"}


# ------------------------------------------------------------------ dilation and groups

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")

# (N, C, H, W, F, KH, KW, stride, padding, dilation, groups)
GROUPED = [(2, 4, 9, 8, 6, 3, 3, 1, 1, 1, 2),
           (2, 6, 8, 8, 6, 3, 3, 2, 1, 1, 6),          # depthwise, stride 2
           (1, 4, 11, 10, 4, 3, 2, (1, 2), (2, 1), 2, 1),
           (2, 6, 10, 9, 9, 3, 3, 1, "same", (2, 3), 3),
           (2, 2, 7, 7, 4, 2, 2, 1, "same", 2, 2)]    # even kernel, dilated 'same'


@needs_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", GROUPED, ids=case_id)
def test_conv2d_dilation_and_groups_against_torch(engine, case, dtype):
    N, C, H, W, Fo, KH, KW, stride, padding, dilation, groups = case
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((Fo, C // groups, KH, KW)).astype(dtype)
    b = rng.standard_normal(Fo).astype(dtype)
    y, ctx = ops.conv2d_forward(x, w, b, stride, padding, dilation, groups, backend=engine)
    dy = _grad(y.shape, dtype)
    dx, dw, db = ops.conv2d_backward(dy, ctx)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = F.conv2d(tx, tw, tb, stride, padding, dilation, groups)
    ty.backward(torch.tensor(dy))
    tol = 10 * TOL[dtype]
    for got, want in ((y, ty), (dx, tx.grad), (dw, tw.grad), (db, tb.grad)):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=tol, atol=tol)


# ------------------------------------------------------------------ the tables by hand

def test_tables_by_hand():
    # 1-D: size 5, kernel 3, stride 2, padding 1 -> windows [-1, 2), [1, 4), [3, 6)
    np.testing.assert_array_equal(_cupy_tables.axis_taps(5, 3, 2, 1, 1, 3),
                                  [[-1, 0, 1], [1, 2, 3], [3, 4, -1]])
    # adaptive 5 -> 3: rows [0, 2), [1, 4), [3, 5)
    np.testing.assert_array_equal(_cupy_tables.adaptive_taps(5, 3),
                                  [[0, 1, -1], [1, 2, 3], [3, 4, -1]])
    # plane 1x5: element 1 is read by window 0 and window 1, element 0 by window 0 only
    inv = _cupy_tables.pool_inverse(1, 5, (1, 3), (1, 2), (0, 1), (1, 1), (1, 3))
    assert [sorted(v for v in row if v >= 0) for row in inv] == [[0], [0, 1], [1], [1, 2], [2]]
    # col2im reads the im2col entries that wrote each element: a permutation's inverse
    geometry = (4, 5, (3, 2), (1, 2), (1, 0, 1, 1), (2, 1), (2, 3))
    cols = _cupy_tables.im2col(*geometry)[:, 0]
    back = _cupy_tables.col2im(*geometry)
    for e in range(4 * 5):
        assert sorted(v for v in back[e] if v >= 0) == sorted(np.flatnonzero(cols == e))
    assert _cupy_tables.im2col(*geometry).dtype == np.int32
    assert _cupy_tables.index_dtype(2**31) == np.int64


def test_the_c_build_reads_int32_and_int64_tables(c_kernels):
    e = CEngine(c_kernels)
    src = np.random.default_rng(0).standard_normal((3, 7))
    table = np.array([[0, -1, 6], [2, 2, -1]])
    for dtype in (np.int32, np.int64):
        t = table.astype(dtype)
        np.testing.assert_allclose(e.gather_sum(src, t), NumpyEngine().gather_sum(src, t))
        for got, want in zip(e.window_max(src, t), NumpyEngine.window_max(src, t)):
            np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------ on the GPU itself

gpu_only = pytest.mark.skipif(not GPU, reason=f"backend 'cupy' is not available here: "
                                               f"{GPU_REASON}")


def _device_inputs():
    import cupy
    x, w, b, _, _ = conv_inputs(CONV_CASES[0], np.float32)
    return cupy, x, w, b, cupy.asarray(x), cupy.asarray(w), cupy.asarray(b)


@gpu_only
def test_cupy_arrays_in_cupy_arrays_out_on_the_same_device():
    cupy, x, w, b, xd, wd, bd = _device_inputs()
    k = registry.get_module("cupy")
    y, saved = k.conv2d_forward(xd, wd, bd, (1, 1), (1, 1, 1, 1), (1, 1), 1, (2, 4, 7, 7))
    grads = k.conv2d_backward(cupy.ones_like(y), saved)
    for a in (y, *grads):
        assert isinstance(a, cupy.ndarray) and a.device == xd.device and a.dtype == np.float32
    want, _ = ops.conv2d_forward(x, w, b, 1, 1, backend="loops")
    np.testing.assert_allclose(cupy.asnumpy(y), want, rtol=1e-4, atol=1e-4)


@gpu_only
def test_numpy_inputs_are_refused_with_how_to_move_them():
    k = registry.get_module("cupy")
    with pytest.raises(TypeError, match=r"move the data first with cupy\.asarray\(x\)"):
        k.relu_forward(np.ones(3, np.float32))
    with pytest.raises(TypeError, match=r"cupy\.asarray\(x\)"):
        ops.relu_forward(np.ones(3, np.float32), backend="cupy")


@gpu_only
def test_gradients_do_not_vary_from_run_to_run():
    # gather-style col2im and max-pool backward: no atomics, a fixed order of sums
    cupy, *_ = _device_inputs()
    k = registry.get_module("cupy")
    x = cupy.asarray(np.random.default_rng(0).standard_normal((8, 16, 20, 20), np.float32))
    w = cupy.asarray(np.random.default_rng(1).standard_normal((16, 16, 3, 3), np.float32))
    runs = []
    for _ in range(2):
        y, saved = k.conv2d_forward(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, (8, 16, 20, 20))
        p, psaved = k.max_pool2d_forward(y, (3, 3), (1, 1), (1, 1), (1, 1), (20, 20))
        dx, _, _ = k.conv2d_backward(k.max_pool2d_backward(cupy.ones_like(p), psaved), saved)
        runs.append(cupy.asnumpy(dx))
    np.testing.assert_array_equal(runs[0], runs[1])


@gpu_only
def test_the_ops_take_and_return_cupy_arrays():
    # needs fastcnn.ops to accept cupy.ndarray for backend 'cupy' (issue 15's door patch)
    cupy, x, w, b, xd, wd, bd = _device_inputs()
    y, ctx = ops.conv2d_forward(xd, wd, bd, 1, 1, backend="cupy")
    dx, dw, db = ops.conv2d_backward(cupy.ones_like(y), ctx)
    want, wctx = ops.conv2d_forward(x, w, b, 1, 1, backend="loops")
    wdx, wdw, wdb = ops.conv2d_backward(np.ones_like(want), wctx)
    for got, ref in ((y, want), (dx, wdx), (dw, wdw), (db, wdb)):
        assert isinstance(got, cupy.ndarray)
        np.testing.assert_allclose(cupy.asnumpy(got), ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ the door, on any machine
# fastcnn.ops with arrays "on the GPU", stood in for by a NumPy subclass that a
# fake cupy module names as its ndarray, and the mirror's kernels as backend
# 'cupy'. Runs once fastcnn.ops knows array modules (issue 15's door patch).

from fastcnn import _shapes  # noqa: E402

door_patched = pytest.mark.skipif(
    not hasattr(_shapes, "array_module"),
    reason="fastcnn.ops does not take cupy arrays yet (issue 15's door patch: "
           "_shapes.array_module)")


class _OnDevice0(np.ndarray):
    device = 0


class _OnDevice1(np.ndarray):
    device = 1


@pytest.fixture
def on_device(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(ndarray=(_OnDevice0,
                                                                           _OnDevice1)))
    fake = types.ModuleType("fastcnn_test_fake_cupy")
    _cupy_kernels.bind(NumpyEngine(), fake.__dict__)
    monkeypatch.setitem(registry._loaded, "cupy", fake)
    return lambda a, device=0: a.view(_OnDevice1 if device else _OnDevice0)


@door_patched
def test_the_door_takes_device_arrays_to_the_device_backend(on_device):
    x, w, b, stride, padding = conv_inputs(CONV_CASES[0], np.float64)
    y, ctx = ops.conv2d_forward(on_device(x), on_device(w), on_device(b), stride, padding,
                                backend="cupy")
    want, wctx = ops.conv2d_forward(x, w, b, stride, padding, backend="loops")
    np.testing.assert_allclose(y, want, rtol=1e-9, atol=1e-9)
    dy = _grad(y.shape, np.float64)
    for got, ref in zip(ops.conv2d_backward(on_device(dy), ctx), ops.conv2d_backward(dy, wctx)):
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)
    # auto never moves data: device arrays go to the device backend, host ones never do
    assert ops.relu_forward(on_device(x), backend="auto")[1].backend == "cupy"
    assert ops.relu_forward(x, backend="auto")[1].backend != "cupy"


@door_patched
def test_the_door_refuses_data_in_the_wrong_place(on_device):
    x, w, b, stride, padding = conv_inputs(CONV_CASES[0], np.float64)
    with pytest.raises(TypeError, match=r"x is a numpy.ndarray, but backend 'cupy' computes "
                                        r"on the GPU .* cupy\.asarray\(x\)"):
        ops.conv2d_forward(x, w, b, stride, padding, backend="cupy")
    with pytest.raises(TypeError, match=r"x is a cupy.ndarray, but backend 'im2col' computes "
                                        r"on the CPU"):
        ops.max_pool2d_forward(on_device(x), 2, backend="im2col")
    with pytest.raises(TypeError, match=r"w is a numpy.ndarray but x is a cupy.ndarray"):
        ops.conv2d_forward(on_device(x), w, None, backend="cupy")
    with pytest.raises(ValueError, match="w is on 1 but x is on 0"):
        ops.conv2d_forward(on_device(x), on_device(w, 1), None, backend="cupy")
    y, ctx = ops.relu_forward(on_device(x), backend="cupy")
    with pytest.raises(TypeError, match=r"dy is a numpy.ndarray, but backend 'cupy'"):
        ops.relu_backward(np.ones_like(x), ctx)
