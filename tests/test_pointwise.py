"""The compiled backends' pointwise path (1x1, unpadded: backends/_gemm_conv)
in both of its layouts of the saved input - image by image, and channel by
channel for maps under POINTWISE_CHANNEL_MAJOR_BELOW pixels - against the
loops backend: forward and backward, plain and fused with ReLU (whose mask
the backward applies chunk by chunk), strided, grouped, batches split into
several chunks, float64 to 1e-9 and float32 to 1e-4.

Not here: the choice of the path (test_conv_paths), other paths.
"""
import os

import numpy as np
import pytest

import fastcnn
from fastcnn import ops
from fastcnn.backends import _concurrent, _gemm_conv

from cases import FAST_BACKENDS, TOL

# (N, C, H, W, F, stride, groups)
CASES = [
    (3, 5, 6, 7, 4, 1, 1),
    (2, 4, 7, 9, 6, (2, 3), 2),
    (5, 6, 9, 10, 4, 2, 2),
    (4, 3, 12, 11, 5, 1, 1),      # 132 pixels: image-major unless forced
    (9, 8, 4, 4, 16, 1, 4),
]
LAYOUTS = {"image_major": 0, "channel_major": 1 << 30}
COMPILED = [b for b in ("cython", "numba") if b in FAST_BACKENDS]


@pytest.fixture(params=list(LAYOUTS))
def layout(request, monkeypatch):
    monkeypatch.setattr(_gemm_conv, "POINTWISE_CHANNEL_MAJOR_BELOW", LAYOUTS[request.param])
    return request.param


def _problem(case, dtype, seed=0):
    N, C, H, W, F, stride, groups = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F, C // groups, 1, 1)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    return x, w, b, stride, groups


def _run(backend, x, w, b, stride, groups, relu, seed=1):
    fwd = ops.conv2d_relu_forward if relu else ops.conv2d_forward
    bwd = ops.conv2d_relu_backward if relu else ops.conv2d_backward
    y, ctx = fwd(x, w, b, stride, 0, 1, groups, backend=backend)
    y = y.copy()
    dy = np.random.default_rng(seed).standard_normal(y.shape).astype(x.dtype)
    return (y, *(a.copy() for a in bwd(dy, ctx)))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", COMPILED)
def test_both_layouts_against_loops(backend, case, dtype, relu, layout):
    x, w, b, stride, groups = _problem(case, dtype)
    want = _run("loops", x, w, b, stride, groups, relu)
    with _gemm_conv.forced_path("pointwise"):
        got = _run(backend, x, w, b, stride, groups, relu)
    for name, g, r in zip(("y", "dx", "dw", "db"), got, want):
        scale = max(1.0, float(np.abs(r).max()))
        np.testing.assert_allclose(g, r, rtol=TOL[dtype], atol=TOL[dtype] * scale,
                                   err_msg=name)


@pytest.mark.parametrize("backend", COMPILED)
def test_chunks_on_several_threads(backend, layout, monkeypatch):
    """Two chunks of the batch, one per thread, give the one-chunk result
    (dw and db up to their summing order)."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: one chunk")
    x, w, b, stride, groups = _problem((12, 6, 5, 5, 8, 1, 2), np.float64)
    before = fastcnn.get_num_threads()
    try:
        with _gemm_conv.forced_path("pointwise"):
            fastcnn.set_num_threads(1)
            one = _run(backend, x, w, b, stride, groups, True)
            monkeypatch.setattr(_concurrent, "WORK_PER_THREAD", 1)
            fastcnn.set_num_threads(2)
            _concurrent.most_threads = 0
            many = _run(backend, x, w, b, stride, groups, True)
            assert _concurrent.most_threads == 2
    finally:
        fastcnn.set_num_threads(before)
    for g, r in zip(many, one):
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12)
