"""backends._concurrent: pieces of one op on a few threads, BLAS single-threaded meanwhile."""
import threading

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from fastcnn.backends import _concurrent


def _blas_threads():
    # the BLAS libraries _concurrent controls: those loaded at its first use,
    # numpy's (what np.matmul calls) among them
    paths = {c.filepath for c in _concurrent._blas_controllers()}
    return [p["num_threads"] for p in threadpool_info() if p["filepath"] in paths]


class _Local(threading.local):
    n = 4


def _setter():
    local = _Local()
    return (lambda: local.n), (lambda n: setattr(local, "n", n)), local


def test_results_in_order_each_piece_single_threaded_and_blas_restored():
    get, set_, local = _setter()
    seen = []

    def piece(i):
        seen.append((i, get(), tuple(_blas_threads()), threading.get_ident()))
        return i * i

    with threadpool_limits(2, user_api="blas"):
        out = _concurrent.run(piece, range(7), 2, get, set_)
        assert _blas_threads() == [2] * len(_blas_threads())
    assert out == [i * i for i in range(7)]
    assert all(k == 1 for _, k, _, _ in seen)                  # kernels: one thread each
    assert all(set(b) == {1} for _, _, b, _ in seen)           # BLAS: one thread meanwhile
    assert len({t for *_, t in seen}) >= 2                     # the caller and a worker
    assert local.n == 4                                        # caller's own count restored


def test_one_thread_runs_inline_and_touches_nothing():
    get, set_, _ = _setter()
    with threadpool_limits(2, user_api="blas"):
        out = _concurrent.run(lambda i: (get(), tuple(_blas_threads())), range(3), 1, get, set_)
    assert {o[0] for o in out} == {4}
    assert all(set(b) == {2} for _, b in out)


def test_an_error_in_any_piece_propagates_after_every_piece_finished():
    get, set_, _ = _setter()
    finished = []

    def piece(i):
        if i == 3:
            raise ValueError("piece 3")
        finished.append(i)
        return i

    with threadpool_limits(2, user_api="blas"):
        with pytest.raises(ValueError, match="piece 3"):
            _concurrent.run(piece, range(6), 2, get, set_)
        assert set(_blas_threads()) == {2}
    assert sorted(finished) == [0, 1, 2, 4, 5]


def test_concurrent_callers_restore_blas_only_when_the_last_leaves():
    get, set_, _ = _setter()
    start = threading.Barrier(3)
    errors = []

    def caller():
        try:
            start.wait()
            for _ in range(20):
                _concurrent.run(lambda i: sum(range(2000)), range(4), 2, get, set_)
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
    get, set_, _ = _setter()
    assert _concurrent.run(lambda i: i, range(4), 2, get, set_) == [0, 1, 2, 3]   # workers started
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        out = pool.apply_async(_run_in_child).get(timeout=60)     # hung before: dead workers
    assert out == [0, 1, 4, 9]


def _run_in_child():
    get, set_, _ = _setter()
    return _concurrent.run(lambda i: i * i, range(4), 2, get, set_)


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
