"""What is benchmarked, read from the library: ops, layer cases, seeded inputs, work counts.

Ops are the registry's kernels (``fastcnn.backend.KERNELS``). Each is timed
on the layers of ``fastcnn.models.mnist_cnn`` that call it (input shapes
traced by one ``loops`` pass of one image; average pooling, which the model
does not use, on its max-pool windows; adaptive pooling to its max-pool
output sizes), on the larger layers below and on the layers of MobileNet-
and ResNet-style nets (depthwise, 1x1, stride 2, dilated, grouped, ceil_mode),
which are append-only: a published name always means the same problem.
Flop counts come from the layers' own weights, so nothing here repeats the
model. Inputs come from generators seeded by name: every run and every row
of a group times the same data.
"""
import functools
import zlib
from math import prod
from typing import NamedTuple

import numpy as np

import fastcnn
from fastcnn import nn
from fastcnn.backend import KERNELS
from fastcnn.models import build, mnist_cnn

DTYPES = ("float32", "float64")
OPS = tuple(dict.fromkeys(k.rsplit("_", 1)[0] for k in KERNELS))
TRAIN_BATCH = 64
TRAIN_BATCHES = (16, 64, 256)               # float32; float64 at TRAIN_BATCH only
INFERENCE_BATCHES = (1, 16, 64, 256, 1000)  # float32
MOBILE_INFERENCE_BATCHES = (1, 64, 1000)    # float32


class Case(NamedTuple):
    """One op on one layer (float64 weights), applied to an input of ``x_shape``."""
    name: str
    op: str
    layer: nn.Module
    x_shape: tuple


def trace(model, x_shape):
    """(layer, x shape, y shape) for each layer of ``model``, from one loops pass of one image."""
    x, out = np.zeros((1, *x_shape[1:]), model.dtype), []
    with fastcnn.use_backend("loops"):
        for layer in model.layers:
            y = layer.forward(x)
            out.append((layer, x_shape[:1] + x.shape[1:], x_shape[:1] + y.shape[1:]))
            x = y
    return out


MNIST = trace(mnist_cnn("float64", seed=0).eval(), (TRAIN_BATCH, 1, 28, 28))
KINDS = {nn.Conv2d: ("conv", "conv2d"), nn.MaxPool2d: ("pool", "max_pool2d"),
         nn.AvgPool2d: ("pool", "avg_pool2d"), nn.ReLU: ("relu", "relu")}


def _mnist_cases():
    """A case per layer that calls an op, named by kind and position (conv1, pool2, relu3)."""
    out, seen = [], {}
    for layer, x_shape, y_shape in MNIST:
        kind, op = KINDS.get(type(layer), (None, None))
        if op:
            seen[kind] = seen.get(kind, 0) + 1
            out.append(Case(f"{kind}{seen[kind]}", op, layer, x_shape))
        if op == "max_pool2d":
            avg = nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding)
            out.append(Case(f"{kind}{seen[kind]}", "avg_pool2d", avg, x_shape))
            # adaptive pooling to the max pool's output size: the same windows
            for cls, adaptive in ((nn.AdaptiveAvgPool2d, "adaptive_avg_pool2d"),
                                  (nn.AdaptiveMaxPool2d, "adaptive_max_pool2d")):
                out.append(Case(f"{kind}{seen[kind]}", adaptive, cls(y_shape[2:]), x_shape))
    return out


