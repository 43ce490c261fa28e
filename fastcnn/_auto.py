"""Backend 'auto': per (op, shapes, dtype, parameters, threads), the fastest backend.

The CPU analogue of cuDNN's benchmark mode: the first call with a new key
times forward+backward once on every available backend except ``loops``
(after one untimed call, so JIT compilation is not counted) and keeps the
winner for the life of the process. It deliberately never picks ``loops``
and never writes choices to disk by itself (timings depend on the load).

Backends round differently, so a run that chooses differently computes
something else. The choices can therefore be seen and replayed::

    fastcnn.auto_choices()         -> [{"op": "conv2d", "shapes": [[64, 1, 28, 28],
                                        [8, 1, 3, 3], [8]], "dtype": "float32",
                                        "params": [[1, 1], [1, 1, 1, 1]], "threads": 2,
                                        "backend": "numba"}, ...]
    fastcnn.pin_auto_choices(c)    -> use these backends for these keys, no timing
    FASTCNN_AUTO_CHOICES=file.json -> the same, read at the first 'auto' call
    FASTCNN_AUTO_CANDIDATES=numba,cython -> time only these (one: no timing)

``shapes`` has one entry per array argument of the op (null: no bias),
``params`` its other arguments (stride, padding, kernel size) in call order.
A pinned record whose ``threads`` is null applies at any thread count. A
choices file holds such a list, or a JSON object with the list under
"auto_choices" (the metrics file of ``fastcnn train --metrics`` is one).
A later pin replaces an earlier pin, or a timed choice, for the same key;
the environment variable is read before any ``pin_auto_choices`` call, so
an explicit pin (a resumed checkpoint's, say) wins over it.
"""
import json
import os
import threading
import time

import numpy as np

from fastcnn import _grad, _threads
from fastcnn.backend import AUTO, KERNELS, available_backends, get_module

ENV = "FASTCNN_AUTO_CHOICES"
CANDIDATES_ENV = "FASTCNN_AUTO_CANDIDATES"
OPS = tuple(dict.fromkeys(k.rsplit("_", 1)[0] for k in KERNELS))
_FIELDS = ("op", "shapes", "dtype", "params", "threads", "backend")

_choices = {}        # key -> backend name, in the order the keys were first chosen
_env_read = False
_lock = threading.RLock()


def _frozen(value):
    """JSON lists -> hashable tuples, recursively."""
    if type(value) is tuple:
        # the ops' own arguments (stride, padding, ...) are flat tuples of ints already: the
        # key of every 'auto' call is built from them, so they skip the recursion
        for v in value:
            if type(v) is not int:
                break
        else:
            return value
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def _key(op, args):
    """(op, the arrays' shapes (None: no bias), dtype, the other arguments, threads)."""
    shapes, params = [], []
    for a in args:
        if a is None:
            shapes.append(None)
        elif isinstance(a, np.ndarray):
            shapes.append(a.shape)
        else:
            params.append(_frozen(a))
    return (op, tuple(shapes), args[0].dtype.name, tuple(params), _threads.get_num_threads())


def _record(key, backend):
    op, shapes, dtype, params, threads = key
    as_list = lambda v: [as_list(i) for i in v] if isinstance(v, tuple) else v  # noqa: E731
    return {"op": op, "shapes": as_list(shapes), "dtype": dtype, "params": as_list(params),
            "threads": threads, "backend": backend}


def _time_once(mod, op, args, y_shape):
    dy = np.ones(y_shape, dtype=args[0].dtype)
    fwd, bwd = getattr(mod, op + "_forward"), getattr(mod, op + "_backward")
    with _grad._kept():     # the choice is the same under fastcnn.no_grad()
        t0 = time.perf_counter()
        _, saved = fwd(*args)
        bwd(dy, saved)
        return time.perf_counter() - t0


