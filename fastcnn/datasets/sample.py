"""The MNIST sample shipped inside the package, for machines without the full set.

``data/`` holds MNIST's 10,000-image test set, unchanged (attribution and
licence in ``data/README.md``). With no other data, training runs on 8,000 of
those images and evaluates on the other 2,000: every fifth image is held out,
so both parts draw from both halves of the test set (the first 5,000 images
were written by Census Bureau employees, the last 5,000 by students, and are
harder). Accuracies on the sample are therefore not comparable with numbers
on the full set, and the result says so (``MNIST.note``).

This module deliberately decides nothing about when the sample is used;
``mnist.load_mnist`` does.
"""
import os

import numpy as np

from fastcnn.datasets import mnist

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
HELD_OUT_EVERY = 5


def _note(reason, n_train, n_test, train):
    why = f", because {reason}" if reason else ""
    what = (f"{n_train} training and {n_test} test images" if train else
            f"the {n_test} test images it holds out from training")
    return (f"Using the MNIST sample bundled with fastcnn{why}: {what}, all taken from "
            f"MNIST's 10,000-image test set, so accuracy here is not comparable with results "
            f"on the full set (60,000 training images). For the full set, pass "
            f"--data-dir (or set $FASTCNN_DATA to) a folder holding the four MNIST "
            f"files, or run once with network access to download them into "
            f"{mnist.cache_dir()}.")


def load_sample(*, dtype="float32", limit_train=None, limit_test=None, train=True,
                reason=None):
    """The bundled sample as an ``MNIST`` tuple (is_sample=True). Same meaning
    of the arguments as for ``load_mnist``; ``reason``, if given, goes into
    the note (why the sample stands in)."""
    dtype = mnist.check_arguments(dtype, limit_train, limit_test)
    images, labels = (
        mnist.read(os.path.join(SAMPLE_DIR, name + ".gz"), name, verify=True)
        for name in mnist.TEST_FILES)
    mnist.check(images, labels, os.path.join(SAMPLE_DIR, "t10k-*"))
    held_out = np.arange(len(labels)) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
    xte, yte = mnist.normalise(images[held_out], labels[held_out], dtype, limit_test)
    xtr = ytr = None
    if train:
        xtr, ytr = mnist.normalise(images[~held_out], labels[~held_out], dtype, limit_train)
    n_train, n_test = int((~held_out).sum()), int(held_out.sum())
    source = (f"the MNIST sample bundled with fastcnn ({n_train} train / {n_test} test "
              f"images, all from the MNIST test set)")
    return mnist.MNIST(xtr, ytr, xte, yte, SAMPLE_DIR, source, True,
                       _note(reason, n_train, n_test, train))
