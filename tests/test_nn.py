"""fastcnn.nn: layers, loss, optimizers and models against independent oracles
(PyTorch modules and optimizers, central differences, closed forms)."""
import math

import numpy as np
import pytest

import fastcnn
from fastcnn import models, nn
from fastcnn.datasets import load_sample
from fastcnn.training import train_step

ALL_BACKENDS = fastcnn.available_backends()


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
            F, C, KH, KW = layer.weight.shape
            layers.append(tnn.Conv2d(C, F, (KH, KW), stride=layer.stride, padding=layer.padding))
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
