"""``python -m benchmarks.report [--quick]``: a compact run of the suite, written up.

Writes ``benchmarks/RESULTS.md`` (machine, versions, threads, one table per
group with the speed relative to PyTorch), ``benchmarks/layers.png`` (per-layer
forward + backward time by implementation) and ``benchmarks/throughput.png``
(images/s against batch size, training and inference), all atomically.
Timing is timeit-style (``machine.median_times``: the median of a few
repeats, warm-up call excluded), not pytest. Each implementation is timed
alone in a fresh process (``--timing-child``), as its users would run it:
thread pools of different libraries in one process slow each other down, and
one process has one OpenMP runtime, so fastcnn's OpenMP default would also
be PyTorch's. The children run in ``--rounds`` rounds, the order reversed
each round, and each row keeps its best round. Peak memory of training and
the numba cold-compile time are measured in fresh subprocesses too.
It deliberately makes no claims of its own: every number in the file is
measured in this run, on this machine.
"""
import argparse
import datetime
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

from fastcnn._atomic import write_bytes, write_text

from benchmarks import common, machine, runners

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = "torch"

# (layer label, shape name, op prefix); the first four are the MNIST network.
LAYERS = (("conv1", "mnist_conv1", "conv"), ("pool1", "mnist_pool1", "maxpool"),
          ("conv2", "mnist_conv2", "conv"), ("pool2", "mnist_pool2", "maxpool"))
LARGE = (("conv 3->64 32x32 b32", "cifar_conv", "conv"),
         ("conv 64->128 56x56 b8", "resnet_conv", "conv"),
         ("maxpool 64x32x32 b32", "cifar_pool", "maxpool"),
         ("maxpool 128x56x56 b8", "resnet_pool", "maxpool"))
FULL_ONLY = (("avgpool1", "mnist_pool1", "avgpool"), ("avgpool2", "mnist_pool2", "avgpool"))
TRAIN_BATCHES = (16, 64, 256)


class Run:
    """Times groups of rows side by side; keeps the rows that did not run, with the reason."""

    def __init__(self, target_s):
        self.target_s = target_s
        self.skipped = []
        self.failed = []

    def _fail(self, what, e):
        self.failed.append((what, f"{type(e).__name__}: {e}"))
        traceback.print_exc()

    def group(self, what, rows):
        """rows: {key: (builder, *args)}; returns {key: seconds per call} for the rows that ran.

        Every row is built (and warmed up) first, then all are timed
        interleaved (``machine.median_times``). A row that does not apply or
        fails is left out and listed; one broken backend never loses the report.
        """
        built = {}
        for key, (builder, *args) in rows.items():
            try:
                built[key] = builder(*args)
            except runners.NotApplicable as e:
                self.skipped.append((f"{what} {' '.join(map(str, key))}", str(e)))
            except Exception as e:
                self._fail(f"{what} {' '.join(map(str, key))}", e)
        try:
            return machine.median_times(built, target_s=self.target_s)
        except Exception:
            out = {}    # find the row that broke; time the others on their own
            for key, fn in built.items():
                try:
                    out[key] = machine.median_times({key: fn}, target_s=self.target_s)[key]
                except Exception as e:
                    self._fail(f"{what} {' '.join(map(str, key))}", e)
            return out


