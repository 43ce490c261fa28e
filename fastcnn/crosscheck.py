"""Cross-check the backends: the same training steps on each, compared with ``loops``.

Every backend starts from the same initial weights (copied from one model),
sees the same batches and draws the same dropout masks (the model's dropout
generator is reseeded identically), and runs ``training.train_step`` — the
loop the CLI trains with. After each step we record the loss, the logits and
every parameter, and compare them with the reference backend:

    abs = max |value - reference|        rel = abs / max |reference|

A difference can only come from the ops, since that is all a backend changes.
The backends run the model as ``fastcnn.nn.Sequential`` does by default,
fused (Conv2d -> ReLU (-> MaxPool2d) as one op; composed from the unfused
kernels on a backend without fused ones), and the reference runs it
unfused: the check covers the fused kernels against the plain ``loops``
ops (``fuse=False`` checks the unfused model instead).
This module deliberately prints nothing: ``report`` gives the lines that
``fastcnn crosscheck`` prints.
"""
from typing import NamedTuple

import numpy as np

import fastcnn
from fastcnn import backend, models
from fastcnn.nn.optim import make_optimizer
from fastcnn.training import train_step

REFERENCE = "loops"
# float64 results of different summation orders agree to ~1e-15 relative; a few
# steps of SGD may amplify that by a few orders of magnitude, a real bug by far more
DEFAULT_TOLERANCE = {"float64": 1e-9, "float32": 1e-3}


class Diff(NamedTuple):
    abs: float
    rel: float


def diff(value, reference):
    value, reference = np.asarray(value, np.float64), np.asarray(reference, np.float64)
    a = float(np.max(np.abs(value - reference))) if value.size else 0.0
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    return Diff(a, a / scale if scale > 0 else (0.0 if a == 0 else float("inf")))


def run(backend, initial, *, model, dtype, seed, optimizer, x, y, batches, fuse=True):
    """Train on ``backend`` from the state dict ``initial``, the model fused
    or not; per step a dict {'loss': float, 'logits': array, <param name>: array}."""
    net = models.build(model, dtype=dtype, seed=seed)
    net.fuse = fuse
    net.load_state_dict(initial)
    net.seed(seed)
    opt = make_optimizer(optimizer, net.parameters())
    records = []
    with fastcnn.use_backend(backend):
        for idx in batches:
            loss, logits = train_step(net, opt, x[idx], y[idx], return_logits=True)
            records.append({"loss": loss, "logits": logits.copy(), **net.state_dict()})
    return records


class BackendResult(NamedTuple):
    backend: str
    steps: list          # per step: {quantity: Diff}
    worst: Diff          # over all steps and quantities (by rel)
    fused: tuple = ()    # the fused ops that ran as the backend's fused kernels
    fuse: bool = True    # whether the backend ran the model fused


def crosscheck(backends, x, y, *, model="light", dtype="float64", steps=3, batch_size=8,
               seed=0, optimizer=None, fuse=True):
    """Run ``steps`` training steps on ``REFERENCE`` (the unfused model) and
    each of ``backends`` (the model fused, unless ``fuse`` is False);
    returns [BackendResult] for the backends other than the reference."""
    optimizer = optimizer or {"name": "sgd", "lr": 0.05, "momentum": 0.9,
                              "weight_decay": 0.0}
    x = np.asarray(x, dtype=dtype)
    batches = [np.arange(i * batch_size, (i + 1) * batch_size) % len(x) for i in range(steps)]
    initial = models.build(model, dtype=dtype, seed=seed).state_dict()
    kw = dict(model=model, dtype=dtype, seed=seed, optimizer=optimizer, x=x, y=y,
              batches=batches)
    reference = run(REFERENCE, initial, fuse=False, **kw)
    results = []
    for name in backends:
        if name == REFERENCE:
            continue
        records = run(name, initial, fuse=fuse, **kw)
        per_step = [{k: diff(rec[k], ref[k]) for k in ref} for rec, ref in zip(records, reference)]
        worst = max((d for s in per_step for d in s.values()), key=lambda d: d.rel)
        results.append(BackendResult(name, per_step, worst,
                                     backend.fused_ops(name) if fuse else (), fuse))
    return results


def _describe(r):
    """How backend r ran the model, for the report's heading."""
    if not r.fuse:
        return "unfused model"
    return ("fused model: " + (", ".join(r.fused) + " fused kernels" if r.fused else
                               "no fused kernels, composed"))


def report(results, tolerance, strict):
    """The lines of the table ``fastcnn crosscheck`` prints: per backend, the
    relative difference of each quantity after each step, then a verdict."""
    lines = []
    for r in results:
        keys = list(r.steps[0])
        width = max(10, max(len(k) for k in keys) + 1)
        lines.append(f"{r.backend} ({_describe(r)}) vs {REFERENCE} (unfused model): "
                     f"max relative difference after each step; max absolute in the last row")
        lines.append("  step " + "".join(f"{k:>{width}}" for k in keys))
        lines += [f"  {i + 1:>4} " + "".join(f"{step[k].rel:>{width}.1e}" for k in keys)
                  for i, step in enumerate(r.steps)]
        lines.append("  abs  " + "".join(f"{max(s[k].abs for s in r.steps):>{width}.1e}"
                                         for k in keys))
        ok = r.worst.rel <= tolerance
        verdict = "OK" if ok else ("FAIL" if strict else "above tolerance (reported only)")
        lines.append(f"  {r.backend}: {verdict}: largest relative difference {r.worst.rel:.2e}, "
                     f"absolute {max(d.abs for s in r.steps for d in s.values()):.2e}")
    if not results:
        lines.append("only the reference backend was given: nothing to compare")
    return lines
