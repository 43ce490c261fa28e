"""Softmax cross-entropy for integer class labels, forward and gradient together.

    loss = mean_i( logsumexp(z_i) - z_i[y_i] )
    dz   = (softmax(z) - onehot(y)) / N

Stable: the row maximum is subtracted before exponentiating (log-sum-exp
trick), so large logits neither overflow nor lose the small ones. Computed in
the logits' dtype; this module deliberately has no other losses.
"""
import numpy as np


def softmax_cross_entropy(logits, labels):
    """logits (N, K) float, labels (N,) ints in [0, K) -> (loss as float, dlogits (N, K))."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, K), got {logits.shape}")
    N, K = logits.shape
    if labels.shape != (N,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be {N} integers (shape ({N},)), got "
                         f"{labels.dtype} {labels.shape}")
    if N and (labels.min() < 0 or labels.max() >= K):
        raise ValueError(f"labels must lie in [0, {K}), got values in "
                         f"[{labels.min()}, {labels.max()}]")
    rows = np.arange(N)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=1)
    loss = float(np.mean(np.log(sum_exp) - shifted[rows, labels]))
    dlogits = exp / sum_exp[:, None]
    dlogits[rows, labels] -= 1
    dlogits /= N
    return loss, dlogits
