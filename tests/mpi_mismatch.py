"""Run under ``mpiexec -n 2`` (tests/test_distributed.py does): rank 1 is given
a different model, dtype, data size, data content or batch size than rank 0;
``fit(comm=...)`` must raise MismatchError on both ranks before training,
naming what differs, and leave the job usable (no abort). Rank 0 prints each
message; a missed mismatch aborts the job (non-zero exit).
"""
import numpy as np

from fastcnn import distributed, models, training
from fastcnn.nn.optim import make_optimizer


def attempt(comm, *, model="light", dtype="float32", n=40, batch=8, shift=0.0):
    net = models.build(model, dtype=dtype, seed=0)
    opt = make_optimizer(training.optimizer_config("sgd"), net.parameters())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 1, 28, 28)).astype(dtype) + shift
    y = rng.integers(0, 10, n)
    try:
        training.fit(net, opt, (x, y), (x[:8], y[:8]), epochs=1, batch_size=batch, comm=comm)
    except distributed.MismatchError as e:
        return str(e)
    raise AssertionError("the mismatch was not detected")


def main(comm):
    other = comm.Get_rank() == 1
    say = print if comm.Get_rank() == 0 else (lambda *a: None)
    for what, expected, kw in [
            ("model", "parameter shapes", dict(model="cnn" if other else "light")),
            ("dtype", "dtype 'float64'", dict(dtype="float64" if other else "float32")),
            ("data size", "train images 39", dict(n=39 if other else 40)),
            ("data content", "train data checksum", dict(shift=1.0 if other else 0.0)),
            ("batch size", "batch_size 9", dict(batch=9 if other else 8))]:
        message = attempt(comm, **kw)
        assert "rank 1 has" in message and expected in message, message
        say(f"{what}: {message}")
    say("ok")


if __name__ == "__main__":
    comm = distributed.world()
    with distributed.abort_on_error(comm):
        main(comm)
