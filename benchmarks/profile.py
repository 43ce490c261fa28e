"""``python -m benchmarks.profile IMPL [--model cnn|mobile] [--infer] [--batch B] [--repeats R]``:
one implementation's MNIST step, part by part.

For a fastcnn backend the step runs as ``Sequential`` runs it (fused
Conv2d -> ReLU (-> MaxPool2d) steps while fusion is on; ``--no-fuse`` for
the layers one by one), each step's forward and backward, the loss and the
optimizer timed on their own with ``time.perf_counter`` over ``--repeats``
steps after a warm-up; the table gives each part's median and its share of
the sum, then the whole step timed without the per-part timers, whose
difference is the cost of timing parts. ``--calls`` adds where the Python
time goes (cProfile over the repeats, by source file: the door in
``ops.py``/``_shapes.py``, the drivers, the pool, the workspace), with the
Python calls per step: the per-call overhead that decides batch 1. cProfile
slows Python calls several times and compiled code not at all, so its
shares overstate Python; the call counts are exact. For ``torch`` it is
``torch.profiler`` on the same network (``torch_ref``'s twin, same
weights), grouped by op; for ``onnxruntime`` ORT's own profiler, grouped by
graph node. Same threads and tuning as the suite (``conftest.py``). Read it
beside PyTorch's own profile; deliberately no speed claims: on a shared
machine single medians are noisy, compare within one run.
"""
import argparse
import os
import sys

from benchmarks import tune

TUNED = tune()      # before numpy loads, as the suite does

import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from threadpoolctl import threadpool_limits  # noqa: E402

import fastcnn  # noqa: E402
from benchmarks import common, runners  # noqa: E402
from fastcnn.nn.fusion import FusedStep  # noqa: E402

TOP = 25        # torch's ops listed one by one; the rest are summed


