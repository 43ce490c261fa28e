"""Benchmark rows: for (implementation, op, shape, dtype) build the zero-argument callable to time.

An implementation is a fastcnn backend (read from ``fastcnn.available_backends()``
at run time, so a new backend is benchmarked with no change here), ``torch``
(PyTorch CPU, when importable) or ``tutorial`` (``benchmarks.tutorial``).
All setup (inputs, the forward pass a backward needs, JIT compilation) happens
in the ``make_*`` functions, outside what is timed; the returned callable does
exactly one op, one training step or one inference pass.

A row that cannot or should not run raises ``NotApplicable`` with the reason
(pytest turns it into a skip; the report leaves the cell empty). This module
deliberately does no timing beyond the one warm-up call that decides whether
``loops`` is too slow to be worth timing.
"""
import time

import fastcnn
from fastcnn import ops

from benchmarks import common, machine, tutorial

OPS = ("conv_forward", "conv_backward", "maxpool_forward", "maxpool_backward",
       "avgpool_forward", "avgpool_backward")
REFERENCES = ("torch", "tutorial")
# ``loops`` is the readable spec, not a contender: time it only on the MNIST
# layer shapes where one call stays under LOOPS_LIMIT_S, and in the whole
# network only for inference on a single image (a batch-64 training step takes
# it several seconds, far over the limit).
LOOPS_LIMIT_S = 1.0
LOOPS_NETWORK_MAX_BATCH = 1
# False skips the untimed warm-up call and the loops time check (conftest sets
# it under --benchmark-disable, where nothing is timed and the suite only has
# to stay runnable, in one call per row).
WARMUP = True


class NotApplicable(Exception):
    """This implementation does not take part in this row; the message says why."""


def implementations():
    """Every row of a group: the available backends, then the references that can run here."""
    impls = list(fastcnn.available_backends())
    if machine.optional_torch() is not None:
        impls.append("torch")
    impls.append("tutorial")
    return tuple(impls)


def shapes_for(op):
    return tuple(common.CONV_SHAPES if op.startswith("conv") else common.POOL_SHAPES)


def op_work(op, shape_name, dtype):
    """What one call achieves: {'gflop': ...} for conv, {'gbyte': ...} for pooling, and images."""
    itemsize = 4 if dtype == "float32" else 8
    if op.startswith("conv"):
        s = common.CONV_SHAPES[shape_name]
        flops = s.forward_flops() if op.endswith("forward") else s.backward_flops()
        return {"gflop": flops / 1e9, "images": s.N}
    s = common.POOL_SHAPES[shape_name]
    nbytes = s.forward_bytes(itemsize) if op.endswith("forward") else s.backward_bytes(itemsize)
    return {"gbyte": nbytes / 1e9, "images": s.N}


def _fastcnn_op(name, op, shape_name, dtype):
    if op.startswith("conv"):
        s = common.CONV_SHAPES[shape_name]
        x, w, b, dy = common.conv_inputs(shape_name, dtype)
        forward = lambda: ops.conv2d_forward(x, w, b, s.S, s.P, backend=name)  # noqa: E731
        backward = ops.conv2d_backward
    else:
        s = common.POOL_SHAPES[shape_name]
        x, dy = common.pool_inputs(shape_name, dtype)
        fwd = ops.max_pool2d_forward if op.startswith("max") else ops.avg_pool2d_forward
        backward = (ops.max_pool2d_backward if op.startswith("max")
                    else ops.avg_pool2d_backward)
        forward = lambda: fwd(x, s.K, s.S, s.P, backend=name)  # noqa: E731
    if op.endswith("forward"):
        return forward
    _, ctx = forward()
    return lambda: backward(dy, ctx)


def _torch_op(op, shape_name, dtype):
    from benchmarks import torch_ref
    if op.startswith("conv"):
        s = common.CONV_SHAPES[shape_name]
        x, w, b, dy = common.conv_inputs(shape_name, dtype)
        forward, backward = torch_ref.conv2d(x, w, b, s.S, s.P)
    else:
        s = common.POOL_SHAPES[shape_name]
        x, dy = common.pool_inputs(shape_name, dtype)
        kind = "max" if op.startswith("max") else "avg"
        forward, backward = torch_ref.pool2d(kind, x, s.K, s.S, s.P)
    return forward if op.endswith("forward") else backward(dy)


