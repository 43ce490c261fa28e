"""The benchmark's reference rows compute what fastcnn computes.

A timing comparison is only honest if every row does the same work, so the
tutorial-style code and the PyTorch rows of ``benchmarks/`` are checked here
against the ``loops`` backend (the spec): each op forward and backward on
small shapes, and one whole MNIST training step from the same weights.
"""
import os
import sys

import numpy as np
import pytest

import fastcnn
from fastcnn import ops

# benchmarks/ is not installed: reach it from the checkout. Appended, not
# prepended, so that ``fastcnn`` stays the installed package (with its
# compiled kernels) rather than the source tree's.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import runners, tutorial  # noqa: E402

try:
    from benchmarks import torch_ref  # noqa: E402
except ImportError:      # torch absent: only the tutorial rows are checked
    torch_ref = None
needs_torch = pytest.mark.skipif(torch_ref is None, reason="torch is not installed")

TOL = {"float32": 2e-4, "float64": 1e-10}


def close(a, b, dtype):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    np.testing.assert_allclose(a, b, rtol=TOL[dtype], atol=TOL[dtype] * np.abs(b).max())


CONV_CASES = [((2, 3, 7, 7), (4, 3, 3, 3), 1, 1), ((2, 2, 9, 8), (3, 2, 3, 3), 2, 0),
              ((1, 1, 6, 6), (2, 1, 3, 3), 1, 1)]
POOL_CASES = [((2, 3, 8, 8), 2, 2), ((1, 2, 7, 9), 3, 2), ((2, 1, 6, 6), 2, 1)]


def conv_case(case, dtype):
    xs, ws, s, p = case
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    y, ctx = ops.conv2d_forward(x, w, b, s, p, backend="loops")
    dy = rng.standard_normal(y.shape).astype(dtype)
    return x, w, b, s, p, dy, y, ops.conv2d_backward(dy, ctx)


def pool_case(kind, case, dtype):
    xs, k, s = case
    rng = np.random.default_rng(1)
    x = rng.standard_normal(xs).astype(dtype)
    fwd = ops.max_pool2d_forward if kind == "max" else ops.avg_pool2d_forward
    bwd = ops.max_pool2d_backward if kind == "max" else ops.avg_pool2d_backward
    y, ctx = fwd(x, k, s, 0, backend="loops")
    dy = rng.standard_normal(y.shape).astype(dtype)
    return x, k, s, dy, y, bwd(dy, ctx)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_tutorial_conv_matches_loops(case, dtype):
    x, w, b, s, p, dy, y, (dx, dw, db) = conv_case(case, dtype)
    layer = tutorial.Convolution(w, b, s, p)
    out = layer.forward(x)
    assert out.dtype == np.dtype(dtype)
    close(out, y, dtype)
    close(layer.backward(dy), dx, dtype)
    close(layer.dW, dw, dtype)
    close(layer.db, db, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", POOL_CASES)
def test_tutorial_pool_matches_loops(case, kind, dtype):
    x, k, s, dy, y, dx = pool_case(kind, case, dtype)
    layer = (tutorial.Pooling if kind == "max" else tutorial.AvgPooling)(k, k, s)
    close(layer.forward(x), y, dtype)
    close(layer.backward(dy), dx, dtype)


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_torch_conv_rows_match_loops(case, dtype):
    x, w, b, s, p, dy, y, grads = conv_case(case, dtype)
    forward, backward = torch_ref.conv2d(x, w, b, s, p)
    close(forward().detach().numpy(), y, dtype)
    for got, want in zip(backward(dy)(), grads):
        close(got.numpy(), want, dtype)


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", POOL_CASES)
def test_torch_pool_rows_match_loops(case, kind, dtype):
    x, k, s, dy, y, dx = pool_case(kind, case, dtype)
    forward, backward = torch_ref.pool2d(kind, x, k, s, 0)
    close(forward().detach().numpy(), y, dtype)
    close(backward(dy)()[0].numpy(), dx, dtype)


def test_every_backend_and_reference_is_a_row():
    impls = runners.implementations()
    assert impls[:len(fastcnn.available_backends())] == fastcnn.available_backends()
    assert "tutorial" in impls
    assert ("torch" in impls) == (torch_ref is not None)


def _fastcnn_step(dtype, x, y):
    """One loops training step of fastcnn's model with dropout off; (loss, logits, new state)."""
    from fastcnn import nn
    from fastcnn.models import mnist_cnn
    from fastcnn.training import train_step
    model = mnist_cnn(dtype=dtype, seed=3)
    model[9].p = 0.0    # dropout masks differ between libraries; the rest must not
    start = model.state_dict()
    model.eval()
    with fastcnn.use_backend("loops"):
        logits = model.forward(x)
        opt = nn.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loss = train_step(model, opt, x, y)
    return start, loss, logits, model.state_dict()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tutorial_network_step_matches_fastcnn(dtype):
    rng = np.random.default_rng(5)
    x, y = rng.random((3, 1, 28, 28)).astype(dtype), rng.integers(0, 10, 3)
    start, loss, logits, after = _fastcnn_step(dtype, x, y)
    net = tutorial.TutorialConvNet(dtype, dropout=0.0)
    net.load_fastcnn_state(start)
    close(net.predict(x), logits, dtype)
    got = tutorial.train_step(net, tutorial.Momentum(0.05, 0.9), x, y)
    # the tutorial loss takes log(p + 1e-7), as the original does (its gradient does not)
    assert got == pytest.approx(loss, rel=1e-5)
    for i, layer in ((1, 0), (2, 3), (3, 7), (4, 10)):
        w = after[f"{layer}.weight"]
        close(net.params[f"W{i}"], w.T if w.ndim == 2 else w, dtype)
        close(net.params[f"b{i}"], after[f"{layer}.bias"], dtype)


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_network_step_matches_fastcnn(dtype):
    rng = np.random.default_rng(6)
    x, y = rng.random((3, 1, 28, 28)).astype(dtype), rng.integers(0, 10, 3)
    start, loss, logits, after = _fastcnn_step(dtype, x, y)
    model = torch_ref.mnist_cnn(dtype, dropout=0.0)
    torch_ref.load_fastcnn_state(model, start)
    close(torch_ref.predict(model, x).numpy(), logits, dtype)
    got = torch_ref.train_step(model, torch_ref.sgd(model, 0.05, 0.9), x, y)
    assert got == pytest.approx(loss, rel=1e-5 if dtype == "float32" else 1e-6)
    for key, want in after.items():
        index, kind = key.split(".")
        param = getattr(model, torch_ref.FASTCNN_NAMES[index]).get_parameter(kind)
        close(param.detach().numpy(), want, dtype)
