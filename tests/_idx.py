"""Test helper: small MNIST-like IDX folders written by the tests themselves.

The synthetic digits are learnable on purpose: class k is a fixed random
stroke pattern of its own plus noise, so a few hundred images train a model
to high accuracy in seconds.
"""
import gzip
import hashlib
import os

import numpy as np

from fastcnn.datasets import idx

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def synthetic_digits(n, seed):
    """(images uint8 (n, 28, 28), labels uint8 (n,))."""
    templates = np.random.default_rng(1234).random((10, 28, 28)) > 0.8
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    noise = rng.integers(0, 90, (n, 28, 28))
    images = np.clip(templates[labels] * 200 + noise, 0, 255).astype(np.uint8)
    return images, labels


def write_mnist(folder, n_train=64, n_test=32, *, gz=True, seed=0):
    """Write the four files into ``folder``; returns {name: decompressed bytes}."""
    os.makedirs(folder, exist_ok=True)
    xtr, ytr = synthetic_digits(n_train, seed)
    xte, yte = synthetic_digits(n_test, seed + 1)
    contents = dict(zip(NAMES, (idx.encode(a) for a in (xtr, ytr, xte, yte))))
    for name, data in contents.items():
        write_file(folder, name, data, gz=gz)
    return contents


def write_file(folder, name, data, *, gz=True):
    path = os.path.join(folder, name + (".gz" if gz else ""))
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if gz else data)
    return path


def md5s(contents):
    return {name: hashlib.md5(data).hexdigest() for name, data in contents.items()}
