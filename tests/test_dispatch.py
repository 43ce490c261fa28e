"""Backend choice: explicit, scoped, restored; nothing falls back silently."""
import os
import subprocess
import sys
import threading
import types

import numpy as np
import pytest

import fastcnn
from fastcnn import _auto, backend as registry, ops

from cases import BACKENDS, FAST_BACKENDS

x = np.random.default_rng(0).standard_normal((2, 3, 6, 6))
w = np.random.default_rng(1).standard_normal((4, 3, 3, 3))


@pytest.fixture(autouse=True)
def _clean_global():
    fastcnn.set_backend(None)
    yield
    fastcnn.set_backend(None)


def test_available_backends_include_reference_and_im2col():
    assert BACKENDS[:2] == ("loops", "im2col")
    assert set(BACKENDS) <= set(fastcnn.registered_backends())


def test_default_is_auto_and_auto_never_picks_loops(monkeypatch):
    monkeypatch.delenv("FASTCNN_BACKEND", raising=False)
    assert fastcnn.get_backend() == "auto"
    _, ctx = ops.conv2d_forward(x, w)
    assert ctx.backend in FAST_BACKENDS
    assert "loops" not in _auto.candidates()


def test_use_backend_is_scoped_and_restored_on_error():
    with fastcnn.use_backend("loops"):
        assert fastcnn.get_backend() == "loops"
        with fastcnn.use_backend("im2col"):
            assert ops.conv2d_forward(x, w)[1].backend == "im2col"
        assert ops.conv2d_forward(x, w)[1].backend == "loops"
        with pytest.raises(RuntimeError):
            with fastcnn.use_backend("im2col"):
                raise RuntimeError("boom")
        assert fastcnn.get_backend() == "loops"
    assert fastcnn.get_backend() == "auto"


def test_set_backend_is_process_wide_and_explicit_argument_wins():
    fastcnn.set_backend("loops")
    seen = []
    t = threading.Thread(target=lambda: seen.append(ops.conv2d_forward(x, w)[1].backend))
    t.start(); t.join()
    assert seen == ["loops"]
    assert ops.conv2d_forward(x, w, backend="im2col")[1].backend == "im2col"


def test_backward_runs_on_the_forward_backend():
    y, ctx = ops.conv2d_forward(x, w, backend="loops")
    with fastcnn.use_backend("im2col"):
        dx, dw, db = ops.conv2d_backward(np.ones_like(y), ctx)
    assert ctx.backend == "loops" and repr(ctx).startswith("<fastcnn ctx op=conv2d backend=loops")


def test_bad_names_are_errors_not_fallbacks():
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        fastcnn.set_backend("fast")
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        with fastcnn.use_backend("fast"):
            pass
    assert fastcnn.get_backend() == "auto"


def test_unimportable_backend_is_absent_with_its_reason(monkeypatch):
    monkeypatch.setitem(registry._MODULES, "broken", "fastcnn.backends._no_such_module")
    monkeypatch.delitem(registry._failed, "broken", raising=False)
    assert "broken" not in fastcnn.available_backends()
    assert "No module named" in fastcnn.unavailable_backends()["broken"]
    with pytest.raises(ValueError, match=r"backend 'broken' is not available on this install \(ModuleNotFoundError"):
        ops.conv2d_forward(x, w, backend="broken")
    registry._failed.pop("broken", None)


def test_module_without_all_kernels_is_refused(monkeypatch):
    fake = types.ModuleType("fastcnn.backends._half")
    fake.conv2d_forward = lambda *a: None
    monkeypatch.setitem(sys.modules, "fastcnn.backends._half", fake)
    monkeypatch.setitem(registry._MODULES, "half", "fastcnn.backends._half")
    assert "half" not in fastcnn.available_backends()
    assert "lacks kernels" in fastcnn.unavailable_backends()["half"]
    registry._failed.pop("half", None)


def _run(code, **env):
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True)


def test_env_var_sets_default():
    r = _run("import fastcnn; print(fastcnn.get_backend())", FASTCNN_BACKEND="loops")
    assert r.stdout.strip() == "loops", r.stderr
    r = _run("import fastcnn; print(fastcnn.get_backend())", FASTCNN_BACKEND="nope")
    assert r.returncode != 0
    assert "FASTCNN_BACKEND: unknown backend 'nope'" in r.stderr


def test_num_threads_knob():
    before = fastcnn.get_num_threads()
    try:
        fastcnn.set_num_threads(1)
        assert fastcnn.get_num_threads() == 1
        from threadpoolctl import threadpool_info
        assert all(d["num_threads"] == 1 for d in threadpool_info() if d["user_api"] == "blas")
        for name in BACKENDS:
            getter = getattr(registry.get_module(name), "get_num_threads", None)
            if getter is not None:
                assert getter() == 1, name
        for bad in (0, -1, 1.5, "2", True):
            with pytest.raises(ValueError, match="n must be a positive integer"):
                fastcnn.set_num_threads(bad)
    finally:
        fastcnn.set_num_threads(before)
    r = _run("import fastcnn; print(fastcnn.get_num_threads())", FASTCNN_NUM_THREADS="1")
    assert r.stdout.strip() == "1", r.stderr
    r = _run("import fastcnn; fastcnn.get_num_threads()", FASTCNN_NUM_THREADS="many")
    assert "FASTCNN_NUM_THREADS must be a positive integer, got 'many'" in r.stderr


def test_show_config_lists_backends_and_threads(capsys):
    fastcnn.show_config()
    out = capsys.readouterr().out
    assert "backends available: " + ", ".join(BACKENDS) in out
    assert "BLAS:" in out and "threads" in out


def test_threads_give_correct_results_concurrently():
    """The compiled kernels release the GIL; results must not mix between threads."""
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((4, 3, 10, 10)) for _ in range(6)]
    want = [ops.conv2d_forward(xi, w, backend="loops")[0] for xi in xs]
    for name in FAST_BACKENDS:
        ops.conv2d_forward(xs[0], w, backend=name)            # compile outside the race
        got = [None] * len(xs)

        def work(i):
            for _ in range(5):
                y, ctx = ops.conv2d_forward(xs[i], w, backend=name)
                ops.conv2d_backward(np.ones_like(y), ctx)
            got[i] = y

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for g, r in zip(got, want):
            np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-9)
