"""fastcnn.models.mnist_mobile, the MobileNet-style net: its architecture, gradients
(central differences, PyTorch), checkpoints and the backends' agreement on it."""
import math

import numpy as np
import pytest

import fastcnn
from fastcnn import checkpoint, cli, crosscheck, models, nn
from fastcnn.datasets import load_sample

from cases import BACKENDS


def _separable(c, out, stride, kw):
    return [nn.Conv2d(c, c, 3, stride, 1, groups=c, **kw), nn.ReLU(),
            nn.Conv2d(c, out, 1, **kw), nn.ReLU()]


def _tiny_mobile(seed=0):
    """mobile's layer kinds at a size central differences can afford: a stem, a stride-2
    depthwise-separable block, a dilated grouped conv, global average pooling, a classifier."""
    kw = {"dtype": "float64", "rng": np.random.default_rng(seed)}
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, **kw), nn.ReLU(), *_separable(4, 6, 2, kw),
        nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=3, **kw), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3, init="logits", **kw))
    # nonzero biases: with zero ones, a 1x1 conv over an all-zero ReLU output sits exactly
    # on the next ReLU's kink, where central differences see half a slope
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.data[...] = kw["rng"].uniform(0.05, 0.2, p.shape) * kw["rng"].choice([-1, 1], p.shape)
    return model


def test_mobile_architecture_and_parameter_count():
    model = models.build("mobile")
    assert models.MODELS["mobile"] is models.mnist_mobile
    convs = [layer for layer in model.layers if isinstance(layer, nn.Conv2d)]
    stem, blocks = convs[0], [convs[i:i + 2] for i in range(1, len(convs), 2)]
    assert stem.weight.shape == (models.MOBILE_STEM, 1, 3, 3) and stem.padding == 1
    c = models.MOBILE_STEM
    for (dw, pw), (out, stride) in zip(blocks, models.MOBILE_BLOCKS, strict=True):
        # depthwise 3x3 (groups = channels), then pointwise 1x1
        assert (dw.groups, dw.weight.shape, dw.stride, dw.padding) == (c, (c, 1, 3, 3), stride, 1)
        assert (pw.groups, pw.weight.shape, pw.stride, pw.padding) == (1, (out, c, 1, 1), 1, 0)
        c = out
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Conv2d", "ReLU"] * (1 + 2 * len(blocks)) + [
        "AdaptiveAvgPool2d", "Flatten", "Linear"]
    assert model.layers[-3].output_size == 1 and model.layers[-1].weight.shape == (10, c)
    # two stride-2 blocks: 28 -> 14 -> 7
    assert [s for _, s in models.MOBILE_BLOCKS].count(2) == 2
    count = sum(p.data.size for p in model.parameters())
    by_hand = (models.MOBILE_STEM * 10 + sum(10 * cin + (cin + 1) * out for cin, out in zip(
        [models.MOBILE_STEM] + [o for o, _ in models.MOBILE_BLOCKS[:-1]],
        [o for o, _ in models.MOBILE_BLOCKS])) + c * 10 + 10)
    assert count == by_hand and 10_000 <= count < 100_000


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mobile_forward_backward_shapes_and_dtypes(dtype):
    model = models.mnist_mobile(dtype=dtype, seed=1)
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(dtype)
    with fastcnn.use_backend(BACKENDS[-1]):
        logits = model.forward(x)
        loss, dlogits = nn.softmax_cross_entropy(logits, np.array([1, 2, 3]))
        dx = model.backward(dlogits)
    assert logits.shape == (3, 10) and logits.dtype == dtype
    assert dx.shape == x.shape and dx.dtype == dtype
    for name, p in model.named_parameters():
        assert p.grad.shape == p.data.shape and p.grad.dtype == dtype, name
        assert np.all(np.isfinite(p.grad)) and np.any(p.grad), name


def test_mobile_is_seeded_and_he_initialised_per_group():
    a, b, c = models.mnist_mobile(seed=5), models.mnist_mobile(seed=5), models.mnist_mobile(seed=6)
    last = f"{len(a) - 1}.weight"
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)
        if name.endswith("bias"):
            assert not pa.data.any()
            continue
        assert not np.array_equal(pa.data, pc.data)
        # a depthwise filter sees 9 inputs, a pointwise one C: fan_in = (C // groups) KH KW
        std = 0.01 if name == last else math.sqrt(2 / pa.data[0].size)
        assert pa.data.std() == pytest.approx(std, rel=0.25 if pa.data.size < 300 else 0.1), name


