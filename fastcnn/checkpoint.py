"""Checkpoints: weights, model configuration and optimizer state in one .npz.

Layout of the archive (every entry a plain array, so it loads with
``allow_pickle=False`` and a model file can never run code)::

    meta            0-d unicode array: JSON {"format", "version", "model", "dtype",
                    "seed", "epoch", "optimizer": {name, hyperparameters, "t"}, ...}
                    (``fastcnn.training.fit`` adds "history", "lr_schedule",
                    "batch_size", "backend", "threads" and "auto_choices")
    param/<name>    one array per model parameter ('param/0.weight', ...)
    optim/<key>     one array per optimizer state buffer ('optim/velocity.0', ...)

Files are written atomically: a reader (or a Ctrl-C) sees the previous
checkpoint or the new one, never half of one. This module deliberately does
not know how a model is trained; ``meta`` carries whatever the caller adds.
"""
import json
import os
import zipfile
from typing import NamedTuple

import numpy as np

from fastcnn import _atomic, models
from fastcnn.nn.optim import make_optimizer

FORMAT, VERSION = "fastcnn-checkpoint", 1
MAX_EPOCH = 10**6   # no real run gets near it; a larger 'epoch' is a forged or broken file


class CheckpointError(Exception):
    """The file is missing, corrupt, foreign, or does not fit the model."""


class Checkpoint(NamedTuple):
    meta: dict
    params: dict      # name -> array
    optim: dict       # key -> array


def save(path, model, optimizer, *, model_name, seed, epoch, **extra):
    """Write model + optimizer state to ``path`` atomically. ``extra`` (JSON-able)
    is stored in meta, e.g. history=..., batch_size=..."""
    opt_state = optimizer.state_dict()
    meta = {"format": FORMAT, "version": VERSION, "model": model_name,
            "dtype": np.dtype(model.dtype).name, "seed": seed, "epoch": epoch,
            "optimizer": {**opt_state["config"], "t": opt_state["t"]}, **extra}
    arrays = {"meta": np.array(json.dumps(meta))}
    arrays.update({f"param/{k}": v for k, v in model.state_dict().items()})
    arrays.update({f"optim/{k}": v for k, v in opt_state["arrays"].items()})
    with _atomic.atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def load(path):
    """Read a checkpoint written by ``save``; CheckpointError if it is not one."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):   # np.load would otherwise try it as a pickle
        raise CheckpointError(f"{path} is corrupt or not an .npz file (no zip archive "
                              f"found in it)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise CheckpointError(f"{path} holds Python objects (pickled data); fastcnn "
                                  f"checkpoints never do, so it is refused") from None
        raise CheckpointError(f"{path} is not a readable .npz file ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path} is corrupt or not an .npz file ({e})") from None
    try:
        meta = json.loads(str(arrays.pop("meta")))
        assert meta["format"] == FORMAT
    except Exception:
        raise CheckpointError(f"{path} is not a fastcnn checkpoint (no valid 'meta' entry "
                              f"with format {FORMAT!r})") from None
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path} is a version {meta.get('version')} checkpoint; this "
                              f"fastcnn reads version {VERSION}")
    _check_meta(path, meta)
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    optim = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
    for key, value in arrays.items():
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise CheckpointError(f"{path} holds non-finite values (NaN or inf) in {key}; "
                                  f"fastcnn never saves those, so the file is refused")
    return Checkpoint(meta, params, optim)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _check_meta(path, meta):
    """The fields a resume trusts: counts that are plain, sane integers."""
    epoch, seed = meta.get("epoch"), meta.get("seed")
    if not _is_int(epoch) or not 0 <= epoch <= MAX_EPOCH:
        raise CheckpointError(f"{path}: meta 'epoch' must be an integer in [0, {MAX_EPOCH}], "
                              f"got {epoch!r}")
    if not _is_int(seed) or seed < 0:
        raise CheckpointError(f"{path}: meta 'seed' must be an integer >= 0, got {seed!r}")
    optimizer = meta.get("optimizer")
    if not isinstance(optimizer, dict) or not _is_int(optimizer.get("t")) or optimizer["t"] < 0:
        raise CheckpointError(f"{path}: meta 'optimizer' must hold the optimizer's name, "
                              f"hyperparameters and step count 't'")
    history = meta.get("history")
    if history is not None and (not isinstance(history, list) or len(history) != epoch):
        raise CheckpointError(f"{path}: meta 'history' must list one record per epoch "
                              f"({epoch}), got {type(history).__name__} of "
                              f"{len(history) if isinstance(history, list) else '?'}")


def restore(ckpt):
    """(model, optimizer) rebuilt from a Checkpoint, weights and state loaded."""
    meta = ckpt.meta
    try:
        model = models.build(meta["model"], dtype=meta["dtype"], seed=meta["seed"])
        config = {k: v for k, v in meta["optimizer"].items() if k != "t"}
        opt = make_optimizer(config, model.parameters())
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint does not describe a usable model: "
                              f"{type(e).__name__}: {e}") from None
    restore_into(ckpt, model, opt)
    return model, opt


def restore_into(ckpt, model, optimizer):
    """Load a Checkpoint's weights and optimizer state into existing objects
    (which must have the same layers, dtype and optimizer kind)."""
    meta = ckpt.meta
    try:
        model.load_state_dict(ckpt.params)
        config = {k: v for k, v in meta["optimizer"].items() if k != "t"}
        optimizer.load_state_dict({"config": config, "t": meta["optimizer"]["t"],
                                   "arrays": ckpt.optim})
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint does not describe a usable model: "
                              f"{type(e).__name__}: {e}") from None
