"""Backend 'auto' made visible and reproducible: auto_choices(), pinning (call,
file, $FASTCNN_AUTO_CHOICES), and a resumed 'auto' run that ends bit for bit
where the uninterrupted run does, although the timing now picks otherwise."""
import json

import numpy as np
import pytest

import fastcnn
from _idx import synthetic_digits
from fastcnn import _auto, backend as registry, checkpoint, models, ops, training
from fastcnn.nn.optim import make_optimizer

CANDIDATES = _auto.candidates()
needs_two = pytest.mark.skipif(len(CANDIDATES) < 2, reason="needs two backends auto can pick")
FIRST, LAST = CANDIDATES[0], CANDIDATES[-1]

x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
w = np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)


@pytest.fixture(autouse=True)
def _fresh_auto(monkeypatch):
    monkeypatch.delenv(_auto.ENV, raising=False)
    _auto.reset()
    yield
    _auto.reset()


def _rig(monkeypatch, winner):
    """Make auto's timing pick ``winner(op)``; returns the list of timed ops."""
    timed = []

    def fake_time(mod, op, args, y_shape):
        timed.append(op)
        return 0.0 if mod is registry.get_module(winner(op)) else 1.0

    monkeypatch.setattr(_auto, "_time_once", fake_time)
    return timed


def test_auto_choices_lists_each_key_once_with_its_backend(monkeypatch):
    _rig(monkeypatch, lambda op: LAST)
    with fastcnn.use_backend("auto"):
        y, ctx = ops.conv2d_forward(x, w, None, 1, 1)
        ops.conv2d_forward(x, w, None, 1, 1)          # same key: no new record
        ops.max_pool2d_forward(y, 2)
    choices = fastcnn.auto_choices()
    threads = fastcnn.get_num_threads()
    assert [(c["op"], c["shapes"], c["dtype"], c["threads"], c["backend"]) for c in choices] == [
        ("conv2d", [[2, 3, 6, 6], [4, 3, 3, 3], None], "float32", threads, LAST),
        ("max_pool2d", [[2, 4, 6, 6]], "float32", threads, LAST)]
    assert choices[1]["params"] == [[2, 2], [2, 2], [0, 0], [1, 1], [3, 3]]
    # kernel, stride, padding, dilation, out_hw
    assert ctx.backend == LAST
    assert json.loads(json.dumps(choices)) == choices
    assert _auto.describe(choices) == [f"auto chose for conv2d: 2x3x6x6 {LAST}",
                                       f"auto chose for max_pool2d: 2x4x6x6 {LAST}"]


@needs_two
def test_a_pinned_choice_is_used_without_timing(monkeypatch):
    _rig(monkeypatch, lambda op: FIRST)
    ops.conv2d_forward(x, w, backend="auto")
    record = {**fastcnn.auto_choices()[0], "backend": LAST}
    _auto.reset()
    timed = _rig(monkeypatch, lambda op: FIRST)
    fastcnn.pin_auto_choices([record])
    assert ops.conv2d_forward(x, w, backend="auto")[1].backend == LAST
    assert timed == [] and fastcnn.auto_choices() == [record]
    assert ops.conv2d_forward(x[:1], w, backend="auto")[1].backend == FIRST  # another key
    assert timed == ["conv2d"] * 2 * len(CANDIDATES)


@needs_two
def test_pinned_threads_must_match_unless_null(monkeypatch):
    _rig(monkeypatch, lambda op: FIRST)
    ops.relu_forward(x, backend="auto")
    record = fastcnn.auto_choices()[0]
    _auto.reset()
    _rig(monkeypatch, lambda op: FIRST)
    fastcnn.pin_auto_choices([{**record, "backend": LAST, "threads": record["threads"] + 1}])
    assert ops.relu_forward(x, backend="auto")[1].backend == FIRST
    fastcnn.pin_auto_choices([{**record, "backend": LAST, "threads": None}])
    assert ops.relu_forward(x, backend="auto")[1].backend == LAST


@needs_two
def test_choices_file_env_var_and_an_explicit_pin_over_it(tmp_path, monkeypatch):
    _rig(monkeypatch, lambda op: FIRST)
    ops.relu_forward(x, backend="auto")
    record = fastcnn.auto_choices()[0]
    metrics = tmp_path / "m.json"    # a metrics file of `fastcnn train` holds them so
    metrics.write_text(json.dumps({"auto_choices": [{**record, "backend": LAST}]}))
    _auto.reset()
    monkeypatch.setenv(_auto.ENV, str(metrics))
    assert ops.relu_forward(x, backend="auto")[1].backend == LAST
    plain = tmp_path / "choices.json"
    plain.write_text(json.dumps([record]))
    fastcnn.pin_auto_choices(plain)
    assert ops.relu_forward(x, backend="auto")[1].backend == FIRST
    _auto.reset()
    monkeypatch.setenv(_auto.ENV, str(tmp_path / "missing.json"))
    for _ in range(2):   # reported at every call, not once and then forgotten
        with pytest.raises(ValueError, match=r"environment variable FASTCNN_AUTO_CHOICES: "
                                             r"cannot read auto choices from .*missing.json"):
            ops.relu_forward(x, backend="auto")


