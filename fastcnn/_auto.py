"""Backend 'auto': per (op, shapes, dtype, parameters, threads), the fastest backend.

The CPU analogue of cuDNN's benchmark mode: the first call with a new key
times forward+backward once on every available backend except ``loops``
(after one untimed call, so JIT compilation is not counted) and caches the
winner for the life of the process. It deliberately never picks ``loops``
and never persists choices to disk (timings depend on the machine's load).
"""
import threading
import time

import numpy as np

from fastcnn import _threads
from fastcnn.backend import available_backends, get_module

_choices = {}
_lock = threading.Lock()


def _key(op, args, y_shape):
    arrays = tuple((a.shape, a.dtype.str) if isinstance(a, np.ndarray) else a for a in args)
    return (op, arrays, y_shape, _threads.get_num_threads())


def _time_once(mod, op, args, y_shape):
    dy = np.ones(y_shape, dtype=args[0].dtype)
    fwd, bwd = getattr(mod, op + "_forward"), getattr(mod, op + "_backward")
    t0 = time.perf_counter()
    _, saved = fwd(*args)
    bwd(dy, saved)
    return time.perf_counter() - t0


def candidates():
    """Backends 'auto' chooses among, in registry order."""
    return tuple(n for n in available_backends() if n != "loops")


def choose(op, args, y_shape):
    """Name of the fastest backend for this call's key (timed on first use)."""
    key = _key(op, args, y_shape)
    name = _choices.get(key)
    if name is not None:
        return name
    with _lock:  # one timing run per key, even with several threads
        name = _choices.get(key)
        if name is None:
            names = candidates()
            if len(names) == 1:
                name = names[0]
            else:
                times = {}
                for n in names:
                    mod = get_module(n)
                    _time_once(mod, op, args, y_shape)      # compile / warm caches
                    times[n] = _time_once(mod, op, args, y_shape)
                name = min(times, key=times.get)
            _choices[key] = name
    return name


def chosen():
    """{key: backend} chosen so far in this process (for show_config / debugging)."""
    return dict(_choices)


def reset():
    """Forget every choice (e.g. after changing the thread count)."""
    _choices.clear()
