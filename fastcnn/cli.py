"""The ``fastcnn`` command: train, eval, crosscheck, info.

    fastcnn train --backend im2col --epochs 3 --data-dir ../shared/data/mnist
    fastcnn eval --model mnist.npz
    fastcnn crosscheck --backends loops,im2col,cython,numba --dtype float64
    fastcnn info

This is the only place a backend is chosen (``fastcnn.use_backend``); the
layers, models and the training loop never know which one runs. A bad flag
value gets one line on stderr and exit status 2, never a traceback.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

import fastcnn
from fastcnn import _atomic, checkpoint, models, training
from fastcnn.datasets import DataError, load_mnist
from fastcnn.nn.optim import make_optimizer

BACKENDS = ("auto",) + fastcnn.registered_backends()
# Adam 2e-3 with cosine decay: 99.0-99.2% test accuracy in 3 epochs (SGD 0.02 with
# momentum 0.9 gets about the same; SGD 0.05 and constant rates stay below 99%)
DEFAULT_LR = {"sgd": 0.02, "adam": 2e-3}
DEFAULT_OPTIMIZER = "adam"


class UsageError(Exception):
    """A flag value that cannot work; reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # one line, no usage dump: the message says what is wrong, --help says the rest
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(parse, ok, expected):
    """An argparse type: ``parse`` the text, then require ``ok(value)``."""
    def convert(text):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value
    return convert


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_positive_float = _number(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
_fraction = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
_non_negative = _number(float, lambda v: v >= 0 and math.isfinite(v), "a number >= 0")


def _data_dir(text):
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is not a folder (it should hold the MNIST "
                                         f"IDX files)")
    if not os.access(text, os.R_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"folder {text} is not readable")
    return text


def _add_common(p):
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="which implementation of the conv/pool ops runs (default: "
                        "$FASTCNN_BACKEND, else auto = the fastest measured per op)")
    p.add_argument("--data-dir", type=_data_dir, metavar="DIR",
                   help="folder with the MNIST IDX files (.gz or not); default: "
                        "$FASTCNN_DATA, else ~/.cache/fastcnn/mnist (downloaded if missing)")
    p.add_argument("--limit-test", type=_positive_int, metavar="N",
                   help="evaluate on the first N test images only")
    p.add_argument("--threads", type=_positive_int, metavar="N",
                   help="threads for BLAS, OpenMP and numba (default: all CPUs)")


