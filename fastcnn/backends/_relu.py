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


def _run(loop, arrays):
    """loop(*arrays) over flat element ranges. An array too small to earn a
    second thread (over_rows' rule) goes to the loop directly: a relu is one
    pass over memory, so the split's bookkeeping would be a visible part of
    a small one."""
    n = arrays[0].size
    flat = [a.reshape(-1) for a in arrays]
    if n < 2 * _concurrent.ELEMENTS_PER_THREAD:
        loop(*flat)
    else:
        _concurrent.over_rows(loop, flat, (), n, _concurrent.ELEMENTS_PER_THREAD)


def forward(loop, x):
    """(y, mask) with loop(x, y, mask) over flat element ranges."""
    y = outputs.take(x.shape, x.dtype)
    mask = outputs.take(x.shape, np.uint8)
    _run(loop, [x, y, mask])
    return y, mask


def backward(loop, dy, mask):
    """dx with loop(dy, mask, dx) over flat element ranges."""
    dx = outputs.take(dy.shape, dy.dtype)
    _run(loop, [dy, mask, dx])
    return dx
