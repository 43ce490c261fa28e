"""The benchmark's reference rows compute what fastcnn computes.

A timing comparison is only honest if every row does the same work, so the
tutorial-style code and the PyTorch rows of ``benchmarks/`` are checked here
against the ``loops`` backend (the spec): each op forward and backward,
called exactly as the benchmark calls it, and one whole MNIST training step
from the same weights.
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
from benchmarks import common, runners, tutorial  # noqa: E402

try:
    from benchmarks import torch_ref  # noqa: E402
except ImportError:      # torch absent: only the tutorial rows are checked
    torch_ref = None
needs_torch = pytest.mark.skipif(torch_ref is None, reason="torch is not installed")

TOL = {"float32": 2e-4, "float64": 1e-10}
# Small layers in the benchmark's form: (op, layer, x shape), strides and padding included.
rng = np.random.default_rng(0)
CASES = [common.Case(f"small{i}", op, layer, shape) for i, (op, layer, shape) in enumerate([
    ("conv2d", fastcnn.nn.Conv2d(3, 4, 3, padding=1, dtype="float64", rng=rng), (2, 3, 7, 7)),
    ("conv2d", fastcnn.nn.Conv2d(2, 3, 3, stride=2, dtype="float64", rng=rng), (2, 2, 9, 8)),
    ("max_pool2d", fastcnn.nn.MaxPool2d(2), (2, 3, 8, 8)),
    ("max_pool2d", fastcnn.nn.MaxPool2d(3, 2), (1, 2, 7, 9)),
    ("avg_pool2d", fastcnn.nn.AvgPool2d(2, 1), (2, 1, 6, 6)),
    ("avg_pool2d", fastcnn.nn.AvgPool2d(3, 2, 1), (1, 2, 7, 9)),
    ("relu", fastcnn.nn.ReLU(), (2, 3, 5, 5)),
    ("relu", fastcnn.nn.ReLU(), (4, 7)),
    ("adaptive_avg_pool2d", fastcnn.nn.AdaptiveAvgPool2d((3, 2)), (2, 3, 7, 5)),
    ("adaptive_avg_pool2d", fastcnn.nn.AdaptiveAvgPool2d(1), (2, 4, 6, 6)),
    ("adaptive_max_pool2d", fastcnn.nn.AdaptiveMaxPool2d((3, None)), (2, 3, 7, 5)),
    ("adaptive_max_pool2d", fastcnn.nn.AdaptiveMaxPool2d(1), (2, 4, 6, 6)),
    ("conv2d", fastcnn.nn.Conv2d(4, 4, 3, padding=1, groups=4, dtype="float64", rng=rng),
     (2, 4, 7, 7)),
    ("conv2d", fastcnn.nn.Conv2d(4, 6, 3, 2, 2, dilation=2, groups=2, dtype="float64", rng=rng),
     (2, 4, 9, 8)),
    ("conv2d", fastcnn.nn.Conv2d(3, 5, 1, dtype="float64", rng=rng), (2, 3, 5, 5)),
    ("max_pool2d", fastcnn.nn.MaxPool2d(3, 2, 1, ceil_mode=True), (1, 2, 8, 8)),
])]


def close(a, b, dtype):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    np.testing.assert_allclose(a, b, rtol=TOL[dtype], atol=TOL[dtype] * np.abs(b).max())


def spec(case, dtype):
    """(x, args, dy, y, grads) of ``case`` by the loops backend; grads is a tuple."""
    x = common.array((case.name, "x"), case.x_shape, dtype)
    args = common.op_args(case.layer, dtype)
    y, ctx = getattr(ops, case.op + "_forward")(x, *args, backend="loops")
    dy = common.array((case.name, "dy"), y.shape, dtype)
    grads = getattr(ops, case.op + "_backward")(dy, ctx)
    return x, args, dy, y, grads if isinstance(grads, tuple) else (grads,)


def test_cases_cover_every_kernel():
    assert {c.op for c in CASES} == set(common.OPS)
    assert {c.op for c in common.MNIST_CASES} == set(common.OPS)


def _tutorial_lacks(case):
    """What the tutorial code refuses rather than compute wrongly, as its error says it."""
    m = case.layer
    if "avg_pool2d" in case.op or case.op.startswith("adaptive"):
        return f"no {case.op}"
    if case.op == "conv2d" and (m.groups != 1 or m.dilation != 1):
        return "no dilated or grouped convolution"
    if case.op == "max_pool2d" and (m.padding or m.ceil_mode):
        return "no padded .* max pooling"
    return None


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.op}-{c.name}")
def test_tutorial_op_rows_match_loops(case, dtype):
    x, args, dy, y, grads = spec(case, dtype)
    if _tutorial_lacks(case):
        with pytest.raises(NotImplementedError, match=_tutorial_lacks(case)):
            tutorial.op(case.op, x, *args)
        return
    forward, grad = tutorial.op(case.op, x, *args)
    out = forward()
    assert out.dtype == np.dtype(dtype)
    close(out, y, dtype)
    close(grad(dy)(), grads[0], dtype)
    if case.op == "conv2d":     # dW and db stay on the layer, as in the tutorial
        layer = tutorial.Convolution(*args[:4])
        layer.forward(x)
        layer.backward(dy)
        close(layer.dW, grads[1], dtype)
        close(layer.db, grads[2], dtype)


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.op}-{c.name}")
def test_torch_op_rows_match_loops(case, dtype):
    x, args, dy, y, grads = spec(case, dtype)
    forward, grad = torch_ref.op(case.op, x, *args)
    close(forward().detach().numpy(), y, dtype)
    got = grad(dy)()
    assert len(got) == len(grads)
    for g, want in zip(got, grads):
        close(g.numpy(), want, dtype)


def test_every_backend_and_reference_is_a_row():
    impls = runners.implementations()
    assert impls[:len(fastcnn.available_backends())] == fastcnn.available_backends()
    assert "tutorial" in impls
    assert ("torch" in impls) == (torch_ref is not None)
    assert "onnxruntime" in impls       # skips its rows where it is not installed


def test_network_flops_come_from_the_layers():
    # conv1 + conv2 + dense 3136->128 + dense 128->10, 2 flops per multiply-add
    per_image = 2 * (32 * 28 * 28 * 9 + 64 * 14 * 14 * 32 * 9 + 3136 * 128 + 128 * 10)
    assert common.network_work(64, False)["gflop"] == pytest.approx(64 * per_image / 1e9)
    assert common.network_work(16, True)["gflop"] == pytest.approx(3 * 16 * per_image / 1e9)


def test_mobile_flops_come_from_the_layers():
    # stem, then per block depthwise 3x3 and pointwise 1x1, at 28, 28, 14, 14, 7, 7, 7
    # pixels a side (two blocks downsample), then dense 256->10
    px = {28: 784, 14: 196, 7: 49}
    macs = (px[28] * 16 * 9 + px[28] * 16 * 9 + px[28] * 16 * 32 + px[14] * 32 * 9
            + px[14] * 32 * 64 + px[14] * 64 * 9 + px[14] * 64 * 64 + px[7] * 64 * 9
            + px[7] * 64 * 128 + px[7] * 128 * 9 + px[7] * 128 * 128 + px[7] * 128 * 9
            + px[7] * 128 * 256 + 256 * 10)
    assert common.network_work(64, True, "mobile")["gflop"] == pytest.approx(3 * 64 * 2 * macs / 1e9)


def test_tutorial_refuses_the_mobile_network():
    from fastcnn.models import mnist_mobile
    with pytest.raises(NotImplementedError, match="no dilated or grouped convolution"):
        tutorial.from_fastcnn(mnist_mobile())


def _fastcnn_step(dtype, x, y, name="cnn"):
    """One loops training step of model ``name`` with dropout off: (model before, loss,
    logits, state after)."""
    from fastcnn.models import build
    from fastcnn.training import train_step
    model, start = build(name, dtype=dtype, seed=3), build(name, dtype=dtype, seed=3)
    for layer in model.layers + start.layers:
        if isinstance(layer, fastcnn.nn.Dropout):
            layer.p = 0.0   # dropout masks differ between libraries; the rest must not
    with fastcnn.use_backend("loops"):
        logits = model.eval().forward(x)
        loss = train_step(model, fastcnn.nn.SGD(model.parameters(), lr=0.05, momentum=0.9), x, y)
    return start, loss, logits, model.state_dict()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tutorial_network_step_matches_fastcnn(dtype):
    rng = np.random.default_rng(5)
    x, y = rng.random((3, 1, 28, 28)).astype(dtype), rng.integers(0, 10, 3)
    start, loss, logits, after = _fastcnn_step(dtype, x, y)
    net = tutorial.from_fastcnn(start)
    close(net.predict(x), logits, dtype)
    got = tutorial.train_step(net, tutorial.Momentum(0.05, 0.9), x, y)
    # the tutorial loss takes log(p + 1e-7), as the original does (its gradient does not)
    assert got == pytest.approx(loss, rel=1e-5)
    assert set(net.params) == set(after)
    for key, want in after.items():
        close(net.params[key].T if want.ndim == 2 else net.params[key], want, dtype)


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("model", ["cnn", "mobile"])
def test_torch_network_step_matches_fastcnn(model, dtype):
    rng = np.random.default_rng(6)
    x, y = rng.random((3, 1, 28, 28)).astype(dtype), rng.integers(0, 10, 3)
    start, loss, logits, after = _fastcnn_step(dtype, x, y, model)
    net = torch_ref.from_fastcnn(start)
    close(torch_ref.predict(net, x).numpy(), logits, dtype)
    got = torch_ref.train_step(net, torch_ref.sgd(net, 0.05, 0.9), x, y)
    assert got == pytest.approx(loss, rel=1e-5 if dtype == "float32" else 1e-6)
    state = net.state_dict()
    assert set(state) == set(after)
    for key, want in after.items():
        close(state[key].numpy(), want, dtype)


def _onnx_ref():
    for name in ("torch", "onnxruntime", "onnx", "onnxscript"):
        pytest.importorskip(name)
    from benchmarks import onnx_ref
    return onnx_ref


@pytest.mark.parametrize("model", ["cnn", "mobile"])
def test_onnxruntime_rows_match_fastcnn(model):
    """The exported twin run by ONNX Runtime gives fastcnn's logits, at batches other than the
    export's example batch too, with the suite's threads inside an op and one between ops."""
    onnx_ref = _onnx_ref()
    from fastcnn.models import build
    net = build(model, dtype="float32", seed=3).eval()
    session = onnx_ref.from_fastcnn(net)
    options = session.session.get_session_options()
    assert options.intra_op_num_threads == fastcnn.get_num_threads()
    assert options.inter_op_num_threads == 1
    rng = np.random.default_rng(7)
    for batch in (1, 3):
        x = rng.random((batch, 1, 28, 28)).astype("float32")
        with fastcnn.use_backend("loops"):
            want = net.forward(x)
        got = onnx_ref.predict(session, x)
        assert got.shape == want.shape and got.dtype == np.float32
        close(got, want, "float32")


def test_onnxruntime_refuses_what_it_cannot_run():
    onnx_ref = _onnx_ref()
    from fastcnn.models import build
    with pytest.raises(NotImplementedError, match="float64"):
        onnx_ref.from_fastcnn(build("cnn", dtype="float64", seed=0))
    with pytest.raises(NotImplementedError, match="whole networks"):
        onnx_ref.op("relu", np.zeros((1, 1), "float32"))


def _row(impl, median, **info):
    return {"stats": {"median": median}, "extra_info": {"impl": impl, **info}}


def test_report_sets_the_networks_against_the_matmul_peak_and_onnxruntime():
    from benchmarks import report
    n = common.MATMUL_SIZES[-1]
    groups = {f"reference matmul {n} float32": [_row("numpy", 1.0, n=n, dtype="float32",
                                                     **{"GFLOP/s": 200.0})],
              "inference b1 float32": [
                  _row("numba", 2e-3, batch=1, dtype="float32", **{"GFLOP/s": 50.0}),
                  _row("torch", 4e-3, batch=1, dtype="float32", **{"GFLOP/s": 25.0}),
                  _row("onnxruntime", 1e-3, batch=1, dtype="float32", **{"GFLOP/s": 100.0})]}
    assert report.peak(groups) == {"float32": 200.0}
    groups["reference copy 4 MB float32"] = [_row("numpy", 1e-4, mbytes=4, dtype="float32",
                                                  **{"GB/s": 84.0})]
    assert report.peak(groups) == {"float32": 200.0}            # a copy is no matmul peak
    machine = {"p": {"cpu": {"brand_raw": "cpu", "count": 2}, "system": "Linux",
                     "release": "6", "fastcnn": {"tune_runtime": False, "show_config": ""}}}
    lines = report.machine(machine, groups)
    assert f"- **BLAS matmul (the reference matmul rows)**: {n}^3 float32 200 GFLOP/s" in lines
    assert any(line.startswith("- **memory (the reference copy rows: one thread, read + "
                               "write)**: 4 MB 84 GB/s.") for line in lines)
    eff = [line for line in report.efficiency(groups, ["numba", "torch", "onnxruntime", "numpy"])
           if line.startswith("| inference b1")]
    assert eff == ["| inference b1 float32 | 50.0 (25%) | 25.0 (12%) | 100.0 (50%) | 200 |"]
    text = "\n".join(report.summary(groups, ["numba", "torch", "onnxruntime", "numpy"]))
    assert "| inference b1 float32 | 2.00x | 4.00x |" in text        # vs PyTorch
    assert "| inference b1 float32 | 0.50x | 0.25x |" in text        # vs ONNX Runtime


def test_profile_lists_every_part_of_the_step():
    """``python -m benchmarks.profile`` (in a process of its own: it tunes the process)."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.profile", "im2col", "--batch", "2", "--repeats", "2",
         "--no-fuse", "--calls"], cwd=root, capture_output=True, text=True, check=True,
        env=dict(os.environ, PYTHONPATH=root, FASTCNN_BENCH_THREADS="1")).stdout
    from fastcnn.models import mnist_cnn
    layers = mnist_cnn().layers
    for i, layer in enumerate(layers):
        for direction in ("forward ", "backward"):
            assert f"{direction} {i} {type(layer).__name__} " in out
    assert "loss (softmax cross-entropy)" in out and "optimizer (SGD momentum)" in out
    assert "sum of the parts" in out and "1 threads" in out
    assert "Python calls per step" in out and "fastcnn/ops.py" in out


