"""Every conv2d path of every backend on the shared GEMM driver
(``backends/_gemm_conv``), forced onto shapes that would otherwise choose
another, against the `loops` reference: forward and all three gradients,
with stride, padding, dilation and groups; PyTorch (when installed) checks
the grouped and dilated cases independently.

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

from cases import BACKENDS, TOL, case_id


def _table(name):
    return getattr(get_module(name), "_ConvKernels", None)


DRIVEN = [b for b in BACKENDS if _table(b) is not None]
# paths some table has: winograd, depthwise and direct are optional kernels
OPTIONAL = ("winograd", "depthwise", "direct")
BACKEND_PATHS = [(b, p) for b in DRIVEN for p in _gemm_conv.PATHS
                 if p not in OPTIONAL or getattr(_table(b), p, None) is not None]

# (N, C, H, W, F, KH, KW, stride, padding, dilation, groups, bias)
CASES = [
    (2, 3, 7, 9, 4, 3, 3, 1, 1, 1, 1, True),        # 3x3/1: Winograd applies; stride-1 columns
    (1, 2, 6, 5, 3, 4, 4, 1, "same", 1, 1, True),   # N=1, even kernel: pads (1, 2, 1, 2)
    (2, 2, 5, 6, 3, 3, 2, 1, "same", 1, 1, False),  # pads (1, 1, 0, 1)
    (3, 2, 9, 8, 3, 3, 2, (2, 3), (2, 1), 1, 1, False),  # strided, stride does not divide
    (2, 4, 11, 10, 5, 5, 5, 2, 2, 1, 1, True),
    (1, 3, 5, 7, 2, 3, 3, 1, (0, 2), 1, 1, True),   # N=1 Winograd, odd sizes, unequal padding
    (9, 5, 6, 11, 3, 3, 3, 1, "same", 1, 1, False),  # Winograd, odd tile counts
    (2, 3, 5, 6, 2, 3, 1, 1, (1, 0), 1, 1, True),   # stride 1 with no garbage column (WP = OW)
    (2, 2, 2, 3, 3, 3, 3, (1, 2), 2, 1, 1, True),   # kernel larger than the image
    # dilation
    (2, 3, 9, 10, 4, 3, 3, 1, 2, 2, 1, True),       # dilated 3x3, 'same'-like padding
    (2, 2, 11, 9, 3, 3, 2, (2, 1), (1, 2), (3, 2), 1, True),  # strided, unequal dilation
    (1, 2, 8, 8, 2, 2, 3, 1, "same", (2, 3), 1, False),  # 'same' over a dilated even span
    # groups
    (2, 4, 7, 6, 6, 3, 3, 1, 1, 1, 2, True),        # groups 2
    (3, 6, 8, 7, 9, 3, 2, (2, 1), (1, 0), 1, 3, True),  # groups 3, strided, uneven kernel
    (2, 8, 9, 9, 8, 3, 3, 2, 2, 2, 4, False),       # groups, stride and dilation at once
    (2, 3, 6, 7, 3, 3, 3, 1, 1, 1, 3, True),        # depthwise (groups = C)
    (2, 3, 7, 6, 6, 3, 3, 2, 1, (1, 2), 3, True),   # depthwise, multiplier 2, strided, dilated
    # 1x1
    (3, 5, 6, 7, 4, 1, 1, 1, 0, 1, 1, True),        # pointwise
    (2, 4, 7, 9, 6, 1, 1, (2, 3), 0, 1, 2, True),   # pointwise, strided, grouped
    (2, 4, 5, 5, 4, 1, 1, 1, 0, 3, 4, False),       # pointwise depthwise; dilation moot
    (2, 3, 5, 6, 2, 1, 1, 2, 1, 1, 1, True),        # 1x1 with padding: not pointwise
    # stride-2 columns (the compiled im2col's column-phase loops)
    (2, 4, 9, 7, 6, 3, 3, 2, 1, 1, 2, True),        # 3x3/2 pad 1, odd sizes, groups: column phases
    (1, 2, 6, 8, 3, 3, 4, (1, 2), (2, 3), 1, 1, False),  # stride-2 columns, padding past half the kernel
]


def _geometry(case):
    """The driver's Geometry of a case, sizes as fastcnn.ops computes them."""
    N, C, H, W, F, KH, KW, stride, padding, dilation, groups, _ = case
    (SH, SW), (DH, DW) = [(v, v) if isinstance(v, int) else v for v in (stride, dilation)]
    if padding == "same":          # stride 1: PyTorch's split, the extra on the bottom/right
        th, tw = DH * (KH - 1), DW * (KW - 1)
        pads = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    else:
        PH, PW = (padding, padding) if isinstance(padding, int) else padding
        pads = (PH, PH, PW, PW)
    OH = (H + pads[0] + pads[1] - DH * (KH - 1) - 1) // SH + 1
    OW = (W + pads[2] + pads[3] - DW * (KW - 1) - 1) // SW + 1
    return _gemm_conv.Geometry(N, C, H, W, F, KH, KW, SH, SW, *pads, OH, OW, DH, DW, groups)


