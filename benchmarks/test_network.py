"""The MNIST networks end to end: training steps, inference, and start-up in fresh processes.

A training step is forward, softmax cross-entropy, backward and an SGD
momentum update; inference is an eval-mode forward pass; the references run
the same network with the same weights. The MNIST CNN runs at several
batches, ``mobile`` (``fastcnn.models.mnist_mobile``) at 64 (and inference
at 1 and 1000 too); ``--batch B`` times batch B only.
A ``startup`` row times a fresh Python process that imports, builds the
network and runs one training step, tuned as this one; a backend with a JIT
(one with ``warmup``) is also timed with an empty NUMBA_CACHE_DIR, once.
"""
import os
import subprocess
import sys
import tempfile

import pytest

import fastcnn
from fastcnn.backend import get_module

from benchmarks import common, runners

IMPLS = runners.implementations()
MOBILE = [("mobile", common.TRAIN_BATCH, "float32")]
TRAIN = [("cnn", b, "float32") for b in common.TRAIN_BATCHES] + [
    ("cnn", common.TRAIN_BATCH, "float64")] + MOBILE
INFER = [("cnn", b, "float32") for b in common.INFERENCE_BATCHES] + [
    ("mobile", b, "float32") for b in common.MOBILE_INFERENCE_BATCHES]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = ("import sys; from benchmarks import tune; tune(); from benchmarks import runners; "
         "runners.make_network(sys.argv[1], 'float32', 64, True)()")


def pytest_generate_tests(metafunc):
    if metafunc.function in (test_train_step, test_inference):
        batch = metafunc.config.getoption("batch")
        cases = [(m, batch, dt) for m in ("cnn", "mobile") for dt in common.DTYPES] if batch \
            else TRAIN if metafunc.function is test_train_step else INFER
        metafunc.parametrize("model,batch,dtype", cases,
                             ids=[f"{m}-b{b}-{dt}" for m, b, dt in cases])


def group(model, what, batch, dtype):
    """The CNN's groups keep their published names; other models' are prefixed."""
    return ("" if model == "cnn" else f"{model} ") + f"{what} b{batch} {dtype}"


@pytest.mark.parametrize("impl", IMPLS)
def test_train_step(run, model, batch, impl, dtype):
    run(runners.make_network(impl, dtype, batch, True, model),
        group(model, "train_step", batch, dtype), common.network_work(batch, True, model),
        impl=impl, model=model, batch=batch, dtype=dtype)


@pytest.mark.parametrize("impl", IMPLS)
def test_inference(run, model, batch, impl, dtype):
    run(runners.make_network(impl, dtype, batch, False, model),
        group(model, "inference", batch, dtype), common.network_work(batch, False, model),
        impl=impl, model=model, batch=batch, dtype=dtype)


def first_step(impl, env=None):
    subprocess.run([sys.executable, "-c", CHILD, impl], cwd=ROOT, check=True,
                   env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})))


@pytest.mark.startup
@pytest.mark.parametrize("impl", [i for i in IMPLS
                                  if i != "loops" and i not in runners.INFERENCE_ONLY])
def test_first_step(benchmark, impl):
    benchmark.group = "first training step b64 float32, fresh process"
    benchmark.extra_info["impl"] = impl
    benchmark.pedantic(first_step, args=(impl,), rounds=3)


@pytest.mark.startup
@pytest.mark.parametrize("impl", [b for b in fastcnn.available_backends()
                                  if hasattr(get_module(b), "warmup")])
def test_first_step_cold(benchmark, impl, tmp_path):
    if benchmark.disabled:
        pytest.skip("the cold compile (tens of seconds) runs only when timed")
    benchmark.group = "first training step b64 float32, fresh process, empty JIT cache"
    benchmark.extra_info["impl"] = impl
    benchmark.pedantic(first_step, rounds=1, setup=lambda: (
        (impl, {"NUMBA_CACHE_DIR": tempfile.mkdtemp(dir=tmp_path)}), {}))
