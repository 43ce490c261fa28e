"""The Winograd F(4x4, 3x3) conv path's numerical error, on every backend
whose kernel table has one: y, dx, dw and db in float32 and float64 against
a float64 direct convolution (an einsum per tap, independent of every
backend), as max |err| / max |ref| per array: float32 <= 1e-4, float64
<= 1e-9. Shapes: output sizes not divisible by 4, padding 0/1/2, unequal
and 'same', C and F of 1, batch 1 and several chunks, groups 1/2/4/C,
dilation (the phase sub-grids), the fused ReLU, non-finite inputs; the
inputs are never changed.

Deliberately not here: which path a shape chooses and the other paths
(tests/test_conv_paths.py), speed.
"""
import numpy as np
import pytest

from fastcnn import ops
from fastcnn.backend import get_module
from fastcnn.backends import _gemm_conv

from cases import BACKENDS


def _table(name):
    return getattr(get_module(name), "_ConvKernels", None)


WINO_BACKENDS = [b for b in BACKENDS if getattr(_table(b), "winograd", None) is not None]
BOUND = {np.float32: 1e-4, np.float64: 1e-9}

# (N, C, H, W, F, padding, dilation, groups)
CASES = [
    (2, 3, 7, 9, 4, 1, 1, 1),             # OH, OW = 7, 9: partial last tiles
    (1, 1, 5, 5, 1, 0, 1, 1),             # C = F = 1, batch 1, no padding
    (3, 4, 6, 11, 5, 2, 1, 1),            # padding 2
    (2, 3, 10, 6, 2, (0, 2), 1, 1),       # unequal padding
    (2, 2, 9, 10, 3, "same", 1, 1),
    (1, 2, 2, 3, 2, 2, 1, 1),             # input smaller than a tile
    (19, 8, 14, 13, 16, 1, 1, 1),         # batch over MIN_BATCH: chunks
    (9, 32, 14, 14, 64, 1, 1, 1),         # the MNIST conv2 shape: 288 taps per output
    (3, 4, 10, 9, 6, 1, 1, 2),            # groups 2
    (10, 8, 9, 7, 8, 1, 1, 4),            # groups 4
    (2, 4, 6, 7, 4, 1, 1, 4),             # groups = C
    (2, 3, 7, 6, 6, 0, 1, 3),             # groups = C, channel multiplier 2
    (3, 3, 11, 10, 4, 2, 2, 1),           # dilation 2: four phases
    (2, 4, 9, 13, 4, (1, 3), (2, 3), 2),  # unequal dilation and padding, groups
    (2, 2, 12, 11, 3, "same", 3, 1),      # 'same' over a dilated kernel
    (2, 2, 3, 4, 2, 2, 3, 1),             # dilation past the input: phases without outputs
]


