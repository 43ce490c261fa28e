"""A forked child computes what its parent computes: after the compiled
backends ran ops on several threads in the parent, a child made by
``os.fork()`` or a ``multiprocessing`` "fork" pool runs conv, pooling and
relu forward and backward to the same results - no hang (timeouts), no
kill (a GNU OpenMP team in the parent used to kill or hang the child)."""
import os
import pickle
import signal
import threading
import time

import numpy as np
import pytest

import fastcnn
from fastcnn import ops
from fastcnn.backends import _concurrent

from cases import BACKENDS

if not hasattr(os, "fork"):
    pytest.skip("needs os.fork", allow_module_level=True)

COMPILED = [b for b in ("cython", "numba") if b in BACKENDS]
TIMEOUT = 120       # a first numba import in a child may compile (cache miss)


def _every_op(backend):
    """Forward and backward of conv (both im2col layouts), max/avg pooling
    and relu, on inputs big enough to be split across threads."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8, 20, 20)).astype(np.float32)
    out = []
    for F, C in ((16, 8), (4, 1)):          # whole-batch / per-image columns
        w = rng.standard_normal((F, C, 3, 3)).astype(np.float32)
        y, ctx = ops.conv2d_forward(x[:, :C], w, None, 1, 1, backend=backend)
        out += [y, *ops.conv2d_backward(np.cos(y), ctx)]
    for op in ("max", "avg"):
        y, ctx = getattr(ops, f"{op}_pool2d_forward")(x, 2, backend=backend)
        out += [y, getattr(ops, f"{op}_pool2d_backward")(np.cos(y), ctx)]
    big = rng.standard_normal(3 << 21).astype(np.float32)   # several element ranges
    y, ctx = ops.relu_forward(big, backend=backend)
    out += [y, ops.relu_backward(np.cos(y), ctx)]
    return [a.copy() for a in out]


@pytest.fixture
def two_threads():
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: nothing runs on several threads")
    before = fastcnn.get_num_threads()
    fastcnn.set_num_threads(2)
    try:
        yield
    finally:
        fastcnn.set_num_threads(before)


def _parent_results(backend):
    _concurrent.most_threads = 0
    want = _every_op(backend)
    assert _concurrent.most_threads == 2          # the parent really ran threads
    return want


def _same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def _in_forked_child(fn, *args):
    """fn(*args) in an os.fork() child; its pickled result through a pipe.
    The child is killed and the test fails if it takes over TIMEOUT."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                  # the child: never returns
        code = 0
        try:
            os.close(r)
            data = pickle.dumps(fn(*args))
            with os.fdopen(w, "wb") as f:
                f.write(data)
        except BaseException:                     # noqa: BLE001 - reported as the exit code
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    reader = threading.Thread(target=lambda: chunks.append(os.fdopen(r, "rb").read()))
    reader.start()                                # the result can outgrow the pipe's buffer
    deadline = time.monotonic() + TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            reader.join()
            pytest.fail(f"forked child hung for {TIMEOUT} s")
        time.sleep(0.05)
    reader.join()
    data = chunks[0]
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, \
        f"forked child died: status {status:#x}"
    return pickle.loads(data)


@pytest.mark.parametrize("backend", COMPILED)
def test_os_fork_child_computes_what_the_parent_did(backend, two_threads):
    want = _parent_results(backend)
    _same(_in_forked_child(_every_op, backend), want)


@pytest.mark.parametrize("backend", COMPILED)
def test_multiprocessing_fork_pool_computes_what_the_parent_did(backend, two_threads):
    import multiprocessing
    want = _parent_results(backend)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = [pool.apply_async(_every_op, (backend,)) for _ in range(2)]
        for r in results:
            _same(r.get(timeout=TIMEOUT), want)
