"""fastcnn.no_grad(): the same forward numbers, nothing kept for a backward,
a clear error for a backward anyway, and the setting scoped and restored.

The Winograd path is the one that keeps less under it (its transformed
input): its forced-path cases run here on both compiled backends through
the registry, beside the plain ops on every backend."""
import threading

import numpy as np
import pytest

import fastcnn
from fastcnn import nn, ops
from fastcnn.models import build

rng = np.random.default_rng(0)
X = rng.standard_normal((70, 8, 10, 10)).astype(np.float32)     # 70: Winograd chunks, one short
W = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
B = rng.standard_normal(16).astype(np.float32)


def test_default_on_and_restored_after_an_error():
    assert fastcnn.grad_enabled()
    with pytest.raises(KeyError):
        with fastcnn.no_grad():
            assert not fastcnn.grad_enabled()
            raise KeyError("x")
    assert fastcnn.grad_enabled()


def test_scoped_to_its_thread():
    seen = []
    with fastcnn.no_grad():
        t = threading.Thread(target=lambda: seen.append(fastcnn.grad_enabled()))
        t.start()
        t.join()
    assert seen == [True]


@pytest.mark.parametrize("op, args", [
    ("conv2d", (X, W, B, 1, 1)),
    ("conv2d_relu", (X, W, B, 1, 1)),
    ("conv2d_relu_max_pool2d", (X, W, B, 1, 1)),
    ("max_pool2d", (X, 2)),
    ("relu", (X,)),
])
def test_same_forward_and_backward_refused(backend, op, args):
    fwd, bwd = getattr(ops, op + "_forward"), getattr(ops, op + "_backward")
    want, _ = fwd(*args, backend=backend)
    want = want.copy()          # the next forward may reuse the buffer
    with fastcnn.no_grad():
        got, ctx = fwd(*args, backend=backend)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(RuntimeError, match="no_grad"):
        bwd(np.ones_like(got), ctx)


@pytest.mark.parametrize("compiled", ["cython", "numba"])
def test_the_winograd_chunks_keep_nothing(compiled):
    if compiled not in fastcnn.available_backends():
        pytest.skip(f"{compiled} is not available here")
    from fastcnn.backend import get_module
    from fastcnn.backends import _winograd
    args = (X, W, B, (1, 1), (1, 1, 1, 1), (1, 1), 1, (70, 16, 10, 10))   # as ops passes them
    kernel = get_module(compiled).conv2d_forward
    for grad, kept in ((True, True), (False, False)):
        if grad:
            y, saved = kernel(*args)
        else:
            with fastcnn.no_grad():
                y, saved = kernel(*args)
        path, _, (U, [(_, _, chunks)]) = saved
        assert path == "winograd" and len(chunks) >= 2
        assert [V is not None for _, (V, _) in chunks] == [kept] * len(chunks)
        sizes = [sl.stop - sl.start for sl, _ in chunks]
        most = _winograd.chunk_limit(get_module(compiled)._ConvKernels, keep=grad)
        assert sum(sizes) == 70 and max(sizes) <= most
        assert all(n % _winograd.ALIGN == 0 for n in sizes[:-1])    # whole vectors first
    assert _winograd.CHUNK % _winograd.ALIGN == 0
    assert _winograd._chunks(70, 2, 64) == [slice(0, 36), slice(36, 70)]
    assert _winograd._chunks(70, 2, 16) == [slice(n0, min(70, n0 + 16)) for n0 in range(0, 70, 16)]


def test_a_model_under_no_grad():
    model = build("cnn", dtype="float32", seed=0).eval()
    x = rng.standard_normal((16, 1, 28, 28)).astype(np.float32)
    want = model.forward(x).copy()
    with fastcnn.no_grad():
        got = model.forward(x)
    # the same numbers but for rounding: without a backward to follow, a
    # layer may take a path that keeps nothing for one (conv1's ReLU and
    # pooling in the direct loops)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    grads = [p.grad for p in model.parameters()]
    with pytest.raises(RuntimeError, match="no_grad"):
        model.backward(np.ones_like(got))
    assert [p.grad for p in model.parameters()] == grads     # no layer ran
    model.forward(x)                                         # outside: a backward works again
    assert model.backward(np.ones_like(got)) is not None


def test_a_layer_alone_under_no_grad():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    with fastcnn.no_grad():
        y = conv.forward(X)
    with pytest.raises(RuntimeError, match="no_grad"):
        conv.backward(np.ones_like(y))


def test_a_grouped_convs_path_counts_the_backward_only_when_one_may_follow():
    # 32 channels a group: cython's Winograd wins forward + backward, the
    # direct loops the forward alone; numba keeps the direct loops
    if not {"cython", "numba"} <= set(fastcnn.available_backends()):
        pytest.skip("needs both compiled backends")
    from fastcnn.backends import _gemm_conv, cython, numba
    g = _gemm_conv.Geometry(64, 64, 16, 16, 64, 3, 3, 1, 1, 1, 1, 1, 1, 16, 16, 1, 1, 2)
    assert _gemm_conv.choose_path(cython._ConvKernels, g) == "winograd"
    assert _gemm_conv.choose_path(numba._ConvKernels, g) == "direct"
    with fastcnn.no_grad():
        assert _gemm_conv.choose_path(cython._ConvKernels, g) == "direct"
    g16 = g._replace(C=32, F=32)            # 16 channels a group: direct either way
    assert _gemm_conv.choose_path(cython._ConvKernels, g16) == "direct"
