"""fastcnn benchmarks: every backend against PyTorch CPU and tutorial-style im2col code.

``pytest benchmarks/`` runs the pytest-benchmark suite (per op, per training
step, inference over batch sizes); ``python -m benchmarks.report`` runs a
compact version and writes ``benchmarks/RESULTS.md`` plus two PNG charts.

This package is deliberately not part of the installed library: it is only
importable from a checkout (the repo root on ``sys.path``), and nothing in
``fastcnn`` imports it.
"""

# fastcnn first, before numpy: its thread-pool defaults (OMP_WAIT_POLICY,
# OPENBLAS_THREAD_TIMEOUT) only count if set before OpenBLAS and OpenMP load
import fastcnn  # noqa: E402,F401