def _tutorial_op(op, shape_name, dtype):
    if op.startswith("conv"):
        s = common.CONV_SHAPES[shape_name]
        x, w, b, dy = common.conv_inputs(shape_name, dtype)
        layer = tutorial.Convolution(w, b, s.S, s.P)
    else:
        s = common.POOL_SHAPES[shape_name]
        x, dy = common.pool_inputs(shape_name, dtype)
        if op.startswith("max") and s.P:
            raise NotApplicable("tutorial max pooling pads with zeros, not -inf")
        cls = tutorial.Pooling if op.startswith("max") else tutorial.AvgPooling
        layer = cls(s.K, s.K, s.S, s.P)
    if op.endswith("forward"):
        return lambda: layer.forward(x)
    layer.forward(x)
    return lambda: layer.backward(dy)


def _too_slow(fn, limit_s, what):
    """Run ``fn`` once (also the warm-up); NotApplicable if that took over ``limit_s``."""
    t0 = time.perf_counter()
    fn()
    took = time.perf_counter() - t0
    if took > limit_s:
        raise NotApplicable(f"loops takes {took:.1f} s per {what} (limit {limit_s:g} s)")


def make_op(impl, op, shape_name, dtype):
    """The callable that runs ``op`` once on ``shape_name`` in ``dtype`` with ``impl``; warmed up."""
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    if impl == "torch":
        fn = _torch_op(op, shape_name, dtype)
    elif impl == "tutorial":
        fn = _tutorial_op(op, shape_name, dtype)
    else:
        if impl == "loops" and shape_name not in common.MNIST_SHAPES:
            raise NotApplicable("loops is only timed on the MNIST shapes")
        fn = _fastcnn_op(impl, op, shape_name, dtype)
        if impl == "loops" and WARMUP:
            _too_slow(fn, LOOPS_LIMIT_S, "call")   # doubles as the warm-up
            return fn
    if WARMUP:
        fn()   # JIT compilation, first-touch page faults: never in a timed round
    return fn


# ---------------------------------------------------------------- the MNIST network

def make_train_step(impl, dtype, batch=common.TRAIN_BATCH):
    """One training step (forward, softmax CE, backward, SGD momentum step) of the MNIST CNN."""
    x, y = common.mnist_batch(batch, dtype)
    if impl == "torch":
        from benchmarks import torch_ref
        model = torch_ref.mnist_cnn(dtype, seed=0)
        opt = torch_ref.sgd(model)
        fn = lambda: torch_ref.train_step(model, opt, x, y)  # noqa: E731
    elif impl == "tutorial":
        net, opt = tutorial.TutorialConvNet(dtype, seed=0), tutorial.Momentum(0.05, 0.9)
        fn = lambda: tutorial.train_step(net, opt, x, y)  # noqa: E731
    else:
        if impl == "loops":
            raise NotApplicable("loops trains only as the spec (several s per step)")
        from fastcnn import nn
        from fastcnn.models import mnist_cnn
        from fastcnn.training import train_step
        model = mnist_cnn(dtype=dtype, seed=0)
        opt = nn.SGD(model.parameters(), lr=0.05, momentum=0.9)

        def fn():
            with fastcnn.use_backend(impl):
                return train_step(model, opt, x, y)
    if WARMUP:
        fn()
    return fn


def make_inference(impl, dtype, batch):
    """One forward pass of the MNIST CNN in eval mode on ``batch`` images."""
    x, _ = common.mnist_batch(batch, dtype)
    if impl == "torch":
        from benchmarks import torch_ref
        model = torch_ref.mnist_cnn(dtype, seed=0)
        fn = lambda: torch_ref.predict(model, x)  # noqa: E731
    elif impl == "tutorial":
        net = tutorial.TutorialConvNet(dtype, seed=0)
        fn = lambda: net.predict(x, train_flg=False)  # noqa: E731
    else:
        if impl == "loops" and batch > LOOPS_NETWORK_MAX_BATCH:
            raise NotApplicable(f"loops runs the network only at batch <= "
                                f"{LOOPS_NETWORK_MAX_BATCH} (it is the spec, not a contender)")
        from fastcnn.models import mnist_cnn
        model = mnist_cnn(dtype=dtype, seed=0)
        model.eval()

        def fn():
            with fastcnn.use_backend(impl):
                return model.forward(x)
    if WARMUP:
        fn()
    return fn


def step_work(batch, training=True):
    flops = common.mnist_step_flops(batch) if training else common.mnist_forward_flops(batch)
    return {"gflop": flops / 1e9, "images": batch}
