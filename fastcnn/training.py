"""The training loop: one step, one epoch, evaluation, and ``fit``, the whole
run that ``fastcnn train`` is. The CLI, the cross-check and the benchmarks
all run these same functions.

    loss = train_step(model, opt, x_batch, y_batch)   # forward, loss, backward, step
    result = evaluate(model, x, y)                    # loss, accuracy, predictions
    stats = train_epoch(model, opt, x, y, batch_size=64, seed=0, epoch=0)
    metrics = fit(model, opt, (x, y), (x_test, y_test), epochs=3, save="ck.npz",
                  log=print)                          # epochs, checkpoints, resume, metrics
    metrics = fit(..., comm=MPI.COMM_WORLD)           # data-parallel over MPI ranks

Reproducibility: the batch order and the dropout masks of epoch ``e`` depend
only on ``(seed, e)``, and a checkpoint carries the backend choices of 'auto'
(``fastcnn._auto``), so a run resumed from a checkpoint after epoch ``e``
continues exactly as an uninterrupted run would, on the same machine.
Under MPI (``comm``; ``fastcnn.distributed`` says how) the masks depend on
``(seed, e, rank)`` too, and the same holds for the same number of ranks.

Nothing here chooses a backend; ``fastcnn.use_backend`` around the calls does.
"""
import functools
import json
import math
import numbers
import time
import warnings
from typing import NamedTuple

import numpy as np

import fastcnn
from fastcnn import _auto, checkpoint
from fastcnn._threads import get_num_threads
from fastcnn.backend import AUTO, get_backend
from fastcnn.nn.loss import softmax_cross_entropy

# Adam 2e-3 with cosine decay: 99.0-99.2% test accuracy in 3 epochs (SGD 0.02 with
# momentum 0.9 gets about the same; SGD 0.05 and constant rates stay below 99%)
DEFAULT_LR = {"sgd": 0.02, "adam": 2e-3}
SCHEDULES = ("cosine", "constant")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the parameters were not updated."""

    def __init__(self, loss, epoch=None, step=None, global_step=None):
        self.loss, self.epoch, self.step, self.global_step = loss, epoch, step, global_step
        where = "" if step is None else (f" at epoch {epoch + 1}, step {step + 1} "
                                         f"(global step {global_step + 1})")
        super().__init__(f"training loss is {loss}{where}; stopped before updating the "
                         f"weights. Try a lower learning rate (--lr).")


def train_step(model, opt, x, y, *, return_logits=False):
    """One optimisation step on a batch, in training mode. Returns the batch's mean
    loss as a float (and the logits if ``return_logits``). Raises
    NonFiniteLossError, before touching the weights, when the loss is NaN or inf."""
    model.train()
    logits = model.forward(x)
    with np.errstate(invalid="ignore", over="ignore"):   # reported just below instead
        loss, dlogits = softmax_cross_entropy(logits, y)
    if not math.isfinite(loss):
        raise NonFiniteLossError(loss)
    model.backward(dlogits, input_grad=False)   # no one uses the images' gradient
    opt.step()
    return (loss, logits) if return_logits else loss


class EvalResult(NamedTuple):
    loss: float
    accuracy: float           # fraction in [0, 1]
    predictions: np.ndarray   # (N,) predicted classes


def evaluate(model, x, y, batch_size=1000):
    """Mean loss, accuracy and predictions over (x, y), in eval mode (dropout off),
    under ``fastcnn.no_grad()``. The model's previous mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        total, preds = 0.0, []
        for start in range(0, len(x), batch_size):
            with fastcnn.no_grad():
                logits = model.forward(x[start:start + batch_size])
            loss, _ = softmax_cross_entropy(logits, y[start:start + batch_size])
            total += loss * len(logits)
            preds.append(logits.argmax(axis=1))
    finally:
        model.train(was_training)
    preds = np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)
    n = max(len(x), 1)
    return EvalResult(total / n, float(np.mean(preds == y)) if len(x) else 0.0, preds)


def batch_order(n, batch_size, seed, epoch):
    """Index arrays of the batches of one epoch: a permutation seeded by
    (seed, epoch), cut into batches; the last one may be smaller."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


class EpochStats(NamedTuple):
    loss: float               # mean training loss over the epoch's images
    accuracy: float           # training accuracy (dropout on), fraction
    images: int
    seconds: float
    step_losses: list         # one float per step


def cosine_lr(base_lr, step, total_steps):
    """Cosine decay from ``base_lr`` at step 0 to 0 at ``total_steps`` (SGDR without
    restarts, Loshchilov & Hutter 2017): the last epoch settles into a minimum."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


