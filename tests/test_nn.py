"""fastcnn.nn: layers, loss, optimizers and models against independent oracles
(PyTorch modules and optimizers, central differences, closed forms)."""
import math

import numpy as np
import pytest

import fastcnn
from fastcnn import models, nn
from fastcnn.datasets import load_sample
from fastcnn.training import train_step

ALL_BACKENDS = fastcnn.available_backends("numpy")


def _tiny_model(dtype="float64", seed=0, dropout=0.0):
    """Every layer type once; small enough for central differences."""
    rng = np.random.default_rng(seed)
    kw = {"dtype": dtype, "rng": rng}
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, **kw), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 2, stride=1, padding=0, **kw), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(4 * 1 * 1, 5, **kw), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(5, 3, **kw))


def _torch_twin(torch, model):
    """The same architecture in torch, holding the same weights."""
    tnn = torch.nn
    layers = []
    for layer in model.layers:
        if isinstance(layer, nn.Conv2d):
            F, Cg, KH, KW = layer.weight.shape
            layers.append(tnn.Conv2d(Cg * layer.groups, F, (KH, KW), stride=layer.stride,
                                     padding=layer.padding, dilation=layer.dilation,
                                     groups=layer.groups))
        elif isinstance(layer, nn.Linear):
            layers.append(tnn.Linear(layer.weight.shape[1], layer.weight.shape[0]))
        elif isinstance(layer, nn.MaxPool2d):
            layers.append(tnn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding))
        elif isinstance(layer, nn.AvgPool2d):
            layers.append(tnn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding))
        else:
            layers.append({nn.ReLU: tnn.ReLU, nn.Flatten: tnn.Flatten,
                           nn.Dropout: tnn.Identity}[type(layer)]())
    twin = tnn.Sequential(*layers).double()
    twin.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    return twin


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_model_forward_backward_matches_torch(backend):
    torch = pytest.importorskip("torch")
    model = _tiny_model()
    model.eval()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 2, 6, 6))
    y = rng.integers(0, 3, 5)
    with fastcnn.use_backend(backend):
        logits = model.forward(x)
        loss, dlogits = nn.softmax_cross_entropy(logits, y)
        dx = model.backward(dlogits)
    xt = torch.tensor(x, requires_grad=True)
    twin = _torch_twin(torch, model)
    out = twin(xt)
    lt = torch.nn.functional.cross_entropy(out, torch.tensor(y))
    lt.backward()
    np.testing.assert_allclose(logits, out.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert loss == pytest.approx(lt.item(), rel=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    for (name, p), (tname, tp) in zip(model.named_parameters(), twin.named_parameters()):
        assert name == tname
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=name)


def test_model_gradients_match_central_differences():
    model = _tiny_model(seed=3)
    model.eval()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 2, 6, 6))
    y = rng.integers(0, 3, 3)

    def loss_of():
        return nn.softmax_cross_entropy(model.forward(x), y)[0]

    loss, d = nn.softmax_cross_entropy(model.forward(x), y)
    model.backward(d)
    h = 1e-6
    for name, p in model.named_parameters():
        flat = p.data.reshape(-1)
        for i in rng.choice(flat.size, size=min(4, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + h
            up = loss_of()
            flat[i] = old - h
            down = loss_of()
            flat[i] = old
            assert p.grad.reshape(-1)[i] == pytest.approx((up - down) / (2 * h), abs=1e-7), name


def test_softmax_cross_entropy_closed_form_and_gradient():
    logits = np.array([[1.0, 2.0, 3.0], [0.5, -0.5, 0.0]])
    labels = np.array([2, 0])
    loss, d = nn.softmax_cross_entropy(logits, labels)
    expected = np.mean([math.log(math.exp(1) + math.exp(2) + math.exp(3)) - 3,
                        math.log(math.exp(0.5) + math.exp(-0.5) + 1) - 0.5])
    assert loss == pytest.approx(expected, rel=1e-14)
    h = 1e-6
    for i in range(2):
        for j in range(3):
            up, down = logits.copy(), logits.copy()
            up[i, j] += h
            down[i, j] -= h
            numeric = (nn.softmax_cross_entropy(up, labels)[0]
                       - nn.softmax_cross_entropy(down, labels)[0]) / (2 * h)
            assert d[i, j] == pytest.approx(numeric, abs=1e-9)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_cross_entropy_is_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4]], dtype=dtype)
    loss, d = nn.softmax_cross_entropy(logits, np.array([0, 0]))
    # row 0: log(1 + e^-1e4 + ...) ~ 0; row 1: log(2 e^1e4) - 0 = 1e4 + log 2
    assert loss == pytest.approx((0 + 1e4 + math.log(2)) / 2, rel=1e-6)
    assert d.dtype == np.dtype(dtype) and np.all(np.isfinite(d))


