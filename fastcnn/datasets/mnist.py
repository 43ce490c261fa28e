"""MNIST: find the IDX files, read them, check them, normalise the images.

Where the files are looked for, first match wins::

    data_dir argument (--data-dir)  ->  $FASTCNN_DATA  ->  cache folder  ->  bundled sample
    cache folder = $XDG_CACHE_HOME/fastcnn/mnist, default ~/.cache/fastcnn/mnist

A folder named by the first two must hold the files (each may be gzip-compressed,
``name`` or ``name.gz``); only the cache folder is filled by downloading from
``MIRRORS``, with size and MD5 checked on the decompressed bytes. When the
cache lacks files that cannot be downloaded (no network), the sample shipped
inside the package stands in (``sample.py``) and says so on the result.
``train=False`` looks for, downloads and reads only the two test files.

Images come back as (N, 1, 28, 28) in the requested dtype, scaled to [0, 1]
and normalised with the usual training-set mean 0.1307 and std 0.3081;
labels as int64.
"""
import hashlib
import os
from typing import NamedTuple, Optional

import numpy as np

from fastcnn.datasets import download, idx
from fastcnn.datasets.idx import DataError

MEAN, STD = 0.1307, 0.3081

# name -> (md5 and size in bytes of the decompressed file, number of dimensions)
FILES = {
    "train-images-idx3-ubyte": ("6bbc9ace898e44ae57da46a324031adb", 47_040_016, 3),
    "train-labels-idx1-ubyte": ("a25bea736e30d166cdddb491f175f624", 60_008, 1),
    "t10k-images-idx3-ubyte": ("2646ac647ad5339dbf082846283269ea", 7_840_016, 3),
    "t10k-labels-idx1-ubyte": ("27ae3e4e09519cfbb04c329615203637", 10_008, 1),
}
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# A header announcing more than this is refused before anything is allocated:
# about 20 times the full training set, room for MNIST-like sets (QMNIST, EMNIST).
MAX_BYTES = 1 << 30

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


class MNIST(NamedTuple):
    train_images: Optional[np.ndarray]   # (60000, 1, 28, 28), normalised; None if train=False
    train_labels: Optional[np.ndarray]   # (60000,) int64; None if train=False
    test_images: np.ndarray              # (10000, 1, 28, 28)
    test_labels: np.ndarray              # (10000,)
    folder: str                          # where the files were read from
    source: str                          # one line: where from, for "... images from {source}"
    is_sample: bool                      # the sample bundled with the package, not the full set
    note: str                            # "" or a paragraph for the user: why the sample, and
                                         # how to get the full set


def cache_dir():
    """$XDG_CACHE_HOME/fastcnn/mnist, or ~/.cache/fastcnn/mnist."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastcnn", "mnist")


def _how_to_fix(names=tuple(FILES)):
    return ("pass --data-dir (or set $FASTCNN_DATA to) a folder holding the MNIST files "
            + ", ".join(names) + " (each optionally .gz)")


def _find(folder, name):
    for candidate in (name, name + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def locate(data_dir=None, *, names=tuple(FILES), download_missing=True, mirrors=None,
           opener=None):
    """Folder, {name: path} of ``names`` and a one-line source description
    (downloading into the cache folder if that is where we look and files are
    missing). DataError (DownloadError when downloading failed) if not found."""
    env = os.environ.get("FASTCNN_DATA", "").strip()
    if data_dir is not None or env:
        folder, origin = (os.fspath(data_dir), "--data-dir") if data_dir is not None \
            else (env, "$FASTCNN_DATA")
        if not os.path.isdir(folder):
            raise DataError(f"MNIST folder {folder} (from {origin}) does not exist; "
                            f"{_how_to_fix(names)}")
        paths = {name: _find(folder, name) for name in names}
        missing = [name for name, p in paths.items() if p is None]
        if missing:
            raise DataError(f"MNIST folder {folder} (from {origin}) lacks "
                            f"{', '.join(missing)}; {_how_to_fix(names)}, or unset both to "
                            f"download into {cache_dir()}")
        return folder, paths, f"{folder} ({origin})"
    folder = cache_dir()
    paths = {name: _find(folder, name) for name in names}
    missing = [name for name, p in paths.items() if p is None]
    if missing and not download_missing:
        raise DataError(f"MNIST files {', '.join(missing)} are not in the cache folder "
                        f"{folder} (looked there because neither --data-dir nor "
                        f"$FASTCNN_DATA is set) and downloading is off; {_how_to_fix(names)}")
    for name in missing:
        md5, size, _ = FILES[name]
        paths[name] = download.fetch(name, md5, size, folder,
                                     MIRRORS if mirrors is None else mirrors, opener=opener)
    return folder, paths, f"the cache folder {folder}"


def read(path, name, verify):
    """The array in MNIST file ``name`` at ``path``; with ``verify``, the MD5
    of its decompressed content must be the original's."""
    md5, _, ndim = FILES[name]
    digest = hashlib.md5() if verify else None
    array = idx.read(path, ndim, max_bytes=MAX_BYTES, digest=digest)
    if verify and digest.hexdigest() != md5:
        raise DataError(f"{path}: checksum mismatch (md5 of the decompressed data is "
                        f"{digest.hexdigest()}, expected {md5}); the file is "
                        f"damaged or not the original MNIST file")
    return array