def progress(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def measure_layers(run, layers, dtypes, impls):
    """{(label, dtype): {impl: (fwd_s, bwd_s)}}, forward and backward of all rows interleaved."""
    out = {}
    for label, shape, op in layers:
        for dtype in dtypes:
            progress(f"layer {label} {dtype}")
            t = run.group(f"{shape} {dtype}", {
                (impl, f"{op}_{d}"): (runners.make_op, impl, f"{op}_{d}", shape, dtype)
                for impl in impls for d in ("forward", "backward")})
            out[(label, dtype)] = {
                impl: (t[(impl, f"{op}_forward")], t[(impl, f"{op}_backward")])
                for impl in impls
                if (impl, f"{op}_forward") in t and (impl, f"{op}_backward") in t}
    return out


def measure_network(run, impls, dtypes_train):
    """{'train': {(batch, dtype): {impl: s}}, 'infer': {(batch, dtype): {impl: s}}}."""
    train, infer = {}, {}
    for dtype in dtypes_train:
        batches = TRAIN_BATCHES if dtype == "float32" else (common.TRAIN_BATCH,)
        for batch in batches:
            progress(f"training step b{batch} {dtype}")
            t = run.group(f"train_step b{batch} {dtype}", {
                (impl,): (runners.make_train_step, impl, dtype, batch) for impl in impls})
            train[(batch, dtype)] = {k[0]: v for k, v in t.items()}
    for batch in common.INFERENCE_BATCHES:
        progress(f"inference b{batch} float32")
        t = run.group(f"inference b{batch} float32", {
            (impl,): (runners.make_inference, impl, "float32", batch) for impl in impls})
        infer[(batch, "float32")] = {k[0]: v for k, v in t.items()}
    return {"train": train, "infer": infer}


# ---------------------------------------------------------------- one implementation per process

# A reference row runs with its libraries' own thread-pool defaults, not
# fastcnn's (see fastcnn/_threads.py): OpenBLAS's built-in 2**28-cycle spin
# (set explicitly, since fastcnn is imported - and numpy loaded - first), and
# no OMP_WAIT_POLICY (dropped before PyTorch loads OpenMP).
REFERENCE_ENV = {"OPENBLAS_THREAD_TIMEOUT": "28"}


def timing_child(impl, threads, quick):
    """Time every layer and network row of ``impl`` in this process; print JSON."""
    reference = impl in runners.REFERENCES
    if reference:
        from fastcnn import _threads
        _threads.drop_default_wait_policy()
    setup = machine.prepare(threads, warm=not reference)
    run = Run(target_s=0.15 if quick else 0.4)
    dtypes = ("float32",) if quick else common.DTYPES
    layers = measure_layers(run, LAYERS + LARGE + (() if quick else FULL_ONLY), dtypes, [impl])
    net = measure_network(run, [impl], common.DTYPES)
    print(json.dumps({
        "layers": [[label, dtype, *row[impl]] for (label, dtype), row in layers.items()
                   if impl in row],
        "train": [[b, dt, row[impl]] for (b, dt), row in net["train"].items() if impl in row],
        "infer": [[b, dt, row[impl]] for (b, dt), row in net["infer"].items() if impl in row],
        "warmup": setup["warmup"], "skipped": run.skipped, "failed": run.failed}))


def measure_timings(run, impls, threads, quick, rounds):
    """Layers and network of every implementation, each in its own process,
    ``rounds`` times in alternating order; every row keeps its fastest round.
    Returns (layers, net, warmup) shaped as measure_layers / measure_network."""
    layers, net, warmup = {}, {"train": {}, "infer": {}}, {}

    def keep(table, key, impl, value, total=lambda v: v):
        row = table.setdefault(key, {})
        if impl not in row or total(value) < total(row[impl]):
            row[impl] = value

    for r in range(rounds):
        for impl in (impls if r % 2 == 0 else impls[::-1]):
            progress(f"timing {impl} alone (round {r + 1}/{rounds})")
            argv = ["-m", "benchmarks.report", "--timing-child", impl, str(threads)]
            try:
                out = run_child(argv + (["--quick"] if quick else []),
                                REFERENCE_ENV if impl in runners.REFERENCES else None,
                                timeout=1800)
            except Exception as e:
                run.failed.append((f"timing {impl} round {r + 1}", str(e)))
                continue
            for label, dtype, f, b in out["layers"]:
                keep(layers, (label, dtype), impl, (f, b), total=sum)
            for kind in ("train", "infer"):
                for b, dt, t in out[kind]:
                    keep(net[kind], (b, dt), impl, t)
            warmup.update(out["warmup"])
            if r == 0:
                run.skipped += [tuple(x) for x in out["skipped"]]
            run.failed += [(f"{what} (round {r + 1})", why) for what, why in out["failed"]]
    # rows in the usual order: layers as listed, implementations as registered
    order = {impl: i for i, impl in enumerate(impls)}
    layers = {k: dict(sorted(v.items(), key=lambda kv: order[kv[0]])) for k, v in layers.items()}
    for kind in net:
        net[kind] = {k: dict(sorted(v.items(), key=lambda kv: order[kv[0]]))
                     for k, v in sorted(net[kind].items(), key=lambda kv: (kv[0][1], kv[0][0]))}
    labels = [lab for lab, _, _ in LAYERS + LARGE + FULL_ONLY]
    layers = dict(sorted(layers.items(), key=lambda kv: (labels.index(kv[0][0]), kv[0][1])))
    return layers, net, warmup


# ---------------------------------------------------------------- subprocess measurements

def run_child(argv, env_extra=None, timeout=600):
    """Run ``python argv...`` from the repo root; its last stdout line is JSON."""
    env = dict(os.environ, **(env_extra or {}))
    env["PYTHONPATH"] = os.path.dirname(HERE) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=os.path.dirname(HERE))
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _proc_status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_child(impl, dtype, steps, threads):
    """Peak memory of ``steps`` training steps above the resident size after a warm step."""
    import gc
    import tracemalloc
    machine.limit_threads(threads)
    fn = runners.make_train_step(impl, dtype, common.TRAIN_BATCH)   # includes a warm step
    gc.collect()
    out = {"steps": steps}
    try:
        base = _proc_status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")               # resets VmHWM (the peak RSS) to the current RSS
        for _ in range(steps):
            fn()
        out["rss_peak_mb"] = (_proc_status("VmHWM") - base) / 2 ** 20
    except OSError as e:
        out["rss_error"] = str(e)
    tracemalloc.start()
    for _ in range(steps):
        fn()
    out["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    print(json.dumps(out))


# Run with ``python -c`` rather than through this module, so that importing
# fastcnn is timed from nothing.
COMPILE_CHILD = """
import json, time
t0 = time.perf_counter()
import fastcnn
t1 = time.perf_counter()
per_backend = fastcnn.warmup()
print(json.dumps({"import_s": t1 - t0, "warmup_s": time.perf_counter() - t1,
                  "per_backend": per_backend}))
"""


# glibc raises its mmap threshold after the first large free, after which freed
# arrays stay resident and a peak above "resident before" reads too low; a
# fixed threshold keeps every large array in its own mapping, returned on free.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def measure_memory(run, impls, steps, threads):
    out = {}
    for impl in impls:
        if impl == "loops":
            run.skipped.append(("memory loops", "loops does not train in the benchmarks"))
            continue
        progress(f"memory {impl}")
        try:
            out[impl] = run_child(["-m", "benchmarks.report", "--memory-child", impl,
                                   "float32", str(steps), str(threads)], MALLOC_ENV)
        except Exception as e:
            run.failed.append((f"memory {impl}", str(e)))
    return out


# What a user waits for in a new process once the JIT cache is warm: import
# fastcnn, build the model, one training step (batch 64) on one backend.
FIRST_STEP_CHILD = """
import sys, json, time
t0 = time.perf_counter()
import fastcnn
import numpy as np
from fastcnn import nn
from fastcnn.models import mnist_cnn
from fastcnn.training import train_step
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
y = rng.integers(0, 10, 64)
model = mnist_cnn(seed=0)
opt = nn.SGD(model.parameters(), lr=0.01)
with fastcnn.use_backend(sys.argv[1]):
    train_step(model, opt, x, y)
print(json.dumps({"first_step_s": time.perf_counter() - t0}))
"""


def measure_compile(run):
    """Cold compile (empty NUMBA_CACHE_DIR) and a cached load, each in a fresh
    process; then import + first training step per backend in fresh
    processes with that cache warm (median of 3 each)."""
    progress("numba cold compile (fresh cache dir)")
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {"NUMBA_CACHE_DIR": cache}
        try:
            out["cold"] = run_child(["-c", COMPILE_CHILD], env)
            out["cached"] = run_child(["-c", COMPILE_CHILD], env)
            first = {}
            for impl in ("im2col", "cython", "numba"):
                if impl in runners.implementations():
                    progress(f"first training step in a fresh process: {impl}")
                    first[impl] = sorted(
                        run_child(["-c", FIRST_STEP_CHILD, impl], env)["first_step_s"]
                        for _ in range(3))[1]
            out["first_step"] = first
        except Exception as e:
            run.failed.append(("compile", str(e)))
    return out


# ---------------------------------------------------------------- writing up

def fmt_ms(s):
    return "" if s is None else (f"{1e3 * s:.3g}" if s < 1 else f"{1e3 * s:,.0f}")


def fmt_ratio(ref, t):
    """Speed relative to the reference: ref_time / time (>1 means faster than PyTorch)."""
    return "" if ref is None or t is None else f"{ref / t:.2f}x"


def layer_tables(layers):
    lines = []
    for (label, dtype), row in layers.items():
        shape = next(s for lab, s, _ in LAYERS + LARGE + FULL_ONLY if lab == label)
        conv = shape in common.CONV_SHAPES
        s = common.shape(shape)
        rate = "GFLOP/s" if conv else "GB/s"
        itemsize = 4 if dtype == "float32" else 8
        work = (s.forward_flops() + s.backward_flops() if conv
                else s.forward_bytes(itemsize) + s.backward_bytes(itemsize)) / 1e9
        ref = row.get(REFERENCE)
        lines += [f"### {label}: {s.label()}, {dtype}", "",
                  f"| implementation | forward ms | backward ms | fwd+bwd ms | {rate} | "
                  f"speed vs PyTorch |", "|---|---:|---:|---:|---:|---:|"]
        for impl, (f, b) in row.items():
            lines.append(f"| {impl} | {fmt_ms(f)} | {fmt_ms(b)} | {fmt_ms(f + b)} | "
                         f"{work / (f + b):.1f} | {fmt_ratio(ref and sum(ref), f + b)} |")
        lines.append("")
    return lines


def network_table(title, results, training):
    lines = [f"### {title}", "",
             "| implementation | batch | dtype | ms | images/s | GFLOP/s | speed vs PyTorch |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for (batch, dtype), row in results.items():
        ref = row.get(REFERENCE)
        gflop = runners.step_work(batch, training)["gflop"]
        for impl, t in row.items():
            lines.append(f"| {impl} | {batch} | {dtype} | {fmt_ms(t)} | {batch / t:,.0f} | "
                         f"{gflop / t:.1f} | {fmt_ratio(ref, t)} |")
    return lines + [""]


def headline(layers, net):
    """Per layer (float32 fwd+bwd) and per training step: each backend against PyTorch."""
    impls = [i for i in runners.implementations() if i != REFERENCE]
    lines = ["| | " + " | ".join(impls) + " |", "|---|" + "---:|" * len(impls)]
    for label, _, _ in LAYERS:
        row = layers.get((label, "float32"), {})
        ref = row.get(REFERENCE)
        lines.append(f"| {label} fwd+bwd (float32) | " + " | ".join(
            fmt_ratio(ref and sum(ref), row.get(i) and sum(row[i])) for i in impls) + " |")
    for dtype in ("float32", "float64"):
        row = net["train"].get((common.TRAIN_BATCH, dtype))
        if row:
            lines.append(f"| training step b64 ({dtype}) | " + " | ".join(
                fmt_ratio(row.get(REFERENCE), row.get(i)) for i in impls) + " |")
    return lines + ["", "Speed relative to PyTorch CPU: PyTorch's time divided by the "
                    "implementation's (above 1x is faster than PyTorch)."]


def throughput_lines(net):
    lines = ["| implementation | " + " | ".join(
        f"train b{b}" for b in TRAIN_BATCHES) + " | " + " | ".join(
        f"infer b{b}" for b in common.INFERENCE_BATCHES) + " |",
        "|---|" + "---:|" * (len(TRAIN_BATCHES) + len(common.INFERENCE_BATCHES))]
    for impl in runners.implementations():
        cells = []
        for b in TRAIN_BATCHES:
            t = net["train"].get((b, "float32"), {}).get(impl)
            cells.append("" if t is None else f"{b / t:,.0f}")
        for b in common.INFERENCE_BATCHES:
            t = net["infer"].get((b, "float32"), {}).get(impl)
            cells.append("" if t is None else f"{b / t:,.0f}")
        lines.append(f"| {impl} | " + " | ".join(cells) + " |")
    return lines + ["", "Images per second, float32 (empty: not run, see below)."]


def write_markdown(path, env, peaks, setup, layers, net, memory, compiled, run, args, took):
    L = ["# fastcnn benchmark results", "",
         f"Produced by `python -m benchmarks.report{' --quick' if args.quick else ''}` on "
         f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC in {took:.0f} s. "
         "Times are medians of timeit-style repeats after a warm-up call "
         "(JIT compilation excluded; it is reported separately below). Each implementation "
         f"ran alone in its own process, {args.rounds} round(s) in alternating order, and "
         "each row keeps its fastest round. fastcnn's backends ran with fastcnn's thread-pool "
         "defaults (OMP_WAIT_POLICY=PASSIVE, OPENBLAS_THREAD_TIMEOUT=16); PyTorch and the "
         "tutorial code with their libraries' own (OMP_WAIT_POLICY unset, "
         "OPENBLAS_THREAD_TIMEOUT=28, OpenBLAS's built-in value); glibc malloc tuned "
         "(`fastcnn.tune_malloc()`) for all. Other work on the machine makes single numbers "
         "noisy.", "", "## Machine", ""]
    L += [f"- **{k}**: {v}" for k, v in env.items()]
    L += ["- **matmul peak (1024x1024 BLAS matmul, this run)**: "
          + ", ".join(f"{dt} {g:.0f} GFLOP/s" for dt, g in peaks.items()),
          f"- **JIT warm-up in the timing processes**: ("
          + ", ".join(f"{k} {v:.2f} s" for k, v in setup["warmup"].items()) + ")", ""]
    L += ["## Headline: each backend against PyTorch CPU", ""] + headline(layers, net) + [""]
    L += ["![per-layer time](layers.png)", "", "![throughput](throughput.png)", ""]
    L += ["## MNIST network", ""] + throughput_lines(net) + [""]
    L += network_table("Training step (forward, softmax CE, backward, SGD momentum)",
                       net["train"], True)
    L += network_table("Inference (eval-mode forward)", net["infer"], False)
    L += ["## Layers (forward + backward)", "",
          "GFLOP/s counts 2 flops per multiply-add (backward = 2x forward); pooling shows "
          "GB/s of the least memory traffic (read input, write output, each pass).", ""]
    L += layer_tables(layers)
    L += ["## Peak memory of training (float32, batch 64)", "",
          f"Over {args.memory_steps} training steps in a fresh process, after one warm-up "
          "step. *RSS peak* is the rise of the resident-set high-water mark (VmHWM, reset "
          "before the steps) above the resident size before them: all allocations, "
          "including PyTorch's and numba's (glibc's mmap threshold fixed at 64 KiB, so "
          "freed arrays leave the resident set). *tracemalloc peak* sees only allocations "
          "reported to Python's tracemalloc (NumPy arrays; not PyTorch tensors or memory "
          "allocated inside numba kernels).", "",
          "| implementation | RSS peak MiB | tracemalloc peak MiB |", "|---|---:|---:|"]
    for impl, m in memory.items():
        rss = f"{m['rss_peak_mb']:.1f}" if "rss_peak_mb" in m else m.get("rss_error", "")
        L.append(f"| {impl} | {rss} | {m['tracemalloc_peak_mb']:.1f} |")
    L += ["", "## JIT compile time (fresh processes)", ""]
    if compiled:
        for kind in ("cold", "cached"):
            c = compiled.get(kind)
            if c is None:
                continue
            per = ", ".join(f"{k} {v:.2f} s" for k, v in c["per_backend"].items())
            L.append(f"- **{kind}** ({'empty' if kind == 'cold' else 'filled'} "
                     f"NUMBA_CACHE_DIR): import fastcnn {c['import_s']:.2f} s, "
                     f"fastcnn.warmup() {c['warmup_s']:.2f} s ({per})")
        first = compiled.get("first_step")
        if first:
            extra = (f"; numba - im2col = {first['numba'] - first['im2col']:+.2f} s"
                     if "numba" in first and "im2col" in first else "")
            L.append("- **import + first training step** (batch 64, fresh process, cache "
                     "warm, median of 3): " + ", ".join(
                         f"{k} {v:.2f} s" for k, v in first.items()) + extra)
    elif args.quick or args.no_compile:
        L.append("- not measured in this run (`--quick` / `--no-compile`); the in-process "
                 "warm-up above loaded already-compiled kernels from numba's cache")
    else:
        L.append("- not measured (see failures below)")
    L += ["", "## Rows not run", ""]
    L += [f"- {what}: {why}" for what, why in run.skipped] or ["- none"]
    if run.failed:
        L += ["", "## Failures", ""] + [f"- {what}: {why}" for what, why in run.failed]
    L += ["", "## Reproduce", "", "```", "pip install -e .[bench]",
          "python -m benchmarks.report            # this file and the charts (--quick: faster)",
          "pytest benchmarks/ --benchmark-only    # the full pytest-benchmark suite",
          "```", ""]
    write_text(path, "\n".join(L))


COLORS = {"loops": "#999999", "im2col": "#1f77b4", "cython": "#2ca02c", "numba": "#ff7f0e",
          "torch": "#d62728", "tutorial": "#9467bd"}


def _save(fig, path):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    write_bytes(path, buf.getvalue())


def plot_layers(path, layers, impls):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [4, 4]})
    for ax, group, title in ((axes[0], LAYERS, "MNIST layers (batch 64)"),
                             (axes[1], LARGE, "larger shapes")):
        labels = [lab for lab, _, _ in group if (lab, "float32") in layers]
        width = 0.8 / len(impls)
        for k, impl in enumerate(impls):
            xs, ys = [], []
            for i, lab in enumerate(labels):
                t = layers[(lab, "float32")].get(impl)
                if t is not None:
                    xs.append(i + (k - (len(impls) - 1) / 2) * width)
                    ys.append(1e3 * sum(t))
            ax.bar(xs, ys, width, label=impl, color=COLORS.get(impl))
        ax.set_xticks(range(len(labels)), labels, rotation=15)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_ylabel("forward + backward, ms (log)")
        ax.set_title(f"{title}, float32")
        ax.grid(axis="y", alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_throughput(path, net, impls):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, title in ((axes[0], "train", "training step"), (axes[1], "infer", "inference")):
        for impl in impls:
            pts = sorted((b, b / row[impl]) for (b, dt), row in net[key].items()
                         if dt == "float32" and impl in row)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=impl, color=COLORS.get(impl))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        batches = sorted({b for (b, dt) in net[key] if dt == "float32"})
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("batch size")
        ax.set_ylabel("images/s (log)")
        ax.set_title(f"MNIST CNN {title}, float32")
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="float32 layers only, shorter timing, no cold-compile measurement")
    p.add_argument("--threads", type=int, default=machine.default_threads(),
                   help="threads for every library (default: all CPUs)")
    p.add_argument("--out", default=HERE, help="folder for RESULTS.md and the PNGs")
    p.add_argument("--memory-steps", type=int, default=None,
                   help="training steps per memory measurement (default 5 quick, 20 full)")
    p.add_argument("--no-compile", action="store_true",
                   help="skip the numba cold-compile measurement (two fresh processes; "
                        "always skipped with --quick)")
    p.add_argument("--rounds", type=int, default=None,
                   help="times each implementation's process runs (default 2, 1 with --quick)")
    p.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--timing-child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        impl, dtype, steps, threads = args.memory_child
        return memory_child(impl, dtype, int(steps), int(threads))
    if args.timing_child:
        impl, threads = args.timing_child
        return timing_child(impl, int(threads), args.quick)

    start = time.perf_counter()
    args.memory_steps = args.memory_steps or (5 if args.quick else 20)
    args.rounds = args.rounds or (1 if args.quick else 2)
    setup = machine.prepare(args.threads)
    impls = runners.implementations()
    progress(f"implementations: {', '.join(impls)}; {args.threads} threads")
    run = Run(target_s=0.15 if args.quick else 0.4)
    peaks = {dt: machine.matmul_peak(dt) for dt in common.DTYPES}

    layers, net, setup["warmup"] = measure_timings(run, impls, args.threads, args.quick,
                                                   args.rounds)
    memory = measure_memory(run, impls, args.memory_steps, args.threads)
    compiled = {} if (args.no_compile or args.quick) else measure_compile(run)
    env = machine.describe()    # after the kernels ran: numba's threading layer is known now

    os.makedirs(args.out, exist_ok=True)
    plot_layers(os.path.join(args.out, "layers.png"), layers, impls)
    plot_throughput(os.path.join(args.out, "throughput.png"), net, impls)
    md = os.path.join(args.out, "RESULTS.md")
    write_markdown(md, env, peaks, setup, layers, net, memory, compiled, run, args,
                   time.perf_counter() - start)
    progress(f"wrote {md}, layers.png, throughput.png in {time.perf_counter() - start:.0f} s")
    return 0 if not run.failed else 1


if __name__ == "__main__":
    sys.exit(main())
