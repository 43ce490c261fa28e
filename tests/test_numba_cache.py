"""Where numba keeps fastcnn's compiled kernels: the user's cache folder, not
beside the installed source (a leftover there outlives ``pip uninstall`` and
shadows a later editable install)."""
import os

import pytest

import fastcnn

if "numba" not in fastcnn.available_backends():
    pytest.skip("numba backend not available", allow_module_level=True)

from numba.core import config as numba_config  # noqa: E402
from numba.core.caching import CacheImpl  # noqa: E402

from fastcnn._kernels import numba_common, numba_pool  # noqa: E402


def _locator_for(func):
    py_func = func.py_func
    for cls in CacheImpl._locator_classes:
        loc = cls.from_function(py_func, py_func.__code__.co_filename)
        if loc is not None:
            return loc


def test_kernels_cache_under_the_user_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(numba_config, "CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = _locator_for(numba_pool.max_pool2d_backward).get_cache_path()
    assert path.startswith(str(tmp_path / "fastcnn" / "numba"))
    assert os.path.isdir(path)
    assert not path.startswith(os.path.dirname(numba_pool.__file__))


def test_numba_cache_dir_still_wins(monkeypatch, tmp_path):
    # numba reads NUMBA_CACHE_DIR into its config at import
    monkeypatch.setattr(numba_config, "CACHE_DIR", str(tmp_path / "mine"))
    path = _locator_for(numba_pool.max_pool2d_backward).get_cache_path()
    assert path.startswith(str(tmp_path / "mine"))


def test_a_cached_kernel_is_stale_when_the_shared_options_change(monkeypatch, tmp_path):
    # numba only stamps a kernel's own file; its jit options live in
    # numba_common, so that file's stamp is part of every kernel's
    monkeypatch.setattr(numba_config, "CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    stamp = _locator_for(numba_pool.max_pool2d_backward).get_source_stamp()
    st = os.stat(numba_common.__file__)
    assert stamp[1:] == (st.st_mtime, st.st_size)


def test_other_code_keeps_numbas_own_choice(monkeypatch, tmp_path):
    monkeypatch.setattr(numba_config, "CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def not_ours():
        return 1

    assert CacheImpl._locator_classes[0].from_function(not_ours, __file__) is None