def test_softmax_cross_entropy_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        nn.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="labels must be 2 integers"):
        nn.softmax_cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))


def test_dropout_masks_scale_and_eval_identity():
    layer = nn.Dropout(0.25)
    layer.seed(7)
    x = np.ones((200, 500), dtype=np.float32)
    y = layer.forward(x)
    assert y.dtype == np.float32
    kept = y != 0
    assert abs(1 - kept.mean() - 0.25) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), y)   # same mask
    layer.seed(7)
    np.testing.assert_array_equal(layer.forward(x), y)                  # reseed: same mask
    layer.eval()
    assert layer.forward(x) is x


def test_dropout_rejects_bad_probability():
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        nn.Dropout(1.0)


def _param_grad_pairs(torch, shapes, dtype):
    rng = np.random.default_rng(0)
    ours = [nn.Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]
    theirs = [torch.tensor(p.data.copy(), requires_grad=True) for p in ours]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(4)]
    return ours, theirs, grads


@pytest.mark.parametrize("kind", ["sgd", "sgd_nesterovless_wd", "adam", "adam_wd"])
def test_optimizers_match_torch(kind):
    torch = pytest.importorskip("torch")
    shapes = [(3, 4), (4,)]
    ours, theirs, grads = _param_grad_pairs(torch, shapes, np.float64)
    if kind.startswith("sgd"):
        wd = 0.01 if kind.endswith("wd") else 0.0
        opt = nn.SGD(ours, lr=0.1, momentum=0.9, weight_decay=wd)
        topt = torch.optim.SGD(theirs, lr=0.1, momentum=0.9, weight_decay=wd)
    else:
        wd = 0.01 if kind.endswith("wd") else 0.0
        opt = nn.Adam(ours, lr=0.01, betas=(0.8, 0.99), eps=1e-7, weight_decay=wd)
        topt = torch.optim.Adam(theirs, lr=0.01, betas=(0.8, 0.99), eps=1e-7, weight_decay=wd)
    for step in grads:
        for p, t, g in zip(ours, theirs, step):
            p.grad = g
            t.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_optimizer_step_needs_gradients_and_valid_hyperparameters():
    p = nn.Parameter(np.zeros(3))
    with pytest.raises(RuntimeError, match="has no gradient"):
        nn.SGD([p], lr=0.1).step()
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        nn.SGD([p], lr=-1)
    with pytest.raises(ValueError, match="momentum"):
        nn.SGD([p], lr=0.1, momentum=1.5)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_float32_model_stays_float32(optimizer):
    model = models.mnist_cnn_light(dtype="float32", seed=0)
    params = model.parameters()
    opt = nn.SGD(params, lr=0.05, momentum=0.9) if optimizer == "sgd" else nn.Adam(params)
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    loss, logits = train_step(model, opt, x, np.array([0, 1, 2, 3]), return_logits=True)
    assert isinstance(loss, float) and logits.dtype == np.float32
    for name, p in model.named_parameters():
        assert p.data.dtype == np.float32 and p.grad.dtype == np.float32, name


