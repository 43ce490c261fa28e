"""``input_grad=False``: the conv backwards (plain and fused) and the nn
backwards skip the gradient of the input, as PyTorch does for a network's
images, on every backend and every conv path of the compiled backends.

What is checked: dx is None; dw and db are bitwise those of
``input_grad=True`` (the same products in the same order: only dx's work is
left out); the kernels only dx uses are never called (each replaced by one
that raises); Sequential passes the flag to its first step only; a flag
that is not a bool is refused, naming ``input_grad``; the training step
asks for no dx.
"""
import contextlib

import numpy as np
import pytest

from fastcnn import nn, ops
from fastcnn.backend import fused_ops, get_module
from fastcnn.backends import _direct, _gemm_conv, _winograd, _workspace

from cases import BACKENDS, conv_dg_inputs, case_id

DTYPES = [np.float32, np.float64]
OPS = ["conv2d", "conv2d_relu", "conv2d_relu_max_pool2d"]

# (N, C, H, W, F, KH, KW, stride, padding, dilation, groups, bias); every
# conv output at least 2x2, for the fused op's 2x2 max pooling
CASES = [
    (8, 4, 9, 7, 6, 3, 3, 1, 1, 1, 1, True),       # 3x3/1: every path but the 1x1 one
    (8, 3, 10, 9, 4, 3, 3, 1, 2, 2, 1, True),      # dilated: Winograd's phases
    (8, 3, 8, 9, 4, 3, 3, 1, 0, 3, 1, True),       # OH < DH: input phases that reach no output
    (8, 8, 6, 7, 8, 3, 3, 1, 1, 1, 4, True),       # grouped
    (8, 4, 6, 6, 4, 3, 3, 1, 1, 1, 4, False),      # depthwise, stride 1
    (8, 4, 7, 6, 8, 3, 3, 2, 1, 1, 4, True),       # depthwise x2, stride 2
    (8, 6, 6, 7, 4, 1, 1, 1, 0, 1, 1, True),       # pointwise
    (8, 4, 9, 9, 6, 1, 1, 2, 0, 1, 2, False),      # pointwise, strided, grouped
    (3, 2, 9, 8, 3, 3, 2, (2, 1), (2, 1), 1, 1, False),   # strided, uneven kernel
]


def _table(backend):
    return getattr(get_module(backend), "_ConvKernels", None)


def _geometry(case):
    """The shared driver's Geometry of a case, from fastcnn.ops' own sizes."""
    x, w, b, kw = conv_dg_inputs(case, np.float32)
    (x, w, _, stride, pads, dil, groups, y_shape), _ = ops._conv_args(x, w, b, **kw)
    (N, C, H, W), (F, _, KH, KW) = x.shape, w.shape
    return _gemm_conv.Geometry(N, C, H, W, F, KH, KW, *stride, *pads, *y_shape[2:], *dil,
                               groups)


def _runs():
    """(backend, path, case): each backend without the shared driver once per
    case (path None), each one with it on every path that applies."""
    runs = []
    for backend in BACKENDS:
        table = _table(backend)
        for case in CASES:
            if table is None:
                runs.append((backend, None, case))
                continue
            g = _geometry(case)
            runs += [(backend, path, case) for path in _gemm_conv.PATHS
                     if _gemm_conv.path_applies(table, path, g)]
    return runs


RUNS = _runs()


def _run_id(run):
    backend, path, case = run
    return f"{backend}-{path or 'own'}-{case_id(case)}"


def _forward(op, backend, path, x, w, b, kw):
    with _gemm_conv.forced_path(path) if path else contextlib.nullcontext():
        return getattr(ops, op + "_forward")(x, w, b, **kw, backend=backend)


