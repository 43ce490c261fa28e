"""The tutorial-style im2col CNN that fastcnn's ``im2col`` backend is measured against.

This is the code people copy from blog posts and textbooks, kept the way it is
usually written (after "Deep Learning from Scratch", oreilly-japan/
deep-learning-from-scratch ``common/util.py`` and ``common/layers.py``, which
CS231n-style posts resemble): im2col fills a 6-d zero array with one copy per
kernel offset, then transposes it into a fresh (N*OH*OW, C*KH*KW) matrix;
col2im scatter-adds one kernel offset at a time into an oversized zero image;
max pooling is im2col + argmax; layers are classes that cache their input.

Deliberate, and the only change from the original: the zero arrays take the
input's dtype. The original calls ``np.zeros(shape)``, which is float64, so a
float32 network silently runs in float64; keeping the dtype gives the
tutorial code a fair float32 row. Its parameters default to float64, as in the
original. It is deliberately not optimised and not part of ``fastcnn``; max
pooling pads with zeros (wrong for negative inputs), so it is only timed on
unpadded pools.
"""
import numpy as np


def im2col(input_data, filter_h, filter_w, stride=1, pad=0):
    N, C, H, W = input_data.shape
    out_h = (H + 2 * pad - filter_h) // stride + 1
    out_w = (W + 2 * pad - filter_w) // stride + 1

    img = np.pad(input_data, [(0, 0), (0, 0), (pad, pad), (pad, pad)], "constant")
    col = np.zeros((N, C, filter_h, filter_w, out_h, out_w), dtype=input_data.dtype)

    for y in range(filter_h):
        y_max = y + stride * out_h
        for x in range(filter_w):
            x_max = x + stride * out_w
            col[:, :, y, x, :, :] = img[:, :, y:y_max:stride, x:x_max:stride]

    col = col.transpose(0, 4, 5, 1, 2, 3).reshape(N * out_h * out_w, -1)
    return col


def col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0):
    N, C, H, W = input_shape
    out_h = (H + 2 * pad - filter_h) // stride + 1
    out_w = (W + 2 * pad - filter_w) // stride + 1
    col = col.reshape(N, out_h, out_w, C, filter_h, filter_w).transpose(0, 3, 4, 5, 1, 2)

    img = np.zeros((N, C, H + 2 * pad + stride - 1, W + 2 * pad + stride - 1), dtype=col.dtype)
    for y in range(filter_h):
        y_max = y + stride * out_h
        for x in range(filter_w):
            x_max = x + stride * out_w
            img[:, :, y:y_max:stride, x:x_max:stride] += col[:, :, y, x, :, :]

    return img[:, :, pad:H + pad, pad:W + pad]


class Convolution:
    def __init__(self, W, b, stride=1, pad=0):
        self.W = W
        self.b = b
        self.stride = stride
        self.pad = pad

    def forward(self, x):
        FN, C, FH, FW = self.W.shape
        N, C, H, W = x.shape
        out_h = 1 + (H + 2 * self.pad - FH) // self.stride
        out_w = 1 + (W + 2 * self.pad - FW) // self.stride

        col = im2col(x, FH, FW, self.stride, self.pad)
        col_W = self.W.reshape(FN, -1).T
        out = np.dot(col, col_W) + self.b
        out = out.reshape(N, out_h, out_w, -1).transpose(0, 3, 1, 2)

        self.x = x
        self.col = col
        self.col_W = col_W
        return out

    def backward(self, dout):
        FN, C, FH, FW = self.W.shape
        dout = dout.transpose(0, 2, 3, 1).reshape(-1, FN)

        self.db = np.sum(dout, axis=0)
        self.dW = np.dot(self.col.T, dout)
        self.dW = self.dW.transpose(1, 0).reshape(FN, C, FH, FW)

        dcol = np.dot(dout, self.col_W.T)
        dx = col2im(dcol, self.x.shape, FH, FW, self.stride, self.pad)
        return dx


