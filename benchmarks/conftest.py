"""pytest-benchmark plumbing: tuning, one thread count, rows by implementation, rates, machine info.

The process is tuned first, before numpy loads (``benchmarks.tune``), then
every library gets the same thread count ($FASTCNN_BENCH_THREADS, else every
CPU this process may use). ``--impl`` keeps the named implementations' rows
only, so that a process times one implementation alone; ``run`` puts
GFLOP/s or GB/s and images/s in ``extra_info``. Deliberately no timing and
no assertions about speed.
"""
from benchmarks import tune

TUNED = tune()

import io  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import fastcnn  # noqa: E402
from benchmarks import runners  # noqa: E402

_LIMITS = []      # keeps threadpoolctl's limiter alive for the whole session


def pytest_addoption(parser):
    parser.addoption("--impl", default="", help="fastcnn benchmarks: comma-separated "
                     "implementations to run (backends, torch, tutorial, numpy: the matmul row)")
    parser.addoption("--batch", type=int, help="fastcnn benchmarks: the network at this batch only")


def pytest_configure(config):
    config.addinivalue_line("markers", "startup: rows that time fresh Python processes")
    # Run from the repository root, `fastcnn` is the source tree, whose compiled
    # backends are missing without `pip install -e .`: that would only shrink the
    # table. CI names the backends that must be there.
    required = set(filter(None, os.environ.get("FASTCNN_REQUIRE_BACKENDS", "").split(",")))
    if required - set(fastcnn.available_backends()):
        raise pytest.UsageError(f"backends missing from the benchmarks: "
                                f"{fastcnn.unavailable_backends()}; `pip install -e .`")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = int(os.environ.get("FASTCNN_BENCH_THREADS") or cpus)
    _LIMITS.append(threadpool_limits(limits=threads))      # the BLAS and OpenMP loaded now
    fastcnn.set_num_threads(threads)                       # fastcnn's own pool
    if "torch" in (_selected(config) or runners.implementations()):   # only where it is timed
        import torch
        torch.set_num_threads(threads)


def _selected(config):
    """--impl as a set; empty: every implementation."""
    return set(filter(None, config.getoption("impl").split(",")))


def _impl(item):
    return getattr(item, "callspec", None) and item.callspec.params.get("impl")


@pytest.hookimpl(tryfirst=True)      # before -k and -m deselect
def pytest_collection_modifyitems(config, items):
    for i, item in enumerate(items):    # the whole suite's order: the report's, across processes
        item.user_properties.append(("order", i))
    keep = _selected(config)
    if keep:
        config.hook.pytest_deselected(items=[i for i in items if _impl(i) not in keep])
        items[:] = [i for i in items if _impl(i) in keep]


def pytest_benchmark_update_machine_info(config, machine_info):
    """What this process ran with, read at the end, when every pool has started."""
    out = io.StringIO()
    try:
        fastcnn.show_config(out)
    except Exception as e:      # a report without it beats none
        out.write(f"fastcnn.show_config() failed: {type(e).__name__}: {e}")
    info = machine_info["fastcnn"] = {"impl": config.getoption("impl") or "all",
                                      "tune_runtime": TUNED, "show_config": out.getvalue().strip(),
                                      # they pick OpenBLAS's kernels (some machines set them)
                                      "openblas_env": {k: os.environ.get(k, "(unset)") for k in
                                                       ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}}
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch"] = f"{torch.__version__}, {torch.get_num_threads()} threads"
    if "onnxruntime" in sys.modules:
        ort = sys.modules["onnxruntime"]
        info["onnxruntime"] = (f"{ort.__version__}, CPU execution provider, "
                               f"{fastcnn.get_num_threads()} intra-op threads, 1 inter-op")


@pytest.fixture(autouse=True)
def _order(request):
    if "benchmark" in request.fixturenames:
        request.getfixturevalue("benchmark").extra_info.update(request.node.user_properties)


@pytest.fixture
def run(benchmark):
    """run(fn, group, work, **info): time fn in ``group``; its rates go into extra_info."""

    def _run(fn, group, work, **info):
        benchmark.group = group
        benchmark.extra_info.update(info, **work)
        benchmark(fn)
        if benchmark.stats is not None:      # None under --benchmark-disable
            rates = {"GFLOP/s": "gflop", "GB/s": "gbyte", "images/s": "images"}
            benchmark.extra_info.update({k: work[w] / benchmark.stats.stats.median
                                         for k, w in rates.items() if work.get(w)})

    return _run
