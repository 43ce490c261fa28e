"""PyTorch CPU reference rows: the same ops and the same MNIST network, timed the same way.

Layers go through ``torch.nn.functional`` with autograd on, since fastcnn's
forward also keeps what its backward needs; backward is
``torch.autograd.grad`` on a retained graph. The network is the fastcnn MNIST
CNN layer for layer, trained with SGD + momentum, and one step is
forward + loss + backward + step, as ``fastcnn.training.train_step`` does.
Importing this module requires torch; callers check ``machine.optional_torch``
first. It deliberately sets no threads (``machine.limit_threads`` does).
"""
import numpy as np
import torch
import torch.nn.functional as F

_TORCH_DTYPE = {"float32": torch.float32, "float64": torch.float64}


def tensor(a, requires_grad=False):
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.requires_grad_(requires_grad)


def conv2d(x, w, b, stride, padding):
    """(forward, backward) zero-argument callables for one conv layer."""
    xt, wt, bt = tensor(x, True), tensor(w, True), tensor(b, True)

    def forward():
        return F.conv2d(xt, wt, bt, stride=stride, padding=padding)

    y = forward()

    def backward(dy):
        dyt = tensor(dy)
        return lambda: torch.autograd.grad(y, (xt, wt, bt), dyt, retain_graph=True)

    return forward, backward


def pool2d(kind, x, kernel, stride, padding):
    """(forward, backward) callables for max or avg pooling (kind 'max' | 'avg')."""
    fn = F.max_pool2d if kind == "max" else F.avg_pool2d
    xt = tensor(x, True)

    def forward():
        return fn(xt, kernel, stride, padding)

    y = forward()

    def backward(dy):
        dyt = tensor(dy)
        return lambda: torch.autograd.grad(y, (xt,), dyt, retain_graph=True)

    return forward, backward


class MnistCNN(torch.nn.Module):
    """conv 1->32 3x3 p1, relu, maxpool 2, conv 32->64 3x3 p1, relu, maxpool 2,
    flatten, dense 3136->128, relu, dropout, dense 128->10."""

    def __init__(self, dropout=0.25):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = torch.nn.Linear(3136, 128)
        self.fc2 = torch.nn.Linear(128, 10)
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = self.dropout(F.relu(self.fc1(x.flatten(1))))
        return self.fc2(x)


# fastcnn's Sequential names parameters by layer index; same layouts as torch.
FASTCNN_NAMES = {"0": "conv1", "3": "conv2", "7": "fc1", "10": "fc2"}


def load_fastcnn_state(model, state):
    """Copy weights from a ``fastcnn.models.mnist_cnn`` state_dict into ``model``."""
    with torch.no_grad():
        for key, value in state.items():
            index, kind = key.split(".")
            getattr(model, FASTCNN_NAMES[index]).get_parameter(kind).copy_(
                torch.from_numpy(value))


def mnist_cnn(dtype="float32", seed=0, dropout=0.25):
    torch.manual_seed(seed)
    return MnistCNN(dropout).to(_TORCH_DTYPE[dtype])


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