def _pads(padding, dilation):
    """(PT, PB, PL, PR) as fastcnn.ops computes them for a 3x3 kernel."""
    (DH, DW) = (dilation, dilation) if isinstance(dilation, int) else dilation
    if padding == "same":
        return DH, DH, DW, DW
    PH, PW = (padding, padding) if isinstance(padding, int) else padding
    return PH, PH, PW, PW


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def direct(x, w, b, pads, dilation, groups):
    """float64 y of the direct convolution, one einsum per tap."""
    (N, C, H, W), F = x.shape, w.shape[0]
    PT, PB, PL, PR = pads
    DH, DW = dilation
    G = groups
    xp = np.pad(x, ((0, 0), (0, 0), (PT, PB), (PL, PR)))
    OH, OW = xp.shape[2] - 2 * DH, xp.shape[3] - 2 * DW
    y = np.zeros((N, G, F // G, OH, OW))
    for i in range(3):
        for j in range(3):
            xs = xp[:, :, i * DH:i * DH + OH, j * DW:j * DW + OW].reshape(N, G, C // G, OH, OW)
            y += np.einsum("ngchw,gfc->ngfhw", xs, w[:, :, i, j].reshape(G, F // G, C // G))
    return y.reshape(N, F, OH, OW) + b[None, :, None, None]


def direct_backward(x, w, dy, pads, dilation, groups):
    """float64 (dx, dw, db) of the direct convolution: the einsums' adjoints."""
    (N, C, H, W), F = x.shape, w.shape[0]
    PT, PB, PL, PR = pads
    DH, DW = dilation
    G = groups
    xp = np.pad(x, ((0, 0), (0, 0), (PT, PB), (PL, PR)))
    OH, OW = dy.shape[2:]
    dxp = np.zeros_like(xp)
    dw = np.zeros(w.shape)
    dy5 = dy.reshape(N, G, F // G, OH, OW)
    for i in range(3):
        for j in range(3):
            sl = np.s_[:, :, i * DH:i * DH + OH, j * DW:j * DW + OW]
            xs = xp[sl].reshape(N, G, C // G, OH, OW)
            wij = w[:, :, i, j].reshape(G, F // G, C // G)
            dxp[sl] += np.einsum("ngfhw,gfc->ngchw", dy5, wij).reshape(N, C, OH, OW)
            dw[:, :, i, j] = np.einsum("ngfhw,ngchw->gfc", dy5, xs).reshape(F, C // G)
    return dxp[:, :, PT:PT + H, PL:PL + W], dw, dy.sum(axis=(0, 2, 3))


def _inputs(case, dtype, seed=0):
    N, C, H, W, F, padding, dilation, groups = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F, C // groups, 3, 3)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    return x, w, b


def relative_errors(backend, case, dtype):
    """{name: max |err| / max |ref|} of the Winograd path's y, dx, dw, db;
    checks on the way that the path ran, dtypes and that inputs are unchanged."""
    N, C, H, W, F, padding, dilation, groups = case
    x, w, b = _inputs(case, dtype)
    copies = [a.copy() for a in (x, w, b)]
    with _gemm_conv.forced_path("winograd"):
        y, ctx = ops.conv2d_forward(x, w, b, 1, padding, dilation, groups, backend=backend)
    assert ctx.saved[0] == "winograd"
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    dy_copy = dy.copy()
    got = (y, *ops.conv2d_backward(dy, ctx))
    for a, c in zip((x, w, b, dy), (*copies, dy_copy)):
        np.testing.assert_array_equal(a, c)          # inputs unchanged
    pads, dil = _pads(padding, _pair(dilation)), _pair(dilation)
    f64 = [a.astype(np.float64) for a in (x, w, b, dy)]
    want = (direct(*f64[:3], pads, dil, groups),
            *direct_backward(f64[0], f64[1], f64[3], pads, dil, groups))
    errors = {}
    for name, g_, e in zip(("y", "dx", "dw", "db"), got, want):
        assert g_.dtype == dtype and g_.shape == e.shape, name
        errors[name] = float(np.abs(g_ - e).max() / max(np.abs(e).max(), 1e-300))
    return errors


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
@pytest.mark.parametrize("backend", WINO_BACKENDS)
def test_winograd_error_against_float64_direct_convolution(backend, case, dtype):
    errors = relative_errors(backend, case, dtype)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= BOUND[dtype], f"{worst}: {errors}"


def test_some_backend_has_winograd():
    # the harness must not pass by running on nothing: numba has the path
    if "numba" in BACKENDS:
        assert "numba" in WINO_BACKENDS


def _geometry(x, w, padding, dilation, groups):
    (N, C, H, W), F = x.shape, w.shape[0]
    PT, PB, PL, PR = _pads(padding, _pair(dilation))
    DH, DW = _pair(dilation)
    OH, OW = H + PT + PB - 2 * DH, W + PL + PR - 2 * DW
    return _gemm_conv.Geometry(N, C, H, W, F, 3, 3, 1, 1, PT, PB, PL, PR, OH, OW,
                               DH, DW, groups)


def _driver_forward(backend, x, w, b, padding, dilation, groups, relu):
    """y from the Winograd driver itself, with the fused ReLU or not."""
    k = _table(backend)
    g = _geometry(x, w, padding, dilation, groups)
    y = np.empty((g.N, g.F, g.OH, g.OW), dtype=x.dtype)
    k.winograd.forward(k, x, w, b, y, g, relu=relu)
    return y


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", [CASES[0], CASES[6], CASES[9], CASES[12]],
                         ids=["plain", "chunks", "groups", "dilated"])
@pytest.mark.parametrize("backend", WINO_BACKENDS)
def test_fused_relu_is_max_of_the_convolution_and_zero(backend, case, dtype):
    N, C, H, W, F, padding, dilation, groups = case
    x, w, b = _inputs(case, dtype)
    y = _driver_forward(backend, x, w, b, padding, dilation, groups, relu=True)
    f64 = [a.astype(np.float64) for a in (x, w, b)]
    ref = np.maximum(direct(*f64, _pads(padding, _pair(dilation)), _pair(dilation), groups), 0)
    assert y.min() >= 0 and (y == 0).any()
    assert np.abs(y - ref).max() / np.abs(ref).max() <= BOUND[dtype]
    # exactly the unfused output's ReLU: same products, same rounding
    plain = _driver_forward(backend, x, w, b, padding, dilation, groups, relu=False)
    np.testing.assert_array_equal(y, np.maximum(plain, 0))


@pytest.mark.parametrize("backend", WINO_BACKENDS)
def test_non_finite_inputs(backend):
    # Stated behaviour: an output the direct convolution makes NaN or +-inf
    # is non-finite here too (the transforms subtract, so inf may come out
    # as NaN, and a NaN spreads to its whole tile); the fused ReLU keeps
    # every NaN (np.maximum's semantics); the images of a batch share lanes
    # but never values, so the other images stay finite and exact.
    case = (9, 3, 9, 10, 4, 1, 1, 1)
    x, w, b = _inputs(case, np.float64)
    x[0, 1, 4, 5] = np.nan
    x[1, 2, 0, 0] = np.inf
    ref = direct(x, w, b, (1, 1, 1, 1), (1, 1), 1)
    y = _driver_forward(backend, x, w, b, 1, 1, 1, relu=False)
    yr = _driver_forward(backend, x, w, b, 1, 1, 1, relu=True)
    assert not np.isfinite(y[~np.isfinite(ref)]).any()
    np.testing.assert_array_equal(np.isnan(yr), np.isnan(y))
    assert (yr[~np.isnan(yr)] >= 0).all()
    rest = slice(2, None)
    assert np.isfinite(y[rest]).all()
    assert np.abs(y[rest] - ref[rest]).max() / np.abs(ref[rest]).max() <= BOUND[np.float64]


# (F, C, G, rows*TW, N): lanes (rows*TW*N) past whole register tiles and
# single vectors, filters past whole row blocks, groups, a filter per group
PRODUCT_SHAPES = [(64, 32, 1, 8, 32), (7, 5, 1, 3, 9), (12, 6, 3, 4, 11), (64, 32, 1, 4, 1),
                  (9, 3, 1, 2, 16), (16, 8, 2, 8, 8), (4, 4, 4, 5, 3), (1, 1, 1, 1, 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", PRODUCT_SHAPES, ids=[str(s) for s in PRODUCT_SHAPES])
@pytest.mark.parametrize("backend", WINO_BACKENDS)
def test_products_are_the_grouped_matmuls(backend, shape, dtype):
    # The forward's 36 products of a band, every element written, against
    # a float64 einsum; a NaN or inf in V reaches exactly the lanes it is in.
    F, C, G, P, N = shape
    rng = np.random.default_rng(7)
    U = rng.standard_normal((36, F, C // G)).astype(dtype)
    V = rng.standard_normal((36, C, P, N)).astype(dtype)
    V[3, 0, 0, N - 1] = np.nan
    V[5, C - 1, P - 1, 0] = np.inf
    U0, V0 = U.copy(), V.copy()
    M = np.full((36, F, P, N), 7.0, dtype=dtype)
    _table(backend).winograd_kernels().products(U, V, M)
    ref = np.einsum("kgfc,kgcl->kgfl", U.astype(np.float64).reshape(36, G, F // G, C // G),
                    V.astype(np.float64).reshape(36, G, C // G, P * N)).reshape(M.shape)
    np.testing.assert_array_equal(np.isnan(M), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(M), np.isinf(ref))
    ok = np.isfinite(ref)
    assert np.abs(M[ok] - ref[ok]).max() <= BOUND[dtype] * np.abs(ref[ok]).max()
    np.testing.assert_array_equal(U, U0)
    np.testing.assert_array_equal(V, V0)


# (F, C, G, rows*TW, N): lanes past whole vectors, channels past whole
# register blocks (8) and filters past whole pairs, groups, one of each
WEIGHT_PRODUCT_SHAPES = [(64, 32, 1, 8, 32), (7, 5, 1, 3, 9), (12, 6, 3, 4, 11),
                         (17, 24, 1, 3, 7), (16, 16, 2, 8, 8), (4, 4, 4, 5, 3), (1, 1, 1, 1, 1)]


def _weight_products_case(shape, dtype, seed=11):
    """(dM, V, dU0): a band's dM, padded by a filter row of NaN (as the
    driver pads it; never read), and V, the second band of a saved V (a
    view into a longer array, as the driver passes it), and a dU that
    already holds sums of earlier bands."""
    from fastcnn.backends import _winograd
    F, C, G, P, N = shape
    rng = np.random.default_rng(seed)
    dM = np.full((36, F + 1, P, N), np.nan, dtype=dtype)
    dM[:, :F] = rng.standard_normal((36, F, P, N))
    saved = rng.standard_normal(2 * 36 * C * P * N).astype(dtype)
    V = _winograd._band(saved, 1, 2, C, P, N)       # TW = P: one tile row a band
    dU0 = rng.standard_normal((36, F, C // G))
    return dM, V, dU0


def _weight_products_ref(dM, V, dU0, G):
    F, C, L = dU0.shape[1], V.shape[1], dM.shape[2] * dM.shape[3]
    return dU0 + np.einsum("kgfl,kgcl->kgfc",
                           dM[:, :F].astype(np.float64).reshape(36, G, F // G, L),
                           V.astype(np.float64).reshape(36, G, C // G, L)).reshape(dU0.shape)


def _check_weight_products(kernels, shape, dtype):
    F, C, G, P, N = shape
    dM, V, dU0 = _weight_products_case(shape, dtype)
    copies = dM.copy(), V.copy()
    dU = dU0.copy()
    kernels.weight_products(dM, V, dU)
    ref = _weight_products_ref(dM, V, dU0, G)
    # float32: the sums of a band run in float, far below the conv's bound
    bound = {np.float32: 1e-6, np.float64: 1e-13}[dtype]
    assert np.abs(dU - ref).max() <= bound * np.abs(ref).max()
    np.testing.assert_array_equal(dM, copies[0])
    np.testing.assert_array_equal(V, copies[1])
    # a NaN in V reaches exactly its channel's column of its element
    V = V.copy()
    V[3, C - 1, P - 1, N - 1] = np.nan
    dU = dU0.copy()
    kernels.weight_products(dM, V, dU)
    want = np.zeros(dU.shape, dtype=bool)
    g = (C - 1) // (C // G)
    want[3, g * (F // G):(g + 1) * (F // G), (C - 1) % (C // G)] = True
    np.testing.assert_array_equal(np.isnan(dU), want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", WEIGHT_PRODUCT_SHAPES,
                         ids=[str(s) for s in WEIGHT_PRODUCT_SHAPES])
@pytest.mark.parametrize("backend", WINO_BACKENDS)
def test_weight_products_add_dM_V_transposed_into_float64_dU(backend, shape, dtype):
    _check_weight_products(_table(backend).winograd_kernels(), shape, dtype)


def _cython_winograd():
    if "cython" not in WINO_BACKENDS:
        pytest.skip("no cython Winograd path")
    return _table("cython").winograd_kernels()


# cython's products and weight_products at each level of SIMD: 0 numpy's
# matmul, 1 AVX2 + FMA register tiles, 2 AVX-512 ones; those above the CPU's
# skip
SIMD_LEVELS = [0, 1, 2]


def _cython_winograd_at(monkeypatch, level):
    kernels = _cython_winograd()
    if level > kernels._simd:
        pytest.skip(f"SIMD level {level} is above this CPU's ({kernels._simd})")
    monkeypatch.setattr(kernels, "_simd", level)
    return kernels


@pytest.mark.parametrize("level", SIMD_LEVELS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", WEIGHT_PRODUCT_SHAPES[:3],
                         ids=[str(s) for s in WEIGHT_PRODUCT_SHAPES[:3]])
def test_cython_products_at_each_simd_level(monkeypatch, shape, dtype, level):
    kernels = _cython_winograd_at(monkeypatch, level)
    _check_weight_products(kernels, shape, dtype)
    F, C, G, P, N = shape
    rng = np.random.default_rng(3)
    U = rng.standard_normal((36, F, C // G)).astype(dtype)
    V = np.full((36, C + 1, P, N), np.nan, dtype=dtype)   # the first C rows read
    V[:, :C] = rng.standard_normal((36, C, P, N))
    V = V[:, :C]
    M = np.full((36, F + 1, P, N), 7.0, dtype=dtype)
    kernels.products(U, V, M)
    ref = np.einsum("kgfc,kgcl->kgfl", U.astype(np.float64).reshape(36, G, F // G, C // G),
                    V.astype(np.float64).reshape(36, G, C // G, P * N)).reshape(36, F, P, N)
    assert np.abs(M[:, :F] - ref).max() <= BOUND[dtype] * np.abs(ref).max()
    assert (M[:, F] == 7.0).all()


@pytest.mark.parametrize("backend,level", [(b, None) for b in WINO_BACKENDS if b != "cython"]
                         + [("cython", level) for level in SIMD_LEVELS[1:]])
def test_weight_products_keep_dw_within_the_contract_on_random_draws(monkeypatch, backend,
                                                                     level):
    # dw = G^T dU G cancels dU's large sums down to small weights, so dU's
    # float32 rounding decides dw's error: the kernels' vector lanes sum a
    # few terms each (at most 16 on AVX2, in segments of a band's lanes),
    # where numpy's matmul (cython's level 0) sums all of a band's lanes in
    # one float32: over 1e-4 on 5 of these 12 draws, up to 2.4e-4; cython's
    # AVX2 loops 7.3e-5 at most; numba's before its segments 1.23e-4
    if level is not None:
        _cython_winograd_at(monkeypatch, level)
    from fastcnn.testing import max_relative_error
    worst = 0.0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((130, 4, 5, 5)).astype(np.float32)
        w = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
        with _gemm_conv.forced_path("winograd"):
            y, ctx = ops.conv2d_forward(x, w, None, 1, 1, backend=backend)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dw = ops.conv2d_backward(dy, ctx)[1]
        _, ref = ops.conv2d_forward(x.astype(np.float64), w.astype(np.float64), None, 1, 1,
                                    backend="loops")
        worst = max(worst, max_relative_error(dw, ops.conv2d_backward(dy.astype(np.float64),
                                                                      ref)[1]))
    assert worst <= BOUND[np.float32], worst


@pytest.mark.parametrize("level", SIMD_LEVELS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", [CASES[7], CASES[9], CASES[12]],
                         ids=["mnist-conv2", "groups", "dilated"])
def test_cython_winograd_at_each_simd_level(monkeypatch, case, dtype, level):
    _cython_winograd_at(monkeypatch, level)
    errors = relative_errors("cython", case, dtype)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= BOUND[dtype], f"{worst}: {errors}"


# (C, H, W, N, PT, PL, rows): bands of one and two tile rows, a last shorter
# band, padding on either side or none, a plane that leaves part of the last
# tile row or column outside the output
GRAD_INPUT_SHAPES = [(32, 14, 14, 32, 1, 1, 2), (3, 9, 6, 5, 0, 2, 1), (4, 18, 11, 9, 2, 1, 2),
                     (1, 3, 3, 1, 1, 1, 1), (2, 7, 5, 3, 1, 0, 3)]


@pytest.mark.parametrize("shape", GRAD_INPUT_SHAPES, ids=[str(s) for s in GRAD_INPUT_SHAPES])
@pytest.mark.parametrize("backend", WINO_BACKENDS)
def test_grad_input_transform_is_the_adjoint_of_input_transform(backend, shape):
    # <input_transform(x), dV> = <x, grad_input_transform(dV)> summed over
    # the bands in order, whatever the module's points, the padding (read
    # as zeros, its gradient dropped) and the tiles past the edge; dV padded
    # by a channel row of NaN (as the driver pads it), which must not be
    # read; dx and the carry filled with garbage the kernels must overwrite
    C, H, W, N, PT, PL, rows = shape
    OH, OW = H + 2 * PT - 2, W + 2 * PL - 2        # pad PT, PL each side, 3x3
    TH, TW = -(-OH // 4), -(-OW // 4)
    kernels = _table(backend).winograd_kernels()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((N, C, H, W))
    dx = np.full(x.shape, 3.0)
    carry = np.full((C, 2, 4 * TW + 2, N), 7.0)
    inner = 0.0
    for th0 in range(0, TH, rows):
        r = min(rows, TH - th0)
        V = np.empty((36, C, r * TW, N))
        kernels.input_transform(x, V, th0, PT, PL, TW)
        dV = np.full((36, C + 1, r * TW, N), np.nan)
        dV[:, :C] = rng.standard_normal((36, C, r * TW, N))
        inner += float(np.sum(V * dV[:, :C]))
        kernels.grad_input_transform(dV, dx, carry, th0, PT, PL, TH)
    assert np.isfinite(dx).all()
    assert abs(float(np.sum(x * dx)) - inner) <= 1e-12 * np.abs(x * dx).sum()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("backend", WINO_BACKENDS)
def test_products_read_the_first_rows_of_a_padded_V(backend, dtype):
    # the backward's dV = U^T dM[:, :F], dM padded by a filter row of NaN
    F, C, G, P, N = 12, 6, 3, 4, 11
    rng = np.random.default_rng(9)
    U = rng.standard_normal((36, F, C // G)).astype(dtype)
    padded = np.full((36, C + 1, P, N), np.nan, dtype=dtype)
    padded[:, :C] = rng.standard_normal((36, C, P, N))
    M = np.empty((36, F, P, N), dtype=dtype)
    _table(backend).winograd_kernels().products(U, padded[:, :C], M)
    ref = np.einsum("kgfc,kgcl->kgfl", U.astype(np.float64).reshape(36, G, F // G, C // G),
                    padded[:, :C].astype(np.float64).reshape(36, G, C // G, P * N))
    assert np.abs(M - ref.reshape(M.shape)).max() <= BOUND[dtype] * np.abs(ref).max()


@pytest.mark.parametrize("level", SIMD_LEVELS[1:])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_cython_products_give_a_lane_the_same_bits_wherever_it_falls(monkeypatch, dtype,
                                                                     level):
    # register tiles, single vectors and the masked last vector sum the same
    # fused multiply-adds: an image's products do not depend on its chunk or
    # band, so a forward under fastcnn.no_grad() (chunks of its own) gives
    # the bits of one with grad (level 0, BLAS's, may round edge lanes
    # differently)
    kernels = _cython_winograd_at(monkeypatch, level)
    F, C = 12, 20
    rng = np.random.default_rng(3)
    U = rng.standard_normal((36, F, C)).astype(dtype)
    col = rng.standard_normal((36, C)).astype(dtype)
    seen = []
    for L, at in ((64, 5), (64, 63), (48, 40), (37, 36), (7, 3), (1, 0)):
        V = rng.standard_normal((36, C, 1, L)).astype(dtype)
        V[:, :, 0, at] = col
        M = np.empty((36, F, 1, L), dtype=dtype)
        kernels.products(U, V, M)
        seen.append(M[:, :, 0, at])
    for M in seen[1:]:
        np.testing.assert_array_equal(M, seen[0])


def test_cython_products_refuse_a_V_whose_elements_are_not_contiguous():
    # its register tiles step through V[k] as one block: a strided view
    # would be read wrongly, so it is refused
    kernels = _cython_winograd()
    U = np.ones((36, 4, 2), dtype=np.float32)
    V = np.ones((36, 2, 3, 8), dtype=np.float32)[:, :, :, ::2]
    with pytest.raises(ValueError, match="V\\[k\\] must be C-contiguous"):
        kernels.products(U, V, np.empty((36, 4, 3, 4), dtype=np.float32))
