"""The fastcnn command: train/eval/crosscheck/info end to end on small IDX folders,
checkpoints and resume, Ctrl-C, NaN, and one-line errors for bad flags."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastcnn
from _idx import write_mnist
from fastcnn import checkpoint, cli, training

FAST = [b for b in fastcnn.available_backends() if b != "loops"]
BACKEND = FAST[0] if FAST else "loops"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist")
    write_mnist(folder, n_train=256, n_test=100)
    return str(folder)


def _train_args(data_dir, *extra):
    return ["train", "--backend", BACKEND, "--model", "light", "--data-dir", data_dir,
            "--batch-size", "32", "--no-progress", *extra]


def test_train_writes_metrics_plot_and_checkpoint(tmp_path, data_dir, capsys):
    pytest.importorskip("matplotlib")   # the [plot] extra; the [test] extra installs it
    metrics, plot, ck = tmp_path / "m.json", tmp_path / "curves.png", tmp_path / "ck.npz"
    rc = cli.main(_train_args(data_dir, "--epochs", "2", "--metrics", str(metrics),
                              "--plot", str(plot), "--save", str(ck)))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "epoch 2/2: train loss" in out and "test accuracy" in out and "images/s" in out
    m = json.loads(metrics.read_text())
    for key in ("backend", "dtype", "epochs", "batch_size", "train_images", "train_seconds",
                "images_per_second", "test_accuracy", "final_loss", "history"):
        assert key in m, key
    assert (m["backend"], m["dtype"], m["epochs"], m["batch_size"], m["train_images"]) == (
        BACKEND, "float32", 2, 32, 256)
    assert len(m["history"]) == 2 and m["history"][1]["epoch"] == 2
    assert m["test_accuracy"] > 0.5   # chance is 0.1; the synthetic digits are easy
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert checkpoint.load(ck).meta["epoch"] == 2


def test_seeded_runs_give_the_same_metrics(tmp_path, data_dir):
    runs = []
    for i in range(2):
        path = tmp_path / f"m{i}.json"
        assert cli.main(_train_args(data_dir, "--epochs", "1", "--seed", "4",
                                    "--metrics", str(path))) == 0
        runs.append(json.loads(path.read_text())["history"][0])
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "step_losses"):
        assert runs[0][key] == runs[1][key], key


def _interrupt_in_epoch(monkeypatch, n):
    real = training.train_epoch

    def interrupted(*args, epoch, **kw):
        if epoch == n - 1:
            raise KeyboardInterrupt
        return real(*args, epoch=epoch, **kw)

    monkeypatch.setattr(training, "train_epoch", interrupted)


def test_resume_after_ctrl_c_equals_an_uninterrupted_run(tmp_path, data_dir, monkeypatch,
                                                         capsys):
    ck, metrics, straight = tmp_path / "ck.npz", tmp_path / "m.json", tmp_path / "s.json"
    assert cli.main(_train_args(data_dir, "--epochs", "2", "--metrics", str(straight))) == 0
    with monkeypatch.context() as m:
        _interrupt_in_epoch(m, 2)
        assert cli.main(_train_args(data_dir, "--epochs", "2", "--save", str(ck))) == 130
    assert cli.main(_train_args(data_dir, "--epochs", "2", "--resume", str(ck), "--save",
                                str(ck), "--metrics", str(metrics))) == 0
    resumed, whole = (json.loads(p.read_text())["history"] for p in (metrics, straight))
    assert [h["epoch"] for h in resumed] == [1, 2]
    for key in ("step_losses", "test_loss", "test_accuracy"):
        assert resumed[1][key] == whole[1][key], key
    capsys.readouterr()
    assert cli.main(_train_args(data_dir, "--resume", str(ck), "--dtype", "float64")) == 2
    assert "--dtype float64 contradicts the checkpoint" in capsys.readouterr().err


def test_resume_can_extend_a_finished_run(tmp_path, data_dir, capsys):
    ck, metrics = tmp_path / "ck.npz", tmp_path / "m.json"
    assert cli.main(_train_args(data_dir, "--epochs", "1", "--save", str(ck))) == 0
    assert cli.main(_train_args(data_dir, "--epochs", "1", "--resume", str(ck))) == 0
    assert "already holds 1 epochs" in capsys.readouterr().out
    assert cli.main(_train_args(data_dir, "--epochs", "2", "--resume", str(ck),
                                "--metrics", str(metrics))) == 0
    assert len(json.loads(metrics.read_text())["history"]) == 2


def test_ctrl_c_leaves_the_last_checkpoint_intact(tmp_path, data_dir, monkeypatch, capsys):
    ck = tmp_path / "ck.npz"
    _interrupt_in_epoch(monkeypatch, 2)
    assert cli.main(_train_args(data_dir, "--epochs", "3", "--save", str(ck))) == 130
    err = capsys.readouterr().err
    assert "interrupted during epoch 2" in err and f"--resume {ck}" in err
    assert checkpoint.load(ck).meta["epoch"] == 1
    assert os.listdir(tmp_path) == ["ck.npz"]


def test_nan_loss_stops_with_the_step(tmp_path, data_dir, monkeypatch, capsys):
    ck = tmp_path / "ck.npz"
    real, calls = training.softmax_cross_entropy, []

    def nan_at_step_3_of_epoch_2(logits, labels):
        loss, d = real(logits, labels)
        if len(labels) == 32:               # a training batch, not the evaluation
            calls.append(1)
            if len(calls) == 8 + 3:         # 256 images / 32 = 8 steps per epoch
                loss = float("nan")
        return loss, d

    monkeypatch.setattr(training, "softmax_cross_entropy", nan_at_step_3_of_epoch_2)
    assert cli.main(_train_args(data_dir, "--epochs", "2", "--save", str(ck))) == 1
    err = capsys.readouterr().err
    assert "training loss is nan at epoch 2, step 3 (global step 11)" in err
    assert checkpoint.load(ck).meta["epoch"] == 1


def test_eval_prints_accuracy_per_class_and_confusion(tmp_path, data_dir, capsys):
    ck = tmp_path / "ck.npz"
    assert cli.main(_train_args(data_dir, "--epochs", "1", "--save", str(ck))) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--model", str(ck), "--data-dir", data_dir,
                     "--backend", BACKEND]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "per class: 0:" in out
    rows = [line.split() for line in out.splitlines()[-10:]]
    confusion = np.array([[int(v) for v in row[1:]] for row in rows])
    assert confusion.shape == (10, 10) and confusion.sum() == 100


def test_crosscheck_command(capsys):
    assert cli.main(["crosscheck", "--synthetic", "--steps", "2", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "tolerance: relative difference <= 1e-09" in out
    for b in FAST:
        assert f"{b}: OK" in out


def test_crosscheck_float32_reports_without_failing(capsys):
    assert cli.main(["crosscheck", "--synthetic", "--steps", "1", "--batch-size", "4",
                     "--dtype", "float32"]) == 0
    assert "float32: reported, not checked" in capsys.readouterr().out


def test_info(capsys):
    assert cli.main(["info"]) == 0
    assert "loops" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["train", "--backend", "nope"], "argument --backend: invalid choice: 'nope'"),
    (["train", "--epochs", "-1"], "argument --epochs: expected a positive integer, got -1"),
    (["train", "--epochs", "0"], "expected a positive integer, got 0"),
    (["train", "--batch-size", "lots"], "expected a positive integer, got 'lots'"),
    (["train", "--lr", "-0.1"], "argument --lr: expected a positive number, got -0.1"),
    (["train", "--lr", "nan"], "expected a positive number, got nan"),
    (["train", "--momentum", "1.5"], "expected a number in [0, 1), got 1.5"),
    (["train", "--data-dir", "/no/such/folder"], "/no/such/folder is not a folder"),
    (["train", "--resume", "/no/such/ck.npz"], "--resume /no/such/ck.npz: no such file"),
    (["train", "--metrics", "/no/such/dir/m.json"], "folder /no/such/dir does not exist"),
    (["eval", "--model", "/no/such/ck.npz"], "--model /no/such/ck.npz: no such file"),
    (["crosscheck", "--backends", "loops,foo"], "--backends: unknown backend 'foo'"),
    (["crosscheck", "--steps", "0"], "expected a positive integer, got 0"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_flags_get_one_line_and_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        rc = cli.main(argv)
        raise SystemExit(rc)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, data_dir, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib -> ImportError
    assert cli.main(_train_args(data_dir, "--plot", str(tmp_path / "p.png"))) == 2
    assert "pip install 'fastcnn[plot]'" in capsys.readouterr().err


def test_missing_data_files_are_reported_without_traceback(tmp_path, capsys):
    assert cli.main(["train", "--data-dir", str(tmp_path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "lacks train-images-idx3-ubyte" in err and "Traceback" not in err


def test_python_dash_m_and_progress_bar(data_dir):
    proc = subprocess.run([sys.executable, "-m", "fastcnn", "train", "--backend", BACKEND,
                           "--model", "light", "--data-dir", data_dir, "--epochs", "1",
                           "--limit-train", "64", "--limit-test", "10"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "img_s=" in proc.stderr and "acc=" in proc.stderr and "loss=" in proc.stderr
    assert "epoch 1/1" in proc.stdout
