"""The numba backend's scratch pool: an array is handed out again only when
nothing - not even a view of it - is still in use; buffers are page-aligned."""
import numpy as np
import pytest

import fastcnn

if "numba" not in fastcnn.available_backends():
    pytest.skip("numba backend not available", allow_module_level=True)

from fastcnn.backends import numba as nb_backend  # noqa: E402


def test_reused_only_when_free_views_included():
    ws = nb_backend._Workspace()
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
    ws = nb_backend._Workspace()
    held = [ws.take((3, 7, 11), dt) for dt in (np.float32, np.float64) for _ in range(2)]
    for a in held:
        assert a.ctypes.data % 4096 == 0
        assert a.shape == (3, 7, 11) and a.flags.c_contiguous and a.flags.writeable