def test_mobile_initial_loss_is_about_ln10_on_real_digits():
    data = load_sample(limit_train=256)
    x, y = data.train_images, data.train_labels
    for seed in range(3):
        model = models.mnist_mobile(seed=seed)
        with fastcnn.use_backend(BACKENDS[-1]):
            loss = nn.softmax_cross_entropy(model.forward(x), y)[0]
        assert loss == pytest.approx(math.log(10), abs=0.05), seed


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_mobile_gradients_match_central_differences(backend):
    model = _tiny_mobile(seed=3)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 1, 8, 9))
    y = rng.integers(0, 3, 3)

    def loss_of():
        return nn.softmax_cross_entropy(model.forward(x), y)[0]

    with fastcnn.use_backend(backend):
        loss, d = nn.softmax_cross_entropy(model.forward(x), y)
        dx = model.backward(d)
        h = 1e-6
        for name, p in [("x", None)] + list(model.named_parameters()):
            flat, grad = (x.reshape(-1), dx.reshape(-1)) if p is None else (
                p.data.reshape(-1), p.grad.reshape(-1))
            for i in rng.choice(flat.size, size=min(5, flat.size), replace=False):
                old = flat[i]
                flat[i] = old + h
                up = loss_of()
                flat[i] = old - h
                down = loss_of()
                flat[i] = old
                assert grad[i] == pytest.approx((up - down) / (2 * h), abs=1e-8), (name, i)


def test_tiny_mobile_matches_torch():
    torch = pytest.importorskip("torch")
    import sys
    import os
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks import torch_ref     # the benchmark's PyTorch twin, checked here too

    model = _tiny_mobile(seed=5)
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((4, 1, 8, 9)), rng.integers(0, 3, 4)
    twin = torch_ref.from_fastcnn(model)
    xt = torch.tensor(x, requires_grad=True)
    out = twin(xt)
    torch.nn.functional.cross_entropy(out, torch.tensor(y)).backward()
    with fastcnn.use_backend("loops"):
        logits = model.forward(x)
        dx = model.backward(nn.softmax_cross_entropy(logits, y)[1])
    np.testing.assert_allclose(logits, out.detach().numpy(), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-14)
    for (name, p), (tname, tp) in zip(model.named_parameters(), twin.named_parameters(),
                                      strict=True):
        assert name == tname
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-9, atol=1e-14, err_msg=name)


def test_mobile_checkpoint_round_trip(tmp_path):
    model = models.mnist_mobile(seed=2)
    opt = nn.Adam(model.parameters(), lr=2e-3)
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    from fastcnn.training import train_step
    with fastcnn.use_backend(BACKENDS[-1]):
        train_step(model, opt, x, np.array([0, 1, 2, 3]))
    path = tmp_path / "mobile.npz"
    checkpoint.save(path, model, opt, model_name="mobile", seed=2, epoch=1)
    ck = checkpoint.load(path)
    assert ck.meta["model"] == "mobile"
    restored, ropt = checkpoint.restore(ck)
    assert repr(restored) == repr(model)
    for (name, p), q in zip(model.named_parameters(), restored.parameters(), strict=True):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    for k, v in opt.state_arrays().items():
        np.testing.assert_array_equal(v, ropt.state_arrays()[k], err_msg=k)
    with fastcnn.use_backend(BACKENDS[-1]):
        np.testing.assert_array_equal(restored.forward(x), model.forward(x))


def test_mobile_crosscheck_float64_on_every_backend():
    rng = np.random.default_rng(7)
    x, y = rng.random((16, 1, 28, 28)), rng.integers(0, 10, 16)
    results = crosscheck.crosscheck(BACKENDS, x, y, model="mobile", dtype="float64", steps=2,
                                    batch_size=8, optimizer={"name": "adam", "lr": 2e-3, "betas": [0.9, 0.999],
                                               "eps": 1e-8, "weight_decay": 0.0})
    assert [r.backend for r in results] == [b for b in BACKENDS if b != crosscheck.REFERENCE]
    for r in results:
        assert r.worst.rel <= crosscheck.DEFAULT_TOLERANCE["float64"], (r.backend, r.worst)


def test_crosscheck_command_takes_mobile(capsys):
    assert cli.main(["crosscheck", "--model", "mobile", "--synthetic", "--steps", "1",
                     "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "crosscheck: model mobile, float64" in out and "FAIL" not in out
