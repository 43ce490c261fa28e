"""The model behind the page: one checkpoint, run on every available backend.

``Predictor.predict`` takes the 28x28 image the model sees and runs the
model's own ``forward`` (the ``fastcnn.nn`` model and ``fastcnn.ops`` that
training uses) once per backend under ``fastcnn.use_backend``, timing each;
it reports the prediction and probabilities of the backend asked for, whether
all backends agree, how far each one's logits are from ``loops`` (the
readable reference), and the feature maps of the first two convolutions
(after their ReLU) as a walk over the same layers.

This module deliberately knows nothing of HTTP or JSON encodings beyond
returning plain Python numbers and bytes; the web app (``app.py``) does that.
"""
import os
import threading
import time

import numpy as np

import fastcnn
from fastcnn import checkpoint, nn
from fastcnn.serve.preprocess import normalise

REFERENCE = "loops"
REPEATS = 3      # timings are the best of this many forwards (the first can pay a cache miss)
FEATURE_LAYERS = 2


class Predictor:
    """A model in eval mode and the backends it is compared on.

    model: a ``fastcnn.nn`` model taking (1, 1, 28, 28); backends: names to run
    (``loops`` is added as the reference); default: the backend whose results
    are shown when a request names none; about: what the page says of the model.
    """

    def __init__(self, model, backends, default, about):
        self.model = model.eval()
        self.backends = tuple(dict.fromkeys((*backends, REFERENCE)))
        if default not in self.backends:
            raise ValueError(f"default backend {default!r} is not one of {self.backends}")
        self.default = default
        self.about = about
        # layers keep their forward state on themselves (fastcnn.nn.module), and
        # outputs come from reused buffers: one request at a time
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, path, backend):
        """From a checkpoint written by ``fastcnn train --save``; ``backend``:
        the backend shown by default (also run when it is 'auto')."""
        ck = checkpoint.load(path)
        model, _ = checkpoint.restore(ck)
        meta = ck.meta
        history = meta.get("history") or []
        last = history[-1] if history and isinstance(history[-1], dict) else {}
        about = {
            "name": meta.get("model"),
            "file": os.path.basename(path),
            "dtype": meta.get("dtype"),
            "parameters": int(sum(p.data.size for p in model.parameters())),
            "epochs": meta.get("epoch"),
            "test_accuracy": last.get("test_accuracy"),
            "trained_on_backend": meta.get("backend"),
            "layers": [repr(layer) for layer in getattr(model, "layers", [])],
        }
        return cls(model, (*fastcnn.available_backends(), backend), backend, about)

    def warm_up(self):
        """One prediction of a drawn '1', so that the first visitor's timings are
        not the first calls' (numba loads its kernels, 'auto' measures)."""
        image = np.zeros((28, 28))
        image[4:24, 13:15] = 1.0
        self.predict(image)

    def predict(self, image, backend=None):
        """Everything the page shows for one 28x28 image in [0, 1]."""
        shown = self.default if backend is None else backend
        if shown not in self.backends:
            raise ValueError(f"backend must be one of {', '.join(self.backends)}, got {shown!r}")
        x = normalise(image, self.model.dtype)
        with self._lock:
            runs = {name: self._timed_forward(name, x) for name in self.backends}
            maps = self._feature_maps(shown, x)
        logits = {name: run[0] for name, run in runs.items()}
        ref = logits[REFERENCE].astype(np.float64)
        diffs = {name: float(np.max(np.abs(v - ref))) for name, v in logits.items()}
        preds = {name: int(np.argmax(v)) for name, v in logits.items()}
        z = logits[shown].astype(np.float64)
        p = np.exp(z - z.max())
        p /= p.sum()
        return {
            "backend": shown,
            "prediction": preds[shown],
            "probabilities": [float(v) for v in p],
            "logits": [float(v) for v in z],
            "agree": len(set(preds.values())) == 1,
            "max_logit_diff_from_loops": max(diffs.values()),
            "backends": [{"name": name, "ms": runs[name][1] * 1e3, "prediction": preds[name],
                          "max_logit_diff_from_loops": diffs[name]} for name in self.backends],
            "feature_maps": maps,
        }

    def _timed_forward(self, name, x):
        best = float("inf")
        with fastcnn.use_backend(name), fastcnn.no_grad():
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                y = self.model.forward(x)
                best = min(best, time.perf_counter() - t0)
                y = y[0].copy()   # the buffer is reused by the next forward
        return y, best

    def _feature_maps(self, name, x):
        """[(label, maps (C, H, W) float32 >= 0)] after each of the first two
        convolutions and the ReLU that follows it, computed on backend ``name``."""
        layers = getattr(self.model, "layers", None)
        if layers is None:   # not a Sequential: nothing to walk
            return []
        outputs = []
        with fastcnn.use_backend(name), fastcnn.no_grad():
            for layer in layers:
                x = layer.forward(x)
                outputs.append(x[0].copy())   # buffers are reused by later layers
        convs = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Conv2d)]
        maps = []
        for k, i in enumerate(convs[:FEATURE_LAYERS]):
            after = i + 1 if i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU) else i
            maps.append((f"conv{k + 1}", outputs[after]))
        return maps
