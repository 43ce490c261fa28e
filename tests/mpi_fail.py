"""Run under ``mpiexec -n 2`` (tests/test_distributed.py does): rank 1 raises
in the middle of ``fit(comm=...)`` while rank 0 waits for it in the gradient
Allreduce. ``fit`` must print rank 1's traceback and abort the MPI job, so
``mpiexec`` exits non-zero at once instead of hanging. ``--outside`` raises
in the script itself, after MPI is up, under ``distributed.abort_on_error``.
"""
import sys

import numpy as np

from fastcnn import distributed, models, training
from fastcnn.nn.optim import make_optimizer


class Boom(RuntimeError):
    pass


def main(comm):
    model = models.build("light", seed=0)
    opt = make_optimizer(training.optimizer_config("sgd"), model.parameters())
    calls = [0]
    forward = model.forward

    def failing_forward(x):
        calls[0] += 1
        if comm.Get_rank() == 1 and calls[0] == 3:
            raise Boom("rank 1 fails at its third step")
        return forward(x)

    model.forward = failing_forward
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 1, 28, 28)).astype("float32"), rng.integers(0, 10, 64)
    training.fit(model, opt, (x, y), (x[:8], y[:8]), epochs=1, batch_size=8, comm=comm)
    print("not reached: fit returned", flush=True)


if __name__ == "__main__":
    comm = distributed.world()
    if "--outside" in sys.argv:
        with distributed.abort_on_error(comm):
            if comm.Get_rank() == 1:
                raise Boom("rank 1 fails outside fit")
            comm.Barrier()
    else:
        main(comm)
