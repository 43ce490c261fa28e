"""The fused ops conv2d_relu and conv2d_relu_max_pool2d on every backend
(from the registry): the composition conv2d -> relu (-> max_pool2d) on the
same backend and on ``loops`` is the oracle, forward and dx/dw/db, ties,
zeros, NaN and inf included; the registry's account of which backends have
the fused kernels; the door's checks; and ``nn.Sequential``'s fusion, fused
against unfused on the MNIST models."""
import contextlib

import numpy as np
import pytest

import fastcnn
from fastcnn import models, nn, ops
from fastcnn.backend import FUSED_OPS, fused_ops, get_module
from fastcnn.nn.fusion import FusedStep
from fastcnn.testing import assert_close

from cases import BACKENDS, CONV_CASES, CONV_DG_CASES, TOL, case_id

DTYPES = [np.float32, np.float64]
COMPILED = tuple(b for b in BACKENDS if b in ("cython", "numba"))

# (stride, padding, dilation, groups) with x (N, C, H, W) and w (F, C/G, KH, KW)
CONVS = [
    ((2, 3, 12, 13), (8, 3, 3, 3), 1, 1, 1, 1),
    ((2, 3, 12, 11), (4, 3, 2, 3), (2, 1), (1, 0), 1, 1),       # stride, asymmetric kernel
    ((2, 4, 13, 12), (6, 2, 3, 3), 1, 2, 2, 2),                 # dilation 2, groups 2
    ((2, 4, 12, 12), (4, 1, 3, 3), 1, 1, 1, 4),                 # depthwise
    ((2, 4, 10, 10), (8, 4, 1, 1), 1, 0, 1, 1),                 # 1x1: the pointwise path
    ((9, 8, 14, 14), (16, 8, 3, 3), 1, 1, 1, 1),                # MNIST-like, Winograd's shapes
    ((40, 3, 28, 28), (8, 3, 3, 3), 1, 1, 1, 1),                # per-image: blocks, chunks
]
# (kernel_size, stride, padding, dilation, ceil_mode)
POOLS = [(2, None, 0, 1, False), (3, 2, 1, 1, True), (3, 2, 1, 1, False),
         (2, 2, 0, 1, True), (2, 1, 0, 2, False)]


def _forced_paths(backend, x_shape, w_shape, conv):
    """None (the path the shapes choose) and, on a GEMM-driven backend,
    every other path of the driver that applies to this convolution."""
    paths = [None]
    table = getattr(get_module(backend), "_ConvKernels", None)
    if table is None:
        return paths
    from fastcnn.backends import _gemm_conv
    (N, C, H, W), (F, _, KH, KW) = x_shape, w_shape
    args, (_, _, OH, OW) = ops._conv_args(np.zeros(x_shape), np.zeros(w_shape), None, *conv)
    g = _gemm_conv.Geometry(N, C, H, W, F, KH, KW, *args[3], *args[4], OH, OW, *args[5],
                            args[6])
    return paths + [p for p in _gemm_conv.PATHS if _gemm_conv.path_applies(table, p, g)]


def _forced(path):
    if path is None:
        return contextlib.nullcontext()
    from fastcnn.backends import _gemm_conv
    return _gemm_conv.forced_path(path)


def _composed(x, w, b, conv, pool, backend):
    """The unfused ops: y and a backward dy -> (dx, dw, db)."""
    z, c_conv = ops.conv2d_forward(x, w, b, *conv, backend=backend)
    r, c_relu = ops.relu_forward(z, backend=backend)
    if pool is None:
        return r, lambda dy: ops.conv2d_backward(ops.relu_backward(dy, c_relu), c_conv)
    y, c_pool = ops.max_pool2d_forward(r, *pool, backend=backend)
    return y, lambda dy: ops.conv2d_backward(
        ops.relu_backward(ops.max_pool2d_backward(dy, c_pool), c_relu), c_conv)


