"""fastcnn benchmarks: every backend against PyTorch CPU and tutorial-style im2col code.

``pytest benchmarks/`` is the pytest-benchmark suite; ``python -m
benchmarks.report`` runs it once per implementation, each in its own
process, into ``RESULTS.md`` and two charts; ``python -m benchmarks.step``
times one implementation's training step. Deliberately not part of the
installed library, and importing it does nothing: the processes that time
call ``tune()``.
"""
import os


def tune():
    """``fastcnn.tune_runtime()``, as the ``fastcnn`` command does, for every implementation
    alike; returns what it reports. Call it first: OpenBLAS and OpenMP read their settings
    when numpy or torch loads them. With FASTCNN_TUNE=0 nothing is tuned and numpy is
    imported first, as in a plain script."""
    if os.environ.get("FASTCNN_TUNE", "").strip() == "0":
        import numpy  # noqa: F401
        return "off (FASTCNN_TUNE=0)"
    import fastcnn
    return fastcnn.tune_runtime()
