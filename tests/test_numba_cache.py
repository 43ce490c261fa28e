"""Where numba keeps fastcnn's compiled kernels: the user's cache folder, not
beside the installed source (a leftover there outlives ``pip uninstall`` and
shadows a later editable install); and with no writable cache folder, in
memory with one warning."""
import os
import shutil
import subprocess
import sys

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


SETPRIV = shutil.which("setpriv")
# as root, drop the capabilities that let root write through permissions
DROP = ["--inh-caps=-dac_override,-dac_read_search",
        "--bounding-set=-dac_override,-dac_read_search"]


def _cache_files(folder):
    return {os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs
            if f.endswith((".nbi", ".nbc"))}


@pytest.mark.skipif(SETPRIV is None and os.geteuid() == 0,
                    reason="as root, needs setpriv to make permissions bite")
@pytest.mark.parametrize("where", ["home", "NUMBA_CACHE_DIR"])
def test_without_a_writable_cache_numba_compiles_in_memory_with_one_warning(tmp_path, where):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("XDG_CACHE_HOME", "NUMBA_CACHE_DIR")}
    env["HOME"] = str(home)
    if where == "NUMBA_CACHE_DIR":
        (tmp_path / "cache").mkdir()
        os.chmod(tmp_path / "cache", 0o555)
        env["NUMBA_CACHE_DIR"] = str(tmp_path / "cache")
    os.chmod(home, 0o555)
    kernels_dir = os.path.dirname(numba_pool.__file__)
    before = _cache_files(kernels_dir)
    code = ("import numpy as np, fastcnn\n"
            "from fastcnn import ops\n"
            "print('numba' in fastcnn.available_backends())\n"
            "y, ctx = ops.relu_forward(np.array([-1.0, 2.0]), backend='numba')\n"
            "print(y.tolist(), ops.relu_backward(np.ones(2), ctx).tolist())\n")
    cmd = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        cmd = [SETPRIV, *DROP, *cmd]
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    finally:
        os.chmod(home, 0o755)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["True", "[0.0, 2.0] [0.0, 1.0]"]
    assert r.stderr.count("RuntimeWarning") == 1, r.stderr
    assert "is not writable; compiling them without a cache" in r.stderr
    assert _cache_files(kernels_dir) == before                  # nothing beside the source
    assert _cache_files(tmp_path) == set()