def train_epoch(model, opt, x, y, *, batch_size, seed, epoch, progress=False,
                desc=None, global_step=0, lr_at=None, on_step=None, parallel=None):
    """Train one epoch over (x, y). ``progress``: show a tqdm bar with the running
    loss, accuracy and images/s. ``lr_at(global step) -> lr``: a learning-rate
    schedule, applied before each step. ``on_step(step, loss)``: called after each
    step. ``parallel``: a ``fastcnn.distributed.DataParallel``; each rank then
    computes its shard of every batch, and the figures are the global ones.
    Returns EpochStats."""
    # dropout masks depend on (seed, epoch) only (and the rank, under MPI)
    model.seed([seed, epoch] if parallel is None else parallel.dropout_seed(seed, epoch))
    batches = batch_order(len(x), batch_size, seed, epoch)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(x), desc=desc or f"epoch {epoch + 1}", unit="img",
                   leave=False, dynamic_ncols=True)
    loss_sum, correct, seen, step_losses = 0.0, 0, 0, []
    start = time.perf_counter()
    try:
        for step, idx in enumerate(batches):
            if lr_at is not None:
                opt.lr = lr_at(global_step + step)
            try:
                if parallel is None:
                    loss, logits = train_step(model, opt, x[idx], y[idx], return_logits=True)
                    hits = int(np.sum(logits.argmax(axis=1) == y[idx]))
                else:
                    loss, hits = parallel.train_step(model, opt, x, y, idx)
            except NonFiniteLossError as e:
                raise NonFiniteLossError(e.loss, epoch, step, global_step + step) from None
            step_losses.append(loss)
            if on_step is not None:
                on_step(step, loss)
            loss_sum += loss * len(idx)
            correct += hits
            seen += len(idx)
            if bar is not None:
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.2%}",
                                img_s=f"{seen / elapsed:.0f}", refresh=False)
                bar.update(len(idx))
    finally:
        if bar is not None:
            bar.refresh()   # tqdm skips redraws within mininterval: show the final figures
            bar.close()
    seconds = time.perf_counter() - start
    return EpochStats(loss_sum / max(seen, 1), correct / max(seen, 1), seen, seconds,
                      step_losses)


# -- a whole run: fastcnn train without the command line -------------------------
def optimizer_config(kind="adam", lr=None, momentum=0.9, weight_decay=0.0):
    """The optimizer ``fastcnn train`` uses, as a config for
    ``fastcnn.nn.optim.make_optimizer`` (lr default: DEFAULT_LR[kind])."""
    config = {"name": kind, "lr": lr or DEFAULT_LR[kind], "weight_decay": weight_decay}
    if kind == "sgd":
        config["momentum"] = momentum
    else:
        config.update(betas=[0.9, 0.999], eps=1e-8)
    return config


def schedule_of(meta):
    """A checkpoint's learning-rate schedule {"name", "base_lr"} (constant for
    checkpoints that do not say)."""
    return meta.get("lr_schedule") or {"name": "constant", "base_lr": meta["optimizer"]["lr"]}


def checkpoint_conflicts(meta, **given):
    """[(name, given, saved)] for each given value (None: not given) that differs from
    the checkpoint's. Names: model, dtype, optimizer, seed, lr, lr_schedule."""
    schedule = schedule_of(meta)
    saved = {"model": meta.get("model"), "dtype": meta.get("dtype"),
             "optimizer": meta["optimizer"].get("name"), "seed": meta["seed"],
             "lr": schedule["base_lr"], "lr_schedule": schedule["name"]}
    return [(k, v, saved[k]) for k, v in given.items() if v is not None and v != saved[k]]


def _resume(resume, model, optimizer, seed, lr_schedule, backend, ranks, warn):
    """Load ``resume`` into model and optimizer; (start epoch, history, seed, schedule)."""
    ck = resume if isinstance(resume, checkpoint.Checkpoint) else checkpoint.load(resume)
    meta = ck.meta
    for name, value, saved in checkpoint_conflicts(meta, seed=seed, lr_schedule=lr_schedule):
        raise ValueError(f"{name}={value!r} contradicts the checkpoint ({saved!r}); leave it "
                         f"out (None) when resuming")
    mine = {k: v for k, v in optimizer.config().items() if k != "lr"}
    theirs = {k: v for k, v in meta["optimizer"].items() if k not in ("lr", "t")}
    if mine != theirs:
        raise ValueError(f"optimizer {mine} differs from the checkpoint's {theirs}")
    checkpoint.restore_into(ck, model, optimizer)
    if backend == AUTO:
        try:   # replay: the same backend per op and shape, so the same rounding
            _auto.pin_auto_choices(meta.get("auto_choices") or [])
        except (ValueError, TypeError) as e:
            raise checkpoint.CheckpointError(f"the checkpoint's auto_choices: {e}") from None
    saved = {"backend": meta.get("backend", backend),
             "threads": meta.get("threads", get_num_threads()),
             "ranks": meta.get("ranks", 1)}   # checkpoints from before MPI: one process
    for what, now in (("backend", backend), ("threads", get_num_threads()), ("ranks", ranks)):
        if saved[what] != now:
            warn(f"the checkpoint was trained with {what} {saved[what]}, this run uses {now}: "
                 f"it will not compute exactly what an uninterrupted run would")
    return meta["epoch"], list(meta.get("history") or []), meta["seed"], schedule_of(meta)


