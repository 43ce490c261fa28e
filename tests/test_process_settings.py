"""Process-wide settings: none at import, all three on request (tune_runtime),
and the ``fastcnn`` command asks for them unless told not to."""
import json
import os
import platform
import subprocess
import sys

import pytest

import fastcnn

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
TUNED_VARS = ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "FASTCNN_TUNE")


def _python(code, *args, **env):
    full = {k: v for k, v in os.environ.items() if k not in TUNED_VARS}
    full.update(env)
    proc = subprocess.run([sys.executable, "-c", code, *args], env=full, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_import_changes_nothing_in_the_process():
    out = _python("import os, sys, json, subprocess\n"
                  "before = dict(os.environ)\n"
                  "import fastcnn\n"
                  "child = subprocess.run([sys.executable, '-c', 'import os, json; "
                  "print(json.dumps(dict(os.environ)))'], capture_output=True, text=True).stdout\n"
                  "print(json.dumps([dict(os.environ) == before, json.loads(child) == before,\n"
                  "                  'numpy' in sys.modules, fastcnn.get_num_threads() > 0]))")
    assert json.loads(out) == [True, True, False, True]


def test_tune_runtime_before_numpy_sets_everything_and_says_so():
    out = _python("import os, json, fastcnn\n"
                  "r = fastcnn.tune_runtime()\n"
                  "import numpy\n"
                  "print(json.dumps([r, os.environ.get('OMP_WAIT_POLICY'),\n"
                  "                  os.environ.get('OPENBLAS_THREAD_TIMEOUT'),\n"
                  "                  fastcnn.tune_runtime() == r]))")
    r, policy, timeout, idempotent = json.loads(out)
    assert (policy, timeout, idempotent) == ("PASSIVE", "16", True)
    assert r["set"]["OMP_WAIT_POLICY"] == "PASSIVE"
    assert r["set"]["OPENBLAS_THREAD_TIMEOUT"] == "16"
    assert r["too_late"] == {} and r["kept"] == {}
    assert ("malloc" in r["set"]) == GLIBC


def test_tune_runtime_after_numpy_reports_blas_too_late_and_keeps_users_values():
    out = _python("import numpy, os, json, fastcnn\n"
                  "r = fastcnn.tune_runtime(malloc=False)\n"
                  "print(json.dumps([r, 'OPENBLAS_THREAD_TIMEOUT' in os.environ]))",
                  OMP_WAIT_POLICY="ACTIVE")
    r, timeout_written = json.loads(out)
    assert r["kept"] == {"OMP_WAIT_POLICY": "ACTIVE"}
    assert "OpenBLAS" in r["too_late"]["OPENBLAS_THREAD_TIMEOUT"]
    assert r["set"] == {} and not timeout_written


def test_the_command_tunes_unless_told_not_to():
    run = "import sys; from fastcnn.__main__ import main; sys.exit(main(['info']))"
    assert "process: tuned: OMP_WAIT_POLICY=PASSIVE; OPENBLAS_THREAD_TIMEOUT=16" in _python(run)
    assert "process: not tuned" in _python(run, FASTCNN_TUNE="0")
    from fastcnn.__main__ import tuning_wanted
    assert not tuning_wanted(["train", "--no-tune"]) and tuning_wanted(["train"])


_FAULTS = """
import resource, sys
import fastcnn
if sys.argv[1] == "tuned":
    assert "malloc" in fastcnn.tune_runtime()["set"]
import numpy as np
from fastcnn import nn
from fastcnn.models import mnist_cnn
from fastcnn.training import train_step
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
def test_tuned_malloc_stops_the_training_steps_page_faults():
    # page faults, not time: a deterministic count of what the tuning removes
    # (default here: thousands of minor faults per step with the im2col backend)
    default = float(_python(_FAULTS, "default"))
    tuned = float(_python(_FAULTS, "tuned"))
    assert default > 500
    assert tuned < default / 20


def test_show_config_reports_the_process_settings(capsys):
    fastcnn.show_config()
    out = capsys.readouterr().out
    assert "process: " in out and "OMP_WAIT_POLICY: " in out