class Pooling:
    """Max pooling."""

    def __init__(self, pool_h, pool_w, stride=1, pad=0):
        self.pool_h = pool_h
        self.pool_w = pool_w
        self.stride = stride
        self.pad = pad

    def forward(self, x):
        N, C, H, W = x.shape
        out_h = 1 + (H + 2 * self.pad - self.pool_h) // self.stride
        out_w = 1 + (W + 2 * self.pad - self.pool_w) // self.stride

        col = im2col(x, self.pool_h, self.pool_w, self.stride, self.pad)
        col = col.reshape(-1, self.pool_h * self.pool_w)

        arg_max = np.argmax(col, axis=1)
        out = np.max(col, axis=1)
        out = out.reshape(N, out_h, out_w, C).transpose(0, 3, 1, 2)

        self.x = x
        self.arg_max = arg_max
        return out

    def backward(self, dout):
        dout = dout.transpose(0, 2, 3, 1)

        pool_size = self.pool_h * self.pool_w
        dmax = np.zeros((dout.size, pool_size), dtype=dout.dtype)
        dmax[np.arange(self.arg_max.size), self.arg_max.flatten()] = dout.flatten()
        dmax = dmax.reshape(dout.shape + (pool_size,))

        dcol = dmax.reshape(dmax.shape[0] * dmax.shape[1] * dmax.shape[2], -1)
        dx = col2im(dcol, self.x.shape, self.pool_h, self.pool_w, self.stride, self.pad)
        return dx


class AvgPooling(Pooling):
    """Average pooling in the same style (padding counts as zeros, like count_include_pad)."""

    def forward(self, x):
        N, C, H, W = x.shape
        out_h = 1 + (H + 2 * self.pad - self.pool_h) // self.stride
        out_w = 1 + (W + 2 * self.pad - self.pool_w) // self.stride

        col = im2col(x, self.pool_h, self.pool_w, self.stride, self.pad)
        col = col.reshape(-1, self.pool_h * self.pool_w)
        out = np.mean(col, axis=1)
        out = out.reshape(N, out_h, out_w, C).transpose(0, 3, 1, 2)

        self.x = x
        return out

    def backward(self, dout):
        dout = dout.transpose(0, 2, 3, 1)
        pool_size = self.pool_h * self.pool_w
        dcol = np.repeat(dout.reshape(-1, 1) / pool_size, pool_size, axis=1)
        dx = col2im(dcol, self.x.shape, self.pool_h, self.pool_w, self.stride, self.pad)
        return dx


class Relu:
    def forward(self, x):
        self.mask = (x <= 0)
        out = x.copy()
        out[self.mask] = 0
        return out

    def backward(self, dout):
        dout[self.mask] = 0
        return dout


class Affine:
    def __init__(self, W, b):
        self.W = W
        self.b = b

    def forward(self, x):
        self.original_x_shape = x.shape
        x = x.reshape(x.shape[0], -1)
        self.x = x
        return np.dot(self.x, self.W) + self.b

    def backward(self, dout):
        dx = np.dot(dout, self.W.T)
        self.dW = np.dot(self.x.T, dout)
        self.db = np.sum(dout, axis=0)
        return dx.reshape(*self.original_x_shape)


class Dropout:
    """Inverted dropout (scaled at training time), so eval is the identity as in PyTorch."""

    def __init__(self, ratio, rng):
        self.ratio = ratio
        self.rng = rng

    def forward(self, x, train_flg=True):
        if train_flg and self.ratio > 0:
            self.mask = (self.rng.random(x.shape) > self.ratio) / (1.0 - self.ratio)
            return x * self.mask.astype(x.dtype)
        self.mask = None
        return x

    def backward(self, dout):
        return dout if self.mask is None else dout * self.mask.astype(dout.dtype)


