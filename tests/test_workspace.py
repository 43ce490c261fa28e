"""The compiled backends' one scratch pool (backends/_workspace): an array is
handed out again only when nothing - not even a view of it, nor a ctx that
saved it - is still in use; buffers are page-aligned; the pool is bounded."""
import numpy as np
import pytest

from fastcnn import ops
from fastcnn.backends import _workspace

from cases import BACKENDS


def test_reused_only_when_free_views_included():
    ws = _workspace.Workspace()
    a = ws.take((4, 5), np.float32)
    addr = a.ctypes.data
    view = a.reshape(20)[3:]              # base: the memory's owner, not a
    del a
    b = ws.take((4, 5), np.float32)
    assert b.ctypes.data != addr          # the view still uses it
    del view
    c = ws.take((4, 5), np.float32)       # b is held, a's memory is free again
    assert c.ctypes.data == addr
    assert b.ctypes.data != c.ctypes.data


def test_buffers_are_page_aligned_and_shaped():
    ws = _workspace.Workspace()
    held = [ws.take((3, 7, 11), dt) for dt in (np.float32, np.float64) for _ in range(2)]
    for a in held:
        assert a.ctypes.data % 4096 == 0
        assert a.shape == (3, 7, 11) and a.flags.c_contiguous and a.flags.writeable


def test_pool_is_bounded(monkeypatch):
    ws = _workspace.Workspace()
    monkeypatch.setattr(ws, "MAX_BYTES", 10_000)
    held = [ws.take((1000,), np.float32) for _ in range(3)]      # 4 kB each, all in use
    assert ws.held_bytes() <= 10_000
    big = ws.take((5000,), np.float32)                           # over the bound alone
    assert big.shape == (5000,) and ws.held_bytes() <= 10_000
    for n in range(50):                                          # many shapes: old ones go
        ws.take((n + 1, 10), np.float64)
    assert ws.held_bytes() <= 10_000
    del held, big


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("cython", "numba")])
def test_saved_columns_stay_out_of_the_pool_until_ctx_dies(backend):
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((2, 3, 2, 6, 6))
    w = rng.standard_normal((4, 2, 3, 3))
    dy = rng.standard_normal((3, 4, 6, 6))
    _, ctx1 = ops.conv2d_forward(x1, w, None, 1, 1, backend=backend)
    _, ctx2 = ops.conv2d_forward(x2, w, None, 1, 1, backend=backend)   # same shapes
    [(_, cols)] = ctx1.saved[2][1]          # (w, [(slice, cols)], RP): one chunk here
    shape, addr = cols.shape, cols.ctypes.data
    assert ctx2.saved[2][1][0][1].ctypes.data != addr
    del cols
    _, ctx_ref = ops.conv2d_forward(x1, w, None, 1, 1, backend="loops")
    for g, e in zip(ops.conv2d_backward(dy, ctx1), ops.conv2d_backward(dy, ctx_ref)):
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-12)
    del ctx1
    taken = [_workspace.workspace.take(shape, x1.dtype)
             for _ in range(_workspace.Workspace.PER_KEY)]
    assert addr in {a.ctypes.data for a in taken}      # free again once ctx1 died
