"""Datasets: MNIST from local IDX files or the usual mirrors.

    from fastcnn.datasets import load_mnist
    data = load_mnist("../shared/data/mnist")     # or $FASTCNN_DATA, or the cache
    data.train_images.shape                       # (60000, 1, 28, 28) float32
"""
from fastcnn.datasets.download import DownloadError
from fastcnn.datasets.idx import DataError
from fastcnn.datasets.mnist import MNIST, cache_dir, load_mnist

__all__ = ["load_mnist", "MNIST", "DataError", "DownloadError", "cache_dir"]
