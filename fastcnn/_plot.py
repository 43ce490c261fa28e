"""Loss and accuracy curves of a training run, drawn to a PNG with matplotlib.

matplotlib is an optional extra (``pip install 'fastcnn[plot]'``), imported
only here and only when a plot is asked for; the Agg backend needs no display.
"""
import io

from fastcnn import _atomic


def plot_history(history, path, *, title=""):
    """history: the per-epoch dicts of ``fastcnn train`` (with 'step_losses')."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    steps, losses = [], []
    for h in history:
        per_epoch = len(h["step_losses"])
        steps += [h["epoch"] - 1 + (i + 1) / per_epoch for i in range(per_epoch)]
        losses += h["step_losses"]
    epochs = [h["epoch"] for h in history]
    ax_loss.plot(steps, losses, lw=0.5, alpha=0.5, label="train loss (per step)")
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss (epoch)")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], "s-", label="test loss")
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [100 * h["test_accuracy"] for h in history], "s-", label="test")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    _atomic.write_bytes(path, buf.getvalue())
