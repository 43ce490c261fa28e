"""One thread knob: ``fastcnn.set_num_threads`` / $FASTCNN_NUM_THREADS is one
process-wide count that holds in every Python thread (it is fastcnn's own
pool's, read on every op), capped at the CPUs with a warning; and the
compiled kernels never start a thread pool of their own (no OpenMP, no
numba threading layer)."""
import os
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

import fastcnn
from fastcnn import ops
from fastcnn.backends import _concurrent

from cases import BACKENDS

COMPILED = [b for b in ("cython", "numba") if b in BACKENDS]
CPUS = os.cpu_count() or 1
needs_two = pytest.mark.skipif(CPUS < 2, reason="one CPU: every count is capped at 1")


def _ops(backend):
    """conv, pooling and relu, forward and backward, big enough to split."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8, 20, 20)).astype(np.float32)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    y, ctx = ops.conv2d_forward(x, w, None, 1, 1, backend=backend)
    ops.conv2d_backward(y, ctx)
    y, ctx = ops.max_pool2d_forward(x, 2, backend=backend)
    ops.max_pool2d_backward(y, ctx)
    y, ctx = ops.relu_forward(rng.standard_normal(3 << 21).astype(np.float32), backend=backend)
    ops.relu_backward(y, ctx)


def _threads_used_from_a_thread(backend):
    _concurrent.most_threads = 0
    errors = []

    def work():
        try:
            _ops(backend)
        except BaseException as e:    # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert not errors, errors
    return _concurrent.most_threads


@pytest.fixture
def restore_threads():
    before = fastcnn.get_num_threads()
    yield
    fastcnn.set_num_threads(before)


@needs_two
@pytest.mark.parametrize("backend", COMPILED)
def test_the_count_holds_in_a_user_thread(backend, restore_threads):
    fastcnn.set_num_threads(1)
    assert _threads_used_from_a_thread(backend) == 1
    fastcnn.set_num_threads(2)
    assert _threads_used_from_a_thread(backend) == 2          # the same ops can use two


_SCRIPT = """
import threading
from fastcnn.backends import _concurrent
import test_threads
out = []
t = threading.Thread(target=lambda: out.append(test_threads._threads_used_from_a_thread({b!r})))
t.start(); t.join()
print(out[0])
"""


@needs_two
@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("n", ["1", "2"])
def test_the_environment_count_holds_in_a_user_thread(backend, n):
    env = dict(os.environ, FASTCNN_NUM_THREADS=n,
               PYTHONPATH=os.pathsep.join([os.path.dirname(__file__),
                                           os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", _SCRIPT.format(b=backend)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == n


def test_more_threads_than_cpus_are_capped_with_one_warning(restore_threads):
    with pytest.warns(RuntimeWarning, match=f"more than the {CPUS} CPUs here; using {CPUS}"):
        fastcnn.set_num_threads(CPUS + 3)
    assert fastcnn.get_num_threads() == CPUS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastcnn.set_num_threads(CPUS)                           # at the cap: silent


def test_an_environment_count_above_the_cpus_is_capped_with_one_warning():
    code = ("import warnings, fastcnn\n"
            "warnings.simplefilter('always')\n"
            "print(fastcnn.get_num_threads(), fastcnn.get_num_threads())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, FASTCNN_NUM_THREADS=str(CPUS + 5)), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(CPUS), str(CPUS)]
    assert r.stderr.count("RuntimeWarning") == 1
    assert f"FASTCNN_NUM_THREADS={CPUS + 5} is more than the {CPUS} CPUs" in r.stderr


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba backend not available")
def test_numba_never_starts_its_threading_layer():
    code = ("import sys, test_threads\n"
            "test_threads._ops('numba')\n"
            "from numba.np.ufunc import parallel\n"
            "print(parallel._is_initialized)\n"
            "print([m for m in ('numba.np.ufunc.omppool', 'numba.np.ufunc.tbbpool',\n"
            "                   'numba.np.ufunc.workqueue') if m in sys.modules])\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__),
                                                       os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["False", "[]"]
    info = fastcnn.backend.get_module("numba").info()
    assert info["threading_layer"].startswith("none")