def _reporter(log, progress):
    """log(line), clearing a progress bar first so the two do not mix."""
    if log is None:
        return lambda line: None
    if not progress:
        return log

    def say(line):
        from tqdm.auto import tqdm
        with tqdm.external_write_mode():
            log(line)
    return say


def fit(model, optimizer, train_data, test_data, *, epochs, batch_size=64, seed=None,
        lr_schedule=None, save=None, resume=None, model_name=None, progress=False,
        log=None, on_epoch=None, comm=None):
    """Train for ``epochs`` epochs in all, evaluating on ``test_data`` after each;
    what ``fastcnn train`` does. Returns the run's metrics (a JSON-able dict).

    train_data, test_data: (images (N, C, H, W), labels (N,)) pairs.
    seed: batch order and dropout masks of epoch e depend on (seed, e) only
        (default 0, or the checkpoint's when resuming).
    lr_schedule: 'cosine' (decay from ``optimizer.lr`` to 0 over all the steps of
        all epochs; the default) or 'constant'; when resuming, the checkpoint's.
    save: a checkpoint path, written atomically after every epoch. model_name is
        stored in it (a name in ``fastcnn.models.MODELS`` lets
        ``checkpoint.restore`` and ``fastcnn eval`` rebuild the model).
    resume: a checkpoint (path or ``checkpoint.Checkpoint``): its weights and
        optimizer state are loaded into model and optimizer, and training goes on
        after its last epoch with its history, seed and schedule; under backend
        'auto' its backend choices are pinned (``fastcnn._auto``), so the result
        is bit for bit the uninterrupted run's on the same machine and thread count.
    progress: a tqdm bar per epoch. log: called with each line of the report
        (e.g. ``print``); None: quiet. on_epoch(record): called after each epoch,
        once its checkpoint is written, with its history record.

    comm: an MPI communicator (mpi4py) whose ranks all call ``fit`` with the same
        arguments: data-parallel training as ``fastcnn.distributed`` describes
        (``batch_size`` is the global batch; only rank 0 logs, shows progress
        and saves; every rank returns the metrics). An exception on one rank
        aborts the MPI job; MismatchError and NonFiniteLossError are raised on
        every rank alike.

    A NaN or infinite loss raises NonFiniteLossError before the weights change;
    the checkpoint of the last finished epoch stays as it was (so does it on
    KeyboardInterrupt).
    """
    kwargs = dict(epochs=epochs, batch_size=batch_size, seed=seed, lr_schedule=lr_schedule,
                  save=save, resume=resume, model_name=model_name, progress=progress,
                  log=log, on_epoch=on_epoch)
    if comm is None:
        return _fit(model, optimizer, train_data, test_data, **kwargs)
    from fastcnn import distributed
    with distributed.abort_on_error(
            comm, collective=(NonFiniteLossError, distributed.MismatchError)):
        parallel = distributed.DataParallel(comm, model)
        return _fit(model, optimizer, train_data, test_data, parallel=parallel, **kwargs)