DROP = object()


@pytest.mark.parametrize("change, message", [
    ({"backend": "auto"}, r"choices\[1\]\['backend'\] must be a concrete backend, not 'auto'"),
    ({"backend": "fast"}, r"choices\[1\]\['backend'\]: unknown backend 'fast'"),
    ({"op": "conv3d"}, r"choices\[1\]\['op'\] must be one of conv2d, max_pool2d"),
    ({"threads": 0}, r"choices\[1\]\['threads'\] must be a positive integer or null, got 0"),
    ({"shapes": DROP, "params": DROP}, r"choices\[1\] lacks shapes, params"),
])
def test_bad_records_are_refused_and_none_is_pinned(change, message):
    good = {"op": "relu", "shapes": [[3]], "dtype": "float64", "params": [], "threads": None,
            "backend": FIRST}
    bad = {k: v for k, v in {**good, **change}.items() if v is not DROP}
    with pytest.raises(ValueError, match=message):
        fastcnn.pin_auto_choices([good, bad])
    assert fastcnn.auto_choices() == []
    with pytest.raises(TypeError, match="choices must be a list of records or a path"):
        fastcnn.pin_auto_choices({"op": "relu"})


# -- a resumed 'auto' run -------------------------------------------------
def _data(n, seed):
    images, labels = synthetic_digits(n, seed)
    return ((images[:, None] / 255.0 - 0.1307) / 0.3081).astype(np.float32), labels.astype(int)


TRAIN, TEST = _data(80, 0), _data(30, 1)   # 80 = 2 batches of 32 + one of 16


def _fit(**kw):
    model = models.build("light", seed=5)
    opt = make_optimizer(training.optimizer_config("adam"), model.parameters())
    with fastcnn.use_backend("auto"):
        metrics = training.fit(model, opt, TRAIN, TEST, epochs=2, batch_size=32, seed=5,
                               model_name="light", **kw)
    return model, metrics


def _stop_after_epoch_1(record):
    raise KeyboardInterrupt


def _sorted(choices):
    return sorted(json.dumps(c, sort_keys=True) for c in choices)


@needs_two
def test_resumed_auto_run_replays_its_choices_and_ends_bit_for_bit(tmp_path, monkeypatch):
    # the first process times one way (conv on LAST, the rest on FIRST), ...
    original = lambda op: LAST if op == "conv2d" else FIRST  # noqa: E731
    _rig(monkeypatch, original)
    whole, metrics = _fit()
    choices = fastcnn.auto_choices()
    # the fused conv+ReLU+max-pool is chosen by its conv; relu is the dense layer's
    assert {c["op"] for c in choices} == {"conv2d", "relu"}
    assert metrics["auto_choices"] == choices and metrics["backend"] == "auto"
    _auto.reset()
    _rig(monkeypatch, original)
    ck = tmp_path / "ck.npz"
    with pytest.raises(KeyboardInterrupt):
        _fit(save=ck, on_epoch=_stop_after_epoch_1)
    assert _sorted(checkpoint.load(ck).meta["auto_choices"]) == _sorted(choices)
    # ... the resuming process would time the other way round: the checkpoint wins
    _auto.reset()
    timed = _rig(monkeypatch, lambda op: FIRST if op == "conv2d" else LAST)
    resumed, metrics = _fit(resume=ck)
    assert timed == [] and _sorted(fastcnn.auto_choices()) == _sorted(choices)
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    for (name, p), q in zip(whole.named_parameters(), resumed.parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    # control: resumed without its choices, the other backends give other numbers
    _auto.reset()
    _rig(monkeypatch, lambda op: FIRST if op == "conv2d" else LAST)
    ckpt = checkpoint.load(ck)
    forgetful = ckpt._replace(meta={**ckpt.meta, "auto_choices": None})
    other, _ = _fit(resume=forgetful)
    assert any(not np.array_equal(p.data, q.data)
               for p, q in zip(whole.parameters(), other.parameters()))


@needs_two
def test_a_checkpoint_naming_a_missing_backend_is_refused(tmp_path, monkeypatch):
    _rig(monkeypatch, lambda op: FIRST)
    ck = tmp_path / "ck.npz"
    with pytest.raises(KeyboardInterrupt):
        _fit(save=ck, on_epoch=_stop_after_epoch_1)
    ckpt = checkpoint.load(ck)
    meta = {**ckpt.meta, "auto_choices": [{**ckpt.meta["auto_choices"][0],
                                           "backend": "gpu"}]}
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"the checkpoint's auto_choices: choices\[0\]\['backend'\]: "
                             r"unknown backend 'gpu'"):
        _fit(resume=ckpt._replace(meta=meta))