def build_parser():
    parser = _Parser(prog="fastcnn", description="Train and check CNNs on MNIST with "
                     "interchangeable conv/pool backends.",
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="examples:\n"
                            "  fastcnn train --backend im2col --epochs 1 --data-dir DIR\n"
                            "  fastcnn train --epochs 3 --save mnist.npz --metrics m.json "
                            "--plot curves.png\n"
                            "  fastcnn eval --model mnist.npz\n"
                            "  fastcnn crosscheck --dtype float64\n"
                            "  fastcnn info\n"
                            "run 'fastcnn COMMAND --help' for a command's flags")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    t = sub.add_parser("train", help="train a model on MNIST",
                       description="Train an MNIST CNN, evaluating on the test set after "
                                   "every epoch.")
    _add_common(t)
    t.add_argument("--model", choices=tuple(models.MODELS), default=None,
                   help="architecture: cnn (32/64 channels, dense 128) or light (8/16, dense "
                        "32) (default: cnn, or the checkpoint's with --resume)")
    t.add_argument("--dtype", choices=models.DTYPES, default=None,
                   help="float32 (default) or float64")
    t.add_argument("--epochs", type=_positive_int, default=3,
                   help="total number of epochs, counting those of a resumed checkpoint "
                        "(default: %(default)s)")
    t.add_argument("--batch-size", type=_positive_int, default=64, help="(default: %(default)s)")
    t.add_argument("--optimizer", choices=("sgd", "adam"), default=None,
                   help="adam (default) or sgd with momentum")
    t.add_argument("--lr", type=_positive_float, default=None,
                   help="initial learning rate (default: 0.002 for adam, 0.02 for sgd)")
    t.add_argument("--schedule", choices=("cosine", "constant"), default=None,
                   help="learning-rate schedule: cosine decay to 0 over all epochs "
                        "(default) or constant")
    t.add_argument("--momentum", type=_fraction, default=0.9,
                   help="SGD momentum (default: %(default)s)")
    t.add_argument("--weight-decay", type=_non_negative, default=0.0,
                   help="L2 penalty (default: 0)")
    t.add_argument("--seed", type=int, default=None,
                   help="seed for weights, batch order and dropout (default: 0)")
    t.add_argument("--limit-train", type=_positive_int, metavar="N",
                   help="train on the first N training images only")
    t.add_argument("--save", metavar="PATH",
                   help="write a checkpoint (.npz) after every epoch, atomically")
    t.add_argument("--resume", metavar="PATH",
                   help="continue from a checkpoint written by --save (up to --epochs)")
    t.add_argument("--metrics", metavar="PATH", help="write the run's metrics as JSON")
    t.add_argument("--plot", metavar="PATH",
                   help="draw loss and accuracy curves to a PNG (needs matplotlib: "
                        "pip install 'fastcnn[plot]')")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a saved model on the MNIST test set",
                       description="Test accuracy, per-class accuracy and confusion matrix "
                                   "of a checkpoint.")
    _add_common(e)
    e.add_argument("--model", required=True, metavar="PATH", help="checkpoint from --save")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("crosscheck", help="check that every backend trains identically",
                       description="Run the same training steps (same initial weights, "
                                   "batches and dropout masks) on each backend and print the "
                                   "largest differences from 'loops'. Fails (exit 1) above "
                                   "the tolerance in float64; float32 is reported only.")
    c.add_argument("--backends", default=None, metavar="A,B,...",
                   help="comma-separated backends (default: every available one)")
    c.add_argument("--steps", type=_positive_int, default=3, help="(default: %(default)s)")
    c.add_argument("--batch-size", type=_positive_int, default=8, help="(default: %(default)s)")
    c.add_argument("--dtype", choices=models.DTYPES, default="float64",
                   help="(default: %(default)s)")
    c.add_argument("--model", choices=tuple(models.MODELS), default="light",
                   help="(default: %(default)s; 'cnn' is slow on loops)")
    c.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--tolerance", type=_positive_float, default=None,
                   help="largest relative difference allowed (default: 1e-9 in float64)")
    c.add_argument("--data-dir", type=_data_dir, metavar="DIR",
                   help="MNIST folder (as for train)")
    c.add_argument("--synthetic", action="store_true",
                   help="use seeded random images instead of MNIST")
    c.set_defaults(func=cmd_crosscheck)

    i = sub.add_parser("info", help="backends, threads and versions")
    i.set_defaults(func=cmd_info)
    return parser


