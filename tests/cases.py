"""Shape cases shared by the agreement and property tests (append-only)."""
import numpy as np

import fastcnn

# Every backend the registry can load on this install; a new backend is
# covered by the whole suite without new test code.
BACKENDS = fastcnn.available_backends("numpy")   # device backends: tests/test_cupy_backend.py
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


# Dilation and groups (append-only): the two ends groups = 1 and groups = C
# (depthwise, channel multiplier F // C of 1 and more), groups in between,
# and the shapes the compiled backends' fast paths take.
# (N, C, H, W, F, KH, KW, stride, padding, dilation, groups, bias)
CONV_DG_CASES = [
    (2, 3, 9, 8, 4, 3, 3, 1, 1, (2, 1), 1, True),
    (2, 2, 11, 12, 3, 3, 2, 1, (1, 2), (2, 3), 1, True),
    (2, 3, 11, 10, 2, 3, 3, 2, 1, 2, 1, False),      # stride 2 with dilation
    (2, 3, 9, 9, 4, 3, 3, (2, 1), 2, (1, 3), 1, True),
    (2, 2, 8, 9, 3, 2, 4, 1, "same", (3, 1), 1, True),   # 'same', totals 3, 3: pads (1, 2, 1, 2)
    (2, 4, 7, 8, 4, 3, 3, 1, "same", 2, 4, True),    # 'same' over a dilated span, depthwise
    (2, 2, 7, 6, 4, 2, 2, 1, "same", (1, 3), 2, False),  # 'same', totals 1 and 3, depthwise x2
    (2, 3, 8, 8, 3, 3, 3, 1, "valid", 2, 3, True),
    (2, 4, 7, 7, 4, 3, 3, 1, 1, 1, 4, True),         # depthwise, multiplier 1
    (2, 3, 7, 6, 6, 3, 3, 1, 1, 1, 3, False),        # depthwise, multiplier 2
    (2, 2, 8, 8, 10, 3, 3, 2, 1, 1, 2, True),        # depthwise, multiplier 5, stride 2
    (2, 2, 6, 6, 24, 3, 3, 1, 1, 1, 2, True),        # depthwise, multiplier 12 > KH*KW
    (2, 4, 6, 7, 6, 3, 3, 1, 1, 1, 2, True),         # groups 2
    (2, 8, 6, 6, 8, 3, 3, 1, 1, 1, 4, True),         # groups 4
    (2, 8, 7, 6, 4, 3, 2, (1, 2), (1, 0), (2, 2), 2, True),   # groups 2 (F < C), dilated
    (2, 8, 5, 5, 12, 1, 1, 1, 0, 1, 4, True),        # 1x1, groups 4
    (2, 6, 5, 6, 18, 1, 1, 1, 0, 1, 3, False),       # 1x1, groups 3, Fg 6 > Cg 2
    (2, 4, 9, 9, 6, 1, 1, 2, 0, 1, 2, True),         # 1x1, stride 2, groups 2
    (1, 2, 5, 5, 2, 3, 3, 1, 0, 2, 1, True),         # dilated span = the input: 1x1 output
    # the compiled fast paths' shapes, batch >= 8
    (8, 8, 10, 10, 8, 3, 3, 1, 1, 1, 8, True),       # depthwise 3x3 s1 p1
    (8, 8, 11, 10, 16, 3, 3, 1, 1, 1, 8, False),     # depthwise 3x3 s1 p1, multiplier 2
    (8, 8, 11, 10, 8, 3, 3, 2, 1, 1, 8, True),       # depthwise 3x3 s2 p1, odd height
    (8, 8, 6, 6, 16, 1, 1, 1, 0, 1, 1, True),        # 1x1 s1 p0
    (8, 8, 6, 6, 16, 1, 1, 1, 0, 1, 2, True),        # 1x1 s1 p0, groups 2
    (8, 4, 9, 9, 8, 3, 3, 2, 1, 1, 1, True),         # 3x3 s2 p1
    (8, 4, 9, 9, 4, 3, 3, 1, 2, 2, 1, True),         # 3x3 d2 p2
    (8, 8, 6, 6, 8, 3, 3, 1, 1, 1, 4, True),         # grouped 3x3, groups 4
    # batch >= 130: over the compiled backends' chunks
    (130, 4, 5, 5, 8, 3, 3, 1, 1, 1, 4, True),       # depthwise 3x3, multiplier 2
    (130, 4, 6, 6, 4, 3, 3, 2, 1, 1, 4, False),      # depthwise 3x3 s2
    (130, 4, 5, 5, 6, 1, 1, 1, 0, 1, 2, True),       # 1x1, groups 2
    (130, 3, 7, 7, 3, 3, 3, 1, 2, 2, 1, True),       # 3x3 d2 p2
    (130, 4, 6, 6, 4, 3, 3, 2, 1, 1, 1, True),       # 3x3 s2 p1
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


def conv_dg_inputs(case, dtype, seed=0):
    """A CONV_DG_CASES case -> x, w (F, C // groups, KH, KW), b, and the
    keyword arguments stride, padding, dilation, groups."""
    N, C, H, W, F, KH, KW, stride, padding, dilation, groups, bias = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F, C // groups, KH, KW)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype) if bias else None
    return x, w, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
