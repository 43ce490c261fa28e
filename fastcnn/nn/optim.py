"""Optimizers: SGD (momentum, weight decay) and Adam, updating parameters in place.

Both follow PyTorch's update rules exactly, so their trajectories can be
checked against ``torch.optim``:

    SGD:  g = grad + wd * p;  v = momentum * v + g;  p -= lr * v
    Adam: g = grad + wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
          p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)

The state (velocities, moments, step count) is plain arrays and numbers, so
a checkpoint can save it without pickling. Updates stay in the parameter dtype.
"""
import math

import numpy as np


def _check(name, value, low, *, inclusive=True, high=None):
    ok = (value >= low if inclusive else value > low) and (high is None or value < high)
    if not ok or not math.isfinite(value):
        bound = f"{'>=' if inclusive else '>'} {low}" + (f" and < {high}" if high else "")
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


class Optimizer:
    name = None
    hyper = ()   # names of the hyperparameters saved with the state

    def __init__(self, params):
        self.params = list(params)
        if not self.params:
            raise ValueError("the optimizer got no parameters")
        self.t = 0

    def _grads(self):
        for i, p in enumerate(self.params):
            if p.grad is None:
                raise RuntimeError(f"parameter {i} {p.shape} has no gradient: "
                                   f"run model.backward before optimizer.step")
            yield p, p.grad

    def config(self):
        """Name and hyperparameters (JSON-serialisable)."""
        return {"name": self.name, **{k: getattr(self, k) for k in self.hyper}}

    def state_arrays(self):
        """{key: array} of the per-parameter state."""
        raise NotImplementedError

    def state_dict(self):
        return {"config": self.config(), "t": self.t, "arrays": self.state_arrays()}

    def load_state_dict(self, state):
        if state["config"]["name"] != self.name:
            raise ValueError(f"optimizer state is for {state['config']['name']!r}, "
                             f"not {self.name!r}")
        for key, own in self.state_arrays().items():
            value = np.asarray(state["arrays"][key])
            if value.shape != own.shape or value.dtype != own.dtype:
                raise ValueError(f"optimizer state {key!r} must be {own.dtype} {own.shape}, "
                                 f"got {value.dtype} {value.shape}")
            own[...] = value
        self.t = int(state["t"])


class SGD(Optimizer):
    name = "sgd"
    hyper = ("lr", "momentum", "weight_decay")

    def __init__(self, params, lr=0.01, momentum=0.0, weight_decay=0.0):
        super().__init__(params)
        self.lr = _check("lr", lr, 0.0, inclusive=False)
        self.momentum = _check("momentum", momentum, 0.0, high=1.0)
        self.weight_decay = _check("weight_decay", weight_decay, 0.0)
        self.velocity = [np.zeros_like(p.data) for p in self.params]

    def step(self):
        for (p, g), v in zip(self._grads(), self.velocity):
            if self.weight_decay:
                g = g + self.weight_decay * p.data
            if self.momentum:
                # PyTorch starts the velocity at the first gradient, not at lr*g
                if self.t == 0:
                    v[...] = g
                else:
                    v *= self.momentum
                    v += g
                g = v
            p.data -= self.lr * g
        self.t += 1

    def state_arrays(self):
        return {f"velocity.{i}": v for i, v in enumerate(self.velocity)}


class Adam(Optimizer):
    name = "adam"
    hyper = ("lr", "beta1", "beta2", "eps", "weight_decay")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params)
        self.lr = _check("lr", lr, 0.0, inclusive=False)
        self.beta1 = _check("betas[0]", betas[0], 0.0, high=1.0)
        self.beta2 = _check("betas[1]", betas[1], 0.0, high=1.0)
        self.eps = _check("eps", eps, 0.0)
        self.weight_decay = _check("weight_decay", weight_decay, 0.0)
        self.m = [np.zeros_like(p.data) for p in self.params]
        self.v = [np.zeros_like(p.data) for p in self.params]

    def config(self):
        return {"name": self.name, "lr": self.lr, "betas": [self.beta1, self.beta2],
                "eps": self.eps, "weight_decay": self.weight_decay}

    def step(self):
        self.t += 1
        c1 = 1.0 - self.beta1 ** self.t
        c2 = 1.0 - self.beta2 ** self.t
        for (p, g), m, v in zip(self._grads(), self.m, self.v):
            if self.weight_decay:
                g = g + self.weight_decay * p.data
            m *= self.beta1
            m += (1.0 - self.beta1) * g
            v *= self.beta2
            v += (1.0 - self.beta2) * (g * g)
            p.data -= (self.lr / c1) * m / (np.sqrt(v / c2) + self.eps)

    def state_arrays(self):
        return {**{f"m.{i}": m for i, m in enumerate(self.m)},
                **{f"v.{i}": v for i, v in enumerate(self.v)}}


def make_optimizer(config, params):
    """Rebuild an optimizer from ``Optimizer.config()`` (used by checkpoints)."""
    config = dict(config)
    name = config.pop("name")
    if name == "sgd":
        return SGD(params, **config)
    if name == "adam":
        config["betas"] = tuple(config["betas"])
        return Adam(params, **config)
    raise ValueError(f"unknown optimizer {name!r}; expected 'sgd' or 'adam'")
