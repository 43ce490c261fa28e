"""MNIST-style preprocessing of a drawing: what turns a canvas into the 28x28
image the model sees.

MNIST's digits were size-normalised to fit a 20x20 box (keeping the aspect
ratio, anti-aliased) and then placed in a 28x28 field so that their centre of
mass sits at the centre. ``to_mnist`` does the same to a drawing of any size:
crop to the bounding box of the ink, resample by area averaging so that the
longer side is 20 pixels, and translate (by whole pixels) so that the centre
of mass lands on MNIST's own: (14.0, 14.0) in row/column indices, the mean
over the real test set. ``normalise`` then applies the training set's mean
and std, as ``fastcnn.datasets.load_mnist`` does for training.

This lives in Python, not in the page's JavaScript, so that it is tested
against real MNIST images (tests/test_serve_preprocess.py) and the API gives
the same answer to any client. It deliberately knows nothing of the model,
the backends or HTTP: arrays in, arrays out; the input is never modified.
"""
import numpy as np

from fastcnn.datasets.mnist import MEAN, STD

SIZE = 28          # MNIST's field
BOX = 20           # the longer side of the digit inside it
CENTRE = 14.0      # MNIST's centre of mass, in pixel indices (rows and columns)


def area_matrix(n_in, n_out):
    """(n_out, n_in) weights of area resampling along one axis: output pixel i
    averages the input over [i, i + 1) * n_in / n_out, each input pixel
    weighted by how much of it falls inside (a box filter; exact for any ratio,
    up or down)."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0, None)
    return overlap / (n_in / n_out)


def centre_of_mass(image):
    """(row, column) of the intensity-weighted mean pixel index."""
    total = image.sum()
    rows, cols = np.indices(image.shape)
    return (rows * image).sum() / total, (cols * image).sum() / total


def to_mnist(ink):
    """The 28x28 float64 image, values in [0, 1], that MNIST would have made of
    ``ink``: a 2-D array of ink values in [0, 1] (0 = paper), any size.
    ValueError if there is no ink at all."""
    ink = np.asarray(ink, dtype=np.float64)
    if ink.ndim != 2:
        raise ValueError(f"ink must be a 2-D array (H, W), got shape {ink.shape}")
    rows = np.flatnonzero(ink.max(axis=1) > 0)
    cols = np.flatnonzero(ink.max(axis=0) > 0)
    if rows.size == 0:
        raise ValueError("the image is blank: there is no ink to read")
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = crop.shape
    scale = BOX / max(h, w)
    oh, ow = max(1, round(h * scale)), max(1, round(w * scale))
    digit = area_matrix(h, oh) @ crop @ area_matrix(w, ow).T
    r, c = centre_of_mass(digit)
    # whole-pixel shifts keep the strokes as sharp as resampled; clipped so that
    # a lopsided digit (a '7' heavy at the top) stays inside the field
    top = int(np.clip(round(CENTRE - r), 0, SIZE - oh))
    left = int(np.clip(round(CENTRE - c), 0, SIZE - ow))
    out = np.zeros((SIZE, SIZE))
    out[top:top + oh, left:left + ow] = digit
    return np.clip(out, 0.0, 1.0)


def normalise(image, dtype):
    """A (1, 1, 28, 28) model input from a 28x28 image in [0, 1], scaled as the
    training images were (``load_mnist``: mean 0.1307, std 0.3081)."""
    return ((np.asarray(image, dtype=np.float64) - MEAN) / STD).astype(dtype)[None, None]
