"""numba's vector kernels (the direct conv loops, the 2x2 max pooling) built
for narrower CPUs than this one: their vector width follows the CPU Numba
compiles for, fixed at import, so each build runs in a child process with
``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` set (AVX2 + FMA; the SSE2
baseline) and is checked there against the `loops` reference. The host's
own width runs in test_direct.py and test_pool_semantics.py.
"""
import os
import subprocess
import sys

import pytest

pytest.importorskip("numba")

CHILD = r"""
import numpy as np
from fastcnn import ops
from fastcnn.backends._gemm_conv import forced_path
from fastcnn._kernels import numba_direct
from fastcnn.testing import assert_close
print("vector bytes", numba_direct.VBYTES)
rng = np.random.default_rng(0)
for (N, C, H, W, F, P, D, G) in [(2, 3, 7, 9, 5, 1, 1, 1), (2, 6, 17, 19, 9, 2, 2, 3),
                                 (1, 3, 5, 40, 17, (1, 2), (1, 2), 1), (2, 1, 12, 12, 2, 1, 1, 1)]:
    for dt, tol in ((np.float32, 1e-4), (np.float64, 1e-9)):
        x = rng.standard_normal((N, C, H, W)).astype(dt)
        w = rng.standard_normal((F, C // G, 3, 3)).astype(dt)
        b = rng.standard_normal(F).astype(dt)
        with forced_path("direct"):
            y, ctx = ops.conv2d_forward(x, w, b, 1, P, D, G, backend="numba")
        dy = rng.standard_normal(y.shape).astype(dt)
        got = (y, *ops.conv2d_backward(dy, ctx))
        yl, cl = ops.conv2d_forward(x.astype(np.float64), w.astype(np.float64),
                                    b.astype(np.float64), 1, P, D, G, backend="loops")
        want = (yl, *ops.conv2d_backward(dy.astype(np.float64), cl))
        for name, g, e in zip(("y", "dx", "dw", "db"), got, want):
            assert_close(g, e, tol, name)
for W in (2, 3, 5, 8, 9, 14, 17, 33):
    for dt in (np.float32, np.float64):
        x = rng.integers(-3, 3, size=(2, 2, 5, W)).astype(dt)
        x[0, 0, 1, 0] = np.nan
        y, c = ops.max_pool2d_forward(x, 2, backend="numba")
        yl, cl = ops.max_pool2d_forward(x, 2, backend="loops")
        np.testing.assert_array_equal(y, yl)
        dy = rng.standard_normal(y.shape).astype(dt)
        np.testing.assert_array_equal(ops.max_pool2d_backward(dy, c),
                                      ops.max_pool2d_backward(dy, cl))
print("ok")
"""

BUILDS = {
    "avx2": ("haswell", "+64bit,+sse,+sse2,+sse3,+ssse3,+sse4.1,+sse4.2,+popcnt,+avx,+avx2,"
                        "+fma,+bmi,+bmi2,+lzcnt,+movbe,+cx16,+f16c", 32),
    "sse2": ("x86-64", "+64bit,+sse,+sse2,+cx8,+fxsr,+mmx", 16),
}


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "AMD64"), reason="x86-64 builds")
@pytest.mark.parametrize("build", sorted(BUILDS))
def test_numba_vector_kernels_on_a_narrower_cpu(build, tmp_path):
    name, features, vbytes = BUILDS[build]
    # a cache of its own: the child compiles every kernel it calls for that CPU
    env = dict(os.environ, NUMBA_CPU_NAME=name, NUMBA_CPU_FEATURES=features,
               NUMBA_CACHE_DIR=str(tmp_path), FASTCNN_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"vector bytes {vbytes}" in proc.stdout, proc.stdout
    assert proc.stdout.rstrip().endswith("ok"), proc.stdout + proc.stderr