# the fused ops run on the backend's fused kernels where it has them, and
# (composed) as fastcnn.ops' composition of its unfused ones
OP_RUNS = [("conv2d", False)] + [(op, composed) for op in OPS[1:] for composed in (False, True)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("op, composed", OP_RUNS,
                         ids=[op + ("-composed" if c else "") for op, c in OP_RUNS])
@pytest.mark.parametrize("run", RUNS, ids=_run_id)
def test_same_weight_grads_and_no_dx(run, op, composed, dtype, monkeypatch):
    backend, path, case = run
    if composed:
        monkeypatch.setattr(ops, "has_fused", lambda mod, op: False)
    x, w, b, kw = conv_dg_inputs(case, dtype)
    y, ctx = _forward(op, backend, path, x, w, b, kw)
    y2, ctx2 = _forward(op, backend, path, x, w, b, kw)
    if op != "conv2d":
        assert ctx.fused == (not composed and op in fused_ops(backend))
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    backward = getattr(ops, op + "_backward")
    dx, dw, db = backward(dy, ctx)
    none, dw2, db2 = backward(dy, ctx2, input_grad=False)
    assert none is None
    assert dx.shape == x.shape and dx.dtype == dtype
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(dw2, dw)        # bitwise: only dx's work left out
    np.testing.assert_array_equal(db2, db)
    assert dw2.dtype == db2.dtype == dtype


# ---------------------------------------------------------------- not computed

def _boom(what):
    def boom(*args, **kwargs):
        raise AssertionError(f"{what} ran: dx's work")
    return boom


def _forbid_dx(monkeypatch, backend, path, x_shape):
    """Replace what only dx uses on (backend, path) by functions that raise;
    the compiled backends' conv drivers also refuse an output array of
    x's shape (dx's)."""
    mod = get_module(backend)
    if backend == "loops":
        monkeypatch.setattr(mod, "_unpad", _boom("loops' dx crop"))
        return
    if backend == "im2col":
        monkeypatch.setattr(mod, "_col2im", _boom("im2col's col2im"))
        return
    table = mod._ConvKernels
    monkeypatch.setattr(table, "col2im", staticmethod(_boom("col2im")))
    if path == "winograd":
        wino = table.winograd_kernels()
        monkeypatch.setattr(wino, "grad_input_transform", _boom("grad_input_transform"))
    if path == "direct":   # dx is the direct forward loops over dy
        monkeypatch.setattr(table.direct_kernels(), "forward", _boom("the dx loops"))
    for driver in (_gemm_conv, _winograd, _direct):
        monkeypatch.setattr(driver, "outputs", _NoDxOutputs(x_shape))


class _NoDxOutputs:
    """The output pool, refusing an array of dx's shape."""

    def __init__(self, x_shape):
        self.x_shape = tuple(x_shape)

    def take(self, shape, dtype):
        assert tuple(shape) != self.x_shape, "an output array of dx's shape was taken"
        return _workspace.outputs.take(shape, dtype)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("run", RUNS, ids=_run_id)
def test_dx_kernels_never_run(run, op, monkeypatch):
    backend, path, case = run
    x, w, b, kw = conv_dg_inputs(case, np.float32)
    y, ctx = _forward(op, backend, path, x, w, b, kw)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    y2, ctx2 = _forward(op, backend, path, x, w, b, kw)
    backward = getattr(ops, op + "_backward")
    with monkeypatch.context() as patched:
        _forbid_dx(patched, backend, path, x.shape)
        dx, dw, db = backward(dy, ctx, input_grad=False)
        assert dx is None and dw.shape == w.shape
        if path != "depthwise":    # its kernels compute dx with dw: nothing to forbid
            with pytest.raises(AssertionError, match="dx's"):
                backward(dy, ctx2)                # the spies do see dx's work


def test_cupy_kernels_skip_col2im(monkeypatch):
    """The cupy backend's kernels (run on the host by their NumPy engine):
    no col2im gather for input_grad=False, the same dw and db."""
    from fastcnn.backends import _cupy_mirror as mirror
    x, w, b, kw = conv_dg_inputs((2, 4, 7, 6, 6, 3, 3, 1, 1, 1, 2, True), np.float32)
    args, y_shape = ops._conv_args(x, w, b, **kw)
    y, saved = mirror.conv2d_forward(*args)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    dx, dw, db = mirror.conv2d_backward(dy, saved, True)
    monkeypatch.setattr(mirror.conv2d_backward.__self__.engine, "gather_sum",
                        _boom("the col2im gather"))
    none, dw2, db2 = mirror.conv2d_backward(dy, saved, False)
    assert none is None and dx.shape == x.shape
    np.testing.assert_array_equal(dw2, dw)
    np.testing.assert_array_equal(db2, db)


# ---------------------------------------------------------------- nn

def _model(kind, rng):
    if kind == "cnn":          # fused: Conv->ReLU->Pool, Conv->ReLU; then the dense head
        return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, rng=rng), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, rng=rng), nn.ReLU(),
                             nn.Flatten(), nn.Dropout(0.25, rng=rng),
                             nn.Linear(6 * 2 * 2, 5, rng=rng))
    if kind == "plain-conv-first":   # a first conv that fuses with nothing
        return nn.Sequential(nn.Conv2d(2, 3, 3, rng=rng), nn.AvgPool2d(2), nn.Flatten(),
                             nn.Linear(3 * 3 * 3, 5, rng=rng))
    if kind == "nested":
        return nn.Sequential(nn.Sequential(nn.Conv2d(2, 4, 3, rng=rng), nn.ReLU()),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 5, rng=rng))
    if kind == "dense":        # parameter-free first layer
        return nn.Sequential(nn.Flatten(), nn.Linear(2 * 8 * 8, 7, rng=rng), nn.ReLU(),
                             nn.Linear(7, 5, rng=rng))
    raise ValueError(kind)


