"""Every conv2d path of every backend on the shared GEMM driver
(``backends/_gemm_conv``), forced onto shapes that would otherwise choose
another, against the `loops` reference: forward and all three gradients.

The shared cases in cases.py only ever take the path their shapes select;
here ``_gemm_conv.forced_path`` takes each one on purpose, and each test
checks from the saved context that the path it asked for ran.
"""
import os

import numpy as np
import pytest

import fastcnn
from fastcnn import ops
from fastcnn.backend import get_module
from fastcnn.backends import _concurrent, _gemm_conv
from fastcnn.testing import assert_close

from cases import BACKENDS, TOL, case_id, conv_inputs


def _table(name):
    return getattr(get_module(name), "_ConvKernels", None)


DRIVEN = [b for b in BACKENDS if _table(b) is not None]
BACKEND_PATHS = [(b, p) for b in DRIVEN for p in _gemm_conv.PATHS
                 if p != "winograd" or _table(b).winograd is not None]

# (N, C, H, W, F, KH, KW, stride, padding, bias)
CASES = [
    (2, 3, 7, 9, 4, 3, 3, 1, 1, True),            # 3x3/1: Winograd applies; stride-1 columns
    (1, 2, 6, 5, 3, 4, 4, 1, "same", True),       # N=1, even kernel: pads (1, 2, 1, 2)
    (2, 2, 5, 6, 3, 3, 2, 1, "same", False),      # pads (1, 1, 0, 1)
    (3, 2, 9, 8, 3, 3, 2, (2, 3), (2, 1), False),  # strided, stride does not divide
    (2, 4, 11, 10, 5, 5, 5, 2, 2, True),
    (1, 3, 5, 7, 2, 3, 3, 1, (0, 2), True),       # N=1 Winograd, odd sizes, unequal padding
    (9, 5, 6, 11, 3, 3, 3, 1, "same", False),     # Winograd, odd tile counts
    (2, 3, 5, 6, 2, 3, 1, 1, (1, 0), True),       # stride 1 with no garbage column (WP = OW)
    (2, 2, 2, 3, 3, 3, 3, (1, 2), 2, True),       # kernel larger than the image
]


def _applies(path, case):
    N, C, H, W, F, KH, KW, stride, *_ = case
    return path != "winograd" or (KH == KW == 3 and stride == 1)


FORCED = [(b, p, case) for b, p in BACKEND_PATHS for case in CASES if _applies(p, case)]


def _reference(x, w, b, stride, padding, dy):
    f64 = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
    y, ctx = ops.conv2d_forward(f64(x), f64(w), f64(b), stride, padding, backend="loops")
    return (y, *ops.conv2d_backward(f64(dy), ctx))


def _run_forced(backend, path, x, w, b, stride, padding):
    with _gemm_conv.forced_path(path):
        y, ctx = ops.conv2d_forward(x, w, b, stride, padding, backend=backend)
    assert ctx.saved[0] == path
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(x.dtype)
    return (y, *ops.conv2d_backward(dy, ctx)), dy, ctx


def _check(got, want, dtype):
    for name, g, e in zip(("y", "dx", "dw", "db"), got, want):
        assert g.dtype == dtype, f"{name} dtype {g.dtype}"
        assert_close(g, e, TOL[dtype], name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("backend, path, case", FORCED,
                         ids=[f"{b}-{p}-{case_id(c)}" for b, p, c in FORCED])
def test_forced_path_matches_loops(backend, path, case, dtype):
    x, w, b, stride, padding = conv_inputs(case, dtype)
    got, dy, _ = _run_forced(backend, path, x, w, b, stride, padding)
    _check(got, _reference(x, w, b, stride, padding, dy), dtype)


@pytest.mark.parametrize("backend", [b for b in DRIVEN if _table(b).padded_input])
def test_stride1_batch_path_runs_over_garbage_columns(backend):
    x, w, b, stride, padding = conv_inputs(CASES[0], np.float64)
    got, dy, ctx = _run_forced(backend, "batch", x, w, b, stride, padding)
    g, (_, _, RP) = ctx.saved[1], ctx.saved[2]
    assert RP == g.WP > g.OW                        # WP - OW garbage columns per row
    _check(got, _reference(x, w, b, stride, padding, dy), np.float64)


CHUNKED = [bp for bp in BACKEND_PATHS if bp[1] != "batch"]


@pytest.mark.parametrize("backend, path", CHUNKED, ids=["-".join(bp) for bp in CHUNKED])
def test_batch_chunks_run_concurrently_and_sum_dw_db(backend, path, monkeypatch):
    # the per-image and Winograd paths split the batch into chunks that run
    # on several threads; dw and db are summed over the chunks
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: fastcnn's thread count is capped at 1")
    old = fastcnn.get_num_threads()
    fastcnn.set_num_threads(2)
    pieces = []
    real_run = _concurrent.run

    def spy(fn, items, *args):
        items = list(items)
        pieces.append(len(items))
        return real_run(fn, items, *args)

    monkeypatch.setattr(_concurrent, "run", spy)
    monkeypatch.setattr(_concurrent, "WORK_PER_THREAD", 1)
    case = (17, 4, 6, 5, 3, 3, 3, 1, 1, True)       # 17 images: two Winograd chunks
    x, w, b, stride, padding = conv_inputs(case, np.float64)
    try:
        got, dy, _ = _run_forced(backend, path, x, w, b, stride, padding)
    finally:
        fastcnn.set_num_threads(old)
    assert pieces and min(pieces) >= 2
    _check(got, _reference(x, w, b, stride, padding, dy), np.float64)


def _geometry(N, C, KH, KW, stride):
    return _gemm_conv.Geometry(N, C, 14, 14, 8, KH, KW, *stride, 1, 1, 1, 1, 14, 14)


@pytest.mark.parametrize("backend", DRIVEN)
def test_paths_chosen_by_shape(backend):
    k = _table(backend)
    wino = "winograd" if k.winograd is not None else "batch"
    assert _gemm_conv.PER_IMAGE_MAX_TAPS == 32
    assert _gemm_conv.choose_path(k, _geometry(64, 1, 3, 3, (1, 1))) == "per_image"   # K=9
    assert _gemm_conv.choose_path(k, _geometry(64, 2, 4, 4, (1, 1))) == "per_image"   # K=32
    assert _gemm_conv.choose_path(k, _geometry(64, 4, 3, 3, (1, 1))) == wino          # K=36
    assert _gemm_conv.choose_path(k, _geometry(64, 32, 3, 3, (2, 2))) == "batch"
    assert _gemm_conv.choose_path(k, _geometry(64, 32, 5, 5, (1, 1))) == "batch"
    if k.winograd is not None:
        small = k.winograd.MIN_BATCH - 1
        assert _gemm_conv.choose_path(k, _geometry(small, 32, 3, 3, (1, 1))) == "batch"


@pytest.mark.parametrize("backend", DRIVEN)
def test_forcing_a_path_that_cannot_run_is_an_error(backend):
    x, w, b, _, _ = conv_inputs(CASES[0], np.float64)
    with _gemm_conv.forced_path("winograd"), pytest.raises(ValueError, match="winograd"):
        ops.conv2d_forward(x, w, b, 2, 1, backend=backend)
    with pytest.raises(ValueError, match="path must be one of"):
        with _gemm_conv.forced_path("direct"):
            pass
