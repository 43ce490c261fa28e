"""fastcnn.training and fastcnn.crosscheck: the loop every caller shares, and fit."""
import os

import numpy as np
import pytest

import fastcnn
from _idx import synthetic_digits
from fastcnn import checkpoint, crosscheck, models, nn
from fastcnn.datasets import load_mnist
from fastcnn.nn.optim import make_optimizer
from fastcnn.training import (NonFiniteLossError, batch_order, cosine_lr, evaluate, fit,
                              optimizer_config, train_epoch, train_step)

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

    def skewed(x, *args):
        y, saved = real(x, *args)
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


# -- fit: the whole run --------------------------------------------------
def _fit_setup(optimizer="sgd", seed=2):
    model = models.build("light", seed=seed)
    return model, make_optimizer(optimizer_config(optimizer, lr=0.05), model.parameters())


def test_fit_is_the_seeded_epoch_loop_with_a_cosine_schedule():
    """Oracle: the same epochs written out by hand with train_epoch and cosine_lr."""
    (x, y), test = _data(40), _data(20, seed=1)
    model, opt = _fit_setup()
    records, lines = [], []
    with fastcnn.use_backend(TRAIN_BACKEND):
        metrics = fit(model, opt, (x, y), test, epochs=2, batch_size=16, seed=2,
                      log=lines.append, on_epoch=records.append)
        hand, hand_opt = _fit_setup()
        lrs = []
        for epoch in range(2):   # 40 images / 16 = 3 steps per epoch
            stats = train_epoch(hand, hand_opt, x, y, batch_size=16, seed=2, epoch=epoch,
                                global_step=3 * epoch,
                                lr_at=lambda s: lrs.append(cosine_lr(0.05, s, 6)) or lrs[-1])
        ev = evaluate(hand, *test)
    assert lrs[0] == 0.05 and lrs[-1] == pytest.approx(0.05 * 0.5 * (1 + np.cos(np.pi * 5 / 6)))
    for (name, p), q in zip(model.named_parameters(), hand.parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    assert records == metrics["history"] and [r["epoch"] for r in records] == [1, 2]
    assert records[1]["step_losses"] == stats.step_losses
    assert (metrics["test_loss"], metrics["test_accuracy"]) == (ev.loss, ev.accuracy)
    assert (metrics["backend"], metrics["auto_choices"], metrics["epochs"], metrics["seed"],
            metrics["train_images"], metrics["test_images"]) == (TRAIN_BACKEND, None, 2, 2,
                                                                 40, 20)
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]


def test_fit_constant_schedule_keeps_the_rate_and_saves_every_epoch(tmp_path):
    (x, y), test = _data(32), _data(10, seed=1)
    model, opt = _fit_setup()
    saved = []
    ck = tmp_path / "ck.npz"
    with fastcnn.use_backend(TRAIN_BACKEND):
        fit(model, opt, (x, y), test, epochs=2, batch_size=16, lr_schedule="constant",
            save=ck, model_name="light",
            on_epoch=lambda r: saved.append(checkpoint.load(ck).meta["epoch"]))
    assert opt.lr == 0.05 and saved == [1, 2]
    meta = checkpoint.load(ck).meta
    assert meta["lr_schedule"] == {"name": "constant", "base_lr": 0.05}
    assert (meta["backend"], meta["threads"], len(meta["history"])) == (
        TRAIN_BACKEND, fastcnn.get_num_threads(), 2)


def test_fit_resume_checks_what_it_is_given_and_warns_on_another_backend(tmp_path):
    (x, y), test = _data(32), _data(10, seed=1)
    model, opt = _fit_setup()
    ck = tmp_path / "ck.npz"
    with fastcnn.use_backend(TRAIN_BACKEND):
        fit(model, opt, (x, y), test, epochs=1, batch_size=16, save=ck, model_name="light")
        with pytest.raises(ValueError, match=r"seed=3 contradicts the checkpoint \(0\)"):
            fit(*_fit_setup(), (x, y), test, epochs=2, seed=3, resume=ck)
        with pytest.raises(ValueError, match="lr_schedule='constant' contradicts"):
            fit(*_fit_setup(), (x, y), test, epochs=2, lr_schedule="constant", resume=ck)
        with pytest.raises(ValueError, match="optimizer .* differs from the checkpoint's"):
            fit(*_fit_setup("adam"), (x, y), test, epochs=2, resume=ck)
    lines = []
    with fastcnn.use_backend("loops"):
        fit(*_fit_setup(), (x, y), test, epochs=1, resume=ck, log=lines.append)
        with pytest.warns(UserWarning, match=f"trained with backend {TRAIN_BACKEND}, this "
                                             f"run uses loops"):
            fit(*_fit_setup(), (x, y), test, epochs=1, resume=ck)
    assert lines == [f"warning: the checkpoint was trained with backend {TRAIN_BACKEND}, this "
                     f"run uses loops: it will not compute exactly what an uninterrupted run "
                     f"would", "the checkpoint already holds 1 epochs, as many as asked for "
                     "(1); nothing to train"]


@pytest.mark.parametrize("kw, message", [
    ({"epochs": 0}, "epochs must be a positive integer, got 0"),
    ({"epochs": 1, "batch_size": 2.5}, "batch_size must be a positive integer, got 2.5"),
    ({"epochs": 1, "seed": -1}, "seed must be an integer >= 0 or None, got -1"),
    ({"epochs": 1, "lr_schedule": "step"}, "lr_schedule must be one of"),
])
def test_fit_refuses_bad_arguments(kw, message):
    with pytest.raises(ValueError, match=message):
        fit(*_fit_setup(), _data(8), _data(4), **kw)


def test_fit_stops_on_a_nan_loss_with_the_checkpoint_intact(tmp_path):
    (x, y), test = _data(32), _data(10, seed=1)
    model, opt = _fit_setup()
    ck = tmp_path / "ck.npz"

    def poison(record):   # after epoch 1 is saved: make every later loss infinite
        model.layers[10].bias.data[0] = np.inf

    with fastcnn.use_backend(TRAIN_BACKEND):
        with pytest.raises(NonFiniteLossError, match=r"at epoch 2, step 1 \(global step 3\)"):
            fit(model, opt, (x, y), test, epochs=2, batch_size=16, save=ck, on_epoch=poison)
    meta = checkpoint.load(ck).meta
    assert meta["epoch"] == 1 and len(meta["history"]) == 1
