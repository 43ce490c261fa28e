"""Neural-network building blocks on top of ``fastcnn.ops``.

    from fastcnn import nn
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(8 * 14 * 14, 10))
    logits = model.forward(x)
    loss, dlogits = nn.softmax_cross_entropy(logits, y)
    model.backward(dlogits, input_grad=False)    # no gradient for the images themselves
    nn.SGD(model.parameters(), lr=0.05, momentum=0.9).step()

Layers take PyTorch's constructor names and defaults, e.g. a depthwise conv
``nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32)``, ``nn.Conv2d(..., dilation=2)``,
``nn.MaxPool2d(3, 2, 1, ceil_mode=True)``, ``nn.AdaptiveAvgPool2d(1)``.
Layers never choose a backend; ``fastcnn.use_backend`` around the calls does.
``Sequential`` runs Conv2d -> ReLU (-> MaxPool2d) as one fused op; switch that
off with ``model.fuse = False`` or ``with nn.fusion(False):`` (``nn/fusion.py``).
This package deliberately has no autograd: each layer has a hand-written backward.
"""
from fastcnn.nn.layers import (AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, Conv2d,
                               Dropout, Flatten, Linear, MaxPool2d, ReLU)
from fastcnn.nn.fusion import fusion, fusion_enabled
from fastcnn.nn.loss import softmax_cross_entropy
from fastcnn.nn.module import Module, Parameter, Sequential
from fastcnn.nn.optim import SGD, Adam, Optimizer, make_optimizer

__all__ = ["Module", "Parameter", "Sequential", "Conv2d", "MaxPool2d", "AvgPool2d",
           "AdaptiveMaxPool2d", "AdaptiveAvgPool2d", "ReLU",
           "Flatten", "Linear", "Dropout", "softmax_cross_entropy", "Optimizer", "SGD",
           "Adam", "make_optimizer", "fusion", "fusion_enabled"]