def _fit(model, optimizer, train_data, test_data, *, epochs, batch_size, seed, lr_schedule,
         save, resume, model_name, progress, log, on_epoch, parallel=None):
    x, y = train_data
    x_test, y_test = test_data
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if seed is not None and (not _is_int(seed) or seed < 0):
        raise ValueError(f"seed must be an integer >= 0 or None, got {seed!r}")
    if lr_schedule not in (None,) + SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {SCHEDULES} or None, got {lr_schedule!r}")
    ranks, lead = (1, True) if parallel is None else (parallel.size, parallel.rank == 0)
    if not lead:   # rank 0 reports and saves for all
        log, progress, save = None, False, None
    say = _reporter(log, progress)
    backend = get_backend()
    if resume is None:
        start, history, seed = 0, [], 0 if seed is None else seed
        schedule = {"name": lr_schedule or "cosine", "base_lr": optimizer.lr}
    else:
        warn = ((lambda text: say(f"warning: {text}")) if log else
                (lambda text: warnings.warn(text, stacklevel=4)) if lead else
                (lambda text: None))   # under MPI, rank 0 warns for all
        start, history, seed, schedule = _resume(resume, model, optimizer, seed, lr_schedule,
                                                 backend, ranks, warn)
        if start >= epochs:
            say(f"the checkpoint already holds {start} epochs, as many as asked for "
                f"({epochs}); nothing to train")
    if parallel is not None:
        from fastcnn import distributed
        parallel.check_same(distributed.run_facts(
            model, optimizer, train_data, test_data, epochs=epochs, batch_size=batch_size,
            seed=seed, lr_schedule=schedule, start_epoch=start, model_name=model_name))
        parallel.broadcast_state(model, optimizer)
    steps = math.ceil(len(x) / batch_size)
    lr_at = (functools.partial(cosine_lr, schedule["base_lr"], total_steps=epochs * steps)
             if schedule["name"] == "cosine" else lambda step: schedule["base_lr"])
    shown = set()

    def show_auto_choices():   # once made: after an epoch's first step, after its end
        if backend == AUTO:
            new = [r for r in _auto.auto_choices() if json.dumps(r) not in shown]
            shown.update(json.dumps(r) for r in new)
            for line in _auto.describe(new):
                say(line)

    for epoch in range(start, epochs):
        desc = f"epoch {epoch + 1}/{epochs}"
        allreduce_before = 0.0 if parallel is None else parallel.allreduce_seconds
        stats = train_epoch(model, optimizer, x, y, batch_size=batch_size, seed=seed,
                            epoch=epoch, progress=progress, desc=desc,
                            global_step=epoch * steps, lr_at=lr_at,
                            on_step=lambda step, _: step == 0 and show_auto_choices(),
                            parallel=parallel)
        if parallel is not None and parallel.resync_if_diverged(model, optimizer):
            say(f"warning: the ranks' weights differed after epoch {epoch + 1} (this MPI's "
                f"Allreduce does not give every rank the same sums); rank 0's were copied "
                f"to all")
        t0 = time.perf_counter()
        ev = (evaluate(model, x_test, y_test) if parallel is None
              else parallel.evaluate(model, x_test, y_test))
        eval_seconds = time.perf_counter() - t0
        rate = stats.images / stats.seconds
        # under MPI: time in the gradient Allreduce, waits for slower ranks included
        allreduce = None if parallel is None else parallel.allreduce_seconds - allreduce_before
        say(f"{desc}: train loss {stats.loss:.4f} acc {stats.accuracy:.2%} | test loss "
            f"{ev.loss:.4f} acc {ev.accuracy:.2%} | {stats.seconds:.1f} s ({rate:.0f} "
            f"images/s" + ("" if allreduce is None else f", {allreduce:.1f} s of it in "
                           f"allreduce") + f") + eval {eval_seconds:.1f} s")
        show_auto_choices()   # those of a last, smaller batch and of the evaluation
        record = {"epoch": epoch + 1, "train_loss": stats.loss,
                  "train_accuracy": stats.accuracy, "test_loss": ev.loss,
                  "test_accuracy": ev.accuracy, "images": stats.images,
                  "seconds": stats.seconds, "images_per_second": rate,
                  "eval_seconds": eval_seconds, "step_losses": stats.step_losses}
        if allreduce is not None:
            record["allreduce_seconds"] = allreduce
        history.append(record)
        if save is not None:
            checkpoint.save(save, model, optimizer, model_name=model_name, seed=seed,
                            epoch=epoch + 1, history=history, lr_schedule=schedule,
                            batch_size=batch_size, **_provenance(backend, ranks))
        if on_epoch is not None:
            on_epoch(record)
    seconds = sum(h["seconds"] for h in history)
    last = history[-1] if history else {}
    return {
        **_provenance(backend, ranks), "dtype": np.dtype(model.dtype).name, "model": model_name,
        "optimizer": {**optimizer.config(), "lr": schedule["base_lr"]},
        "lr_schedule": schedule["name"], "epochs": len(history), "batch_size": batch_size,
        "seed": seed, "train_images": len(x), "test_images": len(x_test),
        "train_seconds": seconds,
        "images_per_second": sum(h["images"] for h in history) / seconds if seconds else 0.0,
        "test_accuracy": last.get("test_accuracy"), "test_loss": last.get("test_loss"),
        "final_loss": last.get("train_loss"), "history": history,
    }


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _provenance(backend, ranks):
    """What decides the arithmetic besides the data: backend, its choices, threads
    (per process), MPI processes."""
    return {"backend": backend,
            "auto_choices": _auto.auto_choices() if backend == AUTO else None,
            "threads": get_num_threads(), "ranks": ranks,
            "fastcnn_version": fastcnn.__version__, "numpy_version": np.__version__}
