"""``python -m benchmarks.report [--quick] [--rounds R] [--no-tune] [--out DIR] [PYTEST ARGS]``:
the pytest-benchmark suite, once per implementation in its own process, written up.

Each implementation (each fastcnn backend, torch, onnxruntime, tutorial, and
numpy for the matmul references) runs ``pytest benchmarks --impl IMPL`` in a fresh
process (``step.run_suite``): thread pools of different libraries in one
process slow each other down, and a process has one OpenMP runtime. The
processes run ``--rounds`` times, the order reversed each round, and every
row keeps its round with the lowest median. The merged rows become
``RESULTS.md`` (with each network's effective GFLOP/s against the measured
matmul peak, and inference against ONNX Runtime), ``layers.png`` and
``throughput.png``. Deliberately no timer
and no claims of its own: every number is measured by the run that writes it.
"""
import argparse
import datetime
import io
import os
import re
import shlex
import sys
import time

from fastcnn._atomic import write_bytes, write_text

from benchmarks import common, runners, step

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = "torch"
BEST_PEER = "onnxruntime"       # inference only: the bar beyond PyTorch
# enough rounds for a median and quartiles in about ten minutes on two cores
TIMING = {"full": ["--benchmark-warmup=on", "--benchmark-warmup-iterations=3",
                   "--benchmark-min-rounds=5", "--benchmark-max-time=0.25",
                   "--benchmark-min-time=0.0005"],
          "quick": ["--benchmark-warmup=on", "--benchmark-warmup-iterations=1",
                    "--benchmark-min-rounds=3", "--benchmark-max-time=0.05", "-m", "not startup"]}
PANELS = {title: {c.name for c in cases} for title, cases in (       # of layers.png
    ("MNIST", common.MNIST_CASES), ("larger", common.LARGER_CASES),
    ("small-CNN", common.SMALL_CNN_CASES))}


def measure(impls, rounds, args, tune):
    """({(group, impl): the row of its fastest round}, {impl: machine_info}, skips, failures)."""
    best, machines, skipped, failed = {}, {}, [], []
    for r in range(rounds):
        for impl in (impls if r % 2 == 0 else impls[::-1]):
            print(f"[{time.strftime('%H:%M:%S')}] {impl}, round {r + 1}/{rounds}", file=sys.stderr)
            # fresh-process rows once: they are slow, and each of their rounds is fresh anyway
            data, out, status = step.run_suite(impl, args + (["-m", "not startup"] if r else []),
                                               tune)
            errors = [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))]
            if data is None and not errors and status not in (0, 5):
                errors = [f"no results: {out.strip()[-600:]}"]    # 0: all skipped, 5: deselected
            failed += [f"{impl}, round {r + 1}: {line}" for line in errors]
            if r == 0:
                skipped += [f"{impl}: {why} ({n} rows)" for n, why in
                            re.findall(r"^SKIPPED \[(\d+)\] [^:]+:\d+: (.*)$", out, re.M)]
            if data is None:
                continue
            machines[impl] = data["machine_info"]
            for row in data["benchmarks"]:
                key = (row["group"], impl)
                if key not in best or row["stats"]["median"] < best[key]["stats"]["median"]:
                    best[key] = row
    return best, machines, skipped, failed


def grouped(best):
    """{group: rows}, in the suite's order (conftest numbers the tests before deselecting)."""
    groups = {}
    for row in sorted(best.values(), key=lambda r: r["extra_info"]["order"]):
        groups.setdefault(row["group"], []).append(row)
    return groups


def ms(s):
    return f"{1e3 * s:.3g}" if s < 1 else f"{1e3 * s:,.0f}"


def ratio(ref, t):
    return "" if ref is None or t is None else f"{ref / t:.2f}x"


def medians(rows):
    return {r["extra_info"]["impl"]: r["stats"]["median"] for r in rows}


