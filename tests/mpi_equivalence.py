"""Run under ``mpiexec -n K`` (tests/test_distributed.py does, with K = 2):
data-parallel ``fit(comm=...)`` against one process on the same global batches.

Checked on every rank, in float64 with dropout off: after one step and after a
few (SGD and Adam; a global batch K divides, one it does not, a last batch that
leaves a rank nothing), the parameters and optimizer state equal the
single-process run's within 1e-12 relative, as do the step losses and the test
loss, and the test accuracy is the same; every rank holds the same bits. With
dropout on, a one-rank communicator reproduces ``fit()`` exactly and two K-rank
runs reproduce each other exactly. A NaN image in one rank's shard stops every
rank at that step, before the weights change. Prints one line per case on rank
0; a failed check aborts the job (non-zero exit).
"""
import numpy as np

import fastcnn
from fastcnn import distributed, models, nn, training
from fastcnn.nn.optim import make_optimizer

TOL = 1e-12
BACKEND = "im2col"   # numpy only: no JIT to wait for


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def run(comm, n, batch, optimizer, epochs, *, dropout):
    model = models.build("light", dtype="float64", seed=3)
    if not dropout:
        for layer in model.layers:
            if isinstance(layer, nn.Dropout):
                layer.p = 0.0
    opt = make_optimizer(training.optimizer_config(optimizer), model.parameters())
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((n, 1, 28, 28)), rng.integers(0, 10, n)
    xt, yt = rng.standard_normal((37, 1, 28, 28)), rng.integers(0, 10, 37)
    with fastcnn.use_backend(BACKEND):
        metrics = training.fit(model, opt, (x, y), (xt, yt), epochs=epochs, batch_size=batch,
                               seed=1, comm=comm)
    return [p.data for p in model.parameters()], opt.state_arrays(), metrics


def check_equivalence(comm, n, batch, optimizer, epochs):
    params, state, m = run(comm, n, batch, optimizer, epochs, dropout=False)
    params1, state1, m1 = run(None, n, batch, optimizer, epochs, dropout=False)
    worst = max(rel(a, b) for a, b in zip(params, params1))
    worst_state = max(rel(state[k], state1[k]) for k in state1)
    losses = [h["step_losses"] for h in m["history"]]
    losses1 = [h["step_losses"] for h in m1["history"]]
    worst_loss = max(abs(a - b) / abs(b) for e, e1 in zip(losses, losses1) for a, b in zip(e, e1))
    assert len(sum(losses, [])) == len(sum(losses1, [])) == epochs * -(-n // batch)
    assert worst <= TOL, f"parameters differ by {worst:.3g} relative"
    assert worst_state <= TOL, f"optimizer state differs by {worst_state:.3g} relative"
    assert worst_loss <= TOL, f"step losses differ by {worst_loss:.3g} relative"
    assert abs(m["test_loss"] - m1["test_loss"]) <= TOL * m1["test_loss"]
    assert m["test_accuracy"] == m1["test_accuracy"]
    assert m["ranks"] == comm.Get_size() and m1["ranks"] == 1
    digests = [distributed._checksum(a) for a in params + list(state.values())]
    assert all(d == digests for d in comm.allgather(digests)), "ranks hold different weights"
    return worst, worst_state, worst_loss


def main(comm):
    fastcnn.set_num_threads(distributed.threads_per_rank(comm))
    k = comm.Get_size()
    say = print if comm.Get_rank() == 0 else (lambda *a: None)
    for n, batch, optimizer, epochs in [
            (8 * k, 8 * k, "sgd", 1),           # one step, K divides B
            (8 * k, 8 * k, "adam", 1),
            (3 * (8 * k + 1) + 5, 8 * k + 1, "adam", 2),   # K does not divide B; last batch 5
            (3 * (8 * k + 1) + 5, 8 * k + 1, "sgd", 2),
            (2 * k + 1, 2 * k, "sgd", 1)]:      # last batch of 1: the other ranks get none
        worst = check_equivalence(comm, n, batch, optimizer, epochs)
        say(f"K={k} N={n} B={batch} {optimizer} epochs={epochs}: relative difference "
            f"parameters {worst[0]:.2e}, optimizer state {worst[1]:.2e}, step losses "
            f"{worst[2]:.2e}")
    # dropout on: one rank is fit() exactly; K ranks reproduce themselves exactly
    alone = comm.Split(comm.Get_rank(), 0)
    params, state, m = run(alone, 70, 32, "adam", 2, dropout=True)
    params1, state1, m1 = run(None, 70, 32, "adam", 2, dropout=True)
    assert all(np.array_equal(a, b) for a, b in zip(params, params1))
    assert m["history"][-1]["step_losses"] == m1["history"][-1]["step_losses"]
    alone.Free()
    again = [run(comm, 70, 32, "adam", 2, dropout=True)[0] for _ in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(*again))
    say("dropout on: one rank equals fit() bit for bit; K ranks reproduce themselves")
    check_nan_on_one_rank(comm)
    say("a NaN in one rank's shard: NonFiniteLossError on every rank, weights untouched")
    say("ok")


def check_nan_on_one_rank(comm):
    """A NaN image that only the last rank's shard of the second batch holds
    stops every rank at that step, before the weights change."""
    model = models.build("light", dtype="float64", seed=3)
    opt = make_optimizer(training.optimizer_config("sgd"), model.parameters())
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((32, 1, 28, 28)), rng.integers(0, 10, 32)
    second = training.batch_order(32, 8, 1, 0)[1]
    x[second[-1]] = np.nan
    seen, real_step = [], opt.step   # the weights after each step taken

    def step():
        real_step()
        seen.append([p.data.copy() for p in model.parameters()])
    opt.step = step
    try:
        with fastcnn.use_backend(BACKEND):
            training.fit(model, opt, (x, y), (x[:4], y[:4]), epochs=1, batch_size=8, seed=1,
                         lr_schedule="constant", comm=comm)
    except training.NonFiniteLossError as e:
        assert (e.epoch, e.step) == (0, 1), (e.epoch, e.step)
    else:
        raise AssertionError("no NonFiniteLossError")
    assert len(seen) == 1   # the first step only
    assert all(np.array_equal(a, p.data) for a, p in zip(seen[0], model.parameters()))


if __name__ == "__main__":
    comm = distributed.world()
    with distributed.abort_on_error(comm):
        main(comm)
