"""Data-parallel training over MPI processes (mpi4py): Horovod's recipe for
``fastcnn.training.fit``.

    # mpiexec -n 4 python script.py
    from fastcnn import distributed, training
    comm = distributed.world()                    # MPI.COMM_WORLD (imports mpi4py)
    fastcnn.set_num_threads(distributed.threads_per_rank(comm))
    metrics = training.fit(model, opt, train, test, epochs=3, comm=comm, log=print)

What each process (rank) does, given the same arguments:
  * at the start, the ranks compare what they were given (model, dtype,
    parameter shapes, optimizer, data sizes and checksums, batch size,
    epochs, seed, resumed epoch); any difference is a MismatchError, raised
    on every rank alike, naming the ranks and what differs. Then the
    parameters and optimizer state of rank 0 are broadcast to all.
  * every rank draws the same batch order (seeded by (seed, epoch)) and
    takes a contiguous shard of each global batch of B images: with K ranks
    the first B % K ranks take B // K + 1 images, the others B // K (a rank
    may take none of a small last batch). Each rank's gradient is its
    shard's mean, weighted by shard / B, so the sum over ranks is the mean
    over the global batch: the single-process gradient, up to the rounding
    of a different summation order.
  * the weighted gradients, loss and correct-prediction count go into one
    flat buffer, summed by one ``Allreduce`` per step; then every rank checks
    the global loss (NaN/inf: NonFiniteLossError on every rank, before the
    weights change) and takes the same optimizer step, so parameters and
    optimizer state stay identical (checked after every epoch).
  * dropout masks differ per rank, seeded by (seed, epoch, rank): reproducible
    for the same K. With K = 1 they are the single-process masks, and
    ``fit(comm=<one rank>)`` is exactly ``fit()``.
  * evaluation: each rank evaluates a contiguous shard of the test set; the
    loss and correct counts are summed and the predictions gathered.
  * an exception in any rank (other than the two above, raised on every rank
    alike) prints that rank's traceback and calls ``MPI_Abort``, so the whole
    job ends with a non-zero status instead of waiting forever for it.

Every rank holds the whole dataset (the shuffle is global); it is the work
of each batch that is split. Only rank 0 reports, and writes checkpoints.

This module deliberately does not import mpi4py until asked for a
communicator (``import fastcnn`` never loads MPI), does not launch
processes (``mpiexec`` does) and does not choose thread counts by itself
(``threads_per_rank`` says what would not oversubscribe the node).
"""
import contextlib
import math
import os
import sys
import time
import traceback
import zlib

import numpy as np

# environment variables that MPI launchers set in each process they start,
# holding the number of processes: MPICH's Hydra, Intel MPI, MVAPICH and
# Slurm's srun --mpi=pmi2 set PMI_SIZE; Open MPI sets OMPI_COMM_WORLD_SIZE
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")

INSTALL_HINT = ("pip install 'fastcnn[mpi]' (mpi4py with MPICH), or mpi4py built against "
                "the cluster's MPI: pip install --no-binary mpi4py mpi4py")


class MismatchError(ValueError):
    """The ranks of a job were given different models, data or settings;
    raised on every rank alike, before any training."""


def launched_size(environ=None):
    """The number of processes the MPI launcher started, read from its
    environment variables (LAUNCHER_SIZE_VARIABLES); None when the process
    was not started by one."""
    environ = os.environ if environ is None else environ
    for name in LAUNCHER_SIZE_VARIABLES:
        raw = environ.get(name, "").strip()
        if raw:
            try:
                size = int(raw)
            except ValueError:
                raise ValueError(f"environment variable {name} must be a process count, "
                                 f"got {raw!r}") from None
            if size < 1:
                raise ValueError(f"environment variable {name} must be >= 1, got {size}")
            return size
    return None


def world(expected_size=None):
    """MPI.COMM_WORLD (importing mpi4py, which initialises MPI). With
    ``expected_size`` (the launcher's count), a world of another size is an
    error: mpi4py was built against another MPI than the launcher's, and
    each process would train alone and overwrite the others' files."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"distributed training needs mpi4py ({e}): {INSTALL_HINT}") from None
    comm = MPI.COMM_WORLD
    if expected_size is not None and comm.Get_size() != expected_size:
        raise RuntimeError(
            f"the launcher started {expected_size} processes, but mpi4py's MPI "
            f"({MPI.Get_library_version().splitlines()[0].strip()}) sees a world of "
            f"{comm.Get_size()}: mpi4py and mpiexec come from different MPI "
            f"installations. Launch with the mpiexec of the MPI mpi4py was built "
            f"against (python -m mpi4py --mpi-library), or rebuild mpi4py: {INSTALL_HINT}")
    return comm


def ranks_on_node(comm):
    """How many ranks of ``comm`` share this rank's node (its shared-memory group)."""
    from mpi4py import MPI
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return local.Get_size()
    finally:
        local.Free()