def test_linear_refuses_mixed_dtypes():
    layer = nn.Linear(3, 2, dtype="float32", rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="x is float64 but the weights are float32"):
        layer.forward(np.zeros((1, 3)))


def test_backward_without_forward_is_an_error():
    with pytest.raises(RuntimeError, match="ReLU.backward called without a preceding forward"):
        nn.ReLU().backward(np.zeros(3))


def test_mnist_models_architecture_and_parameter_counts():
    def count(c1, c2, hidden):
        return (c1 * 9 + c1) + (c2 * c1 * 9 + c2) + (c2 * 49 * hidden + hidden) + (hidden * 10 + 10)

    full, light = models.mnist_cnn(), models.mnist_cnn_light()
    assert sum(p.data.size for p in full.parameters()) == count(32, 64, 128) == 421_642
    assert sum(p.data.size for p in light.parameters()) == count(8, 16, 32)
    assert [type(layer).__name__ for layer in full.layers] == [
        "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear",
        "ReLU", "Dropout", "Linear"]
    assert full.layers[9].p == 0.25
    assert full.dtype == np.float32 and models.mnist_cnn(dtype="float64").dtype == np.float64
    x = np.zeros((2, 1, 28, 28), dtype=np.float32)
    assert full.eval().forward(x).shape == (2, 10)


def test_models_are_seeded_and_he_initialised_with_small_logits():
    a, b = models.mnist_cnn(seed=5), models.mnist_cnn(seed=5)
    c, d64 = models.mnist_cnn(seed=6), models.mnist_cnn(dtype="float64", seed=5)
    for (name, pa), pb, pc, pd in zip(a.named_parameters(), b.parameters(), c.parameters(),
                                      d64.parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)
        np.testing.assert_allclose(pa.data, pd.data, rtol=1e-6)   # same draw, other dtype
        if name.endswith("weight"):
            assert not np.array_equal(pa.data, pc.data)
            fan_in = pa.data[0].size
            # He for the layers before a ReLU; the output layer (10) produces logits
            std = 0.01 if name == "10.weight" else math.sqrt(2 / fan_in)
            assert pa.data.std() == pytest.approx(std, rel=0.1), name
        else:
            assert not pa.data.any()


@pytest.mark.parametrize("build", [models.mnist_cnn, models.mnist_cnn_light])
def test_initial_loss_is_about_ln10_on_real_digits(build):
    """Uniform guessing over 10 digits costs ln 10 = 2.303; He init in the output
    layer started the MNIST CNN at 4-6, with single batches above 10."""
    data = load_sample(limit_train=256)          # real MNIST digits, shipped with fastcnn
    x, y = data.train_images, data.train_labels
    for seed in range(5):
        model = build(seed=seed).train()         # dropout on, as in the first steps
        losses = [nn.softmax_cross_entropy(model.forward(x[i:i + 64]), y[i:i + 64])[0]
                  for i in range(0, len(y), 64)]
        assert np.mean(losses) == pytest.approx(math.log(10), abs=0.2), (seed, losses)
        assert max(losses) < 3.0, (seed, losses)


def test_linear_init_is_checked():
    layer = nn.Linear(4, 3, init="logits", rng=np.random.default_rng(0))
    assert layer.weight.data.std() < 0.05 and layer.weight.dtype == np.float32
    with pytest.raises(ValueError, match="Linear: init must be one of kaiming, logits, "
                                         "got 'xavier'"):
        nn.Linear(4, 3, init="xavier")


def test_load_state_dict_checks_names_shapes_and_dtypes():
    model = models.mnist_cnn_light()
    state = model.state_dict()
    with pytest.raises(ValueError, match=r"missing \['10.bias'\]"):
        model.load_state_dict({k: v for k, v in state.items() if k != "10.bias"})
    with pytest.raises(ValueError, match="must be float32"):
        model.load_state_dict({**state, "0.bias": state["0.bias"].astype(np.float64)})