def main(argv=None):
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # the command owns this process: keep freed memory for the next step
    # (see fastcnn/_malloc.py; it does not change any result)
    fastcnn.tune_malloc()
    try:
        if getattr(args, "threads", None):
            fastcnn.set_num_threads(args.threads)
        return args.func(args) or 0
    except UsageError as e:
        print(f"fastcnn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (DataError, checkpoint.CheckpointError) as e:
        print(f"fastcnn {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nfastcnn {args.command}: interrupted", file=sys.stderr)
        return 130


# -- shared helpers -------------------------------------------------------
def _check_backend(name):
    """``name`` if usable here; None means the default ($FASTCNN_BACKEND or auto)."""
    if name is None:
        try:
            return fastcnn.get_backend()
        except ValueError as e:
            raise UsageError(str(e)) from None
    if name != "auto" and name not in fastcnn.available_backends():
        why = fastcnn.unavailable_backends().get(name, "")
        raise UsageError(f"backend {name!r} is not available on this install ({why}); "
                         f"available: {', '.join(fastcnn.available_backends())}")
    return name


def _load_data(args, dtype, limit_train=None):
    return load_mnist(args.data_dir, dtype=dtype, limit_train=limit_train,
                      limit_test=getattr(args, "limit_test", None))


def _backend_used(name):
    """'auto' resolves per op; report which backends it picked."""
    if name != "auto":
        return name, None
    from fastcnn import _auto
    return name, sorted(set(_auto.chosen().values()))


# -- train ----------------------------------------------------------------
class _Run:
    """What a training run carries from epoch to epoch (and into checkpoints)."""

    def __init__(self, model, opt, name, seed, start, history, schedule):
        self.model, self.opt, self.name, self.seed = model, opt, name, seed
        self.start, self.history, self.schedule = start, history, schedule


def _setup_model(args):
    """A _Run from the flags, or from the checkpoint of --resume."""
    if args.resume:
        ck = checkpoint.load(args.resume)
        meta = ck.meta
        schedule = meta.get("lr_schedule") or {"name": "constant",
                                               "base_lr": meta["optimizer"]["lr"]}
        for flag, value, saved in (("--model", args.model, meta["model"]),
                                   ("--dtype", args.dtype, meta["dtype"]),
                                   ("--optimizer", args.optimizer, meta["optimizer"]["name"]),
                                   ("--seed", args.seed, meta["seed"]),
                                   ("--lr", args.lr, schedule["base_lr"]),
                                   ("--schedule", args.schedule, schedule["name"])):
            if value is not None and value != saved:
                raise UsageError(f"{flag} {value} contradicts the checkpoint {args.resume} "
                                 f"({saved}); leave it out when resuming")
        model, opt = checkpoint.restore(ck)
        return _Run(model, opt, meta["model"], meta["seed"], meta["epoch"],
                    meta.get("history", []), schedule)
    name, seed = args.model or "cnn", 0 if args.seed is None else args.seed
    model = models.build(name, dtype=args.dtype or "float32", seed=seed)
    config = _optimizer_config(args.optimizer or DEFAULT_OPTIMIZER, args.lr, args.momentum,
                               args.weight_decay)
    try:
        opt = make_optimizer(config, model.parameters())
    except ValueError as e:
        raise UsageError(str(e)) from None
    schedule = {"name": args.schedule or "cosine", "base_lr": config["lr"]}
    return _Run(model, opt, name, seed, 0, [], schedule)


def _optimizer_config(kind, lr=None, momentum=0.9, weight_decay=0.0):
    config = {"name": kind, "lr": lr or DEFAULT_LR[kind], "weight_decay": weight_decay}
    if kind == "sgd":
        config["momentum"] = momentum
    else:
        config.update(betas=[0.9, 0.999], eps=1e-8)
    return config


def _check_train_flags(args):
    args.backend = _check_backend(args.backend)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plot needs matplotlib, which is not installed: "
                             "pip install 'fastcnn[plot]'") from None
    for flag in ("save", "metrics", "plot"):
        path = getattr(args, flag)
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise UsageError(f"--{flag} {path}: folder {os.path.dirname(path)} does not exist")
    if args.resume and not os.path.isfile(args.resume):
        raise UsageError(f"--resume {args.resume}: no such file")


def cmd_train(args):
    _check_train_flags(args)
    run = _setup_model(args)
    model, opt = run.model, run.opt
    dtype = np.dtype(model.dtype).name
    data = _load_data(args, dtype, args.limit_train)
    n_params = sum(p.data.size for p in model.parameters())
    print(f"model {run.name} ({n_params:,} parameters, {dtype}), backend {args.backend}, "
          f"{_describe({**opt.config(), 'lr': run.schedule['base_lr']})}, "
          f"{run.schedule['name']} schedule, batch {args.batch_size}, seed {run.seed}")
    print(f"data: {len(data.train_images)} train / {len(data.test_images)} test images "
          f"from {data.folder}")
    if run.start >= args.epochs:
        print(f"{args.resume} already holds {run.start} epochs (--epochs {args.epochs}); "
              f"nothing to train")
    epoch = run.start
    with fastcnn.use_backend(args.backend):
        try:
            for epoch in range(run.start, args.epochs):
                run.history.append(_run_epoch(args, run, data, epoch))
                if args.save:
                    checkpoint.save(args.save, model, opt, model_name=run.name, seed=run.seed,
                                    epoch=epoch + 1, history=run.history,
                                    lr_schedule=run.schedule, batch_size=args.batch_size)
        except training.NonFiniteLossError as e:
            print(f"fastcnn train: error: {e}", file=sys.stderr)
            _say_checkpoint(args, epoch)
            return 1
        except KeyboardInterrupt:
            print(f"\nfastcnn train: interrupted during epoch {epoch + 1}", file=sys.stderr)
            _say_checkpoint(args, epoch)
            return 130
    if not run.history:
        return 0
    metrics = _metrics(args, run, data)
    print(f"test accuracy {metrics['test_accuracy']:.2%} after {metrics['epochs']} epochs, "
          f"{metrics['train_seconds']:.1f} s training ({metrics['images_per_second']:.0f} "
          f"images/s)")
    if args.metrics:
        _atomic.write_text(args.metrics, json.dumps(metrics, indent=2) + "\n")
        print(f"metrics written to {args.metrics}")
    if args.plot:
        from fastcnn._plot import plot_history
        plot_history(run.history, args.plot,
                     title=f"{run.name}, backend {metrics['backend']}")
        print(f"plot written to {args.plot}")
    return 0


