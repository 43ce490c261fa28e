"""The relu driver both compiled backends run: outputs from the output pool,
element ranges across fastcnn's pool, a backend only passes its two loops.

forward saves a mask [x > 0] (uint8) of its own rather than y: the caller
holds y and may change it in place before the backward, which must still
see what the forward computed.

Deliberately not here: the loops (``fastcnn/_kernels/*_act``), argument
checks (``fastcnn.ops``).
"""
import numpy as np

from fastcnn.backends import _concurrent
from fastcnn.backends._workspace import outputs


def forward(loop, x):
    """(y, mask) with loop(x, y, mask) over flat element ranges."""
    y = outputs.take(x.shape, x.dtype)
    mask = outputs.take(x.shape, np.uint8)
    _concurrent.over_rows(loop, [x.reshape(-1), y.reshape(-1), mask.reshape(-1)], (),
                          x.size, _concurrent.ELEMENTS_PER_THREAD)
    return y, mask


def backward(loop, dy, mask):
    """dx with loop(dy, mask, dx) over flat element ranges."""
    dx = outputs.take(dy.shape, dy.dtype)
    _concurrent.over_rows(loop, [dy.reshape(-1), mask.reshape(-1), dx.reshape(-1)], (),
                          dy.size, _concurrent.ELEMENTS_PER_THREAD)
    return dx