def _fused(x, w, b, conv, pool, backend):
    if pool is None:
        y, ctx = ops.conv2d_relu_forward(x, w, b, *conv, backend=backend)
        return y, ctx, lambda dy: ops.conv2d_relu_backward(dy, ctx)
    y, ctx = ops.conv2d_relu_max_pool2d_forward(x, w, b, *conv, *pool, backend=backend)
    return y, ctx, lambda dy: ops.conv2d_relu_max_pool2d_backward(dy, ctx)


def _inputs(x_shape, w_shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    return x, w, b


def _close(got, ref, tol, name):
    """max |got - ref| / max |ref| <= tol: loops' accuracy contract as the
    Winograd harness measures it (tests/test_winograd.py), per array."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    scale = max(float(np.max(np.abs(ref))), 1e-30) if ref.size else 1.0
    err = float(np.max(np.abs(got - ref))) / scale if ref.size else 0.0
    assert err <= tol, f"{name}: relative error {err:.3g} > {tol:g} against loops"


def _check(x, w, b, conv, pool, backend, dy_special=False, path=None):
    """Fused on ``backend`` against the composition on that backend (the
    same numbers exactly) and on loops (to the accuracy contract; with
    special values the caller compares with loops itself)."""
    dtype = x.dtype.type
    x0, w0, b0 = x.copy(), w.copy(), None if b is None else b.copy()
    with _forced(path):
        y, ctx, back = _fused(x, w, b, conv, pool, backend)
        y_same, back_same = _composed(x, w, b, conv, pool, backend)
    y_ref, back_ref = _composed(x, w, b, conv, pool, "loops")
    assert ctx.backend == backend
    assert ctx.fused == (("conv2d_relu" if pool is None else "conv2d_relu_max_pool2d")
                         in fused_ops(backend))
    assert y.dtype == dtype and y.shape == y_ref.shape
    np.testing.assert_array_equal(y, y_same)
    assert not np.signbit(y[y == 0]).any(), "relu gives +0"
    if not dy_special:
        _close(y, y_ref, TOL[dtype], "y")
    dy = np.random.default_rng(7).standard_normal(y.shape).astype(dtype)
    if dy_special:
        dy.reshape(-1)[:4] = [np.inf, -np.inf, np.nan, -0.0]
    dy0 = dy.copy()
    grads = back(dy)
    same, ref = back_same(dy), back_ref(dy)
    for name, got, s, r in zip(("dx", "dw", "db"), grads, same, ref):
        assert got.dtype == dtype and got.shape == r.shape, name
        np.testing.assert_array_equal(got, s, err_msg=f"{name}: fused vs unfused on {backend}")
        if not dy_special:
            _close(got, r, TOL[dtype], name)
    for a, a0 in ((x, x0), (w, w0), (b, b0), (dy, dy0)):     # (b None: equal)
        np.testing.assert_array_equal(a, a0)            # inputs never modified
    return y, grads


# -- the registry -----------------------------------------------------------

def test_registry_says_which_backends_have_the_fused_kernels():
    for name in BACKENDS:
        assert set(fused_ops(name)) <= set(FUSED_OPS)
    for name in ("loops", "im2col"):
        if name in BACKENDS:
            assert fused_ops(name) == ()          # loops stays the spec; im2col composes
    for name in COMPILED:
        assert fused_ops(name) == FUSED_OPS


@pytest.mark.parametrize("backend", COMPILED)
def test_a_backend_without_the_fused_kernel_composes_on_the_same_backend(backend,
                                                                          monkeypatch):
    x, w, b = _inputs((2, 3, 8, 8), (4, 3, 3, 3), np.float64)
    mod = get_module(backend)
    for op in FUSED_OPS:
        monkeypatch.delattr(mod, op + "_forward")
    assert fused_ops(backend) == ()
    ran = []
    for kernel in ("conv2d_forward", "relu_forward", "max_pool2d_forward"):
        real = getattr(mod, kernel)
        monkeypatch.setattr(mod, kernel,
                            lambda *a, _real=real, _k=kernel: ran.append(_k) or _real(*a))
    y, ctx = ops.conv2d_relu_max_pool2d_forward(x, w, b, 1, 1, pool_kernel_size=2,
                                                backend=backend)
    assert (ctx.backend, ctx.fused) == (backend, False)
    assert ran == ["conv2d_forward", "relu_forward", "max_pool2d_forward"]
    y_ref, _ = _composed(x, w, b, (1, 1), (2,), "loops")
    assert_close(y, y_ref, 1e-9, "y")
    ops.conv2d_relu_max_pool2d_backward(np.ones_like(y), ctx)


# -- forward and gradients ----------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("conv_case", CONVS, ids=lambda c: case_id(c[:2]))
def test_conv2d_relu_is_the_composition(backend, dtype, conv_case):
    x_shape, w_shape, *conv = conv_case
    x, w, b = _inputs(x_shape, w_shape, dtype)
    for path in _forced_paths(backend, x_shape, w_shape, conv):
        _check(x, w, b, conv, None, backend, path=path)
    _check(x, w, b - 3, conv, None, backend)       # most outputs killed by the ReLU
    _check(x, w, None, conv, (2,), backend)        # no bias


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("conv_case", CONVS, ids=lambda c: case_id(c[:2]))
def test_conv2d_relu_max_pool2d_is_the_composition(backend, dtype, conv_case):
    x_shape, w_shape, *conv = conv_case
    x, w, b = _inputs(x_shape, w_shape, dtype)
    paths = _forced_paths(backend, x_shape, w_shape, conv)
    for i, pool in enumerate(POOLS):
        try:
            _composed(x, w, b, conv, pool, "loops")
        except ValueError:
            continue                               # the pool does not fit this conv's output
        _check(x, w, b, conv, pool, backend, path=paths[i % len(paths)])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CONV_CASES[:8] + CONV_DG_CASES[::3], ids=case_id)
def test_the_suites_conv_cases_fused(backend, case):
    """The suite's conv cases (float64) with a ReLU, and a 2x2 pool where it fits."""
    if len(case) == 10:
        N, C, H, W, F, KH, KW, stride, padding, bias = case
        dilation, groups = 1, 1
    else:
        N, C, H, W, F, KH, KW, stride, padding, dilation, groups, bias = case
    x, w, b = _inputs((N, C, H, W), (F, C // groups, KH, KW), np.float64, seed=3)
    conv = (stride, padding, dilation, groups)
    _check(x, w, b, conv, None, backend)
    try:
        _composed(x, w, b, conv, (2,), "loops")
    except ValueError:
        return
    _check(x, w, b, conv, (2,), backend)


def _special_plane(dtype):
    """One channel whose ReLU and max pooling tell implementations apart:
    ties of positive values, exact zeros (+0 and -0), windows of negatives
    only, a NaN, +inf and -inf."""
    x = np.random.default_rng(5).standard_normal((3, 1, 10, 11)).astype(dtype)
    x[0, 0, :4, :4] = 0.0                                  # zero windows
    x[0, 0, 4:6, 4:6] = -0.0
    x[0, 0, 6:8, :4] = -np.abs(x[0, 0, 6:8, :4]) - 0.5     # negatives only
    x[1, 0] = np.round(x[1, 0])                            # ties: 0, -0, 1, -1, 2 ...
    x[1, 0, 2:4, 2:4] = 1.0                                # a four-way positive tie
    x[2, 0, 1, 1] = np.nan
    x[2, 0, 3, 5] = np.inf
    x[2, 0, 5, 2] = -np.inf
    x[2, 0, 8, 8] = np.nan
    x[2, 0, 8, 9] = np.inf                                 # NaN and inf in one window
    return x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pool", [None] + POOLS, ids=str)
def test_ties_zeros_negatives_nan_and_inf_give_the_unfused_results(backend, dtype, pool):
    """A 1x1 identity conv, so the conv's output is x itself: the ReLU and
    pooling see these special values exactly, and dy has inf, NaN, -0 too.
    dx is then compared with loops' exactly, NaN for NaN."""
    x = _special_plane(dtype)
    w, b = np.ones((1, 1, 1, 1), dtype), np.zeros(1, dtype)
    with np.errstate(invalid="ignore"):
        for path in _forced_paths(backend, x.shape, w.shape, (1, 0, 1, 1))[1:]:
            _check(x, w, b, (1, 0, 1, 1), pool, backend, dy_special=True, path=path)
        y, (dx, dw, db) = _check(x, w, b, (1, 0, 1, 1), pool, backend, dy_special=True)
        y_ref, back_ref = _composed(x, w, b, (1, 0, 1, 1), pool, "loops")
        dy = np.random.default_rng(7).standard_normal(y.shape).astype(dtype)
        dy.reshape(-1)[:4] = [np.inf, -np.inf, np.nan, -0.0]
        dx_ref = back_ref(dy)[0]
    np.testing.assert_array_equal(y, y_ref)
    # NaN and inf where loops has them; overlapping windows sum in another order
    np.testing.assert_allclose(dx, dx_ref, rtol=TOL[dtype], atol=0)
    assert np.isnan(y).any() and (y == 0).any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pool", [None, (2,)], ids=str)
def test_changing_y_in_place_before_backward_changes_nothing(backend, pool):
    x, w, b = _inputs((2, 3, 8, 8), (4, 3, 3, 3), np.float64)
    y, _, back = _fused(x, w, b, (1, 1), pool, backend)
    want = [g.copy() for g in back(np.ones_like(y))]
    y, _, back = _fused(x, w, b, (1, 1), pool, backend)
    y[...] = -1.0                                  # the forward's mask must be its own
    y[0, 0, 0, 0] = 5.0
    for got, g in zip(back(np.ones_like(y)), want):
        np.testing.assert_array_equal(got, g)


# -- the door -------------------------------------------------------------------

BAD = [
    (dict(pool_kernel_size=0), ValueError, "pool_kernel_size"),
    (dict(pool_kernel_size=2, pool_stride=0), ValueError, "pool_stride"),
    (dict(pool_kernel_size=2, pool_padding=2), ValueError, "pool_padding"),
    (dict(pool_kernel_size=2, pool_dilation=0), ValueError, "pool_dilation"),
    (dict(pool_kernel_size=2, pool_ceil_mode="yes"), TypeError, "pool_ceil_mode"),
    (dict(pool_kernel_size=9), ValueError, "pool_kernel_size"),     # larger than the conv's 8x8
    (dict(pool_kernel_size=2, stride=0), ValueError, "stride"),
    (dict(pool_kernel_size=2, groups=2), ValueError, "groups"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs, error, name", BAD, ids=lambda v: str(v)[:40])
def test_bad_arguments_raise_before_any_kernel_runs(backend, kwargs, error, name, monkeypatch):
    mod = get_module(backend)
    for kernel in ("conv2d_forward", "relu_forward", "max_pool2d_forward",
                   *(op + "_forward" for op in fused_ops(backend))):
        monkeypatch.setattr(mod, kernel, lambda *a: pytest.fail("a kernel ran"))
    x, w, b = _inputs((2, 3, 8, 8), (4, 3, 3, 3), np.float64)
    kwargs = {"padding": 1, **kwargs}
    with pytest.raises(error, match=name):
        ops.conv2d_relu_max_pool2d_forward(x, w, b, backend=backend, **kwargs)
    if not any(k.startswith("pool_") for k in kwargs):
        with pytest.raises(error, match=name):
            ops.conv2d_relu_forward(x, w, b, backend=backend,
                                    **{k: v for k, v in kwargs.items()
                                       if not k.startswith("pool_")})


def test_bad_w_b_and_ctx_are_refused():
    x, w, b = _inputs((2, 3, 8, 8), (4, 3, 3, 3), np.float64)
    with pytest.raises(ValueError, match="w must have shape"):
        ops.conv2d_relu_forward(x, w[:, :2], b, backend="loops")
    with pytest.raises(ValueError, match="b must have shape"):
        ops.conv2d_relu_max_pool2d_forward(x, w, b[:2], backend="loops")
    y, ctx = ops.conv2d_forward(x, w, b, backend="loops")
    with pytest.raises(TypeError, match="ctx must be the context returned by conv2d_relu"):
        ops.conv2d_relu_backward(y, ctx)
    y, ctx = ops.conv2d_relu_forward(x, w, b, backend="loops")
    with pytest.raises(TypeError, match="conv2d_relu_max_pool2d_forward"):
        ops.conv2d_relu_max_pool2d_backward(y, ctx)
    with pytest.raises(ValueError, match="dy must have the shape"):
        ops.conv2d_relu_backward(y[:1], ctx)


# -- nn.Sequential ------------------------------------------------------------------

def _steps(model):
    return [type(s).__name__ if not isinstance(s, FusedStep) else
            "+".join(type(layer).__name__ for layer in s.layers) for s in model._pending]


def _loss_and_grads(model, x, labels, backend):
    model.seed(0)
    with fastcnn.use_backend(backend):
        logits = model.forward(x)
        steps = _steps(model)
        loss, dlogits = nn.softmax_cross_entropy(logits, labels)
        model.backward(dlogits)
    return loss, logits, {n: p.grad.copy() for n, p in model.named_parameters()}, steps


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, dtype", [("cnn", "float32"), ("light", "float64"),
                                         ("mobile", "float32")])
def test_sequential_fused_and_unfused_give_the_same_losses_and_gradients(backend, name,
                                                                         dtype):
    model = models.build(name, dtype=dtype, seed=1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 1, 28, 28)).astype(dtype)
    labels = rng.integers(0, 10, 4)
    loss, logits, grads, steps = _loss_and_grads(model, x, labels, backend)
    if name == "mobile":
        assert steps.count("Conv2d+ReLU") == 13
    else:
        assert steps[:2] == ["Conv2d+ReLU+MaxPool2d"] * 2
    with nn.fusion(False):
        loss_u, logits_u, grads_u, steps_u = _loss_and_grads(model, x, labels, backend)
    assert "Conv2d" in steps_u and not any("+" in s for s in steps_u)
    assert nn.fusion_enabled()
    assert loss == loss_u
    np.testing.assert_array_equal(logits, logits_u)
    assert grads.keys() == grads_u.keys()
    for k in grads:
        np.testing.assert_array_equal(grads[k], grads_u[k], err_msg=k)
    # and the unfused loops model, to the accuracy contract
    ref = models.build(name, dtype=dtype, seed=1)
    ref.fuse = False
    loss_r, _, grads_r, _ = _loss_and_grads(ref, x, labels, "loops")
    assert abs(loss - loss_r) <= TOL[np.dtype(dtype).type] * max(1.0, abs(loss_r))
    for k in grads:
        assert_close(grads[k], grads_r[k], 10 * TOL[np.dtype(dtype).type], k)


def test_fusion_switches_and_what_stays_the_same():
    model = models.build("light", dtype="float64", seed=0)
    plain = models.build("light", dtype="float64", seed=0)
    plain.fuse = False
    assert repr(model) == repr(plain)
    assert model.state_dict().keys() == plain.state_dict().keys()
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28))
    model.eval()
    model.forward(x)
    assert "Conv2d+ReLU+MaxPool2d" in _steps(model)       # eval mode fuses too
    plain.forward(x)
    assert "Conv2d+ReLU+MaxPool2d" not in _steps(plain)
    same_layers = nn.Sequential(*model.layers, fuse=False)   # the constructor's switch
    np.testing.assert_array_equal(same_layers.forward(x), model.forward(x))
    assert not any("+" in s for s in _steps(same_layers))
    # a forward's steps decide its backward, whatever the switch says since
    model.train()
    y = model.forward(x)
    with nn.fusion(False):
        dx = model.backward(np.ones_like(y))
    assert dx.shape == x.shape and model[0].weight.grad is not None
    with nn.fusion(False):
        y = model.forward(x)
    dx2 = model.backward(np.ones_like(y))
    assert dx2.shape == x.shape
    # the switch is restored after an error
    with pytest.raises(RuntimeError):
        with nn.fusion(False):
            raise RuntimeError
    assert nn.fusion_enabled()
    with pytest.raises(RuntimeError, match="without a preceding forward"):
        model.backward(np.ones_like(y))