def _say_checkpoint(args, epoch):
    if args.save and os.path.isfile(args.save):
        print(f"the checkpoint {args.save} is intact (epochs up to {epoch}); continue "
              f"with --resume {args.save}", file=sys.stderr)


def _describe(config):
    rest = ", ".join(f"{k} {v}" for k, v in config.items() if k != "name")
    return f"{config['name']} ({rest})"


def _run_epoch(args, run, data, epoch):
    steps_per_epoch = math.ceil(len(data.train_images) / args.batch_size)
    lr_at = None
    if run.schedule["name"] == "cosine":
        total, base = args.epochs * steps_per_epoch, run.schedule["base_lr"]
        lr_at = lambda step: training.cosine_lr(base, step, total)  # noqa: E731
    stats = training.train_epoch(run.model, run.opt, data.train_images, data.train_labels,
                                 batch_size=args.batch_size, seed=run.seed, epoch=epoch,
                                 progress=not args.no_progress,
                                 desc=f"epoch {epoch + 1}/{args.epochs}",
                                 global_step=epoch * steps_per_epoch, lr_at=lr_at)
    t0 = time.perf_counter()
    ev = training.evaluate(run.model, data.test_images, data.test_labels)
    eval_seconds = time.perf_counter() - t0
    print(f"epoch {epoch + 1}/{args.epochs}: train loss {stats.loss:.4f} acc "
          f"{stats.accuracy:.2%} | test loss {ev.loss:.4f} acc {ev.accuracy:.2%} | "
          f"{stats.seconds:.1f} s ({stats.images / stats.seconds:.0f} images/s)"
          f" + eval {eval_seconds:.1f} s")
    return {"epoch": epoch + 1, "train_loss": stats.loss, "train_accuracy": stats.accuracy,
            "test_loss": ev.loss, "test_accuracy": ev.accuracy, "images": stats.images,
            "seconds": stats.seconds, "images_per_second": stats.images / stats.seconds,
            "eval_seconds": eval_seconds, "step_losses": stats.step_losses}


def _metrics(args, run, data):
    backend, auto_choices = _backend_used(args.backend)
    history = run.history
    seconds = sum(h["seconds"] for h in history)
    images = sum(h["images"] for h in history)
    last = history[-1]
    return {
        "backend": backend, "auto_choices": auto_choices,
        "dtype": np.dtype(run.model.dtype).name, "model": run.name,
        "optimizer": {**run.opt.config(), "lr": run.schedule["base_lr"]},
        "lr_schedule": run.schedule["name"],
        "epochs": len(history), "batch_size": args.batch_size, "seed": run.seed,
        "train_images": len(data.train_images), "test_images": len(data.test_images),
        "train_seconds": seconds, "images_per_second": images / seconds if seconds else 0.0,
        "test_accuracy": last["test_accuracy"], "test_loss": last["test_loss"],
        "final_loss": last["train_loss"], "threads": fastcnn.get_num_threads(),
        "fastcnn_version": fastcnn.__version__, "numpy_version": np.__version__,
        "history": history,
    }


# -- eval -----------------------------------------------------------------
def cmd_eval(args):
    args.backend = _check_backend(args.backend)
    if not os.path.isfile(args.model):
        raise UsageError(f"--model {args.model}: no such file")
    model, _ = checkpoint.restore(checkpoint.load(args.model))
    data = _load_data(args, np.dtype(model.dtype).name, limit_train=1)
    with fastcnn.use_backend(args.backend):
        t0 = time.perf_counter()
        ev = training.evaluate(model, data.test_images, data.test_labels)
        seconds = time.perf_counter() - t0
    y = data.test_labels
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (y, ev.predictions), 1)
    print(f"{args.model}: test accuracy {ev.accuracy:.2%} ({int(np.trace(confusion))}/{len(y)}), "
          f"loss {ev.loss:.4f}, {seconds:.1f} s on backend {args.backend}")
    print("per class: " + "  ".join(
        f"{k}: {confusion[k, k] / max(confusion[k].sum(), 1):.1%}" for k in range(10)))
    print("confusion matrix (rows: true digit, columns: predicted):")
    print("      " + "".join(f"{k:>6}" for k in range(10)))
    for k in range(10):
        print(f"{k:>6}" + "".join(f"{v:>6}" for v in confusion[k]))
    return 0


