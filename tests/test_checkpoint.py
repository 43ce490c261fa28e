"""fastcnn.checkpoint: round trip, resume == uninterrupted run, refusing bad files."""
import json
import os
import zipfile

import numpy as np
import pytest

import fastcnn
from _idx import synthetic_digits
from fastcnn import checkpoint, models, nn
from fastcnn.checkpoint import CheckpointError
from fastcnn.training import train_epoch

BACKEND = ([b for b in fastcnn.available_backends() if b != "loops"] or ["loops"])[0]


def _data(n=64):
    images, labels = synthetic_digits(n, 0)
    return ((images[:, None] / 255.0 - 0.1307) / 0.3081).astype(np.float32), labels.astype(int)


def _train(model, opt, epochs, x, y):
    with fastcnn.use_backend(BACKEND):
        for epoch in epochs:
            train_epoch(model, opt, x, y, batch_size=16, seed=3, epoch=epoch)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_round_trip_keeps_weights_optimizer_state_and_meta(tmp_path, optimizer):
    x, y = _data()
    model = models.mnist_cnn_light(seed=3)
    opt = (nn.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
           if optimizer == "sgd" else nn.Adam(model.parameters(), lr=2e-3))
    _train(model, opt, [0], x, y)
    path = tmp_path / "ck.npz"
    checkpoint.save(path, model, opt, model_name="light", seed=3, epoch=1,
                    history=[{"epoch": 1, "test_accuracy": 0.5}])
    ck = checkpoint.load(path)
    assert ck.meta["model"] == "light" and ck.meta["dtype"] == "float32"
    assert ck.meta["epoch"] == 1 and ck.meta["history"][0]["test_accuracy"] == 0.5
    assert ck.meta["optimizer"]["name"] == optimizer and ck.meta["optimizer"]["t"] == opt.t
    restored, ropt = checkpoint.restore(ck)
    for (name, p), q in zip(model.named_parameters(), restored.parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
        assert q.data.dtype == np.float32
    for k, v in opt.state_arrays().items():
        np.testing.assert_array_equal(v, ropt.state_arrays()[k], err_msg=k)
    assert ropt.config() == opt.config()


def test_resumed_training_equals_uninterrupted_training(tmp_path):
    x, y = _data()
    model = models.mnist_cnn_light(seed=3)
    opt = nn.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _train(model, opt, [0, 1], x, y)

    first = models.mnist_cnn_light(seed=3)
    first_opt = nn.SGD(first.parameters(), lr=0.05, momentum=0.9)
    _train(first, first_opt, [0], x, y)
    checkpoint.save(tmp_path / "ck.npz", first, first_opt, model_name="light", seed=3, epoch=1)
    resumed, resumed_opt = checkpoint.restore(checkpoint.load(tmp_path / "ck.npz"))
    _train(resumed, resumed_opt, [1], x, y)
    for (name, p), q in zip(model.named_parameters(), resumed.parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)


def test_save_is_atomic(tmp_path, monkeypatch):
    model = models.mnist_cnn_light()
    opt = nn.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "ck.npz"
    checkpoint.save(path, model, opt, model_name="light", seed=0, epoch=1)
    good = path.read_bytes()

    def interrupted(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, model, opt, model_name="light", seed=0, epoch=2)
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["ck.npz"]


def test_missing_corrupt_and_truncated_files_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "none.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(os.urandom(300))
    with pytest.raises(CheckpointError, match="corrupt or not an .npz file"):
        checkpoint.load(junk)
    model = models.mnist_cnn_light()
    good = tmp_path / "good.npz"
    checkpoint.save(good, model, nn.SGD(model.parameters(), lr=0.1), model_name="light",
                    seed=0, epoch=1)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:-500])
    with pytest.raises(CheckpointError, match="corrupt"):
        checkpoint.load(cut)


def test_foreign_npz_and_pickled_objects_are_refused(tmp_path):
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a fastcnn checkpoint"):
        checkpoint.load(foreign)
    evil = tmp_path / "evil.npz"
    np.savez(evil, meta=np.array([{"format": "fastcnn-checkpoint"}], dtype=object))
    with pytest.raises(CheckpointError, match="holds Python objects"):
        checkpoint.load(evil)


def test_checkpoint_that_does_not_fit_its_model_is_refused(tmp_path):
    model = models.mnist_cnn_light()
    path = tmp_path / "ck.npz"
    checkpoint.save(path, model, nn.SGD(model.parameters(), lr=0.1), model_name="cnn",
                    seed=0, epoch=1)   # says 'cnn' but holds the light weights
    with pytest.raises(CheckpointError, match="does not describe a usable model"):
        checkpoint.restore(checkpoint.load(path))


def test_checkpoint_is_a_plain_npz(tmp_path):
    """Anyone can inspect a checkpoint with NumPy alone."""
    model = models.mnist_cnn_light()
    path = tmp_path / "ck.npz"
    checkpoint.save(path, model, nn.SGD(model.parameters(), lr=0.1, momentum=0.9),
                    model_name="light", seed=0, epoch=1)
    assert zipfile.is_zipfile(path)
    with np.load(path, allow_pickle=False) as npz:
        assert "param/0.weight" in npz.files and "optim/velocity.0" in npz.files
        np.testing.assert_array_equal(npz["param/0.weight"], model.layers[0].weight.data)


def forge(tmp_path, change=None, params=None):
    """A checkpoint of a fresh light model, with meta fields or parameters replaced
    (also used by test_cli)."""
    model = models.mnist_cnn_light()
    good = tmp_path / "good.npz"
    checkpoint.save(good, model, nn.SGD(model.parameters(), lr=0.1), model_name="light",
                    seed=0, epoch=1, history=[{"epoch": 1}])
    with np.load(good) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.array(json.dumps({**meta, **(change or {})}))
    arrays.update(params or {})
    forged = tmp_path / "forged.npz"
    np.savez(forged, **arrays)
    return forged


@pytest.mark.parametrize("change, message", [
    ({"epoch": -1}, r"meta 'epoch' must be an integer in \[0, 1000000\], got -1"),
    ({"epoch": 1.5}, "got 1.5"),
    ({"epoch": "1"}, "got '1'"),
    ({"epoch": True}, "got True"),
    ({"epoch": 10**30, "history": None}, "got 1000000000000000000000000000000"),
    ({"epoch": 2}, r"meta 'history' must list one record per epoch \(2\), got list of 1"),
    ({"seed": -3}, "meta 'seed' must be an integer >= 0, got -3"),
    ({"optimizer": {"name": "sgd", "lr": 0.1}}, "meta 'optimizer' must hold"),
])
def test_forged_meta_fields_are_refused(tmp_path, change, message):
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(forge(tmp_path, change))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused(tmp_path, bad):
    weight = models.mnist_cnn_light().layers[0].weight.data.copy()
    weight[0, 0, 1, 1] = bad
    with pytest.raises(CheckpointError, match=r"non-finite values \(NaN or inf\) in "
                                              r"param/0.weight"):
        checkpoint.load(forge(tmp_path, params={"param/0.weight": weight}))