def test_only_the_exact_layer_classes_are_fused():
    class MyReLU(nn.ReLU):
        def forward(self, x):
            return super().forward(x) * 2

    kw = {"dtype": "float64", "rng": np.random.default_rng(0)}
    model = nn.Sequential(nn.Conv2d(1, 2, 3, **kw), MyReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(2, 2, 3, **kw), nn.ReLU(), nn.Conv2d(2, 2, 1, **kw))
    model.forward(np.ones((1, 1, 12, 12)))
    assert _steps(model) == ["Conv2d", "MyReLU", "MaxPool2d", "Conv2d+ReLU", "Conv2d"]


def test_the_fused_plan_is_kept_and_made_again_when_the_layers_or_switches_change():
    kw = {"dtype": "float64", "rng": np.random.default_rng(0)}
    x = np.random.default_rng(1).standard_normal((2, 1, 12, 12))
    model = nn.Sequential(nn.Conv2d(1, 2, 3, **kw), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(2, 2, 3, **kw), nn.ReLU())
    model.forward(x)
    first = model._pending
    model.forward(x)
    assert model._pending is first                      # kept between forwards

    def check(expected):
        y = model.forward(x)
        assert _steps(model) == expected
        fresh = nn.Sequential(*model.layers, fuse=False)  # the layers one by one
        np.testing.assert_allclose(y, fresh.forward(x), rtol=1e-12, atol=0)

    check(["Conv2d+ReLU+MaxPool2d", "Conv2d+ReLU"])
    model.layers[2] = nn.AvgPool2d(2)                   # a layer replaced
    check(["Conv2d+ReLU", "AvgPool2d", "Conv2d+ReLU"])
    model.layers[2] = nn.MaxPool2d(2)
    check(["Conv2d+ReLU+MaxPool2d", "Conv2d+ReLU"])
    model.layers.append(nn.MaxPool2d(2))                # a layer added
    check(["Conv2d+ReLU+MaxPool2d", "Conv2d+ReLU+MaxPool2d"])
    del model.layers[1]                                 # a layer removed
    check(["Conv2d", "MaxPool2d", "Conv2d+ReLU+MaxPool2d"])
    model.layers[1].__class__ = nn.ReLU                 # a layer's type changed in place
    check(["Conv2d+ReLU", "Conv2d+ReLU+MaxPool2d"])
    model.fuse = False                                  # the switches, after a forward
    check(["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d"])
    model.fuse = True
    with nn.fusion(False):
        check(["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d"])
    check(["Conv2d+ReLU", "Conv2d+ReLU+MaxPool2d"])
    # and a backward after a kept plan's forward fills the gradients
    y = model.forward(x)
    dx = model.backward(np.ones_like(y))
    assert dx.shape == x.shape and model[0].weight.grad is not None