@pytest.mark.parametrize("fuse", [True, False], ids=["fuse", "nofuse"])
@pytest.mark.parametrize("kind", ["cnn", "plain-conv-first", "nested", "dense"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_sequential_same_grads(backend, kind, fuse):
    import fastcnn
    x = np.random.default_rng(0).standard_normal((4, 2, 8, 8)).astype(np.float32)
    grads = []
    for input_grad in (True, False):
        model = _model(kind, np.random.default_rng(2))
        model.fuse = fuse
        model.seed(3)
        with fastcnn.use_backend(backend):
            out = model.forward(x)
            dy = np.random.default_rng(4).standard_normal(out.shape).astype(np.float32)
            dx = model.backward(dy, input_grad=input_grad)
        if input_grad:
            assert dx.shape == x.shape
        else:
            assert dx is None
        grads.append([p.grad for p in model.parameters()])
    for g_true, g_false in zip(*grads):
        np.testing.assert_array_equal(g_false, g_true)


def test_sequential_passes_the_flag_to_its_first_step_only():
    seen = []

    class Spy(nn.ReLU):
        def backward(self, dy, input_grad=True):
            seen.append(input_grad)
            return super().backward(dy, input_grad)

    model = nn.Sequential(Spy(), Spy(), Spy())
    x = np.ones((2, 3), dtype=np.float32)
    model.forward(x)
    assert model.backward(x, input_grad=False) is None
    assert seen == [True, True, False]       # backward runs the steps in reverse


@pytest.mark.parametrize("layer", [nn.ReLU(), nn.Flatten(), nn.MaxPool2d(2), nn.AvgPool2d(2),
                                   nn.AdaptiveMaxPool2d(1), nn.AdaptiveAvgPool2d(1),
                                   nn.Dropout(0.5)], ids=repr)
def test_parameter_free_layers_return_none_and_drop_their_state(layer):
    x = np.ones((2, 3, 4, 4), dtype=np.float32)
    y = layer.forward(x)
    assert layer.backward(np.ones_like(y), input_grad=False) is None
    with pytest.raises(RuntimeError, match="without a preceding forward"):
        layer.backward(np.ones_like(y))


def test_linear_skips_dx():
    rng = np.random.default_rng(0)
    lin = nn.Linear(6, 4, rng=rng)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    dy = rng.standard_normal((3, 4)).astype(np.float32)
    lin.forward(x)
    dx = lin.backward(dy)
    dw, db = lin.weight.grad, lin.bias.grad
    lin.forward(x)
    assert lin.backward(dy, input_grad=False) is None
    np.testing.assert_array_equal(lin.weight.grad, dw)
    np.testing.assert_array_equal(lin.bias.grad, db)
    np.testing.assert_allclose(dx, dy @ lin.weight.data, rtol=1e-6)


# ---------------------------------------------------------------- bad flags

@pytest.mark.parametrize("bad", ["no", 0, 1, None, np.array([True])], ids=repr)
@pytest.mark.parametrize("op", OPS)
def test_ops_refuse_a_flag_that_is_not_a_bool(op, bad):
    x, w, b, kw = conv_dg_inputs(CASES[0], np.float32)
    y, ctx = getattr(ops, op + "_forward")(x, w, b, **kw, backend="loops")
    with pytest.raises(TypeError, match="input_grad must be a bool"):
        getattr(ops, op + "_backward")(np.ones_like(y), ctx, input_grad=bad)
    # NumPy's bool is a bool
    dx, _, _ = getattr(ops, op + "_backward")(np.ones_like(y), ctx, input_grad=np.False_)
    assert dx is None


@pytest.mark.parametrize("fuse", [True, False], ids=["fuse", "nofuse"])
def test_nn_refuses_a_flag_that_is_not_a_bool(fuse):
    model = _model("cnn", np.random.default_rng(0))
    model.fuse = fuse
    out = model.forward(np.ones((2, 2, 8, 8), dtype=np.float32))
    with pytest.raises(TypeError, match="input_grad must be a bool"):
        model.backward(np.ones_like(out), input_grad="no")
    for layer in (nn.Linear(3, 2), nn.ReLU()):
        layer.forward(np.ones((2, 3), dtype=np.float32))
        with pytest.raises(TypeError, match="input_grad must be a bool"):
            layer.backward(np.ones((2, 2 if isinstance(layer, nn.Linear) else 3),
                                   dtype=np.float32), input_grad="no")


# ---------------------------------------------------------------- training

def test_train_step_asks_for_no_input_grad(monkeypatch):
    from fastcnn.training import train_step
    model = _model("cnn", np.random.default_rng(0))
    opt = nn.SGD(model.parameters(), lr=0.1)
    calls = []
    backward = model.backward

    def spy(dy, input_grad=True):
        calls.append(input_grad)
        return backward(dy, input_grad=input_grad)

    monkeypatch.setattr(model, "backward", spy)
    x = np.random.default_rng(1).standard_normal((4, 2, 8, 8)).astype(np.float32)
    train_step(model, opt, x, np.array([0, 1, 2, 3]))
    assert calls == [False]
