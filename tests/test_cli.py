"""The fastcnn command: train/eval/crosscheck/info end to end on small IDX folders,
checkpoints and resume, Ctrl-C, NaN, auto's choices, and one-line errors for bad
flags, bad files and bad environments, found before any work."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastcnn
from _idx import write_mnist
from test_checkpoint import forge
from fastcnn import _auto, _cli_flags, checkpoint, cli, training

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
        # each backend runs the fused model, against the unfused loops model
        assert f"{b} (fused model: " in out and "vs loops (unfused model)" in out


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
    (["train", "--seed", "-1"], "argument --seed: expected an integer >= 0, got -1"),
    (["crosscheck", "--seed", "-1"], "argument --seed: expected an integer >= 0, got -1"),
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


def _one_line(err):
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("flag", ["--save", "--metrics", "--plot"])
def test_an_output_path_that_is_a_folder_fails_before_any_work(flag, tmp_path, capsys):
    empty = tmp_path / "empty"    # loading data from here would fail with status 1
    empty.mkdir()
    assert cli.main(["train", "--data-dir", str(empty), flag, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{flag} {tmp_path} is a folder; give a file name" in err and _one_line(err)
    missing = tmp_path / "no" / "m.out"
    assert cli.main(["train", "--data-dir", str(empty), flag, str(missing)]) == 2
    assert f"folder {missing.parent} does not exist" in capsys.readouterr().err


def test_an_unwritable_output_folder_fails_before_any_work(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    real = os.access
    monkeypatch.setattr(_cli_flags.os, "access",   # as if tmp_path were read-only
                        lambda p, mode: False if mode & os.W_OK else real(p, mode))
    assert cli.main(["train", "--data-dir", str(empty), "--save", str(tmp_path / "ck.npz")]) == 2
    err = capsys.readouterr().err
    assert f"--save {tmp_path / 'ck.npz'}: folder {tmp_path} is not writable" in err
    assert _one_line(err)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_a_really_read_only_folder_fails_before_any_work(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert cli.main(["train", "--metrics", str(locked / "m.json")]) == 2
    finally:
        locked.chmod(0o700)
    assert "is not writable" in capsys.readouterr().err


def test_a_bad_backend_environment_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FASTCNN_BACKEND", "nonsense")
    assert cli.main(["info"]) == 2
    err = capsys.readouterr().err
    assert "fastcnn info: error: environment variable FASTCNN_BACKEND: unknown backend " \
           "'nonsense'" in err and _one_line(err)
    monkeypatch.delenv("FASTCNN_BACKEND")
    monkeypatch.setenv("FASTCNN_NUM_THREADS", "many")
    assert cli.main(["info"]) == 2
    err = capsys.readouterr().err
    assert "FASTCNN_NUM_THREADS must be a positive integer, got 'many'" in err and _one_line(err)
    monkeypatch.delenv("FASTCNN_NUM_THREADS")
    monkeypatch.setenv(_auto.ENV, str(tmp_path / "none.json"))
    _auto.reset()
    try:
        assert cli.main(["train", "--backend", "auto", "--data-dir", str(tmp_path)]) == 2
    finally:
        monkeypatch.delenv(_auto.ENV)
        _auto.reset()
    err = capsys.readouterr().err
    assert "environment variable FASTCNN_AUTO_CHOICES: cannot read" in err and _one_line(err)


NAN_WEIGHT = {"param/0.weight": np.full((8, 1, 3, 3), np.nan, np.float32)}


@pytest.mark.parametrize("meta, params, message", [
    ({"epoch": -2, "history": None}, None, "meta 'epoch' must be an integer"),
    ({"epoch": 10**12, "history": None}, None, "got 1000000000000"),
    ({"epoch": "2", "history": None}, None, "got '2'"),
    (None, NAN_WEIGHT, "non-finite values (NaN or inf) in param/0.weight"),
])
def test_forged_or_non_finite_checkpoints_are_refused_in_one_line(tmp_path, data_dir, capsys,
                                                                  meta, params, message):
    ck = str(forge(tmp_path, meta, params))
    assert cli.main(["eval", "--model", ck, "--data-dir", data_dir]) == 1
    assert cli.main(_train_args(data_dir, "--resume", ck)) == 1
    err = capsys.readouterr().err
    assert err.count(message) == 2 and len(err.strip().splitlines()) == 2, err


def test_too_many_threads_are_capped_with_a_warning(tmp_path, data_dir, capsys):
    ck = str(forge(tmp_path))
    cpus, before = os.cpu_count(), fastcnn.get_num_threads()
    try:
        assert cli.main(["eval", "--model", ck, "--data-dir", data_dir, "--backend", BACKEND,
                         "--threads", str(cpus + 3)]) == 0
        assert fastcnn.get_num_threads() == cpus
    finally:
        fastcnn.set_num_threads(before)
    err = capsys.readouterr().err
    assert err == (f"fastcnn eval: warning: --threads {cpus + 3} is more than the {cpus} "
                   f"CPUs here; using {cpus}\n")


@pytest.mark.parametrize("unbuffered", [False, True])
def test_a_closed_stdout_pipe_ends_quietly(tmp_path, data_dir, unbuffered):
    """`fastcnn eval ... | head -1`: no traceback, no 'Exception ignored', whether
    the first print or the final flush meets the closed pipe."""
    ck = str(forge(tmp_path))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env.update({"PYTHONUNBUFFERED": "1"} if unbuffered else {})
    proc = subprocess.Popen([sys.executable, "-m", "fastcnn", "eval", "--model", ck,
                             "--data-dir", data_dir, "--backend", BACKEND],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()    # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 1
    assert "BrokenPipeError" not in err and "Traceback" not in err, err


def test_auto_choices_are_printed_saved_and_replayed_on_resume(tmp_path, data_dir,
                                                               monkeypatch, capsys):
    ck, metrics, straight = tmp_path / "ck.npz", tmp_path / "m.json", tmp_path / "s.json"
    auto = [a if a != BACKEND else "auto" for a in _train_args(data_dir, "--epochs", "2")]
    _auto.reset()
    assert cli.main(auto + ["--metrics", str(straight), "--save", str(tmp_path / "s.npz")]) == 0
    out = capsys.readouterr().out
    assert out.index("auto chose for conv2d: 32x1x28x28 ") < out.index("epoch 1/2:")
    assert "auto chose for conv2d: 100x1x28x28 " in out   # the evaluation's, after epoch 1
    with monkeypatch.context() as m:
        _interrupt_in_epoch(m, 2)
        assert cli.main(auto + ["--save", str(ck)]) == 130
    _auto.reset()    # as a new process would
    assert cli.main(auto + ["--resume", str(ck), "--save", str(ck), "--metrics",
                            str(metrics)]) == 0
    whole = checkpoint.load(tmp_path / "s.npz").params
    for name, value in checkpoint.load(ck).params.items():
        np.testing.assert_array_equal(value, whole[name], err_msg=name)
    saved = checkpoint.load(ck).meta["auto_choices"]
    resumed, whole = (json.loads(p.read_text()) for p in (metrics, straight))
    # the fused conv+ReLU+max-pool is chosen by its conv; relu is the dense layer's
    assert {c["op"] for c in saved} == {"conv2d", "relu"}
    assert resumed["auto_choices"] == fastcnn.auto_choices()
    assert sorted(map(json.dumps, resumed["auto_choices"])) == sorted(map(json.dumps, saved))
    assert resumed["history"][1]["step_losses"] == whole["history"][1]["step_losses"]


@pytest.mark.skipif("numba" not in fastcnn.available_backends(), reason="numba not installed")
def test_jit_compilation_is_announced_and_kept_out_of_the_epoch_clock(data_dir, capsys,
                                                                     monkeypatch):
    from fastcnn.backend import get_module
    fastcnn.warmup(["numba"])     # the real kernels, loaded before the stand-in below
    calls = []
    monkeypatch.setattr(get_module("numba"), "warmup",
                        lambda: calls.append("numba") or __import__("time").sleep(1.0))
    args = ["train", "--backend", "numba", "--model", "light", "--data-dir", data_dir,
            "--batch-size", "32", "--no-progress", "--epochs", "1"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert calls == ["numba"]
    assert "preparing JIT kernels" in out and "numba 1.0 s (not counted in images/s)" in out
    seconds = float(out.split("epoch 1/1:")[1].split(" s (")[0].split("|")[-1])
    assert seconds < 1.0    # the second of 'compiling' is not in the epoch's time


def test_version_comes_from_one_source(capsys):
    from fastcnn._version import __version__
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"fastcnn {__version__}" == \
        f"fastcnn {fastcnn.__version__}"
    from importlib.metadata import version
    assert version("fastcnn") == __version__      # pyproject reads the same file