class SoftmaxWithLoss:
    def forward(self, x, t):
        self.t = t
        x = x - np.max(x, axis=1, keepdims=True)
        self.y = np.exp(x) / np.sum(np.exp(x), axis=1, keepdims=True)
        batch_size = x.shape[0]
        return -np.sum(np.log(self.y[np.arange(batch_size), t] + 1e-7)) / batch_size

    def backward(self, dout=1):
        batch_size = self.t.shape[0]
        dx = self.y.copy()
        dx[np.arange(batch_size), self.t] -= 1
        return dx * dout / batch_size


class Momentum:
    """SGD with momentum, in PyTorch's form (v = m v + g; p -= lr v)."""

    def __init__(self, lr=0.05, momentum=0.9):
        self.lr = lr
        self.momentum = momentum
        self.v = None

    def update(self, params, grads):
        if self.v is None:
            self.v = {key: np.zeros_like(val) for key, val in params.items()}
        for key in params.keys():
            self.v[key] = self.momentum * self.v[key] + grads[key]
            params[key] -= self.lr * self.v[key]


class TutorialConvNet:
    """conv(1->32, 3x3, pad 1)-relu-maxpool 2-conv(32->64)-relu-maxpool 2-affine 3136->128-relu-dropout-affine 128->10."""

    def __init__(self, dtype="float64", seed=0, dropout=0.25):
        rng = np.random.default_rng(seed)

        def he(shape, fan_in):
            return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)

        self.params = {
            "W1": he((32, 1, 3, 3), 9), "b1": np.zeros(32, dtype),
            "W2": he((64, 32, 3, 3), 288), "b2": np.zeros(64, dtype),
            "W3": he((3136, 128), 3136), "b3": np.zeros(128, dtype),
            "W4": he((128, 10), 128), "b4": np.zeros(10, dtype),
        }
        self.dropout = dropout
        self.rng = rng
        self._build()

    def _build(self):
        p = self.params
        self.layers = [
            ("Conv1", Convolution(p["W1"], p["b1"], 1, 1)), ("Relu1", Relu()),
            ("Pool1", Pooling(2, 2, 2)),
            ("Conv2", Convolution(p["W2"], p["b2"], 1, 1)), ("Relu2", Relu()),
            ("Pool2", Pooling(2, 2, 2)),
            ("Affine1", Affine(p["W3"], p["b3"])), ("Relu3", Relu()),
            ("Dropout", Dropout(self.dropout, self.rng)),
            ("Affine2", Affine(p["W4"], p["b4"])),
        ]
        self.last_layer = SoftmaxWithLoss()

    def load_fastcnn_state(self, state):
        """Copy weights from a ``fastcnn.models.mnist_cnn`` state_dict (dense weights transposed)."""
        for i, layer in ((1, 0), (2, 3), (3, 7), (4, 10)):
            w = state[f"{layer}.weight"]
            self.params[f"W{i}"][...] = w.T if w.ndim == 2 else w
            self.params[f"b{i}"][...] = state[f"{layer}.bias"]

    def predict(self, x, train_flg=False):
        for name, layer in self.layers:
            x = layer.forward(x, train_flg) if name == "Dropout" else layer.forward(x)
        return x

    def loss(self, x, t):
        return self.last_layer.forward(self.predict(x, train_flg=True), t)

    def gradient(self, x, t):
        loss = self.loss(x, t)
        dout = self.last_layer.backward(1)
        for _, layer in reversed(self.layers):
            dout = layer.backward(dout)
        grads = {}
        for i, name in ((1, "Conv1"), (2, "Conv2"), (3, "Affine1"), (4, "Affine2")):
            layer = dict(self.layers)[name]
            grads[f"W{i}"], grads[f"b{i}"] = layer.dW, layer.db
        return loss, grads


def train_step(net, optimizer, x, t):
    """Forward, softmax cross-entropy, backward, momentum update; returns the loss."""
    loss, grads = net.gradient(x, t)
    optimizer.update(net.params, grads)
    return float(loss)