def test_step_rounds_alternate_and_sum_up(monkeypatch, capsys):
    """``python -m benchmarks.step A,torch --rounds 3``: the implementations in alternating
    order, then each one's median and range of its round medians and PyTorch's time over its
    own round by round (a round where one timed nothing is left out of the ratios)."""
    from benchmarks import step
    times = {"cython": [4e-3, 5e-3, 3e-3], "torch": [8e-3, 9e-3, 12e-3]}
    calls = []

    def fake_run_suite(impl, args, tune=True, threads=None):
        assert "-k" in args and args[args.index("-k") + 1] == "test_train_step and cnn-b64-float32"
        r = sum(1 for c in calls if c == impl)
        calls.append(impl)
        if impl == "cython" and r == 1:
            return None, "boom", 1                 # round 2: nothing timed
        row = {"group": "train_step b64 float32", "extra_info": {"images/s": 1.0},
               "stats": {"median": times[impl][r], "q1": 0, "q3": 0, "min": 0, "max": 0,
                         "rounds": 5}}
        return {"benchmarks": [row], "machine_info": {"fastcnn": {"tune_runtime": None}}}, "", 0

    monkeypatch.setattr(step, "run_suite", fake_run_suite)
    assert step.main(["cython,torch", "--rounds", "3"]) == 1      # a round timed nothing
    assert calls == ["cython", "torch", "torch", "cython", "cython", "torch"]
    out = capsys.readouterr()
    assert "round 2: cython: nothing timed" in out.err
    assert "cython: median of 2 round medians 3.50 ms (3.00-4.00), PyTorch's time over its " \
           "own 3.00x (2.00-4.00)" in out.out
    assert "torch: median of 3 round medians 9.00 ms (8.00-12.00)" in out.out
    with pytest.raises(SystemExit):
        step.main(["cython", "--rounds", "0"])