def table(rows):
    rates = [k for k in ("GFLOP/s", "GB/s", "images/s") if k in rows[0]["extra_info"]]
    ref, peer = medians(rows).get(REFERENCE), medians(rows).get(BEST_PEER)
    vs = " | speed vs PyTorch |" + (" speed vs ONNX Runtime |" if peer else "")
    lines = ["| implementation | median ms | IQR ms | min ms | rounds | " + " | ".join(rates)
             + vs, "|---|" + "---:|" * (len(rates) + 5 + bool(peer))]
    for r in rows:
        s, e = r["stats"], r["extra_info"]
        lines.append(f"| {e['impl']} | {ms(s['median'])} | {ms(s['q1'])}-{ms(s['q3'])} | "
                     f"{ms(s['min'])} | {s['rounds']} | " + " | ".join(
                         f"{e[k]:,.{0 if k == 'images/s' else 1}f}" for k in rates)
                     + f" | {ratio(ref, s['median'])} |"
                     + (f" {ratio(peer, s['median'])} |" if peer else ""))
    return lines + [""]


def summary(groups, impls):
    """PyTorch's median over each implementation's: the networks, and in float32 the MNIST
    layers and those of small CNNs (``common.SUMMARY_CASES``); then ONNX Runtime's over each
    implementation's, for the inference rows it ran."""
    every, impls = impls, [i for i in impls if i not in (REFERENCE, "numpy")]
    lines = ["| group | " + " | ".join(impls) + " |", "|---|" + "---:|" * len(impls)]
    for group, rows in groups.items():
        e, t = rows[0]["extra_info"], medians(rows)
        summed = e.get("case") in common.SUMMARY_CASES and e["dtype"] == "float32"
        if REFERENCE in t and ("batch" in e or summed):
            lines.append(f"| {group} | " + " | ".join(ratio(t[REFERENCE], t.get(i)) for i in impls)
                         + " |")
    lines += ["", "PyTorch's median time divided by the implementation's: above 1x is "
              "faster than PyTorch."]
    impls = [i for i in every if i not in (BEST_PEER, "numpy")]
    peer = ["| group | " + " | ".join(impls) + " |", "|---|" + "---:|" * len(impls)]
    for group, rows in groups.items():
        t = medians(rows)
        if BEST_PEER in t and "batch" in rows[0]["extra_info"]:
            peer.append(f"| {group} | " + " | ".join(ratio(t[BEST_PEER], t.get(i)) for i in impls)
                        + " |")
    if len(peer) > 2:
        lines += ["", "### Distance to ONNX Runtime (inference)", ""] + peer + [
            "", "ONNX Runtime's median time divided by the implementation's (the exported PyTorch "
            "twin on ORT's CPU execution provider): below 1x is slower than ONNX Runtime."]
    return lines


def peak(groups):
    """{dtype: GFLOP/s} of the largest reference matmul (``common.MATMUL_SIZES``)."""
    out = {}
    for rows in groups.values():
        for r in rows:
            e = r["extra_info"]
            if e["impl"] == "numpy" and e.get("n") == common.MATMUL_SIZES[-1]:
                out[e["dtype"]] = e["GFLOP/s"]
    return out


def efficiency(groups, impls):
    """The networks' effective GFLOP/s (``common.FLOPS_COUNTED`` over the median time) and
    their share of the machine's measured matmul peak in the same dtype."""
    peaks, impls = peak(groups), [i for i in impls if i != "numpy"]
    lines = ["| group | " + " | ".join(impls) + " | matmul peak |", "|---|" + "---:|" * (
        len(impls) + 1)]
    for group, rows in groups.items():
        e = rows[0]["extra_info"]
        if "batch" not in e or "GFLOP/s" not in e:
            continue
        rate = {r["extra_info"]["impl"]: r["extra_info"]["GFLOP/s"] for r in rows}
        top = peaks.get(e["dtype"])
        cells = [f"{rate[i]:.1f}" + (f" ({100 * rate[i] / top:.0f}%)" if top else "")
                 if i in rate else "" for i in impls]
        lines.append(f"| {group} | " + " | ".join(cells) + " | "
                     + (f"{top:.0f}" if top else "not run") + " |")
    n = common.MATMUL_SIZES[-1]
    return lines + ["", f"Effective GFLOP/s: the step's {common.FLOPS_COUNTED}; divided by the "
                    "median time. In brackets, the share of the machine's measured peak: a "
                    f"float32 (float64) {n}x{n} np.matmul with the suite's threads (the "
                    f"`reference matmul {n}` rows). That peak is numpy's BLAS as this machine "
                    "runs it (see OPENBLAS_CORETYPE above, which picks its kernels), not the "
                    "CPU's: a library with wider kernels (ONNX Runtime's MLAS uses AVX-512 "
                    "where the CPU has it) can pass 100%."]


