"""Data-parallel training over MPI (fastcnn.distributed): the sharding rule and
launcher detection here; under ``mpiexec -n 2`` (tests/mpi_*.py and the
``fastcnn train`` command), equality with one process on the same global
batch, mismatches between ranks found at the start, a failing rank ending the
job at once, and rank 0 alone writing one checkpoint and one metrics file.

The MPI tests skip without mpi4py or mpiexec (pip install 'fastcnn[mpi]');
each launch has a timeout, so a hang fails instead of stalling the suite.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import fastcnn
from _idx import write_mnist
from fastcnn import distributed

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT_S = 120


def _mpiexec():
    """The mpiexec beside this Python (the mpich wheel's), else the one on PATH."""
    import shutil
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")


def _mpi_available():
    try:
        import importlib.util
        return importlib.util.find_spec("mpi4py") is not None and _mpiexec() is not None
    except ImportError:
        return False


needs_mpi = pytest.mark.skipif(not _mpi_available(),
                               reason="needs mpi4py and mpiexec: pip install 'fastcnn[mpi]'")


def mpirun(*args, n=2, timeout=TIMEOUT_S):
    """``mpiexec -n 2 ARGS`` (or an MPMD line: args holding ':'), in its own
    process group so a timeout kills every rank; (returncode, stdout, stderr,
    seconds)."""
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    for name in distributed.LAUNCHER_SIZE_VARIABLES:   # if pytest itself runs under MPI
        env.pop(name, None)
    cmd = [_mpiexec(), "-n", str(n), *map(str, args)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} hung for {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    return proc.returncode, out, err, time.perf_counter() - start


# -- no MPI needed ---------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_shards_split_a_batch_into_contiguous_parts_the_first_ranks_one_larger(size):
    for n in range(0, 23):
        parts = [distributed.shard(n, rank, size) for rank in range(size)]
        assert [p.start for p in parts] == [0] + [p.stop for p in parts[:-1]]
        assert parts[-1].stop == n
        lengths = [p.stop - p.start for p in parts]
        assert lengths == [n // size + (rank < n % size) for rank in range(size)]


def test_the_launcher_is_recognised_by_its_environment():
    assert distributed.launched_size({}) is None
    assert distributed.launched_size({"PMI_SIZE": "4", "PMI_RANK": "1"}) == 4
    assert distributed.launched_size({"OMPI_COMM_WORLD_SIZE": "3"}) == 3
    for bad in ("two", "0"):
        with pytest.raises(ValueError, match="PMI_SIZE"):
            distributed.launched_size({"PMI_SIZE": bad})


def test_fastcnn_never_imports_mpi4py():
    code = ("import sys, fastcnn, fastcnn.training, fastcnn.cli, fastcnn.distributed; "
            "fastcnn.cli.main(['info']); assert 'mpi4py' not in sys.modules, 'imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT_S,
                          env={k: v for k, v in os.environ.items()
                               if k not in distributed.LAUNCHER_SIZE_VARIABLES})
    assert proc.returncode == 0, proc.stderr


def test_resuming_with_another_number_of_processes_warns(tmp_path):
    import numpy as np
    from fastcnn import checkpoint, models, training
    from fastcnn.nn.optim import make_optimizer
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((16, 1, 28, 28)).astype("float32"), rng.integers(0, 10, 16))

    def run(**kw):
        model = models.build("light")
        opt = make_optimizer(training.optimizer_config("sgd"), model.parameters())
        with fastcnn.use_backend("im2col"):
            return training.fit(model, opt, data, data, batch_size=8, **kw)
    assert run(epochs=1, save=tmp_path / "ck.npz")["ranks"] == 1
    ck = checkpoint.load(tmp_path / "ck.npz")
    assert ck.meta["ranks"] == 1
    ck.meta["ranks"] = 2   # as if written by rank 0 of mpiexec -n 2
    with pytest.warns(UserWarning, match="trained with ranks 2, this run uses 1"):
        run(epochs=2, resume=ck)


# -- the Python API under mpiexec -n 2 ------------------------------------------
@needs_mpi
def test_two_ranks_equal_one_process_on_the_same_global_batch():
    rc, out, err, _ = mpirun(sys.executable, os.path.join(HERE, "mpi_equivalence.py"))
    assert rc == 0, out + err
    assert out.count("relative difference parameters") == 5 and out.rstrip().endswith("ok")


@needs_mpi
def test_ranks_given_different_models_or_data_are_stopped_at_the_start():
    rc, out, err, _ = mpirun(sys.executable, os.path.join(HERE, "mpi_mismatch.py"))
    assert rc == 0, out + err
    for what in ("model:", "dtype:", "data size:", "data content:", "batch size:"):
        assert what in out, out


@needs_mpi
@pytest.mark.parametrize("where", ["inside fit", "outside fit"])
def test_a_failing_rank_ends_the_job_at_once(where):
    args = [sys.executable, os.path.join(HERE, "mpi_fail.py")]
    rc, out, err, seconds = mpirun(*args, *(["--outside"] if where == "outside fit" else []),
                                   timeout=60)
    assert rc != 0
    assert "rank 1 of 2 failed" in err and "Boom: rank 1 fails" in err, err
    assert "not reached" not in out
    assert seconds < 30   # start-up included; a hang would take the whole timeout


# -- fastcnn train under mpiexec -n 2 -------------------------------------------
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist")
    write_mnist(folder, n_train=256, n_test=100)
    return str(folder)


def _train(data_dir, *extra):
    return [sys.executable, "-m", "fastcnn", "train", "--backend", "im2col", "--model",
            "light", "--data-dir", data_dir, "--batch-size", "32", "--no-progress",
            "--limit-train", "160", *extra]


@needs_mpi
def test_mpiexec_fastcnn_train_writes_one_checkpoint_and_one_metrics_file(tmp_path,
                                                                          data_dir):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    ck, metrics = out_dir / "ck.npz", out_dir / "m.json"
    rc, out, err, _ = mpirun(*_train(data_dir, "--epochs", "1", "--save", ck,
                                     "--metrics", metrics))
    assert rc == 0, out + err
    assert sorted(os.listdir(out_dir)) == ["ck.npz", "m.json"]   # no stray temporary files
    assert out.count("epoch 1/1: train loss") == 1 and out.count("metrics written") == 1
    assert "2 MPI processes x" in out
    m = json.loads(metrics.read_text())
    assert (m["ranks"], m["train_images"], m["epochs"], m["batch_size"]) == (2, 160, 1, 32)
    assert len(m["history"][0]["step_losses"]) == 5   # 160 / 32 global steps, not per rank
    from fastcnn import checkpoint
    assert checkpoint.load(ck).meta["ranks"] == 2


@needs_mpi
def test_mpiexec_fastcnn_train_resumes_as_if_uninterrupted(tmp_path, data_dir):
    ck, straight, resumed = tmp_path / "ck.npz", tmp_path / "s.json", tmp_path / "r.json"
    const = ("--schedule", "constant")   # cosine's steps depend on --epochs
    for extra in [(*const, "--epochs", "2", "--metrics", straight),
                  (*const, "--epochs", "1", "--save", ck),
                  ("--epochs", "2", "--resume", ck, "--metrics", resumed)]:
        rc, out, err, _ = mpirun(*_train(data_dir, *extra))
        assert rc == 0, out + err
    s, r = json.loads(straight.read_text()), json.loads(resumed.read_text())
    for key in ("step_losses", "test_loss", "test_accuracy"):
        assert [h[key] for h in r["history"]] == [h[key] for h in s["history"]], key


@needs_mpi
def test_mpiexec_fastcnn_train_with_different_data_per_rank_stops_at_the_start(data_dir):
    cpus = os.cpu_count()   # as many threads per rank as CPUs: oversubscribed, with 2 ranks
    rc, out, err, _ = mpirun(*_train(data_dir, "--epochs", "1", "--threads", cpus), ":",
                             "-n", "1", *_train(data_dir, "--epochs", "1", "--limit-train",
                                                "150", "--threads", cpus), n=1)
    assert rc == 1, out + err
    assert err.count("rank 1 has train images 150 where rank 0 has 160") == 1, err
    assert "epoch 1/1" not in out
    if cpus > 1:
        assert err.count(f"{cpus} threads per process oversubscribe this node's {cpus} "
                         f"CPUs ({cpus // 2} thread") == 1, err


@needs_mpi
def test_mpiexec_fastcnn_train_with_data_missing_on_one_rank_ends_the_job(tmp_path,
                                                                          data_dir):
    rc, out, err, seconds = mpirun(*_train(data_dir, "--epochs", "1"), ":", "-n", "1",
                                   *_train(str(tmp_path), "--epochs", "1"), n=1, timeout=60)
    assert rc != 0
    assert "fastcnn train: error: MNIST folder" in err, err
    assert "rank 1 of 2 exits with status 1; aborting the MPI job" in err, err
    assert seconds < 30


@needs_mpi
def test_mpiexec_fastcnn_train_with_a_bad_flag_on_one_rank_ends_the_job(tmp_path, data_dir):
    # argparse rejects rank 1's --data-dir while it parses the flags: MPI must be up by
    # then, or rank 0 would wait in MPI_Init for it forever
    rc, out, err, seconds = mpirun(*_train(data_dir, "--epochs", "1"), ":", "-n", "1",
                                   *_train(str(tmp_path / "absent"), "--epochs", "1"), n=1,
                                   timeout=60)
    assert rc == 2, out + err
    assert "argument --data-dir" in err and "exit status 2 (rank 1 of 2;" in err, err
    assert seconds < 30


@needs_mpi
def test_mpiexec_fastcnn_train_help_runs_on_every_rank():
    rc, out, err, _ = mpirun(sys.executable, "-m", "fastcnn", "train", "--help")
    assert rc == 0 and out.count("usage: fastcnn train") == 2, out + err
