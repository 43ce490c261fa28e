"""Parameter, the Module base class and Sequential.

A layer is a pair ``forward(x) -> y`` / ``backward(dy) -> dx``: forward keeps
what backward needs on the layer itself (one pending forward per layer),
backward fills ``p.grad`` of each of the layer's parameters. Gradients are
*overwritten*, not accumulated: one forward, one backward, one optimizer step.
``backward(dy, input_grad=False)`` fills the same ``p.grad`` but returns None
and skips dx's work where it can: the gradient of the model's input (the
images), which a training step never uses; PyTorch does not compute it
either, since the input does not require grad.
Parameters and gradients are plain NumPy arrays of the model's dtype.

This module deliberately has no autograd graph and no knowledge of backends.
"""
import numpy as np

from fastcnn import _shapes
from fastcnn._grad import grad_enabled


class Parameter:
    """A trainable array ``data`` and its gradient ``grad`` (None until backward)."""

    __slots__ = ("data", "grad")

    def __init__(self, data):
        self.data = data
        self.grad = None

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: train/eval mode, parameter listing, state dicts, seeding."""

    training = True

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy, input_grad=True):
        """Fill the parameters' grad from dy, the gradient of the last
        forward's output; return dx, the gradient of its input, or None
        (not computed) with input_grad=False."""
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    # -- parameters -------------------------------------------------------
    def named_parameters(self, prefix=""):
        """(name, Parameter) pairs in a fixed order, e.g. ('0.weight', p)."""
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def children(self):
        return []

    def state_dict(self):
        """{name: copy of the parameter array}."""
        return {name: p.data.copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state):
        """Copy arrays into the parameters; names, shapes and dtypes must match."""
        own = dict(self.named_parameters())
        if set(own) != set(state):
            missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise ValueError(f"state does not fit this model: missing {missing}, "
                             f"unexpected {extra}")
        for name, p in own.items():
            value = np.asarray(state[name])
            if value.shape != p.data.shape or value.dtype != p.data.dtype:
                raise ValueError(f"state[{name!r}] must be {p.data.dtype} {p.data.shape}, "
                                 f"got {value.dtype} {value.shape}")
            p.data[...] = value
            p.grad = None

    # -- modes and randomness -------------------------------------------
    def train(self, mode=True):
        """Training mode (dropout active); returns self."""
        self.training = bool(mode)
        for child in self.children():
            child.train(mode)
        return self

    def eval(self):
        """Evaluation mode (dropout off); returns self."""
        return self.train(False)

    def seed(self, seed):
        """Reset every random source (dropout masks) from ``seed``, anything
        ``np.random.SeedSequence`` accepts; the same seed gives the same masks."""
        for i, child in enumerate(self.children()):
            child.seed(_child_seed(seed, i))

    @property
    def dtype(self):
        params = self.parameters()
        return params[0].dtype if params else None


def input_grad_flag(value):
    """backward's input_grad, checked: a bool, else a TypeError naming it."""
    return _shapes.flag(value, "input_grad")


def _child_seed(seed, i):
    entropy = list(seed) if isinstance(seed, (list, tuple)) else [seed]
    return entropy + [i]


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse.

    Conv2d -> ReLU (-> MaxPool2d) runs as one fused op (the same numbers,
    less memory traffic) while ``fuse`` is True and ``fastcnn.nn.fusion``
    does not switch it off; see ``fastcnn/nn/fusion.py``."""

    _pending = None     # the steps of the last forward, for its backward
    _no_grad = False    # whether the last forward ran under fastcnn.no_grad()
    _plan = None        # (layers, their types, steps): fusion.cached_plan's

    def __init__(self, *layers, fuse=True):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layer {i} must be a fastcnn.nn.Module, "
                                f"got {type(layer).__name__}")
        self.layers = list(layers)
        self.fuse = bool(fuse)

    def children(self):
        return self.layers

    def forward(self, x):
        # imported here: it imports the layers, which import this module
        from fastcnn.nn.fusion import cached_plan, fusion_enabled
        steps = cached_plan(self) if self.fuse and fusion_enabled() else self.layers
        self._pending = None
        self._no_grad = not grad_enabled()
        for step in steps:
            x = step.forward(x)
        self._pending = steps
        return x

    def backward(self, dy, input_grad=True):
        """The layers' backwards in reverse order. input_grad=False is passed
        to the first step only (the others' dx is the next one's dy): it
        skips the first layer's dx, and this returns None."""
        input_grad = input_grad_flag(input_grad)
        if self._no_grad:       # before any layer fills a grad
            raise RuntimeError("Sequential.backward after a forward under fastcnn.no_grad(), "
                               "which keeps nothing for a backward: run the forward outside it")
        # the steps the forward took, fused or not, whatever the switch says now
        steps, self._pending = self._pending or self.layers, None
        for i in range(len(steps) - 1, -1, -1):
            dy = steps[i].backward(dy) if i else steps[i].backward(dy, input_grad=input_grad)
        return dy if input_grad else None

    def named_parameters(self, prefix=""):
        for i, layer in enumerate(self.layers):
            yield from layer.named_parameters(f"{prefix}{i}.")

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __repr__(self):
        inner = "\n".join(f"  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)"
