"""The MNIST models, built by name so a checkpoint can rebuild them.

    mnist_cnn:        conv 1->32 3x3 pad 1, ReLU, max-pool 2, conv 32->64 3x3 pad 1,
                      ReLU, max-pool 2, flatten, dense 3136->128, ReLU,
                      dropout 0.25, dense 128->10
    mnist_cnn_light:  the same with 8/16 channels and dense 784->32
    mnist_mobile:     MobileNet-style: conv 1->16 3x3 pad 1, ReLU, then six
                      depthwise-separable blocks (depthwise 3x3 pad 1, ReLU,
                      pointwise 1x1, ReLU) to 32, 64 (stride 2), 64, 128
                      (stride 2), 128, 256 channels, global average pooling,
                      flatten, dense 256->10

Weights are drawn from ``np.random.default_rng(seed)`` in layer order (He
init, except small "logits" weights in the output layer so that the initial
loss is about ln 10; zero biases), then the dropout generator is seeded from
the same seed: the same seed always gives the same model, in float32 or float64.
"""
import numpy as np

from fastcnn import nn

DTYPES = ("float32", "float64")


def _layer_args(dtype, seed):
    dtype = np.dtype(dtype)
    if dtype.name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype.name!r}")
    return {"dtype": dtype, "rng": np.random.default_rng(seed)}


def _cnn(c1, c2, hidden, dtype, seed):
    kw = _layer_args(dtype, seed)
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


# (pointwise output channels, depthwise stride) of each depthwise-separable block
MOBILE_STEM, MOBILE_BLOCKS = 16, ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (256, 1))


def mnist_mobile(dtype="float32", seed=0):
    """A MobileNet-style net (about 72k parameters), input (N, 1, 28, 28): the
    stride-2 depthwise convs take 28x28 to 14x14 and 7x7, global average
    pooling leaves one value per channel. fastcnn has no batch normalisation:
    He init, zero biases and a ReLU after every conv train it without. The
    last block's 256 channels are there because global pooling learns slowly
    without it: its 128-channel version (36k parameters) reached 98.5% in 3
    epochs of ``fastcnn train``, this one 98.9%."""
    kw = _layer_args(dtype, seed)
    c = MOBILE_STEM
    layers = [nn.Conv2d(1, c, 3, padding=1, **kw), nn.ReLU()]
    for out, stride in MOBILE_BLOCKS:
        layers += [nn.Conv2d(c, c, 3, stride, 1, groups=c, **kw), nn.ReLU(),
                   nn.Conv2d(c, out, 1, **kw), nn.ReLU()]
        c = out
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(c, 10, init="logits", **kw))
    model.seed(seed)
    return model


MODELS = {"cnn": mnist_cnn, "light": mnist_cnn_light, "mobile": mnist_mobile}


def build(name, dtype="float32", seed=0):
    """A model from its name in ``MODELS`` ('cnn', 'light' or 'mobile')."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    return MODELS[name](dtype=dtype, seed=seed)