def machine(machines, groups):
    """The CPU, the matmul peak, PyTorch, tuning, and fastcnn's show_config() of one process."""
    m = next(iter(machines.values()), None)
    if m is None:
        return ["- no process reported"]
    refs = [r["extra_info"] for rows in groups.values() for r in rows
            if r["extra_info"]["impl"] == "numpy"]
    peaks = [f"{e['n']}^3 {e['dtype']} {e['GFLOP/s']:.0f} GFLOP/s" for e in refs if "n" in e]
    copies = [f"{e['mbytes']} MB {e['GB/s']:.0f} GB/s" for e in refs if "mbytes" in e]
    return [f"- **cpu**: {m['cpu'].get('brand_raw')}, {m['cpu'].get('count')} CPUs, "
            f"{m['system']} {m['release']}",
            "- **BLAS matmul (the reference matmul rows)**: " + (", ".join(peaks) or "not run"),
            "- **memory (the reference copy rows: one thread, read + write)**: " + (
                ", ".join(copies) + ". Winograd's tiles and the column matrices stream tens of "
                "MB a step: when the cache-sized copy runs near the memory-sized one (this "
                "machine's share of the L3 shrank), the compiled backends' convolutions lose "
                "more of their speed than PyTorch's direct ones" if copies else "not run"),
            "- **PyTorch**: " + next((m["fastcnn"]["torch"] for m in machines.values()
                                     if "torch" in m["fastcnn"]), "not run"),
            "- **ONNX Runtime**: " + next((m["fastcnn"]["onnxruntime"] for m in machines.values()
                                          if "onnxruntime" in m["fastcnn"]), "not run"),
            "- **OpenBLAS environment**: " + ", ".join(
                f"{k}={v}" for k, v in m["fastcnn"].get("openblas_env", {}).items()),
            "- **tune_runtime() in every process**: " + " / ".join(
                sorted({str(m["fastcnn"]["tune_runtime"]) for m in machines.values()})),
            "", "```", m["fastcnn"]["show_config"], "```"]


def write_markdown(path, command, groups, impls, machines, skipped, failed, rounds, tune, took):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    L = ["# fastcnn benchmark results", "",
         f"Produced by `{command}` on {now} UTC in {took:.0f} s. pytest-benchmark timed every "
         "row: warm-up rounds first, not recorded (JIT loading is measured by the fresh-process "
         "rows instead), then rounds until the row's time budget; tables give the median, the "
         "interquartile range and the fastest round. Each implementation ran alone in its own "
         f"process, {rounds} round(s) of processes in alternating order, and each row keeps "
         "its round with the lowest median. Every process was " + (
             "tuned with `fastcnn.tune_runtime()` first, PyTorch's and the tutorial's too."
             if tune else "left untuned (`--no-tune` or FASTCNN_TUNE=0).")
         + " Other work on the machine makes single numbers noisy.", "", "## Machine", ""]
    L += machine(machines, groups)
    L += ["", "## Speed relative to PyTorch CPU", ""] + summary(groups, impls)
    L += ["", "## Effective GFLOP/s of the networks", ""] + efficiency(groups, impls)
    L += ["", "![per-layer time](layers.png)", "", "![throughput](throughput.png)", "",
          "## Every group", "", "GFLOP/s counts 2 flops per multiply-add (a backward is two "
          "forwards); pooling and relu show GB/s of the least memory traffic (read the input, "
          "write the output).", ""]
    for group, rows in groups.items():
        layer = rows[0]["extra_info"].get("layer")
        L += [f"### {group}", ""] + ([layer, ""] if layer else []) + table(rows)
    L += ["## Rows not run", ""] + ([f"- {s}" for s in skipped] or ["- none"])
    L += (["", "## Failures", ""] + [f"- {f}" for f in failed]) if failed else []
    L += ["", "## Reproduce", "", "```", "pip install -e .[bench]", command, "```", ""]
    write_text(path, "\n".join(L))


