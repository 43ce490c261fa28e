"""ONNX Runtime CPU reference rows: the PyTorch twin of a fastcnn model, exported, run by ORT.

The issue's best peer for inference on a CPU: the network ``torch_ref``
builds from the fastcnn model (same weights) is exported with PyTorch's
ONNX exporter (``torch.export``-based, which needs ``onnxscript``) into
memory and run by an ``onnxruntime.InferenceSession`` on the CPU execution
provider at its default (full) graph optimisation, which fuses Conv+ReLU and
picks the blocked NCHWc kernels. Threads: the suite's thread count inside
an op (the count fastcnn's own pool uses), one between ops, ops in sequence.
Inference only: ORT does not train, and its CPU Conv is float32 only; op
rows are PyTorch's business. Requires onnxruntime, onnx, onnxscript and torch
(the optional ``bench`` extra).
"""
import hashlib
import warnings

import numpy as np
# torch.onnx's exporter needs onnx and onnxscript: imported here, a missing one skips the
# rows by name (runners.reference) instead of failing them in the middle of an export
import onnx  # noqa: F401
import onnxscript  # noqa: F401
import onnxruntime as ort
import torch

import fastcnn
from benchmarks import torch_ref


class Session:
    """An exported model's InferenceSession with its input's name; ``run(x)`` gives the logits."""

    def __init__(self, onnx_bytes, threads):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(onnx_bytes, options,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def run(self, x):
        return self.session.run(None, {self.input: x})[0]


def op(name, x, *args):
    raise NotImplementedError("ONNX Runtime is timed on whole networks only (op rows: torch)")


_EXPORTED = {}      # the suite builds the same seeded model for every batch: export it once


def export(model):
    """The ONNX bytes of ``model``'s PyTorch twin in eval mode, the batch dimension left free."""
    if model.dtype != np.float32:
        raise NotImplementedError("ONNX Runtime's CPU execution provider has no float64 Conv")
    key = hashlib.sha256(repr(model).encode())
    for name, value in model.state_dict().items():
        key.update(name.encode() + np.ascontiguousarray(value).tobytes())
    if key.digest() not in _EXPORTED:
        _EXPORTED[key.digest()] = _export(model)
    return _EXPORTED[key.digest()]


def _export(model):
    net = torch_ref.from_fastcnn(model).eval()
    x = torch.zeros((2, 1, 28, 28), dtype=torch.float32)
    with warnings.catch_warnings():     # the exporter's notes on torch internals
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (x,), dynamo=True, input_names=["x"],
                                    output_names=["logits"], verbose=False,
                                    dynamic_shapes=({0: torch.export.Dim("N")},))
    return program.model_proto.SerializeToString()


def from_fastcnn(model):
    """An ORT session computing what the fastcnn ``model`` computes in eval mode."""
    return Session(export(model), fastcnn.get_num_threads())


def sgd(model, lr=0.05, momentum=0.9):
    raise NotImplementedError("ONNX Runtime does not train")


def train_step(model, opt, x, y):
    raise NotImplementedError("ONNX Runtime does not train")


def predict(session, x):
    return session.run(x)
