"""PyTorch CPU reference rows: the same ops on the same layers, and the same network.

An op runs through ``torch.nn.functional`` with autograd on, since fastcnn's
forward also keeps what its backward needs; backward is ``torch.autograd.grad``
on a retained graph. The network is translated layer by layer from a fastcnn
model with its weights; a training step is forward, softmax cross-entropy,
backward and an SGD momentum step. Requires torch; deliberately sets no threads.
"""
import numpy as np
import torch
import torch.nn.functional as F

from fastcnn import nn

def op(name, x, *args):
    """(forward, backward) for fastcnn op ``name`` (fastcnn's ops take torch.nn.functional's
    names and arguments) on x; backward(dy) returns the callable computing every gradient."""
    inputs = [torch.from_numpy(a).requires_grad_() for a in (x, *args)
              if isinstance(a, np.ndarray)]
    rest = [a for a in args if not isinstance(a, np.ndarray)]

    def forward():
        return getattr(F, name)(*inputs, *rest)

    def backward(dy):
        y, dyt = forward(), torch.from_numpy(dy)
        return lambda: torch.autograd.grad(y, inputs, dyt, retain_graph=True)

    return forward, backward


def from_fastcnn(model):
    """A torch.nn.Sequential computing what the fastcnn ``model`` computes, same weights;
    its state_dict keys are fastcnn's ('0.weight', ...)."""
    layers = []
    for m in model.layers:      # fastcnn's layers take PyTorch's names and arguments
        cls = getattr(torch.nn, type(m).__name__)
        if isinstance(m, nn.Conv2d):
            F_, Cg, *K = m.weight.shape
            layers.append(cls(Cg * m.groups, F_, tuple(K), m.stride, m.padding, m.dilation,
                              m.groups, bias=m.bias is not None))
        elif isinstance(m, nn.Linear):
            layers.append(cls(m.weight.shape[1], m.weight.shape[0], bias=m.bias is not None))
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            extra = {name: getattr(m, name) for name in m._extra}   # PyTorch's names
            layers.append(cls(m.kernel_size, m.stride, m.padding, **extra))
        elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            layers.append(cls(m.output_size))
        else:
            layers.append(cls(m.p) if isinstance(m, nn.Dropout) else cls())
    net = torch.nn.Sequential(*layers).to(getattr(torch, model.dtype.name))
    net.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    return net


def sgd(model, lr=0.05, momentum=0.9):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)


def train_step(model, opt, x, y):
    """One step on numpy arrays: forward, softmax cross-entropy, backward, SGD step."""
    model.train()
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    opt.step()
    return loss.item()


def predict(model, x):
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x))
