"""backends._concurrent: pieces of one op on a few threads, BLAS single-threaded meanwhile."""
import os
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import fastcnn
from fastcnn.backends import _concurrent


def _blas_threads():
    # the BLAS libraries _concurrent controls: those loaded at its first use,
    # numpy's (what np.matmul calls) among them
    paths = {c.filepath for c in _concurrent._blas_controllers()}
    return [p["num_threads"] for p in threadpool_info() if p["filepath"] in paths]


def test_results_in_order_each_piece_with_single_threaded_blas_and_blas_restored():
    seen = []

    def piece(i):
        seen.append((i, tuple(_blas_threads()), threading.get_ident()))
        return i * i

    with threadpool_limits(2, user_api="blas"):
        out = _concurrent.run(piece, range(7), 2)
        assert _blas_threads() == [2] * len(_blas_threads())
    assert out == [i * i for i in range(7)]
    assert all(set(b) == {1} for _, b, _ in seen)              # BLAS: one thread meanwhile
    assert len({t for *_, t in seen}) >= 2                     # the caller and a worker


def test_one_thread_runs_inline_with_single_threaded_blas():
    with threadpool_limits(2, user_api="blas"):
        out = _concurrent.run(lambda i: (threading.get_ident(), tuple(_blas_threads())),
                              range(3), 1)
        assert set(_blas_threads()) == {2}
    assert {o[0] for o in out} == {threading.get_ident()}
    assert all(set(b) == {1} for _, b in out)


def test_nested_calls_run_inline():
    inner = []

    def piece(i):
        inner.append(_concurrent.num_threads())
        return _concurrent.run(lambda j: threading.get_ident(), range(4))

    out = _concurrent.run(piece, range(2), 2)
    assert inner == [1, 1]
    assert all(len(set(o)) == 1 for o in out)                 # each piece's items on its thread


def test_an_error_in_any_piece_propagates_after_every_piece_finished():
    finished = []

    def piece(i):
        if i == 3:
            raise ValueError("piece 3")
        finished.append(i)
        return i

    with threadpool_limits(2, user_api="blas"):
        with pytest.raises(ValueError, match="piece 3"):
            _concurrent.run(piece, range(6), 2)
        assert set(_blas_threads()) == {2}
    assert sorted(finished) == [0, 1, 2, 4, 5]


