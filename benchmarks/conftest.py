"""pytest-benchmark plumbing: one thread count for everyone, warm JIT, work rates in extra_info.

The session fixture sets the same thread count for fastcnn, numba, PyTorch
and BLAS (``machine.limit_threads``), compiles the JIT kernels once
(``fastcnn.warmup``) and records how long that took, so no timed round pays
for compilation. ``run`` times a callable and stores GFLOP/s (or GB/s for
pooling) and images/s beside the time; the terminal summary prints those
rates per group next to the machine's measured matmul peak, since
pytest-benchmark's own table has no column for them.
Deliberately no assertions about speed: these are measurements, not tests.
"""
import os

import pytest

import fastcnn
from benchmarks import machine, runners

_STATE = {"setup": None, "rows": []}


def _setup():
    """Once per session: threads for everyone, then JIT warm-up (timed)."""
    if _STATE["setup"] is None:
        _STATE["setup"] = machine.prepare(machine.default_threads())
    return _STATE["setup"]


def pytest_configure(config):
    if config.getoption("benchmark_disable", False):
        runners.WARMUP = False
    # Run from the repository root, `fastcnn` may be the source tree: without an
    # editable install (pip install -e .) its compiled backend is missing and
    # would only shrink the table. CI names the backends that must be there.
    required = [b for b in os.environ.get("FASTCNN_REQUIRE_BACKENDS", "").split(",") if b]
    missing = [b for b in required if b not in fastcnn.available_backends()]
    if missing:
        raise pytest.UsageError(
            f"backends {missing} are not available to the benchmarks "
            f"(fastcnn imported from {os.path.dirname(fastcnn.__file__)}: "
            f"{fastcnn.unavailable_backends()}); install with `pip install -e .`")


def pytest_report_header(config):
    setup = _setup()
    lines = [f"fastcnn benchmarks: {setup['threads']} threads for every library "
             f"(FASTCNN_BENCH_THREADS to change); backends "
             f"{', '.join(fastcnn.available_backends())} from {os.path.dirname(fastcnn.__file__)}"]
    lines += [f"  {k}: {v}" for k, v in machine.describe().items()]
    lines.append(f"  JIT warm-up before timing: {setup['warmup_s']:.2f} s "
                 + ", ".join(f"{k}={v:.2f}s" for k, v in setup["warmup"].items()))
    return lines


@pytest.fixture(scope="session")
def bench_setup():
    return _setup()


@pytest.fixture
def run(benchmark, bench_setup):
    """run(fn, group, work, **info): time fn in ``group`` and record its rates."""

    def _run(fn, group, work, **info):
        benchmark.group = group
        benchmark.extra_info.update(info, threads=bench_setup["threads"], **work)
        result = benchmark(fn)
        stats = getattr(benchmark, "stats", None)
        if stats is not None and not getattr(benchmark, "disabled", False):
            median = stats.stats.median
            rates = {"median_ms": 1e3 * median}
            if work.get("images"):
                rates["images/s"] = work["images"] / median
            if "gflop" in work:
                rates["GFLOP/s"] = work["gflop"] / median
            if "gbyte" in work:
                rates["GB/s"] = work["gbyte"] / median
            benchmark.extra_info.update(rates)
            _STATE["rows"].append((group, info.get("impl", "?"), rates))
        return result

    return _run


@pytest.fixture
def make(bench_setup):
    """Call a runners.make_* builder, turning NotApplicable into a skip."""

    def _make(builder, *args):
        try:
            return builder(*args)
        except runners.NotApplicable as e:
            pytest.skip(str(e))

    return _make


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = _STATE["rows"]
    if not rows:
        return
    tr = terminalreporter
    tr.section("fastcnn: rates per group (median)")
    peaks = {dt: machine.matmul_peak(dt) for dt in ("float32", "float64")}
    tr.write_line("matmul peak (1024^3 BLAS, measured now): "
                  + ", ".join(f"{dt} {g:.0f} GFLOP/s" for dt, g in peaks.items()))
    tr.write_line(f"numba threading layer: {machine.numba_threading_layer()}")
    groups = {}
    for group, impl, rates in rows:
        groups.setdefault(group, []).append((impl, rates))
    for group in sorted(groups):
        tr.write_line(f"-- {group}")
        for impl, rates in groups[group]:
            cols = "  ".join(f"{k} {v:10.2f}" for k, v in rates.items())
            tr.write_line(f"   {impl:10s} {cols}")