def plot(out, groups, impls):
    """layers.png (forward + backward per layer) and throughput.png (images/s by batch), float32."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for rs in groups.values() for r in rs if r["extra_info"].get("dtype") == "float32"]
    color = {impl: f"C{k}" for k, impl in enumerate(impls)}
    fig, axes = plt.subplots(1, len(PANELS), figsize=(6.5 * len(PANELS), 4.5))
    for ax, (panel, names) in zip(axes, PANELS.items()):
        layers = {}     # {label: {impl: forward + backward ms}}
        for r in rows:
            e = r["extra_info"]
            if e.get("case") in names:
                label = e["case"] + {"max_pool2d": " max", "avg_pool2d": " avg",
                                     "adaptive_max_pool2d": " adaptive max",
                                     "adaptive_avg_pool2d": " adaptive avg"}.get(e["op"], "")
                t = layers.setdefault(label, {})
                t[e["impl"]] = t.get(e["impl"], 0) + 1e3 * r["stats"]["median"]
        for k, impl in enumerate(impls):
            pts = [(i + (k + 0.5 - len(impls) / 2) * 0.8 / len(impls), t[impl])
                   for i, t in enumerate(layers.values()) if impl in t]
            if pts:
                ax.bar(*zip(*pts), 0.8 / len(impls), label=impl, color=color[impl])
        ax.set_xticks(range(len(layers)), list(layers), rotation=20)
        ax.set(title=f"{panel} layers, float32", yscale="log",
               ylabel="forward + backward, ms")
    _save(fig, axes, os.path.join(out, "layers.png"))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, test in zip(axes, ("test_train_step", "test_inference")):
        for impl in impls:
            pts = sorted((r["extra_info"]["batch"], r["extra_info"]["images/s"]) for r in rows
                         if r["name"].startswith(test) and r["extra_info"]["impl"] == impl
                         and r["extra_info"].get("model", "cnn") == "cnn")
            if pts:
                ax.plot(*zip(*pts), marker="o", label=impl, color=color[impl])
        ax.set(title=f"MNIST CNN {test[5:].replace('_', ' ')}, float32", xscale="log",
               yscale="log", xlabel="batch size", ylabel="images/s")
        batches = sorted({b for line in ax.get_lines() for b in line.get_xdata()})
        ax.set_xticks(batches, [str(b) for b in batches], minor=False)
        ax.set_xticks([], minor=True)
    _save(fig, axes, os.path.join(out, "throughput.png"))


def _save(fig, axes, path):
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    write_bytes(path, buf.getvalue())


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.report",
                                description=__doc__.split("\n")[1],
                                epilog="Other arguments go to every pytest process.")
    p.add_argument("--quick", action="store_true",
                   help="float32 only, short timing, one round, no fresh-process rows")
    p.add_argument("--rounds", type=int, help="rounds of processes (default 2; 1 with --quick)")
    p.add_argument("--no-tune", action="store_true",
                   help="no fastcnn.tune_runtime() in any process (as FASTCNN_TUNE=0)")
    p.add_argument("--out", default=HERE, help="folder for RESULTS.md and the PNGs")
    p.add_argument("-k", help="pytest's -k for every process, e.g. 'conv1 or b64' (a tiny run)")
    args, pytest_args = p.parse_known_args(argv)
    select = ([f"({args.k})"] if args.k else []) + (["not float64"] if args.quick else [])
    pytest_args = TIMING["quick" if args.quick else "full"] + pytest_args + (
        ["-k", " and ".join(select)] if select else [])
    rounds = args.rounds or (1 if args.quick else 2)
    command = shlex.join(["python", "-m", "benchmarks.report",
                          *(sys.argv[1:] if argv is None else argv)])
    start, impls = time.perf_counter(), runners.implementations() + ("numpy",)
    tune = not (args.no_tune or os.environ.get("FASTCNN_TUNE", "").strip() == "0")
    best, machines, skipped, failed = measure(impls, rounds, pytest_args, tune)
    groups = grouped(best)
    os.makedirs(args.out, exist_ok=True)
    try:
        plot(args.out, groups, impls[:-1])
    except ImportError as e:
        failed.append(f"charts not drawn: {e}")
    md = os.path.join(args.out, "RESULTS.md")
    write_markdown(md, command, groups, impls, machines, skipped, failed, rounds, tune,
                   time.perf_counter() - start)
    print(f"wrote {md} and the charts in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
