"""Process-wide settings fastcnn makes: OpenMP's wait policy (a default, at
import) and glibc's malloc thresholds (only on request: tune_malloc)."""
import os
import platform
import subprocess
import sys

import pytest

import fastcnn

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _python(code, **env):
    full = {k: v for k, v in os.environ.items()
            if k not in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")}
    full.update(env)
    proc = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_import_makes_openmp_wait_passively_by_default():
    out = _python("import os, fastcnn; from fastcnn import _threads; "
                  "print(os.environ['OMP_WAIT_POLICY'], _threads.WAIT_POLICY_SET_BY_FASTCNN)")
    assert out == "PASSIVE True"


def test_a_wait_policy_the_user_set_is_kept():
    out = _python("import os, fastcnn; from fastcnn import _threads; "
                  "print(os.environ['OMP_WAIT_POLICY'], _threads.wait_policy())",
                  OMP_WAIT_POLICY="ACTIVE")
    assert out == "ACTIVE ACTIVE (user)"


def test_drop_default_wait_policy_removes_only_fastcnns_own():
    out = _python("import os, fastcnn; from fastcnn import _threads; "
                  "_threads.drop_default_wait_policy(); "
                  "print(os.environ.get('OMP_WAIT_POLICY'), _threads.WAIT_POLICY_SET_BY_FASTCNN)")
    assert out == "None False"
    out = _python("import os, fastcnn; from fastcnn import _threads; "
                  "_threads.drop_default_wait_policy(); print(os.environ.get('OMP_WAIT_POLICY'))",
                  OMP_WAIT_POLICY="ACTIVE")
    assert out == "ACTIVE"


def test_import_shortens_openblas_spinning_when_it_comes_before_numpy():
    code = "import fastcnn; from fastcnn import _threads; print(_threads.blas_timeout())"
    assert _python(code) == "16 (fastcnn default)"
    assert _python("import numpy; " + code) == \
        "16 (fastcnn default, too late: numpy was imported before fastcnn)"
    assert _python(code, OPENBLAS_THREAD_TIMEOUT="28") == "28 (user)"


_FAULTS = """
import resource, sys
import numpy as np
import fastcnn
from fastcnn import nn
from fastcnn.models import mnist_cnn
from fastcnn.training import train_step
if sys.argv[1] == "tuned":
    assert fastcnn.tune_malloc()
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
y = rng.integers(0, 10, 64)
model = mnist_cnn(seed=0)
opt = nn.SGD(model.parameters(), lr=0.01)
with fastcnn.use_backend("im2col"):
    for _ in range(3):
        train_step(model, opt, x, y)
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        train_step(model, opt, x, y)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 5)
"""


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_tune_malloc_stops_the_training_steps_page_faults():
    # page faults, not time: a deterministic count of what the tuning removes
    # (default here: ~3,700 minor faults per step)
    default = float(subprocess.run([sys.executable, "-c", _FAULTS, "default"], check=True,
                                   capture_output=True, text=True).stdout)
    tuned = float(subprocess.run([sys.executable, "-c", _FAULTS, "tuned"], check=True,
                                 capture_output=True, text=True).stdout)
    assert default > 500
    assert tuned < default / 20


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_show_config_reports_the_process_settings(capsys):
    assert fastcnn.tune_malloc() is True
    fastcnn.show_config()
    out = capsys.readouterr().out
    assert "malloc: tuned (glibc" in out
    assert "OMP_WAIT_POLICY: " in out
