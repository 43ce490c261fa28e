"""How ``Sequential`` fuses its layers, and the switch that turns it off.

A ``Sequential`` runs each ``Conv2d -> ReLU -> MaxPool2d`` and each other
``Conv2d -> ReLU`` among its layers as one fused op
(``fastcnn.ops.conv2d_relu_max_pool2d_forward``, ``conv2d_relu_forward``):
the same numbers as the layers one by one, with less memory traffic on a
backend that has the fused kernels. The layers stay the same objects
(parameters, state_dict names, repr and checkpoints do not change); only
how Sequential runs them does. Only these exact layer classes are fused: a
subclass may change what its forward does.

Fusion is on by default. Off, for teaching or to check the fused path
against the plain one:

    model.fuse = False                    # this Sequential, until set back
    with fastcnn.nn.fusion(False):        # every Sequential, in this block
        model.forward(x)                  #   (and this thread/context only)

A forward records how it ran, so the backward that follows runs the same
steps in reverse whatever the switch says by then. The fused plan is made
once per list of layers (``cached_plan``) and made again when a layer is
added, removed or replaced.

Deliberately not here: the arithmetic (``fastcnn.ops``), the layers
(``layers.py``).
"""
import contextlib
import contextvars
import operator

from fastcnn import ops
from fastcnn.nn.layers import Conv2d, MaxPool2d, ReLU
from fastcnn.nn.module import input_grad_flag

_enabled = contextvars.ContextVar("fastcnn_nn_fusion", default=True)


@contextlib.contextmanager
def fusion(enabled):
    """Fusion on (True) or off (False) for every Sequential run inside the
    with-block; the previous setting is restored after, even on an error."""
    token = _enabled.set(bool(enabled))
    try:
        yield
    finally:
        _enabled.reset(token)


def fusion_enabled():
    """Whether Sequential fuses here (``fusion()``'s setting; default True)."""
    return _enabled.get()


class FusedStep:
    """Conv2d -> ReLU (-> MaxPool2d) run as one op; its backward fills the
    conv's gradients as Conv2d.backward would (input_grad=False: returns
    None, dx not computed)."""

    __slots__ = ("layers", "conv", "pool", "_ctx")

    def __init__(self, layers):
        self.layers = layers
        self.conv = layers[0]
        self.pool = layers[2] if len(layers) == 3 else None
        self._ctx = None

    def forward(self, x):
        # the step is kept between forwards (cached_plan): drop the last
        # forward's state first, so its workspace arrays go back to the pool
        # before this forward takes its own; and no stale state of an
        # earlier unfused forward
        self._ctx = None
        for layer in self.layers:
            layer._saved = None
        conv = self.conv
        b = None if conv.bias is None else conv.bias.data
        args = (x, conv.weight.data, b, conv.stride, conv.padding, conv.dilation, conv.groups)
        if self.pool is None:
            y, self._ctx = ops.conv2d_relu_forward(*args)
        else:
            y, self._ctx = ops.conv2d_relu_max_pool2d_forward(*args, *self.pool.op_args())
        return y

    def backward(self, dy, input_grad=True):
        input_grad = input_grad_flag(input_grad)
        ctx, self._ctx = self._ctx, None
        if ctx is None:
            raise RuntimeError("Conv2d.backward called without a preceding forward")
        if self.pool is None:
            dx, dw, db = ops.conv2d_relu_backward(dy, ctx, input_grad=input_grad)
        else:
            dx, dw, db = ops.conv2d_relu_max_pool2d_backward(dy, ctx, input_grad=input_grad)
        self.conv.weight.grad = dw
        if self.conv.bias is not None:
            self.conv.bias.grad = db
        return dx


def plan(layers):
    """The steps that run ``layers`` in order: a FusedStep for each
    Conv2d, ReLU (, MaxPool2d) run, the layer itself otherwise."""
    steps, i = [], 0
    while i < len(layers):
        if type(layers[i]) is Conv2d and i + 1 < len(layers) and type(layers[i + 1]) is ReLU:
            n = 3 if i + 2 < len(layers) and type(layers[i + 2]) is MaxPool2d else 2
            steps.append(FusedStep(layers[i:i + n]))
            i += n
        else:
            steps.append(layers[i])
            i += 1
    return steps


def cached_plan(seq):
    """plan(seq.layers), kept on the Sequential ``seq`` and reused while its
    layers are the same objects of the same types in the same order, made
    again when one is added, removed or replaced: building it on every
    forward is a per-call cost that batch 1 sees."""
    layers = tuple(seq.layers)
    types = tuple(map(type, layers))
    kept = seq._plan
    # by identity (a layer class may define __eq__); the kept tuple holds
    # its layers, so a new layer cannot reuse a kept one's address
    if kept is not None and kept[1] == types and all(map(operator.is_, kept[0], layers)):
        return kept[2]
    steps = plan(seq.layers)
    seq._plan = (layers, types, steps)
    return steps
