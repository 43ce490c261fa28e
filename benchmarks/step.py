"""``python -m benchmarks.step IMPL[,IMPL...] [--model M] [--infer] [--batch B] [--dtype D] [--no-tune]
[--rounds K]``: an MNIST model's training step (or inference) of each implementation, timed in a
process of its own.

Each implementation runs the suite's network rows alone in a fresh ``python
-m pytest`` (``run_suite``, which the report uses too), tuned by
``fastcnn.tune_runtime()`` first or, with ``--no-tune``, untuned with numpy
imported first, as a plain script would be; this prints each row's median
and spread. ``--rounds K`` repeats that K times, the implementations in
alternating order (forward, then backward, ...), and ends with each one's
median and range of its K round medians and, beside ``torch`` when it ran,
PyTorch's time over its own round by round: on a machine whose speed drifts
from minute to minute, a ratio of two processes run minutes apart says
little. It imports neither numpy nor fastcnn itself.
"""
import argparse
import json
import os
import statistics
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
    p.add_argument("--rounds", type=int, default=1,
                   help="run the implementations K times in alternating order, then sum up")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    test = "test_inference" if args.infer else "test_train_step"
    select = f"{test} and {args.model}-b{args.batch}-{args.dtype}"     # the row's id
    impls = args.impls.split(",")
    status, medians = 0, {impl: [None] * args.rounds for impl in impls}
    for r in range(args.rounds):
        for impl in impls if r % 2 == 0 else impls[::-1]:
            prefix = f"round {r + 1}: " if args.rounds > 1 else ""
            data, out, _ = run_suite(impl, [f"--batch={args.batch}", "-k", select, *PRECISE],
                                     tune=not args.no_tune, threads=args.threads)
            if not data or not data["benchmarks"]:
                status = 1
                print(f"{prefix}{impl}: nothing timed\n{out.strip()[-2000:]}", file=sys.stderr)
                continue
            (row,), tuned = data["benchmarks"], data["machine_info"]["fastcnn"]["tune_runtime"]
            medians[impl][r] = row["stats"]["median"]
            s = {k: _ms(v) for k, v in row["stats"].items()
                 if k in ("median", "q1", "q3", "min", "max")}
            print(f"{prefix}{impl} {row['group']}: median {s['median']} ms, IQR "
                  f"{s['q1']}-{s['q3']}, min-max {s['min']}-{s['max']} "
                  f"({row['stats']['rounds']} rounds), "
                  f"{row['extra_info']['images/s']:,.0f} images/s; tune_runtime: {tuned}",
                  flush=True)
    if args.rounds > 1:
        print("\n".join(summary(medians)))
    return status


def _ms(seconds):
    # three decimals below a millisecond: a batch-1 row's 0.19 ms would
    # otherwise be 5% coarse
    return f"{1e3 * seconds:.3f}" if seconds < 1e-3 else f"{1e3 * seconds:.2f}"


def _spread(values, fmt, unit=""):
    """'median (lowest-highest)' of values."""
    return f"{fmt(statistics.median(values))}{unit} ({fmt(min(values))}-{fmt(max(values))})"


def summary(medians):
    """Lines: each implementation's median and range of its round medians
    ({impl: [seconds or None per round]}), and with ``torch`` among them,
    PyTorch's median over each one's, round by round (rounds where either
    timed nothing are left out)."""
    lines = []
    for impl, ts in medians.items():
        timed = [t for t in ts if t is not None]
        line = f"{impl}: median of {len(timed)} round medians " + (
            _spread(timed, _ms, " ms") if timed else "none (nothing timed)")
        ref = medians.get("torch")
        if ref is not None and impl != "torch":
            ratios = [a / b for a, b in zip(ref, ts) if a is not None and b is not None]
            if ratios:
                line += ", PyTorch's time over its own " + _spread(ratios, "{:.2f}".format, "x")
        lines.append(line)
    return lines


if __name__ == "__main__":
    sys.exit(main())