@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("cython", "numba")])
def test_a_kept_plans_forward_reuses_the_last_forwards_workspace(backend):
    # the kept FusedStep drops its last ctx before it runs: a second forward
    # takes the same pooled scratch back instead of a second set (outputs
    # are not compared: the unfused layers keep theirs until they run again)
    from fastcnn.backends._workspace import workspace
    model = models.build("cnn", dtype="float32", seed=0).eval()
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    with fastcnn.use_backend(backend):
        model.forward(x)
        held = workspace.held_bytes()
        for _ in range(3):
            model.forward(x)
    assert workspace.held_bytes() == held


# -- crosscheck -------------------------------------------------------------------

def test_crosscheck_runs_the_fused_model_and_catches_a_broken_fused_kernel(monkeypatch):
    from fastcnn import crosscheck as cc
    rng = np.random.default_rng(0)
    x, labels = rng.standard_normal((8, 1, 28, 28)), rng.integers(0, 10, 8)
    results = cc.crosscheck(BACKENDS, x, labels, steps=2, batch_size=4)
    for r in results:
        assert r.fuse and r.fused == fused_ops(r.backend)
        assert r.worst.rel <= cc.DEFAULT_TOLERANCE["float64"], r.backend
    for name in COMPILED:                   # off by 1e-6 in the fused kernel only
        mod = get_module(name)
        real = mod.conv2d_relu_max_pool2d_forward
        monkeypatch.setattr(mod, "conv2d_relu_max_pool2d_forward",
                            lambda *a, _real=real: (lambda y, s: (y * (1 + 1e-6), s))(*_real(*a)))
        [r] = cc.crosscheck([name], x, labels, steps=1, batch_size=4)
        assert r.worst.rel > cc.DEFAULT_TOLERANCE["float64"]
        [r] = cc.crosscheck([name], x, labels, steps=1, batch_size=4, fuse=False)
        assert r.worst.rel <= cc.DEFAULT_TOLERANCE["float64"] and r.fused == ()


