"""Regression tests for the hardening issue: each reproduction turned into an assertion."""
import numpy as np
import pytest

import fastcnn
from fastcnn import ops

BACKENDS = fastcnn.available_backends()


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_stride_is_a_value_error_naming_stride(backend):
    x = np.ones((1, 1, 4, 4), np.float32)
    w = np.ones((1, 1, 2, 2), np.float32)
    for call in (lambda: ops.conv2d_forward(x, w, stride=2**62, backend=backend),
                 lambda: ops.max_pool2d_forward(x, 2, stride=(1, 2**62), backend=backend),
                 lambda: ops.avg_pool2d_forward(x, 2, stride=2**40, backend=backend)):
        with pytest.raises(ValueError, match="stride must be at most"):
            call()
    # the largest accepted stride still works: one window, the PyTorch answer
    y, _ = ops.conv2d_forward(x, w, stride=2**31 - 1, backend=backend)
    assert y.shape == (1, 1, 1, 1) and y[0, 0, 0, 0] == 4
