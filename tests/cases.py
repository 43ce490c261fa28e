"""Shape cases shared by the agreement and property tests (append-only)."""
import numpy as np

import fastcnn

# Every backend the registry can load on this install; a new backend is
# covered by the whole suite without new test code.
BACKENDS = fastcnn.available_backends()
FAST_BACKENDS = tuple(b for b in BACKENDS if b != "loops")
TOL = {np.float32: 1e-4, np.float64: 1e-9}

# (N, C, H, W, F, KH, KW, stride, padding, bias)
CONV_CASES = [
    (2, 3, 7, 7, 4, 3, 3, 1, 1, True),
    (1, 1, 5, 6, 2, 2, 3, (2, 1), 0, True),
    (3, 2, 9, 8, 3, 3, 2, (1, 2), (2, 1), False),
    (2, 2, 6, 7, 3, 4, 4, 1, "same", True),      # even kernel: pads (1, 2, 1, 2)
    (2, 3, 6, 5, 2, 3, 3, 1, "same", False),
    (2, 3, 6, 5, 2, 3, 3, 1, "valid", True),
    (2, 2, 8, 8, 2, 3, 3, 3, 1, True),           # stride does not divide
    (1, 2, 3, 3, 2, 3, 3, 1, 0, True),           # 1x1 output
    (2, 1, 28, 28, 4, 3, 3, 1, 1, True),         # MNIST conv1 shape, fewer filters
    (2, 4, 7, 7, 3, 1, 1, 1, 0, True),           # 1x1 kernel
    (2, 3, 11, 10, 5, 5, 5, 2, 2, True),
    (1, 2, 5, 9, 3, 1, 4, (1, 3), (0, 2), True),
    (8, 4, 9, 7, 5, 3, 3, 1, 1, True),           # batch >= 8, C >= 4, 3x3/1: numba's Winograd
    (9, 5, 6, 11, 3, 3, 3, 1, (0, 2), False),    # Winograd with unequal padding, odd sizes
    (130, 4, 5, 5, 3, 3, 3, 1, 1, True),         # batch over numba's Winograd chunk (64): 3 chunks
]

# (N, C, H, W, kernel_size, stride, padding)
POOL_CASES = [
    (2, 3, 8, 8, 2, None, 0),
    (2, 2, 7, 7, 2, None, 0),                    # odd size: last row/col dropped
    (1, 3, 9, 7, 3, 2, 1),
    (2, 2, 6, 9, (2, 3), (1, 2), (1, 1)),
    (2, 1, 5, 5, 3, 1, 1),                       # overlapping windows
    (2, 2, 28, 28, 2, 2, 0),                     # MNIST pool1 shape
    (1, 1, 4, 4, 4, 4, 2),
    (3, 2, 10, 6, (3, 1), (2, 1), (1, 0)),
]


def conv_inputs(case, dtype, seed=0):
    N, C, H, W, F, KH, KW, stride, padding, bias = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F, C, KH, KW)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype) if bias else None
    return x, w, b, stride, padding


def pool_inputs(case, dtype, seed=0):
    N, C, H, W, k, s, p = case
    x = np.random.default_rng(seed).standard_normal((N, C, H, W)).astype(dtype)
    return x, k, s, p


def case_id(case):
    return "-".join(str(v).replace(" ", "") for v in case)
