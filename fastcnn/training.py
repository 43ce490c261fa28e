"""The training loop: one step, one epoch, evaluation. The CLI, the cross-check
and the benchmarks all run these same functions.

    loss = train_step(model, opt, x_batch, y_batch)   # forward, loss, backward, step
    result = evaluate(model, x, y)                    # loss, accuracy, predictions
    stats = train_epoch(model, opt, x, y, batch_size=64, seed=0, epoch=0)

Reproducibility: the batch order and the dropout masks of epoch ``e`` depend
only on ``(seed, e)``, so a run resumed from a checkpoint after epoch ``e``
continues exactly as an uninterrupted run would.

Nothing here chooses a backend; ``fastcnn.use_backend`` around the calls does.
"""
import math
import time
from typing import NamedTuple

import numpy as np

from fastcnn.nn.loss import softmax_cross_entropy


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
    model.backward(dlogits)
    opt.step()
    return (loss, logits) if return_logits else loss


class EvalResult(NamedTuple):
    loss: float
    accuracy: float           # fraction in [0, 1]
    predictions: np.ndarray   # (N,) predicted classes


def evaluate(model, x, y, batch_size=1000):
    """Mean loss, accuracy and predictions over (x, y), in eval mode (dropout off).
    The model's previous mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        total, preds = 0.0, []
        for start in range(0, len(x), batch_size):
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
                desc=None, global_step=0, lr_at=None):
    """Train one epoch over (x, y). ``progress``: show a tqdm bar with the running
    loss, accuracy and images/s. ``lr_at(global step) -> lr``: a learning-rate
    schedule, applied before each step. Returns EpochStats."""
    model.seed([seed, epoch])   # dropout masks depend on (seed, epoch) only
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
            xb, yb = x[idx], y[idx]
            if lr_at is not None:
                opt.lr = lr_at(global_step + step)
            try:
                loss, logits = train_step(model, opt, xb, yb, return_logits=True)
            except NonFiniteLossError as e:
                raise NonFiniteLossError(e.loss, epoch, step, global_step + step) from None
            step_losses.append(loss)
            loss_sum += loss * len(idx)
            correct += int(np.sum(logits.argmax(axis=1) == yb))
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