def threads():
    """The suite's thread count: $FASTCNN_BENCH_THREADS, else every CPU this process may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return int(os.environ.get("FASTCNN_BENCH_THREADS") or cpus)


def _layers(step):
    """The model's layers a step runs: a fused step's several, else the layer itself."""
    return step.layers if isinstance(step, FusedStep) else [step]


def _names(steps):
    names, i = [], 0
    for s in steps:
        n = len(_layers(s))
        names.append((f"{i}-{i + n - 1} " if n > 1 else f"{i} ")
                     + "+".join(type(m).__name__ for m in _layers(s)))
        i += n
    return names


def fastcnn_parts(impl, model_name, batch, training, repeats, fuse=True):
    """([(part, [seconds per repeat])], [seconds of the whole step per repeat])."""
    from fastcnn.models import build
    from fastcnn.nn import SGD
    from fastcnn.nn.fusion import fusion_enabled, plan
    from fastcnn.nn.loss import softmax_cross_entropy
    from fastcnn.training import train_step
    x, y = common.mnist_batch(batch, "float32")
    model = build(model_name, dtype="float32", seed=0).train(training)
    model.fuse = fuse
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps = plan(model.layers) if fuse and fusion_enabled() else model.layers
    names, parts = _names(steps), {}

    def timed(part, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        parts.setdefault(part, []).append(time.perf_counter() - t)
        return out

    def one():
        h = x
        for name, s in zip(names, steps):
            h = timed(f"forward  {name}", s.forward, h)
        if not training:
            return
        _, dh = timed("loss (softmax cross-entropy)", softmax_cross_entropy, h, y)
        for name, s in zip(names[::-1], steps[::-1]):
            # input_grad: the first step's dx skipped, as in train_step
            dh = timed(f"backward {name}", s.backward, dh, s is not steps[0])
        timed("optimizer (SGD momentum)", opt.step)

    def whole():
        t = time.perf_counter()
        train_step(model, opt, x, y) if training else model.forward(x)
        return time.perf_counter() - t

    with fastcnn.use_backend(impl):
        for _ in range(max(3, repeats // 5)):       # warm-up: JIT, pools, workspaces
            one()
            whole()
        parts.clear()
        for _ in range(repeats):
            one()
        totals = [whole() for _ in range(repeats)]
    return list(parts.items()), totals


def python_calls(impl, model_name, batch, training, repeats, fuse=True, out=sys.stdout):
    """cProfile over ``repeats`` whole steps: each source file's share of the profiled time
    and its Python calls per step (compiled kernels and BLAS count in their callers)."""
    import cProfile
    import pstats
    from fastcnn.models import build
    from fastcnn.nn import SGD
    from fastcnn.training import train_step
    x, y = common.mnist_batch(batch, "float32")
    model = build(model_name, dtype="float32", seed=0).train(training)
    model.fuse = fuse
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    step = (lambda: train_step(model, opt, x, y)) if training else (lambda: model.forward(x))
    with fastcnn.use_backend(impl):
        for _ in range(max(3, repeats // 5)):
            step()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(repeats):
            step()
        profiler.disable()
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastcnn.__file__))) + os.sep
    files, calls = {}, {}
    for (path, _, _), (_, ncalls, tottime, _, _) in pstats.Stats(profiler).stats.items():
        name = (path[len(root):] if path.startswith(root) else
                "builtins and C calls" if path == "~" else os.path.basename(path))
        files[name] = files.get(name, 0) + tottime
        calls[name] = calls.get(name, 0) + ncalls
    total = sum(files.values()) or 1
    print(f"\nPython calls per step: {sum(calls.values()) / repeats:,.0f} "
          "(cProfile; shares of the profiled time, which overstates Python)", file=out)
    print(f"{'source file':<52} {'share':>7} {'calls/step':>10}", file=out)
    for name, t in sorted(files.items(), key=lambda kv: -kv[1])[:TOP]:
        print(f"{name[:52]:<52} {100 * t / total:>6.1f}% {calls[name] / repeats:>10.0f}",
              file=out)


def print_parts(parts, totals, title, out=sys.stdout):
    med = [(part, statistics.median(ts)) for part, ts in parts]
    total = sum(t for _, t in med)
    print(title, file=out)
    print(f"{'part':<52} {'median ms':>10} {'share':>7}", file=out)
    for part, t in med:
        print(f"{part:<52} {1e3 * t:>10.3f} {100 * t / total:>6.1f}%", file=out)
    print(f"{'sum of the parts':<52} {1e3 * total:>10.3f}", file=out)
    whole = statistics.median(totals)
    print(f"{'the whole step, untimed parts (median)':<52} {1e3 * whole:>10.3f}", file=out)


def torch_profile(model_name, batch, training, repeats, out=sys.stdout):
    """torch.profiler over ``repeats`` steps of the twin, ops by self CPU time per step."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from benchmarks import torch_ref
    from fastcnn.models import build
    torch.set_num_threads(threads())
    x, y = common.mnist_batch(batch, "float32")
    net = torch_ref.from_fastcnn(build(model_name, dtype="float32", seed=0))
    opt = torch_ref.sgd(net, lr=0.05, momentum=0.9)
    step = (lambda: torch_ref.train_step(net, opt, x, y)) if training else (
        lambda: torch_ref.predict(net, x))
    for _ in range(max(3, repeats // 5)):
        step()
    totals = []
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            t = time.perf_counter()
            step()
            totals.append(time.perf_counter() - t)
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in rows)
    print(f"torch {model_name} {'train_step' if training else 'inference'} b{batch}: "
          f"torch.profiler over {repeats} steps, ops by self CPU time per step", file=out)
    print(f"{'op':<52} {'ms/step':>10} {'share':>7} {'calls/step':>10}", file=out)
    for e in rows[:TOP]:
        if e.self_cpu_time_total:
            print(f"{e.key[:52]:<52} {e.self_cpu_time_total / 1e3 / repeats:>10.3f} "
                  f"{100 * e.self_cpu_time_total / total:>6.1f}% {e.count / repeats:>10.1f}",
                  file=out)
    rest = sum(e.self_cpu_time_total for e in rows[TOP:])
    if rest:
        print(f"{f'({len(rows) - TOP} other ops)':<52} {rest / 1e3 / repeats:>10.3f} "
              f"{100 * rest / total:>6.1f}%", file=out)
    print(f"{'the whole step, profiled (median)':<52} {1e3 * statistics.median(totals):>10.3f}",
          file=out)


def onnxruntime_profile(model_name, batch, repeats, out=sys.stdout):
    """ONNX Runtime's profiler over ``repeats`` runs: each graph node's time per run."""
    import onnxruntime as ort
    from benchmarks import onnx_ref
    from fastcnn.models import build
    x, _ = common.mnist_batch(batch, "float32")
    onnx = onnx_ref.export(build(model_name, dtype="float32", seed=0).eval())
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads(), 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for _ in range(max(3, repeats // 5)):
            session.run(None, {name: x})
        totals = []
        for _ in range(repeats):
            t = time.perf_counter()
            session.run(None, {name: x})
            totals.append(time.perf_counter() - t)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    nodes = {}      # the warm-up's runs are in the file too: keep the last ``repeats``
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session"
                  and e["name"] == "model_run")
    first = runs[-repeats] if len(runs) >= repeats else 0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first:
            key = f"{e['args'].get('op_name', '?')} {e['name'][:-len('_kernel_time')]}"
            nodes[key] = nodes.get(key, 0) + e["dur"]
    total = sum(nodes.values()) or 1
    print(f"onnxruntime {model_name} inference b{batch}: ORT's profiler over {repeats} runs, "
          "graph nodes (after ORT's fusions) by time per run", file=out)
    print(f"{'node':<52} {'ms/run':>10} {'share':>7}", file=out)
    for key, us in sorted(nodes.items(), key=lambda kv: -kv[1]):
        print(f"{key[:52]:<52} {us / 1e3 / repeats:>10.3f} {100 * us / total:>6.1f}%", file=out)
    print(f"{'the whole run (median)':<52} {1e3 * statistics.median(totals):>10.3f}", file=out)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile",
                                description=__doc__.split("\n")[1])
    p.add_argument("impl", help="a fastcnn backend, torch or onnxruntime")
    p.add_argument("--model", default="cnn", choices=("cnn", "mobile"))
    p.add_argument("--infer", action="store_true", help="eval-mode inference instead")
    p.add_argument("--batch", type=int, default=common.TRAIN_BATCH)
    p.add_argument("--repeats", type=int, default=30, help="steps timed (after a warm-up)")
    p.add_argument("--no-fuse", action="store_true", help="fastcnn: run the layers unfused")
    p.add_argument("--calls", action="store_true",
                   help="fastcnn: also Python's share by source file and calls per step")
    args = p.parse_args(argv)
    n = threads()
    limits = threadpool_limits(limits=n)     # noqa: F841 (kept alive: the BLAS at n threads)
    fastcnn.set_num_threads(n)
    what = "inference" if args.infer else "train_step"
    print(f"# {args.impl} {args.model} {what} b{args.batch} float32, {n} threads, "
          f"tune_runtime: {TUNED}")
    if args.impl == "torch":
        torch_profile(args.model, args.batch, not args.infer, args.repeats)
    elif args.impl == "onnxruntime":
        if not args.infer:
            p.error(runners.INFERENCE_ONLY["onnxruntime"] + ": add --infer")
        onnxruntime_profile(args.model, args.batch, args.repeats)
    elif args.impl in fastcnn.available_backends():
        parts, totals = fastcnn_parts(args.impl, args.model, args.batch, not args.infer,
                                      args.repeats, fuse=not args.no_fuse)
        print_parts(parts, totals, f"{args.impl} {args.model} {what} b{args.batch}: "
                    f"median of {args.repeats} steps per part"
                    + (" (unfused)" if args.no_fuse else ""))
        if args.calls:
            python_calls(args.impl, args.model, args.batch, not args.infer, args.repeats,
                         fuse=not args.no_fuse)
    else:
        p.error(f"impl must be torch, onnxruntime or one of {fastcnn.available_backends()}, "
                f"got {args.impl!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
