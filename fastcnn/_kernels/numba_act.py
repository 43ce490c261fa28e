"""Numba ReLU, forward and backward, over flat contiguous arrays.

    y = x where x > 0 or x is NaN, else +0     (np.maximum(x, 0): -0.0 -> 0.0)
    m = [x > 0]                                (backward's own record: the
                                                caller holds y and may change it)
    dx = dy * m                                (an inf or NaN in dy gives NaN
                                                where m is 0; PyTorch's select: 0)

Single-threaded, in blocks of BLOCK elements (a bare index inside a block
vectorises). The adapter flattens, allocates and runs element ranges
concurrently when the array is large enough.
"""
import numpy as np
from numba import types

from fastcnn._kernels.numba_common import kernel, ro, rw, void

BLOCK = 1 << 15
u8 = types.uint8


@kernel(lambda t: void(ro(t, 1), rw(t, 1), rw(u8, 1)))
def relu_forward(x, y, m):
    n = x.shape[0]
    zero = np.zeros(1, y.dtype)[0]          # typed: an int 0 would widen the select
    for b in range((n + BLOCK - 1) // BLOCK):
        xb = x[b * BLOCK:min(n, (b + 1) * BLOCK)]
        yb = y[b * BLOCK:min(n, (b + 1) * BLOCK)]
        mb = m[b * BLOCK:min(n, (b + 1) * BLOCK)]
        for i in range(xb.shape[0]):        # bare index: vectorised (20x faster
            v = xb[i]                       # than x[b * BLOCK + i], measured)
            yb[i] = zero if v <= zero else v     # NaN <= 0 is False: NaN stays
            mb[i] = v > zero


@kernel(lambda t: void(ro(t, 1), ro(u8, 1), rw(t, 1)))
def relu_backward(dy, m, dx):
    n = dy.shape[0]
    zero = np.zeros(1, dx.dtype)[0]
    one = np.ones(1, dx.dtype)[0]
    for b in range((n + BLOCK - 1) // BLOCK):
        dyb = dy[b * BLOCK:min(n, (b + 1) * BLOCK)]
        mb = m[b * BLOCK:min(n, (b + 1) * BLOCK)]
        dxb = dx[b * BLOCK:min(n, (b + 1) * BLOCK)]
        for i in range(dyb.shape[0]):
            dxb[i] = dyb[i] * (one if mb[i] else zero)
