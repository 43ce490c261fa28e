"""The MNIST models, built by name so a checkpoint can rebuild them.

    mnist_cnn:        conv 1->32 3x3 pad 1, ReLU, max-pool 2, conv 32->64 3x3 pad 1,
                      ReLU, max-pool 2, flatten, dense 3136->128, ReLU,
                      dropout 0.25, dense 128->10
    mnist_cnn_light:  the same with 8/16 channels and dense 784->32

Weights are drawn from ``np.random.default_rng(seed)`` in layer order (He
init, except small "logits" weights in the output layer so that the initial
loss is about ln 10; zero biases), then the dropout generator is seeded from
the same seed: the same seed always gives the same model, in float32 or float64.
"""
import numpy as np

from fastcnn import nn

DTYPES = ("float32", "float64")


def _cnn(c1, c2, hidden, dtype, seed):
    dtype = np.dtype(dtype)
    if dtype.name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype.name!r}")
    rng = np.random.default_rng(seed)
    kw = {"dtype": dtype, "rng": rng}
    model = nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1, **kw), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1, **kw), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * 7 * 7, hidden, **kw), nn.ReLU(),
        nn.Dropout(0.25),
        nn.Linear(hidden, 10, init="logits", **kw),
    )
    model.seed(seed)
    return model


def mnist_cnn(dtype="float32", seed=0):
    """The classic MNIST CNN (about 420k parameters), input (N, 1, 28, 28)."""
    return _cnn(32, 64, 128, dtype, seed)


def mnist_cnn_light(dtype="float32", seed=0):
    """A light variant (8/16 channels, dense 32; about 27k parameters)."""
    return _cnn(8, 16, 32, dtype, seed)


MODELS = {"cnn": mnist_cnn, "light": mnist_cnn_light}


def build(name, dtype="float32", seed=0):
    """A model from its name in ``MODELS`` ('cnn' or 'light')."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    return MODELS[name](dtype=dtype, seed=seed)
