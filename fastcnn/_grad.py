"""``fastcnn.no_grad()``: forward passes that keep nothing for a backward.

PyTorch's ``torch.no_grad()`` for fastcnn. Inside the with-block (this
thread or async context only, like ``use_backend``) every op of
``fastcnn.ops`` returns a context that refuses a backward, and the
compiled backends drop what only a backward reads instead of keeping it:
the Winograd path's transformed input, about 4.7 times the input's size,
is then made band by band in one cache-sized buffer rather than kept for
the whole batch. The numbers of the forward are the same. Inference
(``training.evaluate``, ``fastcnn serve``, the benchmarks' inference rows)
runs under it.

Deliberately not here: anything about modes of layers (``Module.eval()``
only switches dropout off; it keeps state for a backward, as in PyTorch).
"""
import contextlib
import contextvars

_enabled = contextvars.ContextVar("fastcnn_grad_enabled", default=True)


@contextlib.contextmanager
def _setting(enabled):
    token = _enabled.set(enabled)
    try:
        yield
    finally:
        _enabled.reset(token)


def no_grad():
    """Forward passes in this with-block keep nothing for a backward; the
    previous setting is restored after, even on an error."""
    return _setting(False)


def _kept():
    """Forward passes in this with-block keep what their backward needs,
    even inside no_grad(): for fastcnn's own forward+backward runs ('auto'
    times each backend's pair, whatever the caller's setting)."""
    return _setting(True)


def grad_enabled():
    """Whether forward passes here keep what their backward needs (False
    inside ``no_grad()``)."""
    return _enabled.get()