def threads_per_rank(comm):
    """fastcnn threads per rank that fill the node without oversubscribing
    it: the CPUs here divided by the ranks on this node (at least 1).
    Collective: every rank of ``comm`` must call it."""
    from fastcnn._threads import _cpus
    return max(1, _cpus() // ranks_on_node(comm))


def shard(n, rank, size):
    """The slice of ``n`` items that ``rank`` of ``size`` takes: contiguous
    parts, the first ``n % size`` ranks one item more than the others."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


@contextlib.contextmanager
def abort_on_error(comm, *, collective=()):
    """Run a block in which an exception on one rank must end the whole job,
    since the other ranks would wait in their next collective call forever:
    the rank prints its traceback ('interrupted' for Ctrl-C; for SystemExit,
    whose reason is printed already, its status) to stderr and calls
    ``comm.Abort`` with status 130 for Ctrl-C, a SystemExit's own, else 1.
    Exceptions of the ``collective`` types, which the code raises on every
    rank alike, pass through, as does a SystemExit with status 0."""
    try:
        yield
    except BaseException as exc:
        if isinstance(exc, collective) or (isinstance(exc, SystemExit) and not exc.code):
            raise
        who = f"rank {comm.Get_rank()} of {comm.Get_size()}"
        if isinstance(exc, KeyboardInterrupt):
            line, status = f"interrupted ({who}; aborting the MPI job)", 130
        elif isinstance(exc, SystemExit):
            status = exc.code if isinstance(exc.code, int) else 1
            line = f"exit status {exc.code} ({who}; aborting the MPI job)"
        else:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            line, status = f"{who} failed; aborting the MPI job:\n{text.rstrip()}", 1
        abort(comm, line, status)


def abort(comm, line, status):
    """Print ``line`` to stderr and end the whole job with ``comm.Abort(status)``;
    never returns."""
    try:
        sys.stdout.flush()   # what the rank printed so far, before MPI kills it
        print(line, file=sys.stderr, flush=True)
        # the launcher forwards a rank's output asynchronously and MPI_Abort
        # kills the job at once: without a pause the reason was lost about one
        # time in twenty (tests/test_distributed.py), and with half a second
        # still now and then on a loaded machine
        time.sleep(1.0)
    finally:
        comm.Abort(status)
        # MPICH's MPI_Abort may return to its caller while the launcher kills
        # the job; this rank must not go on as if nothing happened
        os._exit(status)


def _checksum(a):
    return zlib.crc32(np.ascontiguousarray(a).data)


def _state_arrays(model, optimizer):
    """Parameters then optimizer state, in a fixed order: what every rank must
    hold identically."""
    return ([p.data for p in model.parameters()]
            + [v for _, v in sorted(optimizer.state_arrays().items())])


class DataParallel:
    """The MPI side of one training run on ``comm``: sharding, the per-step
    gradient Allreduce, evaluation, and the checks that keep ranks identical.
    ``fastcnn.training.fit(..., comm=comm)`` makes one; every method is
    collective (every rank calls it, in the same order)."""

    def __init__(self, comm, model):
        from mpi4py import MPI
        self._in_place = MPI.IN_PLACE
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.allreduce_seconds = 0.0   # in the per-step Allreduce, waiting for the others too
        self.params = model.parameters()
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) != 1:
            raise ValueError(f"data-parallel training needs parameters of one dtype, got "
                             f"{sorted(d.name for d in dtypes)}")
        # the gradients, then the weighted loss and the correct count: one Allreduce
        sizes = [p.data.size for p in self.params]
        self._buffer = np.zeros(sum(sizes) + 2, dtype=dtypes.pop())
        offsets = np.cumsum([0] + sizes)
        self._views = [self._buffer[a:b].reshape(p.shape)
                       for a, b, p in zip(offsets[:-1], offsets[1:], self.params)]

    # -- start-up ------------------------------------------------------------
    def check_same(self, facts):
        """MismatchError on every rank if any rank's ``facts`` (a dict of
        picklable values: model, data sizes, settings) differ from rank 0's."""
        everyone = self.comm.allgather(facts)
        problems = []
        for rank, theirs in enumerate(everyone[1:], start=1):
            for key in list(everyone[0]) + [k for k in theirs if k not in everyone[0]]:
                mine, other = everyone[0].get(key), theirs.get(key)
                if mine != other:
                    problems.append(f"rank {rank} has {_difference(key, other, mine)}")
        if problems:
            raise MismatchError(f"the {self.size} processes of this MPI job were not given "
                                f"the same training: " + "; ".join(problems))

    def broadcast_state(self, model, optimizer):
        """Rank 0's parameters and optimizer state, copied to every rank
        (one Bcast per dtype)."""
        arrays = _state_arrays(model, optimizer)
        for dtype in sorted({a.dtype for a in arrays}, key=str):
            group = [a for a in arrays if a.dtype == dtype]
            flat = np.concatenate([a.ravel() for a in group])
            self.comm.Bcast(flat, root=0)
            start = 0
            for a in group:
                a[...] = flat[start:start + a.size].reshape(a.shape)
                start += a.size

    def resync_if_diverged(self, model, optimizer):
        """True (after copying rank 0's state to every rank) if the ranks' parameters or
        optimizer state differ, which an MPI whose Allreduce does not hand every
        rank the same bits would cause; False if they are identical."""
        digest = [_checksum(a) for a in _state_arrays(model, optimizer)]
        if all(d == digest for d in self.comm.allgather(digest)):
            return False
        self.broadcast_state(model, optimizer)
        return True

    # -- training ------------------------------------------------------------
    def dropout_seed(self, seed, epoch):
        """Per-rank masks, reproducible from (seed, epoch, rank); one rank: the
        single-process seed."""
        return [seed, epoch] if self.size == 1 else [seed, epoch, self.rank]

    def train_step(self, model, opt, x, y, idx):
        """One optimisation step on the global batch ``x[idx], y[idx]``: this
        rank's shard forward and backward, one Allreduce, the same step on
        every rank. Returns (global mean loss, global correct count). Raises
        NonFiniteLossError on every rank, before the weights change, when the
        global loss is NaN or inf."""
        from fastcnn.nn.loss import softmax_cross_entropy
        from fastcnn.training import NonFiniteLossError
        mine = idx[shard(len(idx), self.rank, self.size)]
        buf = self._buffer
        if len(mine):
            model.train()
            xb, yb = x[mine], y[mine]
            logits = model.forward(xb)
            with np.errstate(invalid="ignore", over="ignore"):   # checked once summed
                loss, dlogits = softmax_cross_entropy(logits, yb)
                model.backward(dlogits, input_grad=False)   # no one uses dx of the images
                weight = len(mine) / len(idx)
                for p, view in zip(self.params, self._views):
                    np.multiply(p.grad, weight, out=view)
                buf[-2] = loss * weight
            buf[-1] = np.count_nonzero(logits.argmax(axis=1) == yb)
        else:   # a small last batch left this rank nothing: it adds zeros
            buf[...] = 0
        start = time.perf_counter()
        self.comm.Allreduce(self._in_place, buf)
        self.allreduce_seconds += time.perf_counter() - start
        loss = float(buf[-2])
        if not math.isfinite(loss):
            raise NonFiniteLossError(loss)
        for p, view in zip(self.params, self._views):
            p.grad = view
        opt.step()
        return loss, int(round(float(buf[-1])))

    def evaluate(self, model, x, y, batch_size=1000):
        """``fastcnn.training.evaluate`` over (x, y), each rank taking a
        contiguous shard; the same EvalResult on every rank."""
        from fastcnn.training import EvalResult, evaluate
        part = shard(len(x), self.rank, self.size)
        ev = evaluate(model, x[part], y[part], batch_size=batch_size)
        n_mine = len(ev.predictions)
        sums = np.array([ev.loss * n_mine, np.count_nonzero(ev.predictions == y[part])],
                        dtype=np.float64)
        self.comm.Allreduce(self._in_place, sums)
        counts = [shard(len(x), r, self.size).stop - shard(len(x), r, self.size).start
                  for r in range(self.size)]
        preds = np.empty(len(x), dtype=np.int64)
        self.comm.Allgatherv(np.ascontiguousarray(ev.predictions, dtype=np.int64),
                             [preds, counts])
        n = max(len(x), 1)
        return EvalResult(float(sums[0]) / n, float(sums[1]) / n if len(x) else 0.0, preds)