# -- crosscheck -----------------------------------------------------------
def cmd_crosscheck(args):
    from fastcnn import crosscheck as cc
    names = fastcnn.available_backends() if args.backends is None else tuple(
        b.strip() for b in args.backends.split(",") if b.strip())
    for b in names:
        if b == "auto":
            raise UsageError("--backends takes concrete backends, not 'auto'")
        if b not in BACKENDS:
            raise UsageError(f"unknown backend {b!r} in --backends; choose from "
                             f"{', '.join(BACKENDS[1:])}")
        _check_backend(b)
    _check_backend(cc.REFERENCE)
    n = args.steps * args.batch_size
    if args.synthetic:
        rng = np.random.default_rng(args.seed)
        x, y = rng.standard_normal((n, 1, 28, 28)), rng.integers(0, 10, n)
        source = "synthetic images"
    else:
        try:
            data = load_mnist(args.data_dir, dtype=args.dtype, limit_train=n, limit_test=1)
        except DataError as e:
            raise DataError(f"{e} (or run the check on --synthetic images)") from None
        x, y, source = data.train_images, data.train_labels, f"MNIST from {data.folder}"
    tol = args.tolerance or cc.DEFAULT_TOLERANCE[args.dtype]
    strict = args.dtype == "float64"
    optimizer = _optimizer_config(args.optimizer)
    print(f"crosscheck: model {args.model}, {args.dtype}, {args.steps} steps of batch "
          f"{args.batch_size} ({source}), {_describe(optimizer)}, seed {args.seed}")
    print(f"reference backend: {cc.REFERENCE}; tolerance: relative difference <= {tol:g} "
          + ("(checked)" if strict else "(float32: reported, not checked)"))
    t0 = time.perf_counter()
    results = cc.crosscheck(names, x, y, model=args.model, dtype=args.dtype, steps=args.steps,
                            batch_size=args.batch_size, seed=args.seed, optimizer=optimizer)
    failed = []
    for r in results:
        _print_crosscheck(r)
        ok = r.worst.rel <= tol
        verdict = "OK" if ok else ("FAIL" if strict else "above tolerance (reported only)")
        print(f"  {r.backend}: {verdict}: largest relative difference {r.worst.rel:.2e}, "
              f"absolute {max(d.abs for s in r.steps for d in s.values()):.2e}")
        if strict and not ok:
            failed.append(r.backend)
    if not results:
        print("only the reference backend was given: nothing to compare")
    print(f"{time.perf_counter() - t0:.1f} s; "
          + (f"FAILED: {', '.join(failed)}" if failed else "all within tolerance"
             if all(r.worst.rel <= tol for r in results) else "differences reported"))
    return 1 if failed else 0


def _print_crosscheck(result):
    keys = list(result.steps[0])
    width = max(10, max(len(k) for k in keys) + 1)
    print(f"{result.backend} vs {'loops'} (max relative difference after each step; "
          f"max absolute in the last row)")
    print("  step " + "".join(f"{k:>{width}}" for k in keys))
    for i, step in enumerate(result.steps):
        print(f"  {i + 1:>4} " + "".join(f"{step[k].rel:>{width}.1e}" for k in keys))
    print("  abs  " + "".join(f"{max(s[k].abs for s in result.steps):>{width}.1e}"
                              for k in keys))


# -- info -----------------------------------------------------------------
def cmd_info(args):
    show = getattr(fastcnn, "show_config", None)
    if show is not None:
        show()
        return 0
    import numba
    print(f"fastcnn {fastcnn.__version__}, numpy {np.__version__}, numba {numba.__version__}, "
          f"python {sys.version.split()[0]}")
    print(f"available backends: {', '.join(fastcnn.available_backends())}")
    return 0
