"""Regression tests for the hardening issue: each reproduction turned into an assertion."""
import numpy as np
import pytest

import fastcnn
from fastcnn import ops

BACKENDS = fastcnn.available_backends("numpy")


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


def test_auto_candidates_can_be_limited(monkeypatch):
    from fastcnn import _auto
    usable = _auto.candidates()
    if len(usable) < 2:
        pytest.skip("needs two compiled backends")
    timed = []
    real = _auto._time_once
    monkeypatch.setattr(_auto, "_time_once",
                        lambda mod, *a: timed.append(mod.__name__) or real(mod, *a))
    monkeypatch.setenv("FASTCNN_AUTO_CANDIDATES", usable[-1])
    _auto.reset()
    try:
        x = np.ones((3, 2, 9, 9), np.float64)
        ops.avg_pool2d_forward(x, 3, backend="auto")
        assert timed == []                      # one candidate: nothing run twice
        assert fastcnn.auto_choices()[-1]["backend"] == usable[-1]
        for bad in ("loops", "nonsense", " , "):
            monkeypatch.setenv("FASTCNN_AUTO_CANDIDATES", bad)
            with pytest.raises(ValueError, match="FASTCNN_AUTO_CANDIDATES"):
                ops.avg_pool2d_forward(np.ones((3, 2, 8, 8)), 2, backend="auto")
    finally:
        _auto.reset()
