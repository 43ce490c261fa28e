"""Benchmark rows: for (implementation, case, dtype) build the zero-argument callable to time.

An implementation is a fastcnn backend (``fastcnn.available_backends()`` at
run time, so a new backend is a new row with no change here), or a reference
module with the same functions (``op``, ``from_fastcnn``, ``sgd``,
``train_step``, ``predict``): ``torch`` (``torch_ref``, when PyTorch is
installed), ``onnxruntime`` (``onnx_ref``: inference only, its rows skip
where ONNX Runtime or its exporter is not installed) and ``tutorial``.
Setup happens here, outside what is timed; the callable does one op, one
training step or one inference pass. A row that does not apply is skipped
with the reason. Deliberately no timing:
pytest-benchmark warms up, times and records.
"""
import importlib
import importlib.util

import pytest

import fastcnn
from fastcnn import ops

from benchmarks import common

REFERENCES = {"torch": "benchmarks.torch_ref", "onnxruntime": "benchmarks.onnx_ref",
              "tutorial": "benchmarks.tutorial"}
INFERENCE_ONLY = {"onnxruntime": "ONNX Runtime is an inference engine: no training step"}
# skipped before any input is made: the op rows' inputs take longer than the skip
NETWORK_ONLY = {"onnxruntime": "ONNX Runtime is timed on whole networks only (op rows: torch)"}


def implementations():
    """Every row of a group: the available backends, then the references that can run here
    (torch is looked for, not imported: each process loads only what it times)."""
    torch = ("torch",) if importlib.util.find_spec("torch") else ()
    return fastcnn.available_backends("numpy") + torch + ("onnxruntime", "tutorial")


def reference(impl):
    """The reference module of ``impl``; its rows skip if what it needs is not installed."""
    try:
        return importlib.import_module(REFERENCES[impl])
    except ImportError as e:
        pytest.skip(f"{impl} needs {e.name}: pip install -e .[bench]")


def make_op(impl, case, dtype, backward):
    """(callable running ``case``'s op once with ``impl``, its work for extra_info)."""
    if impl == "loops" and case not in common.MNIST_CASES:
        pytest.skip("loops (the spec, not a contender) is timed on the MNIST layers only")
    if impl in NETWORK_ONLY:
        pytest.skip(NETWORK_ONLY[impl])
    x = common.array((case.name, "x"), case.x_shape, dtype)
    args = common.op_args(case.layer, dtype)
    if impl in REFERENCES:
        try:
            forward, grad = reference(impl).op(case.op, x, *args)
        except NotImplementedError as e:
            pytest.skip(str(e))
    else:
        fwd, bwd = getattr(ops, case.op + "_forward"), getattr(ops, case.op + "_backward")
        forward = lambda: fwd(x, *args, backend=impl)[0]  # noqa: E731

        def grad(dy):
            ctx = fwd(x, *args, backend=impl)[1]
            return lambda: bwd(dy, ctx)
    y_shape = tuple(forward().shape)
    fn = grad(common.array((case.name, "dy"), y_shape, dtype)) if backward else forward
    return fn, common.work(case.layer, case.x_shape, y_shape, dtype, backward)


def make_network(impl, dtype, batch, training, model="cnn"):
    """One training step (forward, softmax cross-entropy, backward, SGD momentum) or one
    eval-mode forward pass of the MNIST model named ``model`` (``fastcnn.models.MODELS``:
    cnn, mobile) on ``batch`` images."""
    if impl == "loops" and (training or batch > 1):
        pytest.skip("loops (the spec) runs the network only for inference on one image")
    if training and impl in INFERENCE_ONLY:
        pytest.skip(INFERENCE_ONLY[impl])
    from fastcnn.models import build
    x, y = common.mnist_batch(batch, dtype)
    model = build(model, dtype=dtype, seed=0)
    if impl in REFERENCES:
        ref = reference(impl)
        try:
            net = ref.from_fastcnn(model)
        except NotImplementedError as e:
            pytest.skip(str(e))
        if training:
            opt = ref.sgd(net, lr=0.05, momentum=0.9)
            return lambda: ref.train_step(net, opt, x, y)
        return lambda: ref.predict(net, x)
    from fastcnn.nn import SGD
    from fastcnn.training import train_step
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train(training)

    def run():
        if training:
            with fastcnn.use_backend(impl):
                return train_step(model, opt, x, y)
        with fastcnn.use_backend(impl), fastcnn.no_grad():     # as the references' no_grad
            return model.forward(x)
    return run
