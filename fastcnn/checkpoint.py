"""Checkpoints: weights, model configuration and optimizer state in one .npz.

Layout of the archive (every entry a plain array, so it loads with
``allow_pickle=False`` and a model file can never run code)::

    meta            0-d unicode array: JSON {"format", "version", "model", "dtype",
                    "seed", "epoch", "optimizer": {name, hyperparameters, "t"}, ...}
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
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    optim = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
    return Checkpoint(meta, params, optim)


def restore(ckpt):
    """(model, optimizer) rebuilt from a Checkpoint, weights and state loaded."""
    meta = ckpt.meta
    try:
        model = models.build(meta["model"], dtype=meta["dtype"], seed=meta["seed"])
        model.load_state_dict(ckpt.params)
        config = {k: v for k, v in meta["optimizer"].items() if k != "t"}
        opt = make_optimizer(config, model.parameters())
        opt.load_state_dict({"config": config, "t": meta["optimizer"]["t"],
                             "arrays": ckpt.optim})
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint does not describe a usable model: "
                              f"{type(e).__name__}: {e}") from None
    return model, opt
