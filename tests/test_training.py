"""fastcnn.training and fastcnn.crosscheck: the loop every caller shares."""
import os

import numpy as np
import pytest

import fastcnn
from _idx import synthetic_digits
from fastcnn import crosscheck, models, nn
from fastcnn.datasets import load_mnist
from fastcnn.training import (NonFiniteLossError, batch_order, evaluate, train_epoch,
                              train_step)

REAL = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")
FAST = [b for b in fastcnn.available_backends() if b != "loops"]
TRAIN_BACKEND = FAST[0] if FAST else "loops"


def _data(n, seed=0, dtype=np.float32):
    images, labels = synthetic_digits(n, seed)
    return ((images[:, None] / 255.0 - 0.1307) / 0.3081).astype(dtype), labels.astype(np.int64)


def _light(seed=0, dtype="float32", lr=0.05):
    model = models.mnist_cnn_light(dtype=dtype, seed=seed)
    return model, nn.SGD(model.parameters(), lr=lr, momentum=0.9)


def test_train_step_returns_a_float_and_fits_one_batch():
    x, y = _data(16)
    model, opt = _light()
    with fastcnn.use_backend(TRAIN_BACKEND):
        losses = [train_step(model, opt, x, y) for _ in range(15)]
    assert all(isinstance(v, float) for v in losses)
    assert losses[-1] < 0.2 * losses[0]
    assert model.training


def test_batch_order_is_a_seeded_permutation_per_epoch():
    batches = batch_order(10, 4, seed=3, epoch=0)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches)) == list(range(10))
    again = batch_order(10, 4, seed=3, epoch=0)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other = np.concatenate(batch_order(10, 4, seed=3, epoch=1))
    assert not np.array_equal(np.concatenate(batches), other)


def test_seeded_epochs_are_reproducible_bit_for_bit():
    x, y = _data(96)
    states = []
    for _ in range(2):
        model, opt = _light(seed=1)
        with fastcnn.use_backend(TRAIN_BACKEND):
            stats = train_epoch(model, opt, x, y, batch_size=32, seed=1, epoch=0)
        states.append((stats.step_losses, model.state_dict()))
    assert states[0][0] == states[1][0]
    for k in states[0][1]:
        np.testing.assert_array_equal(states[0][1][k], states[1][1][k])


def test_non_finite_loss_stops_before_updating_and_names_the_step():
    x, y = _data(64)
    model, opt = _light()
    with fastcnn.use_backend(TRAIN_BACKEND):
        train_epoch(model, opt, x[:16], y[:16], batch_size=16, seed=0, epoch=0)
        model.layers[10].bias.data[0] = np.inf
        before = model.state_dict()
        with pytest.raises(NonFiniteLossError,
                           match=r"loss is nan at epoch 2, step 1 \(global step 5\)"):
            train_epoch(model, opt, x, y, batch_size=16, seed=0, epoch=1, global_step=4)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_evaluate_counts_correct_predictions_and_restores_mode():
    x, y = _data(50)
    model, _ = _light()
    model.train()
    with fastcnn.use_backend(TRAIN_BACKEND):
        result = evaluate(model, x, y, batch_size=16)
        assert model.training
        logits = model.eval().forward(x)
    np.testing.assert_array_equal(result.predictions, logits.argmax(axis=1))
    assert result.accuracy == pytest.approx(np.mean(logits.argmax(axis=1) == y))
    assert result.loss == pytest.approx(nn.softmax_cross_entropy(logits, y)[0], rel=1e-5)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_crosscheck_every_backend_agrees_with_loops(dtype):
    x, y = _data(8, dtype=dtype)
    results = crosscheck.crosscheck(fastcnn.available_backends(), x, y, dtype=dtype,
                                    steps=2, batch_size=4)
    assert [r.backend for r in results] == [b for b in fastcnn.available_backends()
                                            if b != "loops"]
    for r in results:
        assert len(r.steps) == 2 and set(r.steps[0]) >= {"loss", "logits", "0.weight"}
        assert r.worst.rel <= crosscheck.DEFAULT_TOLERANCE[dtype], r


def test_crosscheck_detects_a_different_computation(monkeypatch):
    """A backend that computes something else must fail the check."""
    if not FAST:
        pytest.skip("needs a second backend")
    from fastcnn import backend as registry
    mod = registry.get_module(FAST[0])
    real = mod.max_pool2d_forward

    def skewed(x, kernel, stride, padding):
        y, saved = real(x, kernel, stride, padding)
        return y * 1.001, saved

    monkeypatch.setattr(mod, "max_pool2d_forward", skewed)
    x, y = _data(4, dtype=np.float64)
    result = crosscheck.crosscheck([FAST[0]], x, y, steps=1, batch_size=4)[0]
    assert result.worst.rel > 1e-4


def _real_mnist_dir():
    for folder in (os.environ.get("FASTCNN_DATA"), REAL):
        if folder and os.path.isdir(folder):
            return folder
    return None


def test_end_to_end_training_reaches_sensible_accuracy():
    """Two epochs of the light model on 2048 images: real MNIST when available
    (> 80% on 1000 test images; chance is 10%), else the synthetic digits (> 95%)."""
    folder = _real_mnist_dir()
    if folder:
        data = load_mnist(folder, limit_train=2048, limit_test=1000)
        xtr, ytr, xte, yte, floor = (data.train_images, data.train_labels, data.test_images,
                                     data.test_labels, 0.80)
    else:
        (xtr, ytr), (xte, yte), floor = _data(2048), _data(500, seed=1), 0.95
    model = models.mnist_cnn_light(seed=0)
    opt = nn.SGD(model.parameters(), lr=0.02, momentum=0.9)
    with fastcnn.use_backend(TRAIN_BACKEND):
        for epoch in range(2):
            stats = train_epoch(model, opt, xtr, ytr, batch_size=16, seed=0, epoch=epoch)
        result = evaluate(model, xte, yte)
    assert stats.loss < 1.2
    assert result.accuracy > floor, result.accuracy