def run_facts(model, optimizer, train_data, test_data, **settings):
    """What every rank of a run must agree on (``DataParallel.check_same``)."""
    (x, y), (x_test, y_test) = train_data, test_data
    return {
        "model": repr(model), "dtype": np.dtype(model.dtype).name,
        "parameter shapes": [(name, tuple(p.shape)) for name, p in model.named_parameters()],
        "optimizer": optimizer.config(), "optimizer steps": optimizer.t,
        "train images": len(x), "test images": len(x_test),
        "train data checksum": (_checksum(x), _checksum(y)),
        "test data checksum": (_checksum(x_test), _checksum(y_test)),
        **settings,
    }


def _difference(key, theirs, mine, limit=120):
    """'<key> <theirs> where rank 0 has <mine>'; of two multi-line texts (a
    model's repr), their first differing lines."""
    if isinstance(theirs, str) and isinstance(mine, str) and "\n" in theirs + mine:
        pairs = zip(theirs.splitlines() + [""], mine.splitlines() + [""])
        theirs, mine = next((a.strip(), b.strip()) for a, b in pairs if a != b)
        key = f"{key} layer"

    def short(value):
        text = repr(value)
        return text if len(text) <= limit else text[:limit - 3] + "..."
    return f"{key} {short(theirs)} where rank 0 has {short(mine)}"