def conv_inputs(case, dtype, seed=0):
    N, C, H, W, F, KH, KW, stride, padding, dilation, groups, bias = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F, C // groups, KH, KW)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype) if bias else None
    return x, w, b, stride, padding, dilation, groups


FORCED = [(b, p, case) for b, p in BACKEND_PATHS for case in CASES
          if _gemm_conv.path_applies(_table(b), p, _geometry(case))]


def _reference(args, dy):
    f64 = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
    x, w, b, *rest = args
    y, ctx = ops.conv2d_forward(f64(x), f64(w), f64(b), *rest, backend="loops")
    return (y, *ops.conv2d_backward(f64(dy), ctx))


def _run_forced(backend, path, args):
    with _gemm_conv.forced_path(path):
        y, ctx = ops.conv2d_forward(*args, backend=backend)
    assert ctx.saved[0] == path
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(args[0].dtype)
    return (y, *ops.conv2d_backward(dy, ctx)), dy, ctx


def _check(got, want, dtype):
    for name, g, e in zip(("y", "dx", "dw", "db"), got, want):
        assert g.dtype == dtype, f"{name} dtype {g.dtype}"
        assert g.shape == e.shape, f"{name} shape {g.shape}, want {e.shape}"
        assert_close(g, e, TOL[dtype], name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("backend, path, case", FORCED,
                         ids=[f"{b}-{p}-{case_id(c)}" for b, p, c in FORCED])
def test_forced_path_matches_loops(backend, path, case, dtype):
    args = conv_inputs(case, dtype)
    got, dy, _ = _run_forced(backend, path, args)
    _check(got, _reference(args, dy), dtype)


TORCH_CASES = [c for c in CASES if c[9] != 1 or c[10] != 1 or c[5] == 1]


@pytest.mark.parametrize("backend, path", BACKEND_PATHS, ids=["-".join(bp) for bp in BACKEND_PATHS])
def test_dilated_grouped_and_1x1_paths_match_torch(backend, path):
    torch = pytest.importorskip("torch")
    ran = 0
    for case in TORCH_CASES:
        if not _gemm_conv.path_applies(_table(backend), path, _geometry(case)):
            continue
        x, w, b, stride, padding, dilation, groups = args = conv_inputs(case, np.float64)
        got, dy, _ = _run_forced(backend, path, args)
        xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
        bt = torch.tensor(b if b is not None else np.zeros(w.shape[0]), requires_grad=True)
        yt = torch.nn.functional.conv2d(xt, wt, bt, stride, padding, dilation, groups)
        yt.backward(torch.tensor(dy))
        want = [t.detach().numpy() for t in (yt, xt.grad, wt.grad, bt.grad)]
        _check(got, want, np.float64)
        ran += 1
    assert ran > 0 or path == "winograd"


@pytest.mark.parametrize("backend", [b for b in DRIVEN if _table(b).padded_input])
def test_stride1_batch_path_runs_over_garbage_columns(backend):
    for case in (CASES[0], CASES[9]):                # plain and dilated
        args = conv_inputs(case, np.float64)
        got, dy, ctx = _run_forced(backend, "batch", args)
        g, (_, _, RP) = ctx.saved[1], ctx.saved[2]
        assert RP == g.WP > g.OW                    # WP - OW garbage columns per row
        _check(got, _reference(args, dy), np.float64)


CHUNKED = [bp for bp in BACKEND_PATHS if bp[1] not in ("batch", "depthwise")]


@pytest.mark.parametrize("backend, path", CHUNKED, ids=["-".join(bp) for bp in CHUNKED])
def test_batch_chunks_run_concurrently_and_sum_dw_db(backend, path, monkeypatch):
    # the per-image, pointwise and Winograd paths split the batch into
    # chunks that run on several threads; dw and db are summed over them
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
    # 17 images: two Winograd chunks; groups where the path allows them
    KH, groups = (1, 2) if path == "pointwise" else (3, 2)
    case = (17, 4, 6, 5, 4, KH, KH, 1, KH // 2, 1, groups, True)
    args = conv_inputs(case, np.float64)
    try:
        got, dy, _ = _run_forced(backend, path, args)
    finally:
        fastcnn.set_num_threads(old)
    assert pieces and min(pieces) >= 2
    _check(got, _reference(args, dy), np.float64)


@pytest.mark.parametrize("backend, path", BACKEND_PATHS, ids=["-".join(bp) for bp in BACKEND_PATHS])
def test_backward_ignores_later_changes_to_x_and_w(backend, path):
    # grouped, dilated and 1x1 shapes too: backward computes with what
    # forward saw (test_saved_inputs covers the plain 3x3 case)
    case = {"pointwise": (3, 4, 5, 6, 6, 1, 1, 2, 0, 1, 2, True),
            "winograd": (9, 4, 7, 6, 5, 3, 3, 1, 1, 1, 1, True),
            "depthwise": (2, 4, 7, 6, 8, 3, 3, 1, 1, 1, 4, True),
            "direct": (3, 4, 7, 6, 6, 3, 3, 1, 2, 2, 2, True)}.get(
                path, (3, 4, 7, 6, 6, 3, 3, 1, 2, 2, 2, True))
    x, w, b, *rest = conv_inputs(case, np.float64)
    results = []
    for scribble in (False, True):
        xc, wc, bc = x.copy(), w.copy(), b.copy()
        with _gemm_conv.forced_path(path):
            y, ctx = ops.conv2d_forward(xc, wc, bc, *rest, backend=backend)
        y = y.copy()
        if scribble:
            xc[...], wc[...], bc[...] = 3.0, -2.0, 5.0
        dy = np.random.default_rng(2).standard_normal(y.shape)
        results.append((y, *ops.conv2d_backward(dy, ctx)))
    for name, c, g in zip(("y", "dx", "dw", "db"), *results):
        np.testing.assert_array_equal(g, c, err_msg=name)


def _g(N, C, KH, KW, stride, F=8, pad=1, dilation=(1, 1), groups=1):
    return _gemm_conv.Geometry(N, C, 14, 14, F, KH, KW, *stride, pad, pad, pad, pad, 14, 14,
                               *dilation, groups)


@pytest.mark.parametrize("backend", DRIVEN)
def test_paths_chosen_by_shape(backend):
    k = _table(backend)
    limit = getattr(k, "per_image_max_taps", _gemm_conv.PER_IMAGE_MAX_TAPS)
    choose = lambda g: _gemm_conv.choose_path(k, g)    # noqa: E731

    def im2col(Kg):
        return "per_image" if Kg <= limit else "batch"

    wino = "winograd" if k.winograd is not None else im2col(36)
    assert _gemm_conv.PER_IMAGE_MAX_TAPS == 32
    assert choose(_g(64, 1, 3, 3, (1, 1))) == "per_image"             # K=9
    assert choose(_g(64, 2, 4, 4, (1, 1))) == "per_image"             # K=32
    assert choose(_g(64, 4, 3, 3, (1, 1))) == wino                    # K=36
    assert choose(_g(64, 32, 3, 3, (2, 2))) == "per_image"            # column stride 2: any Kg
    assert choose(_g(64, 32, 3, 3, (3, 3))) == im2col(288)
    assert choose(_g(64, 32, 5, 5, (1, 1))) == im2col(800)
    # Winograd runs dilated (phase by phase) and grouped 3x3 convs too
    wino288 = "winograd" if k.winograd is not None else im2col(288)
    wino144 = "winograd" if k.winograd is not None else im2col(144)
    # ... but a table with the direct loops takes those for dilated ones and
    # for grouped ones of up to 32 channels a group
    dil288 = "direct" if getattr(k, "direct", None) is not None else wino288
    assert choose(_g(64, 32, 3, 3, (1, 1), dilation=(2, 2))) == dil288
    grp144 = "direct" if getattr(k, "direct", None) is not None else wino144
    assert choose(_g(64, 64, 3, 3, (1, 1), F=64, groups=4)) == grp144
    wino576 = "winograd" if k.winograd is not None else im2col(576)
    assert choose(_g(64, 128, 3, 3, (1, 1), F=128, groups=2)) == wino576   # 64 a group
    assert choose(_g(64, 8, 3, 3, (1, 1), groups=4)) == "per_image"    # Kg=18
    assert choose(_g(64, 64, 1, 1, (1, 1), F=128, pad=0)) == "pointwise"
    assert choose(_g(64, 64, 1, 1, (2, 2), F=128, pad=0, groups=2)) == "pointwise"
    assert choose(_g(64, 64, 1, 1, (1, 1), F=128, pad=1)) == im2col(64)   # padded 1x1
    depthwise = _g(64, 8, 3, 3, (1, 1), groups=8)
    assert choose(depthwise) == ("depthwise" if k.depthwise is not None else "per_image")
    if k.winograd is not None:
        # a batch too small for Winograd: the direct loops where the table
        # has them (3x3 stride 1), else the im2col products
        small = k.winograd.MIN_BATCH - 1
        direct = getattr(k, "direct", None) is not None
        assert choose(_g(small, 32, 3, 3, (1, 1))) == ("direct" if direct else im2col(288))
        assert choose(_g(1, 32, 3, 3, (1, 1))) == ("direct" if direct else im2col(288))
        assert choose(_g(1, 32, 3, 3, (2, 2))) == "batch"             # direct: stride 1 only
        assert choose(_g(small + 1, 32, 3, 3, (1, 1))) == "winograd"
    # one image under no_grad, few taps (the MNIST conv1): the direct loops
    # where the table has them; with a backward to follow, or with more
    # images, the per-image products
    one_tap9 = "direct" if getattr(k, "direct", None) is not None else "per_image"
    with fastcnn.no_grad():
        assert choose(_g(1, 1, 3, 3, (1, 1))) == one_tap9
        assert choose(_g(4, 1, 3, 3, (1, 1))) == "per_image"
        assert choose(_g(1, 1, 3, 3, (2, 2))) == "per_image"          # direct: stride 1 only
    assert choose(_g(1, 1, 3, 3, (1, 1))) == "per_image"


@pytest.mark.parametrize("backend", DRIVEN)
def test_forcing_a_path_that_cannot_run_is_an_error(backend):
    x, w, b, *_ = conv_inputs(CASES[0], np.float64)
    with _gemm_conv.forced_path("winograd"), pytest.raises(ValueError, match="winograd"):
        ops.conv2d_forward(x, w, b, 2, 1, backend=backend)
    with _gemm_conv.forced_path("winograd"), pytest.raises(ValueError, match="winograd"):
        ops.conv2d_forward(x, w[:, :, :2, :2], b, 1, 1, backend=backend)   # 2x2
    with _gemm_conv.forced_path("pointwise"), pytest.raises(ValueError, match="pointwise"):
        ops.conv2d_forward(x, w, b, 1, 1, backend=backend)             # 3x3
    with _gemm_conv.forced_path("pointwise"), pytest.raises(ValueError, match="pointwise"):
        ops.conv2d_forward(x, w[:, :, :1, :1], b, 1, 1, backend=backend)   # padded 1x1
    with _gemm_conv.forced_path("depthwise"), pytest.raises(ValueError, match="depthwise"):
        ops.conv2d_forward(x, w, b, 1, 1, backend=backend)             # groups = 1
    if getattr(_table(backend), "direct", None) is not None:
        with _gemm_conv.forced_path("direct"), pytest.raises(ValueError, match="direct"):
            ops.conv2d_forward(x, w, b, 1, 3, backend=backend)             # padding past reach
        with _gemm_conv.forced_path("direct"), pytest.raises(ValueError, match="direct"):
            ops.conv2d_forward(x, w, b, 2, 1, backend=backend)             # stride 2
    with pytest.raises(ValueError, match="path must be one of"):
        with _gemm_conv.forced_path("dirct"):
            pass


@pytest.mark.parametrize("backend", DRIVEN)
@pytest.mark.parametrize("path", ["batch", "per_image"])
def test_im2col_paths_run_a_depthwise_conv_as_grouped_gemm(backend, path):
    # a forced im2col path runs groups = C as a grouped GEMM even where a
    # depthwise kernel exists, so the two can be checked against each other
    args = conv_inputs((2, 4, 7, 6, 8, 3, 3, 1, 1, 1, 4, True), np.float64)
    got, dy, ctx = _run_forced(backend, path, args)
    assert ctx.saved[1].G == 4
    _check(got, _reference(args, dy), np.float64)


BLOCK_CASES = [c for c in CASES if c[0] > 1 and (c[9] != 1 or c[10] != 1 or c[7] != 1)]


@pytest.mark.parametrize("backend", DRIVEN)
def test_per_image_path_block_by_block(backend, monkeypatch):
    # one image per block: the blocks' columns, products, dw sums and
    # col2im must add up to the whole batch's
    monkeypatch.setattr(_gemm_conv, "PER_IMAGE_BLOCK_BYTES", 1)
    for case in BLOCK_CASES:
        args = conv_inputs(case, np.float64)
        got, dy, _ = _run_forced(backend, "per_image", args)
        _check(got, _reference(args, dy), np.float64)


WINO = [b for b in DRIVEN if _table(b).winograd is not None]


@pytest.mark.parametrize("backend", WINO)
def test_winograd_conv_relu_grouped_and_dilated(backend, monkeypatch):
    # the fused conv+ReLU over the Winograd path, grouped and dilated
    # shapes included, against loops' conv then ReLU
    k = _table(backend)
    calls = []
    real = k.winograd.forward
    monkeypatch.setattr(k.winograd, "forward", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    for case in (CASES[0], CASES[9], CASES[12], (9, 8, 9, 10, 8, 3, 3, 1, "same", 2, 4, True)):
        args = conv_inputs(case, np.float64)
        with _gemm_conv.forced_path("winograd"):
            y, ctx = ops.conv2d_relu_forward(*args, backend=backend)
        dy = np.random.default_rng(3).standard_normal(y.shape)
        got = (y, *ops.conv2d_relu_backward(dy, ctx))
        x, w, b, *rest = args
        z, zctx = ops.conv2d_forward(x, w, b, *rest, backend="loops")
        want = (np.maximum(z, 0), *ops.conv2d_backward(dy * (z > 0), zctx))
        _check(got, want, np.float64)
    assert len(calls) == 4