def test_concurrent_callers_restore_blas_only_when_the_last_leaves():
    start = threading.Barrier(3)
    errors = []

    def caller():
        try:
            start.wait()
            for _ in range(20):
                _concurrent.run(lambda i: sum(range(2000)), range(4), 2)
        except Exception as e:     # pragma: no cover - reported below
            errors.append(e)

    with threadpool_limits(2, user_api="blas"):
        threads = [threading.Thread(target=caller) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert set(_blas_threads()) == {2}


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_forked_child_gets_fresh_workers():
    import multiprocessing
    assert _concurrent.run(lambda i: i, range(4), 2) == [0, 1, 2, 3]   # workers started
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        out = pool.apply_async(_run_in_child).get(timeout=60)     # hung before: dead workers
    assert out == [0, 1, 4, 9]


def _run_in_child():
    return _concurrent.run(lambda i: i * i, range(4), 2)


@pytest.mark.parametrize("shape", [(300, 40, 200), (40, 300, 500), (3, 5, 7), (1, 900, 2000)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_equals_numpy_split_or_not(shape, dtype, monkeypatch):
    monkeypatch.setattr(_concurrent, "MACS_PER_THREAD", 1)       # split whatever the size
    M, K, N = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((N, K)).astype(dtype).T               # a transposed view
    want = a.astype(np.float64) @ b.astype(np.float64)
    rtol = 1e-4 if dtype == np.float32 else 1e-12
    got = _concurrent.matmul(a, b)
    assert got.dtype == dtype and got.shape == (M, N)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.sqrt(K))
    out = np.full((M, N + 3), np.nan, dtype=dtype)
    res = _concurrent.matmul(a, b, out=out[:, 1:N + 1])           # a strided out
    assert res.base is out.base or res.base is out
    np.testing.assert_allclose(out[:, 1:N + 1], want, rtol=rtol, atol=rtol * np.sqrt(K))
    assert np.isnan(out[:, 0]).all() and np.isnan(out[:, N + 1:]).all()


def test_matmul_runs_blas_single_threaded_and_splits_big_products(monkeypatch):
    calls = []
    real = np.matmul

    def spy(a, b, out=None):
        calls.append((a.shape, b.shape, tuple(_blas_threads()), threading.get_ident()))
        return real(a, b, out=out)

    monkeypatch.setattr(_concurrent.np, "matmul", spy)
    a, b = np.ones((4, 3)), np.ones((3, 2))
    with threadpool_limits(2, user_api="blas"):
        _concurrent.matmul(a, b)                  # tiny: OpenBLAS's own serial size, untouched
        m, k = np.ones((64, 128)), np.ones((128, 64))
        _concurrent.matmul(m, k)                  # 2**19 multiply-adds: one block, BLAS at 1
        assert set(_blas_threads()) == {2}
    assert len(calls) == 2 and set(calls[0][2]) == {2} and set(calls[1][2]) == {1}
    if (os.cpu_count() or 1) < 2:
        return
    calls.clear()
    before = fastcnn.get_num_threads()
    fastcnn.set_num_threads(2)
    try:
        big = np.ones((512, 256))
        _concurrent.matmul(big, big.T)                            # 2**25 multiply-adds
    finally:
        fastcnn.set_num_threads(before)
    assert len(calls) == 2 and all(set(c[2]) == {1} for c in calls)
    assert sorted(c[0][0] for c in calls) == [256, 256]           # row blocks of a


@pytest.mark.parametrize("threads", [1, 2])
def test_matmuls_runs_independent_products_whole_one_a_thread(threads, monkeypatch):
    # Linear's backward: dw = dy^T x and dx = dy w side by side, each whole
    # on its own thread with BLAS at one thread when there are threads for
    # them; else one after another (and each may split). Same numbers.
    calls = []
    real = np.matmul

    def spy(a, b, out=None):
        calls.append((a.shape, tuple(_blas_threads()), threading.get_ident()))
        return real(a, b, out=out)

    rng = np.random.default_rng(1)
    dy, x, w = (rng.standard_normal(s) for s in [(64, 128), (64, 3136), (128, 3136)])
    want = [dy.T @ x, dy @ w]
    monkeypatch.setattr(_concurrent.np, "matmul", spy)
    before = fastcnn.get_num_threads()
    fastcnn.set_num_threads(min(threads, os.cpu_count() or 1))
    try:
        got = _concurrent.matmuls([(dy.T, x), (dy, w)])
    finally:
        fastcnn.set_num_threads(before)
    for g, wnt in zip(got, want):
        np.testing.assert_array_equal(g, wnt)
    assert all(set(c[1]) == {1} for c in calls)
    if (os.cpu_count() or 1) >= 2 and threads == 2:
        assert sorted(c[0] for c in calls) == [(64, 128), (128, 64)]   # whole, not split
        assert len({c[2] for c in calls}) == 2                         # on two threads


@pytest.mark.parametrize("N, k", [(64, 2), (130, 3), (1000, 16), (5, 8), (1, 2), (7, 1)])
def test_batch_slices_cover_the_batch_in_balanced_order(N, k):
    slices = _concurrent.batch_slices(N, k)
    assert [i for s in slices for i in range(N)[s]] == list(range(N))
    sizes = [s.stop - s.start for s in slices]
    assert len(slices) <= min(k, N) and max(sizes) - min(sizes) <= max(sizes) // 2 + 1


def test_threads_for_gives_one_thread_per_share_of_work_within_the_limits():
    per = _concurrent.WORK_PER_THREAD
    assert _concurrent.threads_for(8, per - 1, 100) == 1            # too little work
    assert _concurrent.threads_for(8, 3 * per, 100) == 3
    assert _concurrent.threads_for(8, 100 * per, 100) == 8          # capped by the threads
    assert _concurrent.threads_for(8, 100 * per, 2) == 2            # and by the items
    assert _concurrent.threads_for(8, 10, 10, per_thread=5) == 2
    assert _concurrent.threads_for(1, 0, 0) == 1                    # never below one