def check(images, labels, where):
    """DataError unless ``images`` (N, 28, 28) and ``labels`` (N,) are N >= 1
    digits; ``where`` names the files in the message."""
    if images.shape[1:] != (28, 28):
        raise DataError(f"{where}: images are {images.shape[1]}x{images.shape[2]}, "
                        f"MNIST images are 28x28")
    if len(images) != len(labels):
        raise DataError(f"{where}: count mismatch, {len(images)} images but "
                        f"{len(labels)} labels")
    if len(labels) == 0:
        raise DataError(f"{where}: the files hold no images; there is nothing to "
                        f"train on or evaluate")
    if labels.max() > 9:
        raise DataError(f"{where}: labels must be digits 0-9, found {labels.max()}")


def normalise(images, labels, dtype, limit):
    """uint8 (N, 28, 28) -> (N, 1, 28, 28) ``dtype``, the first ``limit`` only."""
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    # one lookup table per dtype: every pixel value maps to the same float, fast
    table = ((np.arange(256) / 255.0 - MEAN) / STD).astype(dtype)
    return table[images][:, None, :, :], labels.astype(np.int64)


def _split(folder, paths, prefix, verify, dtype, limit):
    images = read(paths[f"{prefix}-images-idx3-ubyte"], f"{prefix}-images-idx3-ubyte", verify)
    labels = read(paths[f"{prefix}-labels-idx1-ubyte"], f"{prefix}-labels-idx1-ubyte", verify)
    check(images, labels, os.path.join(folder, f"{prefix}-*"))
    return normalise(images, labels, dtype, limit)


def check_arguments(dtype, limit_train, limit_test):
    """The dtype as np.dtype; ValueError naming the argument if one is bad."""
    dtype = np.dtype(dtype)
    if dtype.name not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {dtype.name!r}")
    for name, limit in (("limit_train", limit_train), ("limit_test", limit_test)):
        if limit is not None and limit < 1:
            raise ValueError(f"{name} must be a positive integer or None, got {limit!r}")
    return dtype


def load_mnist(data_dir=None, *, dtype="float32", limit_train=None, limit_test=None,
               train=True, verify=False, download_missing=True, sample=True, mirrors=None,
               opener=None):
    """Load MNIST as an ``MNIST`` tuple. ``limit_*``: keep the first N images.
    ``train=False``: the test files only (train_* are None). ``verify``: check
    the MD5 of local files too (downloads are always checked). ``sample``: fall
    back to the bundled sample when the cache folder lacks files that cannot be
    downloaded (never when data_dir or $FASTCNN_DATA names a folder)."""
    from fastcnn.datasets import sample as bundled   # not at the top: it imports this module

    dtype = check_arguments(dtype, limit_train, limit_test)
    explicit = data_dir is not None or os.environ.get("FASTCNN_DATA", "").strip()
    try:
        folder, paths, source = locate(data_dir, names=tuple(FILES) if train else TEST_FILES,
                                       download_missing=download_missing, mirrors=mirrors,
                                       opener=opener)
    except DataError as e:
        if explicit or not sample:
            raise
        return bundled.load_sample(dtype=dtype, limit_train=limit_train,
                                   limit_test=limit_test, train=train, reason=_why(e))
    xtr = ytr = None
    if train:
        xtr, ytr = _split(folder, paths, "train", verify, dtype, limit_train)
    xte, yte = _split(folder, paths, "t10k", verify, dtype, limit_test)
    return MNIST(xtr, ytr, xte, yte, folder, source, False, "")


def _why(error):
    """A short reason the cache path failed, for the sample's note."""
    if isinstance(error, download.DownloadError):
        detail = "no network connection" if error.offline else error.failures[-1]
        return f"the MNIST files are not in {cache_dir()} and downloading them failed ({detail})"
    return f"the MNIST files are not in {cache_dir()} and downloading is off"
