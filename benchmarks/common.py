"""Seeded inputs, benchmark shapes and work counts, shared by the suite and the report.

Shapes are append-only (as in numpy's ``benchmarks/common.py``): a name, once
published, always means the same problem, so results from different days stay
comparable. Add new shapes at the end; never edit or reorder existing ones.

Every input is drawn from a generator seeded by the shape's name, so a row
is reproducible on its own and two rows of one group time identical data.
This module deliberately holds no timing code and imports no backend.
"""
import zlib
from dataclasses import dataclass

import numpy as np

DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class ConvShape:
    """x (N, C, H, W) convolved with w (F, C, K, K), stride S, padding P on all sides."""
    N: int
    C: int
    H: int
    W: int
    F: int
    K: int
    S: int = 1
    P: int = 0

    @property
    def out_hw(self):
        return ((self.H + 2 * self.P - self.K) // self.S + 1,
                (self.W + 2 * self.P - self.K) // self.S + 1)

    def forward_flops(self):
        """Multiply-adds of the forward pass, counted as 2 flops each (bias ignored)."""
        OH, OW = self.out_hw
        return 2 * self.N * self.F * OH * OW * self.C * self.K * self.K

    def backward_flops(self):
        """dx and dw each cost one forward's worth of multiply-adds (db ignored)."""
        return 2 * self.forward_flops()

    def label(self):
        return (f"{self.N}x{self.C}x{self.H}x{self.W} -> {self.F} "
                f"k{self.K} s{self.S} p{self.P}")


@dataclass(frozen=True)
class PoolShape:
    """x (N, C, H, W) pooled with a K x K window, stride S, padding P."""
    N: int
    C: int
    H: int
    W: int
    K: int
    S: int
    P: int = 0

    @property
    def out_hw(self):
        return ((self.H + 2 * self.P - self.K) // self.S + 1,
                (self.W + 2 * self.P - self.K) // self.S + 1)

    def forward_bytes(self, itemsize):
        """Least memory traffic of a forward pass: read x once, write y once."""
        OH, OW = self.out_hw
        return itemsize * self.N * self.C * (self.H * self.W + OH * OW)

    def backward_bytes(self, itemsize):
        """Least memory traffic of a backward pass: read dy once, write dx once."""
        return self.forward_bytes(itemsize)

    def label(self):
        return f"{self.N}x{self.C}x{self.H}x{self.W} k{self.K} s{self.S} p{self.P}"


# --- append-only from here -------------------------------------------------
CONV_SHAPES = {
    "mnist_conv1": ConvShape(N=64, C=1, H=28, W=28, F=32, K=3, S=1, P=1),
    "mnist_conv2": ConvShape(N=64, C=32, H=14, W=14, F=64, K=3, S=1, P=1),
    "cifar_conv": ConvShape(N=32, C=3, H=32, W=32, F=64, K=3, S=1, P=1),
    "resnet_conv": ConvShape(N=8, C=64, H=56, W=56, F=128, K=3, S=1, P=1),
}
POOL_SHAPES = {
    "mnist_pool1": PoolShape(N=64, C=32, H=28, W=28, K=2, S=2),
    "mnist_pool2": PoolShape(N=64, C=64, H=14, W=14, K=2, S=2),
    "cifar_pool": PoolShape(N=32, C=64, H=32, W=32, K=2, S=2),
    "resnet_pool": PoolShape(N=8, C=128, H=56, W=56, K=2, S=2),
    "resnet_stem_pool": PoolShape(N=8, C=64, H=112, W=112, K=3, S=2, P=1),
}
# Shapes small enough that the pure-Python ``loops`` reference is worth timing.
MNIST_SHAPES = ("mnist_conv1", "mnist_conv2", "mnist_pool1", "mnist_pool2")
TRAIN_BATCH = 64
INFERENCE_BATCHES = (1, 16, 64, 256, 1000)
# --- end of append-only ------------------------------------------------------

# The MNIST network of the training benchmark, as (layer name, shape name).
MNIST_LAYERS = (("conv1", "mnist_conv1"), ("pool1", "mnist_pool1"),
                ("conv2", "mnist_conv2"), ("pool2", "mnist_pool2"))


def shape(name):
    """The ConvShape or PoolShape published under ``name``."""
    return CONV_SHAPES[name] if name in CONV_SHAPES else POOL_SHAPES[name]


def rng_for(*key):
    """A generator seeded by a stable hash of ``key`` (same numbers on every run)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def conv_inputs(name, dtype):
    """(x, w, b, dy) for conv shape ``name``; weights scaled like He init."""
    s = CONV_SHAPES[name]
    OH, OW = s.out_hw
    rng = rng_for("conv", name)
    x = rng.standard_normal((s.N, s.C, s.H, s.W)).astype(dtype)
    w = (rng.standard_normal((s.F, s.C, s.K, s.K))
         * np.sqrt(2.0 / (s.C * s.K * s.K))).astype(dtype)
    b = (0.1 * rng.standard_normal(s.F)).astype(dtype)
    dy = rng.standard_normal((s.N, s.F, OH, OW)).astype(dtype)
    return x, w, b, dy


def pool_inputs(name, dtype):
    """(x, dy) for pool shape ``name``; continuous draws, so max-pool ties do not occur."""
    s = POOL_SHAPES[name]
    OH, OW = s.out_hw
    rng = rng_for("pool", name)
    x = rng.standard_normal((s.N, s.C, s.H, s.W)).astype(dtype)
    dy = rng.standard_normal((s.N, s.C, OH, OW)).astype(dtype)
    return x, dy


def mnist_batch(batch, dtype):
    """Synthetic MNIST-shaped batch: images in [0, 1), shape (B, 1, 28, 28), labels 0-9."""
    rng = rng_for("mnist", batch)
    x = rng.random((batch, 1, 28, 28)).astype(dtype)
    y = rng.integers(0, 10, size=batch)
    return x, y


def mnist_step_flops(batch):
    """Flops of one training step of the MNIST CNN: conv and dense layers, fwd + bwd."""
    conv = sum(3 * CONV_SHAPES[s].forward_flops() for _, s in MNIST_LAYERS
               if s.startswith("mnist_conv"))
    dense = 3 * 2 * 64 * (3136 * 128 + 128 * 10)
    return (conv + dense) * batch // TRAIN_BATCH


def mnist_forward_flops(batch):
    """Flops of one inference pass of the MNIST CNN (conv and dense layers)."""
    return mnist_step_flops(batch) // 3
