"""``python -m benchmarks.gpu_check [--out DIR] [--batches 64,256,1000]``: backend
'cupy' beside PyTorch CUDA on the MNIST CNN, for a session with a GPU.

For each batch size: images/s of inference (eval mode) and of a training
step (forward, softmax cross-entropy, backward, SGD with momentum), for
fastcnn's cupy backend and for PyTorch on the same GPU, same weights
(``fastcnn.models.mnist_cnn``, translated by ``benchmarks.torch_ref``), and
the largest difference between the two models' logits as a sanity check.
Writes ``gpu_bench.json`` and ``gpu_bench.md`` to --out and checks issue
15's targets: cupy at least 0.5x PyTorch's images/s for inference at batch
1000 and for the training step at batch 256 (exit status 1 if not).

Until ``fastcnn.nn`` is device-aware, the network runs here as a plain loop
over the model's layers on CuPy arrays; each conv/pool/relu goes through
``fastcnn.ops`` when the door takes CuPy arrays, else straight to the
backend's kernels with the arguments the door would pass (printed and
recorded as ``via``). Times are CUDA-synchronised medians of rounds of
several steps; PyTorch runs with its defaults (cuDNN autotuning on).
Deliberately not a pytest-benchmark suite: it needs a GPU, which CI has not.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

ROUNDS, STEPS, WARMUP = 7, 10, 3
TARGETS = {("inference", 1000): 0.5, ("train", 256): 0.5}   # cupy / torch images/s


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


class CupyNet:
    """The fastcnn model's layers run on CuPy arrays; params moved once."""

    def __init__(self, model, cupy, via):
        from fastcnn import nn, ops
        from fastcnn.backend import get_module
        self.cp, self.nn, self.ops, self.via = cupy, nn, ops, via
        self.k = get_module("cupy")
        self.layers = model.layers
        self.params = {id(p): cupy.asarray(p.data) for p in model.parameters()}
        self.velocity = {k: cupy.zeros_like(v) for k, v in self.params.items()}

    def _w(self, p):
        return None if p is None else self.params[id(p)]

    # one conv/pool/relu through the door or straight to the kernels
    def _conv(self, m, x):
        w, b = self._w(m.weight), self._w(m.bias)
        if self.via == "ops":
            return self.ops.conv2d_forward(x, w, b, m.stride, m.padding, m.dilation, m.groups,
                                           backend="cupy")
        N, _, H, W = x.shape
        F_, _, KH, KW = w.shape
        (SH, SW), (PH, PW), (DH, DW) = _pair(m.stride), _pair(m.padding), _pair(m.dilation)
        OH = (H + 2 * PH - DH * (KH - 1) - 1) // SH + 1
        OW = (W + 2 * PW - DW * (KW - 1) - 1) // SW + 1
        return self.k.conv2d_forward(x, w, b, (SH, SW), (PH, PH, PW, PW), (DH, DW), m.groups,
                                     (N, F_, OH, OW))

    def _pool(self, m, x):
        if self.via == "ops":
            return self.ops.max_pool2d_forward(x, *m.op_args(), backend="cupy")
        k = _pair(m.kernel_size)
        s = k if m.stride is None else _pair(m.stride)
        p = _pair(m.padding)
        _, _, H, W = x.shape
        out = ((H + 2 * p[0] - k[0]) // s[0] + 1, (W + 2 * p[1] - k[1]) // s[1] + 1)
        return self.k.max_pool2d_forward(x, k, s, p, (1, 1), out)

    def _relu(self, x):
        return (self.ops.relu_forward(x, backend="cupy") if self.via == "ops"
                else self.k.relu_forward(x))

    def forward(self, x, train):
        cp, nn = self.cp, self.nn
        tape = []
        for m in self.layers:
            if isinstance(m, nn.Conv2d):
                x, ctx = self._conv(m, x)
            elif isinstance(m, nn.MaxPool2d):
                x, ctx = self._pool(m, x)
            elif isinstance(m, nn.ReLU):
                x, ctx = self._relu(x)
            elif isinstance(m, nn.Flatten):
                x, ctx = x.reshape(x.shape[0], -1), x.shape
            elif isinstance(m, nn.Linear):
                ctx, x = x, x @ self._w(m.weight).T + self._w(m.bias)
            elif isinstance(m, nn.Dropout):
                if not train:
                    continue
                keep = (cp.random.random(x.shape, dtype=x.dtype) >= m.p) / (1 - m.p)
                x, ctx = x * keep.astype(x.dtype), keep.astype(x.dtype)
            else:
                raise TypeError(f"gpu_check: no GPU path for layer {m!r}")
            tape.append((m, ctx))
        return x, tape

    def _backward_kernel(self, op, dy, ctx):
        if self.via == "ops":
            return getattr(self.ops, op + "_backward")(dy, ctx)
        return getattr(self.k, op + "_backward")(dy, ctx)

    def train_step(self, x, labels, lr=0.05, momentum=0.9):
        cp, nn = self.cp, self.nn
        logits, tape = self.forward(x, train=True)
        shifted = logits - logits.max(axis=1, keepdims=True)
        p = cp.exp(shifted)
        p /= p.sum(axis=1, keepdims=True)
        N = x.shape[0]
        dy = p
        dy[cp.arange(N), labels] -= 1
        dy /= N
        grads = {}
        for m, ctx in reversed(tape):
            if isinstance(m, nn.Conv2d):
                dy, dw, db = self._backward_kernel("conv2d", dy, ctx)
                grads[id(m.weight)], grads[id(m.bias)] = dw, db
            elif isinstance(m, nn.MaxPool2d):
                dy = self._backward_kernel("max_pool2d", dy, ctx)
            elif isinstance(m, nn.ReLU):
                dy = self._backward_kernel("relu", dy, ctx)
            elif isinstance(m, nn.Flatten):
                dy = dy.reshape(ctx)
            elif isinstance(m, nn.Linear):
                grads[id(m.weight)], grads[id(m.bias)] = dy.T @ ctx, dy.sum(axis=0)
                dy = dy @ self._w(m.weight)
            elif isinstance(m, nn.Dropout):
                dy = dy * ctx
        for k, g in grads.items():
            v = self.velocity[k]
            v *= momentum
            v += g
            self.params[k] -= lr * v


def _median_seconds(step, sync):
    for _ in range(WARMUP):
        step()
    sync()
    times = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for _ in range(STEPS):
            step()
        sync()
        times.append((time.perf_counter() - t0) / STEPS)
    return statistics.median(times), (max(times) - min(times)) / statistics.median(times)


def _via(ops, cupy):
    try:
        ops.relu_forward(cupy.ones(2, dtype=cupy.float32), backend="cupy")
        return "ops"
    except TypeError as e:
        print(f"gpu_check: fastcnn.ops does not take CuPy arrays yet ({e}); "
              f"calling the cupy backend's kernels directly", flush=True)
        return "kernels"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check",
                                description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--batches", default="64,256,1000")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]

    import cupy
    import torch
    import fastcnn
    from fastcnn import models, ops
    from benchmarks import torch_ref

    if "cupy" not in fastcnn.available_backends():
        sys.exit(f"gpu_check: backend 'cupy' is not available: "
                 f"{fastcnn.unavailable_backends().get('cupy')}")
    if not torch.cuda.is_available():
        sys.exit("gpu_check: PyTorch sees no CUDA device")
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    model = models.mnist_cnn("float32", seed=0)
    via = _via(ops, cupy)
    net = CupyNet(model, cupy, via)
    tnet = torch_ref.from_fastcnn(model).to(dev)
    topt = torch.optim.SGD(tnet.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(0)
    sync_cupy = cupy.cuda.Device().synchronize
    sync_torch = torch.cuda.synchronize
    info = {"gpu": torch.cuda.get_device_name(), "cupy": cupy.__version__,
            "torch": torch.__version__, "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "via": via, "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "rounds": ROUNDS, "steps_per_round": STEPS}
    rows = []
    for B in batches:
        x = rng.standard_normal((B, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 10, B)
        xc, yc = cupy.asarray(x), cupy.asarray(y)
        xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
        tnet.eval()
        with torch.no_grad():
            ref = tnet(xt).cpu().numpy()
        got = cupy.asnumpy(net.forward(xc, train=False)[0])
        diff = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))

        def t_infer():
            with torch.no_grad():
                tnet(xt)

        def t_train():
            topt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(tnet(xt), yt).backward()
            topt.step()

        tnet.eval()
        cases = [("inference", lambda: net.forward(xc, train=False), sync_cupy, t_infer)]
        cases.append(("train", lambda: net.train_step(xc, yc), sync_cupy, t_train))
        for kind, c_step, c_sync, t_step in cases:
            if kind == "train":
                tnet.train()
            c_s, c_spread = _median_seconds(c_step, c_sync)
            t_s, t_spread = _median_seconds(t_step, sync_torch)
            row = {"kind": kind, "batch": B, "cupy_ms": c_s * 1e3, "torch_ms": t_s * 1e3,
                   "cupy_img_s": B / c_s, "torch_img_s": B / t_s, "ratio": t_s / c_s,
                   "cupy_spread": c_spread, "torch_spread": t_spread,
                   "logits_max_rel_diff": diff}
            rows.append(row)
            print(f"{kind:9s} batch {B:5d}: cupy {row['cupy_img_s']:10.0f} img/s "
                  f"({row['cupy_ms']:.3f} ms), torch {row['torch_img_s']:10.0f} img/s "
                  f"({row['torch_ms']:.3f} ms), cupy/torch {row['ratio']:.2f}", flush=True)
    verdicts = []
    for (kind, B), target in TARGETS.items():
        for r in rows:
            if r["kind"] == kind and r["batch"] == B:
                verdicts.append({"kind": kind, "batch": B, "target": target,
                                 "ratio": r["ratio"], "met": r["ratio"] >= target})
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
        json.dump({"info": info, "rows": rows, "targets": verdicts}, f, indent=1)
    lines = [f"MNIST CNN float32 on {info['gpu']} (CuPy {info['cupy']}, PyTorch "
             f"{info['torch']}, fastcnn via {via}; median of {ROUNDS} rounds of {STEPS} "
             f"synchronised steps)", "",
             "| step | batch | cupy img/s | PyTorch CUDA img/s | cupy / PyTorch |",
             "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['kind']} | {r['batch']} | {r['cupy_img_s']:,.0f} | "
              f"{r['torch_img_s']:,.0f} | {r['ratio']:.2f} |" for r in rows]
    lines += ["", "targets: " + "; ".join(
        f"{v['kind']} at batch {v['batch']} >= {v['target']}x: {v['ratio']:.2f} "
        f"({'met' if v['met'] else 'NOT met'})" for v in verdicts)]
    with open(os.path.join(args.out, "gpu_bench.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    worst = max(r["logits_max_rel_diff"] for r in rows)
    print(f"largest relative difference of the logits, cupy vs PyTorch: {worst:.2e}")
    return 0 if all(v["met"] for v in verdicts) and worst < 1e-2 else 1


if __name__ == "__main__":
    sys.exit(main())