def test_auto_runs_the_fused_op_on_the_backend_it_chooses_for_the_conv():
    from fastcnn import _auto
    x, w, b = _inputs((8, 3, 12, 12), (4, 3, 3, 3), np.float64)
    _auto.reset()
    try:
        y, ctx = ops.conv2d_relu_max_pool2d_forward(x, w, b, 1, 1, pool_kernel_size=2,
                                                    backend="auto")
        [choice] = fastcnn.auto_choices()
        assert (choice["op"], choice["backend"]) == ("conv2d", ctx.backend)
        assert ctx.fused == ("conv2d_relu_max_pool2d" in fused_ops(ctx.backend))
        y_ref, _ = _composed(x, w, b, (1, 1), (2,), "loops")
        _close(y, y_ref, 1e-9, "y")
    finally:
        _auto.reset()


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("dtype", DTYPES)
def test_winograd_plane_pooling_kernels_give_the_nchw_results(backend, dtype):
    """The Winograd path's fused pooling works on its output planes (batch
    innermost): pool_relu_2x2 must give loops' relu + 2x2 max pooling
    exactly (ties, +-0, NaN, inf, windows of negatives), and unpool_relu,
    fed that argmax (or the NCHW kernels' argmax of an overlapping 3x3/2
    pooling), must give loops' gradient exactly, zero outside the output."""
    wino = get_module(backend)._ConvKernels.winograd_kernels()
    z = _special_plane(dtype).reshape(3, 1, 10, 11)
    z = np.concatenate([z, z[::-1] * -1.5], axis=1)            # F = 2: (3, 2, 10, 11)
    N, F, OH, OW = z.shape
    P = (F, 12, 12, N)                                          # (F, 4*TH, 4*TW, N)
    ys = np.full(P, 7.0, dtype)
    ys[:, :OH, :OW] = z.transpose(1, 2, 3, 0)                   # the planes, batch innermost
    with np.errstate(invalid="ignore"):
        y_ref, c_pool = ops.max_pool2d_forward(ops.relu_forward(z, backend="loops")[0], 2,
                                               backend="loops")
        y = np.empty_like(y_ref)
        argmax = np.empty(y.shape, np.intc)
        wino.pool_relu_2x2(ys, y, argmax, OW)
        np.testing.assert_array_equal(y, y_ref)
        assert (np.signbit(y) == np.signbit(y_ref)).all()
        dy = np.random.default_rng(8).standard_normal(y.shape).astype(dtype)
        dy.reshape(-1)[:4] = [np.inf, -np.inf, np.nan, -0.0]
        relu_ctx = ops.relu_forward(z, backend="loops")[1]
        dz_ref = ops.relu_backward(ops.max_pool2d_backward(dy, c_pool), relu_ctx)
        for two_by_two in (True, False):                        # the 2x2 loops, the general ones
            dys = np.full(P, 7.0, dtype)
            wino.unpool_relu(dy, argmax, dys, OW, two_by_two)
            assert not dys[:, OH:].any() and not dys[:, :, OW - 1:].any()   # OW odd: a column out
            dz = dys[:, :OH, :OW].transpose(3, 0, 1, 2)
            np.testing.assert_array_equal(dz, dz_ref)
        # an overlapping pooling's argmax from the NCHW fused kernels
        one = np.ones((F, 1, 1, 1), dtype)
        yo, ctx = ops.conv2d_relu_max_pool2d_forward(z, one, None, groups=F,
                                                     pool_kernel_size=3, pool_stride=2,
                                                     pool_padding=1, backend=backend)
        dyo = np.random.default_rng(9).standard_normal(yo.shape).astype(dtype)
        dyo.reshape(-1)[:3] = [np.inf, np.nan, -0.0]
        dz_nchw = ops.conv2d_relu_max_pool2d_backward(dyo, ctx)[0]
        wino.unpool_relu(dyo, ctx.saved[2], dys, OW, False)
        np.testing.assert_array_equal(dys[:, :OH, :OW].transpose(3, 0, 1, 2), dz_nchw)


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape", [(9, 8, 14, 14), (10, 8, 11, 13), (8, 3, 4, 5)], ids=str)
def test_winograd_pooling_by_band_is_the_pooling_over_the_planes(backend, dtype, x_shape,
                                                                 monkeypatch):
    """The fused 2x2 pooling inside Winograd's band loop (the kernels'
    output_pool_relu_2x2 and grad_output_unpool_2x2) and over the chunk's
    output planes after it (pool_relu_2x2, unpool_relu): the same numbers
    exactly, y, argmax, dx, dw and db, NaN included, with bands of one tile
    row, of several and of all; odd sizes whose last tile row or column
    pools nothing; and both routes close to loops."""
    from fastcnn.backends import _winograd
    wino = get_module(backend)._ConvKernels.winograd_kernels()
    calls = {}
    for name in ("output_pool_relu_2x2", "grad_output_unpool_2x2", "pool_relu_2x2",
                 "unpool_relu"):
        def spy(*args, _kernel=getattr(wino, name), _name=name):
            calls[_name] = calls.get(_name, 0) + 1
            return _kernel(*args)
        monkeypatch.setattr(wino, name, spy)
    x, w, b = _inputs(x_shape, (6, x_shape[1], 3, 3), dtype)
    x_nan = x.copy()
    x_nan[1, 0, 2, 3] = np.nan                  # spreads over a few tiles of every filter
    dy = None
    for band_tiles in (1, 4, 10 ** 6):
        monkeypatch.setattr(_winograd, "BAND_TILES", band_tiles)
        for xin in (x, x_nan):
            got = {}
            for by_band in (False, True):
                monkeypatch.setattr(_winograd, "_pools_by_band", lambda *a, _v=by_band: _v)
                with _forced("winograd"), np.errstate(invalid="ignore"):
                    y, ctx = ops.conv2d_relu_max_pool2d_forward(xin, w, b, 1, 1,
                                                                pool_kernel_size=2,
                                                                backend=backend)
                    if dy is None:
                        dy = np.random.default_rng(4).standard_normal(y.shape).astype(dtype)
                    got[by_band] = (y, ctx.saved[2],
                                    *ops.conv2d_relu_max_pool2d_backward(dy, ctx))
            for a, c in zip(got[False], got[True]):
                np.testing.assert_array_equal(a, c)
            if xin is x:
                y_ref, back_ref = _composed(x, w, b, (1, 1), (2,), "loops")
                for name, a, r in zip(("y", "dx", "dw", "db"), (got[True][0], *got[True][2:]),
                                      (y_ref, *back_ref(dy))):
                    _close(a, r, TOL[dtype], name)
    assert all(calls.get(k, 0) > 0 for k in ("output_pool_relu_2x2", "grad_output_unpool_2x2",
                                             "pool_relu_2x2", "unpool_relu")), calls
