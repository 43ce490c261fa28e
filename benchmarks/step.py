"""``python -m benchmarks.step IMPL[,IMPL...] [--model M] [--infer] [--batch B] [--dtype D] [--no-tune]``:
an MNIST model's training step (or inference) of each implementation, timed in a process of its own.

Each implementation runs the suite's network rows alone in a fresh ``python
-m pytest`` (``run_suite``, which the report uses too), tuned by
``fastcnn.tune_runtime()`` first or, with ``--no-tune``, untuned with numpy
imported first, as a plain script would be; this prints each row's median
and spread. It imports neither numpy nor fastcnn itself.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# more rounds than the report takes: one row, measured to compare settings
PRECISE = ["--benchmark-warmup=on", "--benchmark-warmup-iterations=5",
           "--benchmark-min-rounds=15", "--benchmark-max-time=2"]


def run_suite(impl, args, tune=True, threads=None):
    """``python -m pytest benchmarks --impl impl *args`` in a fresh process, from the repository
    root; returns (its --benchmark-json as a dict, or None, its output, its exit status)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if not tune:
        env["FASTCNN_TUNE"] = "0"
    if threads:
        env["FASTCNN_BENCH_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.json")
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "benchmarks", "-q", "-rfEs", "-p", "no:cacheprovider",
             f"--impl={impl}", "--benchmark-only", f"--benchmark-json={path}", *args],
            cwd=ROOT, env=env, capture_output=True, text=True)
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):       # nothing ran, or pytest stopped before writing it
            data = None
    return data, proc.stdout + proc.stderr, proc.returncode


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.step",
                                description=__doc__.split("\n")[1])
    p.add_argument("impls", help="comma-separated: fastcnn backends, torch, tutorial, "
                   "onnxruntime (inference only)")
    p.add_argument("--model", default="cnn", choices=("cnn", "mobile"),
                   help="the MNIST CNN (default) or the MobileNet-style 'mobile'")
    p.add_argument("--infer", action="store_true", help="eval-mode inference instead")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--no-tune", action="store_true",
                   help="no fastcnn.tune_runtime(), numpy imported first (as FASTCNN_TUNE=0)")
    p.add_argument("--threads", type=int, help="threads for every library (default: all CPUs)")
    args = p.parse_args(argv)
    test = "test_inference" if args.infer else "test_train_step"
    status = 0
    for impl in args.impls.split(","):
        select = f"{test} and {args.model}-b{args.batch}-{args.dtype}"     # the row's id
        data, out, _ = run_suite(impl, [f"--batch={args.batch}", "-k", select, *PRECISE],
                                 tune=not args.no_tune, threads=args.threads)
        if not data or not data["benchmarks"]:
            status = 1
            print(f"{impl}: nothing timed\n{out.strip()[-2000:]}", file=sys.stderr)
            continue
        (row,), tuned = data["benchmarks"], data["machine_info"]["fastcnn"]["tune_runtime"]
        # three decimals below a millisecond: a batch-1 row's 0.19 ms would
        # otherwise be 5% coarse
        s = {k: f"{1e3 * v:.3f}" if v < 1e-3 else f"{1e3 * v:.2f}" for k, v in
             row["stats"].items() if k in ("median", "q1", "q3", "min", "max")}
        print(f"{impl} {row['group']}: median {s['median']} ms, IQR {s['q1']}-{s['q3']}, "
              f"min-max {s['min']}-{s['max']} ({row['stats']['rounds']} rounds), "
              f"{row['extra_info']['images/s']:,.0f} images/s; tune_runtime: {tuned}")
    return status


if __name__ == "__main__":
    sys.exit(main())