# -- Conv2d's dilation and groups -------------------------------------------------------
# (in, out, kernel, stride, padding, dilation, groups, x shape, y shape): y's shape by hand,
# OH = (H + 2P - D(K - 1) - 1) // S + 1
CONV_LAYERS = [
    (4, 4, 3, 1, 1, 1, 4, (2, 4, 7, 7), (2, 4, 7, 7)),           # depthwise
    (3, 6, 3, 2, 1, 1, 3, (2, 3, 9, 8), (2, 6, 5, 4)),           # depthwise, multiplier 2
    (4, 6, 3, 2, 2, 2, 2, (2, 4, 9, 8), (2, 6, 5, 4)),           # dilated and grouped
    (2, 3, (3, 2), 1, (2, 1), (2, 3), 1, (1, 2, 6, 7), (1, 3, 6, 6)),
    (6, 4, 1, 1, 0, 1, 2, (2, 6, 5, 5), (2, 4, 5, 5)),           # grouped 1x1
]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("case", CONV_LAYERS, ids=lambda c: f"g{c[6]}-d{c[5]}-s{c[3]}")
def test_conv2d_dilation_groups_shapes_and_backward_match_the_ops(case, backend):
    cin, cout, k, stride, padding, dilation, groups, x_shape, y_shape = case
    layer = nn.Conv2d(cin, cout, k, stride, padding, dilation, groups, dtype="float64",
                      rng=np.random.default_rng(0))
    kh, kw = (k, k) if np.isscalar(k) else k
    assert layer.weight.shape == (cout, cin // groups, kh, kw) and layer.bias.shape == (cout,)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(x_shape)
    dy = rng.standard_normal(y_shape)
    with fastcnn.use_backend(backend):
        y = layer.forward(x)
        dx = layer.backward(dy)
    assert y.shape == y_shape and dx.shape == x_shape
    # the layer is the op, with its own arguments (loops: the spec)
    want, ctx = fastcnn.ops.conv2d_forward(x, layer.weight.data, layer.bias.data, stride,
                                           padding, dilation, groups, backend="loops")
    wdx, wdw, wdb = fastcnn.ops.conv2d_backward(dy, ctx)
    for got, ref in ((y, want), (dx, wdx), (layer.weight.grad, wdw), (layer.bias.grad, wdb)):
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", CONV_LAYERS, ids=lambda c: f"g{c[6]}-d{c[5]}-s{c[3]}")
def test_conv2d_dilation_groups_match_torch(case):
    torch = pytest.importorskip("torch")
    cin, cout, k, stride, padding, dilation, groups, x_shape, y_shape = case
    layer = nn.Conv2d(cin, cout, k, stride, padding, dilation, groups, dtype="float64",
                      rng=np.random.default_rng(2))
    twin = torch.nn.Conv2d(cin, cout, k, stride, padding, dilation, groups).double()
    twin.load_state_dict({k: torch.tensor(v) for k, v in layer.state_dict().items()})
    x = np.random.default_rng(3).standard_normal(x_shape)
    xt = torch.tensor(x, requires_grad=True)
    out = twin(xt)
    dy = np.random.default_rng(4).standard_normal(out.shape)
    out.backward(torch.tensor(dy))
    with fastcnn.use_backend("loops"):
        y = layer.forward(x)
        dx = layer.backward(dy)
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad, twin.weight.grad.numpy(), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(layer.bias.grad, twin.bias.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cin, cout, groups", [(256, 512, 256), (64, 256, 4), (32, 256, 1)])
def test_conv2d_he_init_counts_the_inputs_of_one_group(cin, cout, groups):
    w = nn.Conv2d(cin, cout, 3, groups=groups, rng=np.random.default_rng(0)).weight.data
    fan_in = (cin // groups) * 9
    assert w.shape == (cout, cin // groups, 3, 3) and w.dtype == np.float32
    assert w.std() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
    assert abs(w.mean()) < 0.1 * w.std()


@pytest.mark.parametrize("args, message", [
    ((6, 4, 3, 1, 0, 1, 4), r"Conv2d: in_channels \(6\) must be divisible by groups \(4\)"),
    ((4, 6, 3, 1, 0, 1, 4), r"Conv2d: out_channels \(6\) must be divisible by groups \(4\)"),
    ((4, 4, 3, 1, 0, 1, 0), "Conv2d: groups must be a positive integer, got 0"),
    ((4, 4, 3, 1, 0, 1, 2.0), "Conv2d: groups must be a positive integer, got 2.0"),
    ((0, 4, 3), "Conv2d: in_channels must be a positive integer, got 0"),
    ((4, -1, 3), "Conv2d: out_channels must be a positive integer, got -1"),
])
def test_conv2d_refuses_channels_that_groups_do_not_divide(args, message):
    with pytest.raises(ValueError, match=message):
        nn.Conv2d(*args)


def test_conv2d_bad_dilation_is_refused_by_the_op_before_any_kernel():
    layer = nn.Conv2d(2, 2, 3, dilation=0, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="dilation"):
        layer.forward(np.zeros((1, 2, 8, 8), np.float32))


REPRS = [  # (args, kwargs, PyTorch's repr of the same layer)
    ((1, 16, 3), {"padding": 1}, "Conv2d(1, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))"),
    ((16, 16, 3, 2, 1), {"groups": 16, "bias": False},
     "Conv2d(16, 16, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), groups=16, bias=False)"),
    ((16, 32, 1), {}, "Conv2d(16, 32, kernel_size=(1, 1), stride=(1, 1))"),
    ((3, 4, (3, 5)), {"dilation": 2, "padding": "same"},
     "Conv2d(3, 4, kernel_size=(3, 5), stride=(1, 1), padding=same, dilation=(2, 2))"),
    ((4, 8, 3), {"stride": (2, 1), "padding": (0, 1), "dilation": (1, 2), "groups": 2},
     "Conv2d(4, 8, kernel_size=(3, 3), stride=(2, 1), padding=(0, 1), dilation=(1, 2), "
     "groups=2)"),
]


@pytest.mark.parametrize("args, kwargs, want", REPRS)
def test_conv2d_repr_is_pytorchs(args, kwargs, want):
    assert repr(nn.Conv2d(*args, **kwargs)) == want


@pytest.mark.parametrize("args, kwargs, want", REPRS)
def test_conv2d_repr_strings_are_what_pytorch_prints(args, kwargs, want):
    torch = pytest.importorskip("torch")
    assert repr(torch.nn.Conv2d(*args, **kwargs)) == want


def test_pooling_layers_take_pytorchs_arguments_in_its_order():
    torch = pytest.importorskip("torch")
    # the 6th positional of MaxPool2d is ceil_mode, after return_indices, as in PyTorch
    for args in [(3,), (3, 2, 1, 2, False, True)]:
        ours, theirs = nn.MaxPool2d(*args), torch.nn.MaxPool2d(*args)
        assert (ours.stride or ours.kernel_size, ours.padding, ours.dilation, ours.ceil_mode) == (
            theirs.stride, theirs.padding, theirs.dilation, theirs.ceil_mode)
    for args in [(3,), (3, 2, 1, True, False, 4)]:
        ours, theirs = nn.AvgPool2d(*args), torch.nn.AvgPool2d(*args)
        assert (ours.stride or ours.kernel_size, ours.padding, ours.ceil_mode,
                ours.count_include_pad, ours.divisor_override) == (
            theirs.stride, theirs.padding, theirs.ceil_mode, theirs.count_include_pad,
            theirs.divisor_override)
    for cls in (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d):
        assert cls(output_size=(3, None)).output_size == (3, None)


def test_maxpool2d_refuses_return_indices():
    with pytest.raises(ValueError, match="MaxPool2d: return_indices=True is not supported"):
        nn.MaxPool2d(2, return_indices=True)
