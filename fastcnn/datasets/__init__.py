"""Datasets: MNIST from local IDX files, the usual mirrors, or the bundled sample.

    from fastcnn.datasets import load_mnist
    data = load_mnist("../shared/data/mnist")     # or $FASTCNN_DATA, or the cache
    data.train_images.shape                       # (60000, 1, 28, 28) float32
    data.source, data.is_sample, data.note        # where from; the sample said plainly
    load_mnist(train=False)                       # the test files only (for eval)
"""
from fastcnn.datasets.download import DownloadError
from fastcnn.datasets.idx import DataError
from fastcnn.datasets.mnist import MNIST, cache_dir, load_mnist
from fastcnn.datasets.sample import SAMPLE_DIR, load_sample

__all__ = ["load_mnist", "load_sample", "MNIST", "DataError", "DownloadError", "cache_dir",
           "SAMPLE_DIR"]
