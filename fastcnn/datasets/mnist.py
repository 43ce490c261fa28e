"""MNIST: find the four IDX files, read them, check them, normalise the images.

Where the files are looked for, first match wins::

    data_dir argument (--data-dir)  ->  $FASTCNN_DATA  ->  cache folder
    cache folder = $XDG_CACHE_HOME/fastcnn/mnist, default ~/.cache/fastcnn/mnist

A folder named by the first two must hold the files (each may be gzip-compressed,
``name`` or ``name.gz``); only the cache folder is filled by downloading from
``MIRRORS``, with the MD5 checked on the decompressed bytes. Images come back
as (N, 1, 28, 28) in the requested dtype, scaled to [0, 1] and normalised with
the usual training-set mean 0.1307 and std 0.3081; labels as int64.
"""
import hashlib
import os
from typing import NamedTuple

import numpy as np

from fastcnn.datasets import download, idx
from fastcnn.datasets.idx import DataError

MEAN, STD = 0.1307, 0.3081

# name -> (md5 of the decompressed file, number of dimensions)
FILES = {
    "train-images-idx3-ubyte": ("6bbc9ace898e44ae57da46a324031adb", 3),
    "train-labels-idx1-ubyte": ("a25bea736e30d166cdddb491f175f624", 1),
    "t10k-images-idx3-ubyte": ("2646ac647ad5339dbf082846283269ea", 3),
    "t10k-labels-idx1-ubyte": ("27ae3e4e09519cfbb04c329615203637", 1),
}

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

HOW_TO_FIX = ("pass --data-dir (or set $FASTCNN_DATA to) a folder holding the four MNIST "
              "files " + ", ".join(FILES) + " (each optionally .gz)")


class MNIST(NamedTuple):
    train_images: np.ndarray   # (60000, 1, 28, 28), normalised
    train_labels: np.ndarray   # (60000,) int64
    test_images: np.ndarray    # (10000, 1, 28, 28)
    test_labels: np.ndarray    # (10000,)
    folder: str                # where the files were read from


def cache_dir():
    """$XDG_CACHE_HOME/fastcnn/mnist, or ~/.cache/fastcnn/mnist."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastcnn", "mnist")


def _find(folder, name):
    for candidate in (name, name + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def locate(data_dir=None, *, download_missing=True, mirrors=None, opener=None):
    """Folder and {name: path} of the four files (downloading into the cache
    folder if that is where we look and files are missing)."""
    env = os.environ.get("FASTCNN_DATA", "").strip()
    if data_dir is not None or env:
        folder, origin = (os.fspath(data_dir), "--data-dir") if data_dir is not None \
            else (env, "$FASTCNN_DATA")
        if not os.path.isdir(folder):
            raise DataError(f"MNIST folder {folder} (from {origin}) does not exist; "
                            f"{HOW_TO_FIX}")
        paths = {name: _find(folder, name) for name in FILES}
        missing = [name for name, p in paths.items() if p is None]
        if missing:
            raise DataError(f"MNIST folder {folder} (from {origin}) lacks "
                            f"{', '.join(missing)}; {HOW_TO_FIX}, or unset both to "
                            f"download into {cache_dir()}")
        return folder, paths
    folder = cache_dir()
    paths = {name: _find(folder, name) for name in FILES}
    missing = [name for name, p in paths.items() if p is None]
    if missing and not download_missing:
        raise DataError(f"MNIST files {', '.join(missing)} are not in the cache folder "
                        f"{folder} (looked there because neither --data-dir nor "
                        f"$FASTCNN_DATA is set); {HOW_TO_FIX}")
    for name in missing:
        paths[name] = download.fetch(name, FILES[name][0], folder,
                                     MIRRORS if mirrors is None else mirrors, opener=opener)
    return folder, paths


def _read(path, name, verify):
    data = idx.read_bytes(path)
    md5, ndim = FILES[name]
    if verify and hashlib.md5(data).hexdigest() != md5:
        raise DataError(f"{path}: checksum mismatch (md5 of the decompressed data is "
                        f"{hashlib.md5(data).hexdigest()}, expected {md5}); the file is "
                        f"damaged or not the original MNIST file")
    return idx.parse(data, path, ndim)


def _split(folder, paths, prefix, verify, dtype, limit):
    images = _read(paths[f"{prefix}-images-idx3-ubyte"], f"{prefix}-images-idx3-ubyte", verify)
    labels = _read(paths[f"{prefix}-labels-idx1-ubyte"], f"{prefix}-labels-idx1-ubyte", verify)
    where = os.path.join(folder, f"{prefix}-*")
    if images.shape[1:] != (28, 28):
        raise DataError(f"{where}: images are {images.shape[1]}x{images.shape[2]}, "
                        f"MNIST images are 28x28")
    if len(images) != len(labels):
        raise DataError(f"{where}: count mismatch, {len(images)} images but "
                        f"{len(labels)} labels")
    if len(labels) and labels.max() > 9:
        raise DataError(f"{where}: labels must be digits 0-9, found {labels.max()}")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    # one lookup table per dtype: every pixel value maps to the same float, fast
    table = ((np.arange(256) / 255.0 - MEAN) / STD).astype(dtype)
    return table[images][:, None, :, :], labels.astype(np.int64)


def load_mnist(data_dir=None, *, dtype="float32", limit_train=None, limit_test=None,
               verify=False, download_missing=True, mirrors=None, opener=None):
    """Load MNIST as an ``MNIST`` tuple. ``limit_*``: keep the first N images.
    ``verify``: check the MD5 of local files too (downloads are always checked)."""
    dtype = np.dtype(dtype)
    if dtype.name not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {dtype.name!r}")
    for name, limit in (("limit_train", limit_train), ("limit_test", limit_test)):
        if limit is not None and limit < 1:
            raise ValueError(f"{name} must be a positive integer or None, got {limit!r}")
    folder, paths = locate(data_dir, download_missing=download_missing, mirrors=mirrors,
                           opener=opener)
    xtr, ytr = _split(folder, paths, "train", verify, dtype, limit_train)
    xte, yte = _split(folder, paths, "t10k", verify, dtype, limit_test)
    return MNIST(xtr, ytr, xte, yte, folder)