MNIST_CASES = _mnist_cases()
_rng = np.random.default_rng(0)
LARGER_CASES = [    # append-only
    Case("cifar_conv", "conv2d", nn.Conv2d(3, 64, 3, padding=1, dtype="float64", rng=_rng),
         (32, 3, 32, 32)),
    Case("resnet_conv", "conv2d", nn.Conv2d(64, 128, 3, padding=1, dtype="float64", rng=_rng),
         (8, 64, 56, 56)),
    Case("cifar_pool", "max_pool2d", nn.MaxPool2d(2), (32, 64, 32, 32)),
    Case("resnet_pool", "max_pool2d", nn.MaxPool2d(2), (8, 128, 56, 56)),
    Case("resnet_stem_pool", "max_pool2d", nn.MaxPool2d(3, 2, 1), (8, 64, 112, 112)),
    Case("resnet_global_pool", "adaptive_avg_pool2d", nn.AdaptiveAvgPool2d(1), (64, 512, 7, 7)),
    Case("adaptive_avg_3x3", "adaptive_avg_pool2d", nn.AdaptiveAvgPool2d(3), (64, 64, 14, 14)),
    Case("resnet_global_max", "adaptive_max_pool2d", nn.AdaptiveMaxPool2d(1), (64, 512, 7, 7)),
    Case("adaptive_max_3x3", "adaptive_max_pool2d", nn.AdaptiveMaxPool2d(3), (64, 64, 14, 14)),
]
_rng = np.random.default_rng(1)
SMALL_CNN_CASES = [    # append-only: the layers of MobileNet- and ResNet-style nets
    Case("depthwise_3x3", "conv2d",
         nn.Conv2d(64, 64, 3, padding=1, groups=64, dtype="float64", rng=_rng), (64, 64, 32, 32)),
    Case("depthwise_3x3_s2", "conv2d",
         nn.Conv2d(64, 64, 3, 2, 1, groups=64, dtype="float64", rng=_rng), (64, 64, 32, 32)),
    Case("pointwise_1x1", "conv2d", nn.Conv2d(64, 128, 1, dtype="float64", rng=_rng),
         (64, 64, 16, 16)),
    Case("conv_3x3_s2", "conv2d", nn.Conv2d(32, 64, 3, 2, 1, dtype="float64", rng=_rng),
         (64, 32, 32, 32)),
    Case("dilated_3x3", "conv2d",
         nn.Conv2d(32, 32, 3, padding=2, dilation=2, dtype="float64", rng=_rng), (64, 32, 32, 32)),
    Case("grouped_3x3_g4", "conv2d",
         nn.Conv2d(64, 64, 3, padding=1, groups=4, dtype="float64", rng=_rng), (64, 64, 16, 16)),
    Case("stem_pool", "max_pool2d", nn.MaxPool2d(3, 2, 1), (16, 64, 56, 56)),
    Case("stem_pool_ceil", "max_pool2d", nn.MaxPool2d(3, 2, 1, ceil_mode=True), (16, 64, 56, 56)),
]
# the op groups RESULTS.md sums up beside PyTorch (float32), besides the networks
SUMMARY_CASES = ({c.name for c in MNIST_CASES + SMALL_CNN_CASES}
                 | {"resnet_global_pool", "adaptive_avg_3x3"})


def cases(op):
    return [c for c in MNIST_CASES + LARGER_CASES + SMALL_CNN_CASES if c.op == op]


def op_args(layer, dtype):
    """What ``layer`` passes to its op after x, weights cast to ``dtype`` (the ops take
    torch.nn.functional's arguments in its order)."""
    if isinstance(layer, nn.Conv2d):
        return (layer.weight.data.astype(dtype), layer.bias.data.astype(dtype),
                layer.stride, layer.padding, layer.dilation, layer.groups)
    if isinstance(layer, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return (layer.output_size,)
    return () if isinstance(layer, nn.ReLU) else layer.op_args()


def rng_for(key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def array(key, shape, dtype):
    """Standard normal draws, the same on every run: the generator is seeded by ``key``."""
    return rng_for(key).standard_normal(shape).astype(dtype)


def mnist_batch(batch, dtype):
    """Synthetic MNIST batch: images in [0, 1), shape (B, 1, 28, 28), labels 0-9."""
    rng = rng_for(("mnist", batch))
    return rng.random((batch, 1, 28, 28)).astype(dtype), rng.integers(0, 10, size=batch)


def work(layer, x_shape, y_shape, dtype, backward=False):
    """What one pass achieves: GFLOP of a layer with weights (2 per multiply-add; the
    backward's dx and dw are one forward's worth each), else GB of the least
    traffic (read the input, write the output)."""
    w = getattr(layer, "weight", None)
    if w is None:
        return {"gbyte": 1e-9 * np.dtype(dtype).itemsize * (prod(x_shape) + prod(y_shape))}
    return {"gflop": 2e-9 * prod(y_shape) * (w.data.size // w.shape[0]) * (2 if backward else 1)}


@functools.cache
def network_trace(model):
    """``trace`` of the MNIST model named ``model`` (``fastcnn.models.MODELS``) at TRAIN_BATCH."""
    return MNIST if model == "cnn" else trace(build(model, "float64").eval(),
                                              (TRAIN_BATCH, 1, 28, 28))


MATMUL_SIZES = (1024, 2048)     # the reference matmuls; the last is the peak GFLOP/s
# The reference copies, in MB of float32: one a few MB of L3 hold, one they do
# not. Winograd's tiles and the column matrices stream tens of MB a training
# step; on a day the first copy runs near the second's speed (this VM's share
# of the L3 shrank under other tenants), those passes slow down far more than
# PyTorch's direct convolutions, so every report says which day it was.
COPY_MBYTES = (4, 64)
FLOPS_COUNTED = ("direct-convolution count: 2 flops per multiply-add of every convolution "
                 "(depthwise and pointwise too) and dense layer at its weights' size, a "
                 "backward as two forwards (dx and dW), so a training step is three forwards; "
                 "bias, ReLU, pooling, the loss and the optimizer are not counted, and "
                 "Winograd's fewer multiplications still count as direct ones")


def network_work(batch, training, model="cnn"):
    """GFLOP of one pass of an MNIST model (a training step: 3 forwards' worth; what is counted:
    ``FLOPS_COUNTED``) and images."""
    gflop = sum(work(layer, x, y, "float64").get("gflop", 0) for layer, x, y in
                network_trace(model))
    return {"gflop": gflop * batch / TRAIN_BATCH * (3 if training else 1), "images": batch}
