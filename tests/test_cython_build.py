"""The cython backend's own machinery: both column layouts, thread counts,
concurrent callers, build facts and the message when the extension is missing.

Agreement over the shared shape cases is in test_backends_agree.py; here the
adapter's internal choices are forced both ways, because the shared cases
alone would only ever take the branch their shapes select.
"""
import importlib.util
import os
import sys
import threading

import numpy as np
import pytest

import fastcnn
from fastcnn import ops

cy = pytest.importorskip("fastcnn.backends.cython",
                         reason="cython backend not built in this install")
from fastcnn.backends import _concurrent, _gemm_conv, loops  # noqa: E402
from fastcnn.testing import assert_close  # noqa: E402

TOL = {np.float32: 1e-4, np.float64: 1e-9}

# (N, C, H, W, F, KH, KW, stride, padding (PT, PB, PL, PR))
CASES = [
    (2, 1, 9, 8, 3, 3, 3, (1, 1), (1, 1, 1, 1)),
    (1, 3, 7, 9, 4, 2, 3, (2, 1), (0, 1, 2, 0)),      # asymmetric padding, even kernel
    (3, 2, 8, 7, 2, 3, 2, (3, 2), (2, 1, 1, 1)),      # stride does not divide
    (2, 2, 2, 3, 3, 3, 3, (1, 2), (2, 2, 1, 1)),      # kernel larger than the image
    (2, 4, 5, 5, 2, 1, 1, (1, 1), (0, 0, 0, 0)),      # 1x1 kernel
]


def _conv_all(mod, x, w, b, stride, padding, dy=None):
    (N, _, H, W), (F, _, KH, KW), (PT, PB, PL, PR) = x.shape, w.shape, padding
    y_shape = (N, F, (H + PT + PB - KH) // stride[0] + 1, (W + PL + PR - KW) // stride[1] + 1)
    y, saved = mod.conv2d_forward(x, w, b, stride, padding, (1, 1), 1, y_shape)
    if dy is None:
        dy = np.random.default_rng(7).standard_normal(y.shape).astype(x.dtype)
    return (y, *mod.conv2d_backward(dy, saved)), dy


def _inputs(case, dtype, seed=0):
    N, C, H, W, F, KH, KW, stride, padding = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F, C, KH, KW)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    return x, w, b, stride, padding


@pytest.mark.parametrize("path", ["batch", "per_image"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_both_column_layouts_match_loops(case, dtype, with_bias, path):
    x, w, b, stride, padding = _inputs(case, dtype)
    b = b if with_bias else None
    with _gemm_conv.forced_path(path):
        got, dy = _conv_all(cy, x, w, b, stride, padding)
    f64 = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
    want, _ = _conv_all(loops, f64(x), f64(w), f64(b), stride, padding, f64(dy))
    for name, g, e in zip(("y", "dx", "dw", "db"), got, want):
        assert g.dtype == dtype and g.shape == e.shape, name
        assert_close(g, e, TOL[dtype], name)


def _run_every_op(x, w):
    out = list(_conv_all(cy, x, w, None, (1, 1), (1, 1, 1, 1))[0])
    for op, k, s, p in (("max", (3, 3), (2, 2), (1, 1)), ("avg", (2, 3), (1, 2), (1, 1))):
        y, ctx = getattr(ops, f"{op}_pool2d_forward")(x, k, s, p, backend="cython")
        out += [y, getattr(ops, f"{op}_pool2d_backward")(np.cos(y), ctx)]
    return out


def test_thread_count_does_not_change_results(monkeypatch):
    # Every output element but the weight and bias gradients is computed by
    # one thread in a fixed order, so the thread count must not change a
    # single bit of them. dw and db are sums over the batch, taken per chunk
    # of the batch (one chunk per thread) and then added: a different
    # rounding order, so those agree to float32 rounding only.
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: fastcnn's thread count is capped at 1")
    monkeypatch.setattr(_concurrent, "WORK_PER_THREAD", 1)     # threads even for small work
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3, 11, 10)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    old = fastcnn.get_num_threads()
    try:
        fastcnn.set_num_threads(1)
        serial = _run_every_op(x, w)
        fastcnn.set_num_threads(2)
        _concurrent.most_threads = 0
        parallel = _run_every_op(x, w)
        assert _concurrent.most_threads == 2
    finally:
        fastcnn.set_num_threads(old)
    for i, (a, p) in enumerate(zip(serial, parallel)):
        if i in (2, 3):                        # conv dw, db
            np.testing.assert_allclose(a, p, rtol=1e-5, atol=1e-5)
            assert not np.array_equal(a, np.zeros_like(a))
        else:
            np.testing.assert_array_equal(a, p)


def test_concurrent_python_threads_get_correct_results():
    # The kernels release the GIL; callers on several threads must not share
    # buffers or scratch space.
    rng = np.random.default_rng(4)
    inputs = [(rng.standard_normal((3, 2, 12, 12)), rng.standard_normal((4, 2, 3, 3)))
              for _ in range(4)]
    expected = [_run_every_op(x, w) for x, w in inputs]
    results, errors = [None] * len(inputs), []

    def work(i):
        try:
            for _ in range(5):
                results[i] = _run_every_op(*inputs[i])
        except BaseException as e:  # reported below, on the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(results, expected):
        for g, e in zip(got, want):
            np.testing.assert_array_equal(g, e)


def test_build_info_reports_the_build():
    info = cy.build_info()
    assert set(info) == {"cython_version", "openmp", "debug_build", "threads",
                         "winograd_products"}
    assert info["openmp"] is False and isinstance(info["debug_build"], bool)
    assert info["winograd_products"] in ("numpy", "avx2+fma", "avx512")
    assert info["cython_version"][0].isdigit()


def test_the_extensions_link_no_openmp_runtime():
    # an OpenMP team does not survive fork; the loops are single-threaded
    import fastcnn._kernels.cy_conv as mod
    with open(mod.__file__, "rb") as f:
        blob = f.read()
    for name in (b"GOMP_parallel", b"omp_get_num_threads", b"__kmpc_fork_call"):
        assert name not in blob, name


def test_missing_extension_is_an_import_error_that_says_how_to_fix(monkeypatch):
    # Load a private copy of the adapter with the compiled module hidden, so
    # the registered backend module is left alone.
    import fastcnn._kernels
    monkeypatch.delattr(fastcnn._kernels, "cy_conv")
    monkeypatch.setitem(sys.modules, "fastcnn._kernels.cy_conv", None)
    spec = importlib.util.spec_from_file_location("_fastcnn_cython_copy", cy.__file__)
    with pytest.raises(ImportError, match=r"without its compiled Cython kernels.*pip install \."):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