def candidates():
    """Backends 'auto' chooses among, in registry order: every available one
    but ``loops``, or those named in $FASTCNN_AUTO_CANDIDATES (comma-separated;
    one name means no timing at all - the way to keep a huge first call from
    running forward+backward on every backend). Raises ValueError naming the
    variable for an unknown, unavailable or empty list."""
    usable = tuple(n for n in available_backends("numpy") if n != "loops")
    raw = os.environ.get(CANDIDATES_ENV, "").strip()
    if not raw:
        return usable
    names = tuple(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
    bad = [n for n in names if n not in usable]
    if bad or not names:
        raise ValueError(f"environment variable {CANDIDATES_ENV}={raw!r}: expected "
                         f"comma-separated backends among {', '.join(usable)}"
                         + (f"; not usable: {', '.join(bad)}" if bad else ""))
    return tuple(n for n in usable if n in names)


def choose(op, args, y_shape, where="numpy"):
    """Name of the backend for this call's key: pinned, chosen before, or timed
    now; ``where`` is the array module of the call's data (ops knows it)."""
    if where != "numpy":
        # auto never moves data: the backend of the data's device, untimed
        # (one per array module today; a second would need the module in the key)
        return available_backends(where)[0]
    if not _env_read:
        read_env()
    key = _key(op, args)
    name = _choices.get(key) or _choices.get(key[:-1] + (None,))
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


def auto_choices():
    """What 'auto' uses in this process, timed or pinned: a JSON-able list of
    {"op", "shapes", "dtype", "params", "threads", "backend"} records."""
    if not _env_read:
        read_env()
    with _lock:
        return [_record(k, v) for k, v in _choices.items()]


def describe(records):
    """One line per op: the backend chosen for each input shape (for a log)."""
    by_op = {}
    for r in records:
        shape = "x".join(map(str, r["shapes"][0] or ()))
        by_op.setdefault(r["op"], []).append(f"{shape} {r['backend']}")
    return [f"auto chose for {op}: {', '.join(items)}" for op, items in by_op.items()]


def _checked(i, record):
    where = f"choices[{i}]"
    if not isinstance(record, dict):
        raise TypeError(f"{where} must be a dict, got {type(record).__name__}")
    missing = [f for f in _FIELDS if f not in record and f != "threads"]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}")
    if record["op"] not in OPS:
        raise ValueError(f"{where}['op'] must be one of {', '.join(OPS)}, got {record['op']!r}")
    name, threads = record["backend"], record.get("threads")
    if name == AUTO:
        raise ValueError(f"{where}['backend'] must be a concrete backend, not 'auto'")
    try:
        get_module(name)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}['backend']: {e}") from None
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"{where}['threads'] must be a positive integer or null, "
                         f"got {threads!r}")
    key = (record["op"], _frozen(record["shapes"]), record["dtype"],
           _frozen(record["params"]), threads)
    return key, name


def _read(path):
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read auto choices from {path}: {e}") from None
    if isinstance(data, dict):
        data = data.get("auto_choices")
    if not isinstance(data, list):
        raise ValueError(f"{path} holds no list of auto choices (a list, or an object "
                         f"with the list under 'auto_choices')")
    return data


def pin_auto_choices(choices):
    """Make 'auto' use the given backend for each record's key instead of timing.
    ``choices``: records as ``auto_choices()`` returns them, or the path of a JSON
    file holding them. All records are checked before any is used."""
    if isinstance(choices, (str, os.PathLike)):
        choices = _read(choices)
    if not isinstance(choices, (list, tuple)):
        raise TypeError(f"choices must be a list of records or a path, "
                        f"got {type(choices).__name__}")
    pairs = [_checked(i, r) for i, r in enumerate(choices)]
    if not _env_read:
        read_env()
    with _lock:
        for key, name in pairs:
            if key[-1] is None:   # replaces this key's choices at every thread count
                for k in [k for k in _choices if k[:-1] == key[:-1]]:
                    del _choices[k]
            _choices[key] = name


def read_env():
    """Pin the choices of the file named by $FASTCNN_AUTO_CHOICES (once per
    process, or after reset). Raises ValueError naming the variable."""
    global _env_read
    with _lock:
        if _env_read:
            return
        _env_read = True
        path = os.environ.get(ENV, "").strip()
        if path:
            try:
                pin_auto_choices(path)
            except (ValueError, TypeError) as e:
                _env_read = False   # report it again at the next call, not silently never
                raise ValueError(f"environment variable {ENV}: {e}") from None


def reset():
    """Forget every choice, timed or pinned; $FASTCNN_AUTO_CHOICES is read again."""
    global _env_read
    with _lock:
        _choices.clear()
        _env_read = False
