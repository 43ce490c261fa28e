"""The tutorial-style im2col CNN that fastcnn's ``im2col`` backend is measured against.

The code people copy from blog posts and textbooks, kept as it is usually
written (after "Deep Learning from Scratch", oreilly-japan/deep-learning-from-scratch
``common/util.py`` and ``common/layers.py``, which CS231n-style posts resemble):
im2col fills a 6-d zero array one kernel offset at a time, then transposes it
into a fresh (N*OH*OW, C*KH*KW) matrix; col2im scatter-adds into an oversized
zero image; max pooling is im2col + argmax; layers are classes caching their input.
The only changes: the zero arrays take the input's dtype (the original's
float64 ``np.zeros`` would run a float32 network in float64), and ``TutorialNet``
takes a fastcnn model's layers and weights instead of drawing its own. Not
optimised, not part of ``fastcnn``; no average or adaptive pooling, no grouped
or dilated convolution (so no ``mobile`` network), and max pooling pads with
zeros (wrong for negative inputs), so padded max pools are not timed.
"""
import numpy as np

from fastcnn import nn   # only to read a model's layers (TutorialNet)


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


class TutorialNet:
    """The tutorial's layers in the order of a ``fastcnn.nn.Sequential``, with its weights;
    parameters keyed as fastcnn names them ('0.weight', ...), dense weights transposed
    (the tutorial computes x @ W)."""

    def __init__(self, model, seed=0):
        self.params, self.layers = {}, []
        for i, m in enumerate(model.layers):
            if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.dilation not in (1, (1, 1))):
                raise NotImplementedError("the tutorial code has no dilated or grouped "
                                          "convolution")
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                conv = isinstance(m, nn.Conv2d)
                W = self.params[f"{i}.weight"] = (m.weight.data if conv else m.weight.data.T).copy()
                b = self.params[f"{i}.bias"] = m.bias.data.copy()
                layer = Convolution(W, b, m.stride, m.padding) if conv else Affine(W, b)
            elif isinstance(m, nn.MaxPool2d):
                layer = Pooling(m.kernel_size, m.kernel_size, m.stride or m.kernel_size, m.padding)
            elif isinstance(m, nn.ReLU):
                layer = Relu()
            elif isinstance(m, nn.Dropout):
                layer = Dropout(m.p, np.random.default_rng(seed))
            elif isinstance(m, nn.Flatten):
                continue        # Affine flattens its input itself
            else:
                raise NotImplementedError(f"the tutorial code has no {type(m).__name__}")
            self.layers.append((i, layer))
        self.last_layer = SoftmaxWithLoss()

    def predict(self, x, train_flg=False):
        for _, layer in self.layers:
            x = layer.forward(x, train_flg) if isinstance(layer, Dropout) else layer.forward(x)
        return x

    def gradient(self, x, t):
        loss = self.last_layer.forward(self.predict(x, train_flg=True), t)
        dout = self.last_layer.backward(1)
        for _, layer in reversed(self.layers):
            dout = layer.backward(dout)
        grads = {}
        for i, layer in self.layers:
            if isinstance(layer, (Convolution, Affine)):
                grads[f"{i}.weight"], grads[f"{i}.bias"] = layer.dW, layer.db
        return loss, grads


def op(name, x, *args):
    """(forward, backward) callables for fastcnn op ``name`` on x, its arguments after x as
    fastcnn takes them; backward(dy) returns the callable computing dx (a conv layer keeps
    dW and db)."""
    if name == "conv2d" and args[4:] in ((), (1, 1), ((1, 1), 1)):
        layer = Convolution(*args[:4])
    elif name == "relu":
        layer = Relu()
    elif name == "max_pool2d" and not args[2] and args[3:] in ((), (1, False)):
        layer = Pooling(args[0], args[0], args[1] or args[0])
    else:
        raise NotImplementedError("the tutorial code has no " + {
            "conv2d": "dilated or grouped convolution",
            "max_pool2d": "padded (it pads with zeros, not -inf), dilated or ceil_mode max pooling",
        }.get(name, name))

    def backward(dy):
        layer.forward(x)
        return lambda: layer.backward(dy)

    return lambda: layer.forward(x), backward


from_fastcnn = TutorialNet


def sgd(net, lr=0.05, momentum=0.9):
    return Momentum(lr, momentum)


def train_step(net, optimizer, x, t):
    """Forward, softmax cross-entropy, backward, momentum update; returns the loss."""
    loss, grads = net.gradient(x, t)
    optimizer.update(net.params, grads)
    return float(loss)


def predict(net, x):
    return net.predict(x, train_flg=False)
