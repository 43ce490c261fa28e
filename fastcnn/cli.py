"""The ``fastcnn`` command: train, eval, crosscheck, info, serve.

    fastcnn train --backend im2col --epochs 3 --data-dir ../shared/data/mnist
    fastcnn eval --model mnist.npz
    fastcnn crosscheck --backends loops,im2col,cython,numba --dtype float64
    fastcnn info
    fastcnn serve --model mnist.npz

The commands choose the backend (``fastcnn.use_backend``; ``serve`` runs
every backend in turn to compare them); the library never does. The
training itself is ``fastcnn.training.fit``, which this module only calls:
it parses flags, checks them before any work, and prints. A bad flag value
gets one line on stderr and exit status 2, never a traceback.
"""
import json
import os
import sys
import time

import numpy as np

import fastcnn
from fastcnn import _atomic, backend, checkpoint, models, training
from fastcnn._cli_flags import (UsageError, backend_name, build_parser, check_outputs,
                               threads_wanted)
from fastcnn.datasets import DataError, load_mnist
from fastcnn.nn.optim import make_optimizer


def main(argv=None):
    """Run one command; returns the exit status. (The console script enters
    through ``fastcnn.__main__``, which tunes the process first.) Started by an
    MPI launcher with others, the process runs it as one rank of a job (_as_rank)."""
    if _Job.comm is None and (comm := _join_mpi_job()) is not None:
        return _as_rank(comm, argv)
    args = build_parser().parse_args(argv)
    say = lambda text: print(f"fastcnn {args.command}: {text}", file=sys.stderr)  # noqa: E731
    try:
        check_outputs(args)
        threads, warning = threads_wanted(args)
        if warning:
            say(warning)
        if threads:
            fastcnn.set_num_threads(threads)
        status = COMMANDS[args.command](args) or 0
        sys.stdout.flush()   # a closed pipe shows here, not at exit
        return status
    except UsageError as e:
        say(f"error: {e}")
        return 2
    except (DataError, checkpoint.CheckpointError) as e:
        say(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except BrokenPipeError:   # `fastcnn eval | head -1`: Python's docs' recipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _load_data(args, dtype, **kw):
    """The MNIST arrays; a note on stderr when they are the bundled sample."""
    data = load_mnist(args.data_dir, dtype=dtype, **kw)
    if data.note:
        print(data.note, file=sys.stderr)
    return data


def _describe(config):
    return f"{config['name']} ({', '.join(f'{k} {v}' for k, v in config.items() if k != 'name')})"


# -- one rank of an MPI job: mpiexec -n K fastcnn ... ------------------------------
class _Job:
    """The MPI job this process is a rank of, while ``main`` runs in it."""
    comm = None
    stopped_together = False   # every rank ends with the same status: no abort needed


def _join_mpi_job():
    """COMM_WORLD if an MPI launcher started this process with others (K > 1)
    and mpi4py joins them, else None (``cmd_train`` then says what is missing).
    MPI starts before the flags are even parsed: a rank that fails alone
    before joining would leave the others waiting in MPI_Init forever."""
    from fastcnn import distributed
    try:
        size = distributed.launched_size()
        return distributed.world(size) if size and size > 1 else None
    except (ValueError, ImportError, RuntimeError):
        return None


def _as_rank(comm, argv):
    """``main`` as one rank of ``comm``'s job. An exception, or a non-zero
    status, on one rank ends the whole job with MPI_Abort, since the others
    would wait for it forever; except a status every rank reaches together
    (``_Job.stopped_together``), which ends the job normally."""
    from fastcnn import distributed
    _Job.comm = comm
    with distributed.abort_on_error(comm):
        status = main(argv)
    if status and not _Job.stopped_together:
        distributed.abort(comm, f"fastcnn: rank {comm.Get_rank()} of {comm.Get_size()} "
                                f"exits with status {status}; aborting the MPI job", status)
    return status


# -- train ----------------------------------------------------------------
def _model_from_flags(args):
    """(model, optimizer, name, checkpoint or None), before any data is loaded."""
    if args.resume:
        if not os.path.isfile(args.resume):
            raise UsageError(f"--resume {args.resume}: no such file")
        ck = checkpoint.load(args.resume)
        given = dict(model=args.model, dtype=args.dtype, optimizer=args.optimizer,
                     seed=args.seed, lr=args.lr, lr_schedule=args.schedule)
        for name, value, saved in training.checkpoint_conflicts(ck.meta, **given):
            flag = "--schedule" if name == "lr_schedule" else f"--{name}"
            raise UsageError(f"{flag} {value} contradicts the checkpoint {args.resume} "
                             f"({saved}); leave it out when resuming")
        return (*checkpoint.restore(ck), ck.meta["model"], ck)
    name = args.model or "cnn"
    model = models.build(name, dtype=args.dtype or "float32", seed=args.seed or 0)
    config = training.optimizer_config(args.optimizer or "adam", args.lr, args.momentum,
                                       args.weight_decay)
    return model, make_optimizer(config, model.parameters()), name, None


def cmd_train(args):
    """Training in one process or, under ``mpiexec -n K fastcnn train`` (K > 1),
    this rank's part of a data-parallel run: every rank parses the same flags
    and loads the same data, rank 0 alone prints and writes files, and an
    error on any rank ends the whole job (``fastcnn.distributed``)."""
    if _Job.comm is None:
        from fastcnn import distributed
        try:   # an MPI launcher started this process, but it could not join the job
            size = distributed.launched_size()
            if size and size > 1:
                distributed.world(size)
        except (ValueError, ImportError, RuntimeError) as e:   # alike on every rank
            raise UsageError(f"started by an MPI launcher: {e}") from None
    return _train(args, _Job.comm)


def _quiet(*args, **kwargs):
    pass


def _train(args, comm):
    from fastcnn.distributed import MismatchError
    lead = comm is None or comm.Get_rank() == 0
    out = print if lead else _quiet   # rank 0 speaks (and writes) for all
    ranks = ""
    if comm is not None:
        from fastcnn import distributed
        fill = distributed.threads_per_rank(comm)   # the CPUs here / the ranks here
        if args.threads is None and not os.environ.get("FASTCNN_NUM_THREADS", "").strip():
            fastcnn.set_num_threads(fill)
        elif fastcnn.get_num_threads() > fill:
            # (no collective call in here: ranks on other nodes may not take this branch)
            out(f"fastcnn train: warning: {fastcnn.get_num_threads()} threads per process "
                f"oversubscribe this node's {os.cpu_count()} CPUs ({fill} "
                f"thread{'s' if fill > 1 else ''} per process would fill them)",
                file=sys.stderr)
        ranks = (f", {comm.Get_size()} MPI processes x {fastcnn.get_num_threads()} "
                 f"thread{'s' if fastcnn.get_num_threads() > 1 else ''}")
    where = backend_name(args.backend)
    model, opt, name, ck = _model_from_flags(args)
    dtype = np.dtype(model.dtype).name
    data = load_mnist(args.data_dir, dtype=dtype, limit_train=args.limit_train,
                      limit_test=args.limit_test)
    if data.note:
        out(data.note, file=sys.stderr)
    schedule = training.schedule_of(ck.meta) if ck else {"name": args.schedule or "cosine",
                                                          "base_lr": opt.lr}
    seed = ck.meta["seed"] if ck else args.seed or 0
    out(f"model {name} ({sum(p.data.size for p in model.parameters()):,} parameters, "
        f"{dtype}), backend {where}, {_describe({**opt.config(), 'lr': schedule['base_lr']})}"
        f", {schedule['name']} schedule, batch {args.batch_size}, seed {seed}{ranks}")
    out(f"data: {len(data.train_images)} train / {len(data.test_images)} test images "
        f"from {data.source}")
    _prepare_kernels(where, out)
    done = [ck.meta["epoch"] if ck else 0]
    with fastcnn.use_backend(where):
        try:
            metrics = training.fit(
                model, opt, (data.train_images, data.train_labels),
                (data.test_images, data.test_labels), epochs=args.epochs,
                batch_size=args.batch_size, seed=seed, lr_schedule=schedule["name"],
                save=args.save, resume=ck, model_name=name, progress=not args.no_progress,
                log=print, on_epoch=lambda record: done.append(record["epoch"]), comm=comm)
        except training.NonFiniteLossError as e:   # under MPI: raised on every rank
            _Job.stopped_together = True
            return _stopped(args, f"error: {e}", done[-1], 1, out)
        except KeyboardInterrupt:                  # under MPI: fit aborts the job instead
            return _stopped(args, f"interrupted during epoch {done[-1] + 1}", done[-1], 130)
        except MismatchError as e:   # raised on every rank alike
            _Job.stopped_together = True
            out(f"fastcnn train: error: {e}", file=sys.stderr)
            return 1
    if not metrics["history"] or not lead:
        return 0
    print(f"test accuracy {metrics['test_accuracy']:.2%} after {metrics['epochs']} epochs, "
          f"{metrics['train_seconds']:.1f} s training ({metrics['images_per_second']:.0f} "
          f"images/s)")
    if args.metrics:
        _atomic.write_text(args.metrics, json.dumps(metrics, indent=2) + "\n")
        print(f"metrics written to {args.metrics}")
    if args.plot:
        from fastcnn._plot import plot_history
        plot_history(metrics["history"], args.plot, title=f"{name}, backend {where}")
        print(f"plot written to {args.plot}")
    return 0


def _prepare_kernels(where, out=print):
    """JIT compilation (numba: once per install and user, then loaded from its
    cache) before the clock of the first epoch starts, and said as it happens."""
    names = [where] if where != backend.AUTO else list(fastcnn.available_backends())
    if not any(callable(getattr(backend.get_module(n), "warmup", None)) for n in names):
        return
    out("preparing JIT kernels (the first run compiles them, later runs load them "
        "from the cache) ...", end=" ", flush=True)
    seconds = fastcnn.warmup(names)
    out(", ".join(f"{n} {s:.1f} s" for n, s in seconds.items()) + " (not counted in images/s)")


def _stopped(args, why, epochs_done, status, out=print):
    out(f"fastcnn train: {why}", file=sys.stderr)
    if args.save and os.path.isfile(args.save):
        out(f"the checkpoint {args.save} is intact (epochs up to {epochs_done}); continue "
            f"with --resume {args.save}", file=sys.stderr)
    return status


# -- eval -----------------------------------------------------------------
def cmd_eval(args):
    where = backend_name(args.backend)
    if not os.path.isfile(args.model):
        raise UsageError(f"--model {args.model}: no such file")
    model, _ = checkpoint.restore(checkpoint.load(args.model))
    data = _load_data(args, np.dtype(model.dtype).name, train=False, limit_test=args.limit_test)
    with fastcnn.use_backend(where):
        t0 = time.perf_counter()
        ev = training.evaluate(model, data.test_images, data.test_labels)
        seconds = time.perf_counter() - t0
    y = data.test_labels
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (y, ev.predictions), 1)
    print(f"{args.model}: test accuracy {ev.accuracy:.2%} ({int(np.trace(confusion))}/{len(y)}), "
          f"loss {ev.loss:.4f}, {seconds:.1f} s on backend {where}")
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
    names = fastcnn.available_backends("numpy") if args.backends is None else tuple(
        b.strip() for b in args.backends.split(",") if b.strip())
    for b in names + (cc.REFERENCE,):
        if backend_name(b, "--backends") == backend.AUTO:
            raise UsageError("--backends takes concrete backends, not 'auto'")
    n = args.steps * args.batch_size
    if args.synthetic:
        rng = np.random.default_rng(args.seed)
        x, y = rng.standard_normal((n, 1, 28, 28)), rng.integers(0, 10, n)
        source = "synthetic images"
    else:
        try:
            data = _load_data(args, args.dtype, limit_train=n, limit_test=1)
        except DataError as e:
            raise DataError(f"{e} (or run the check on --synthetic images)") from None
        x, y, source = data.train_images, data.train_labels, f"MNIST from {data.source}"
    tol = args.tolerance or cc.DEFAULT_TOLERANCE[args.dtype]
    strict = args.dtype == "float64"
    optimizer = training.optimizer_config(args.optimizer)
    print(f"crosscheck: model {args.model}, {args.dtype}, {args.steps} steps of batch "
          f"{args.batch_size} ({source}), {_describe(optimizer)}, seed {args.seed}")
    print(f"reference backend: {cc.REFERENCE}; tolerance: relative difference <= {tol:g} "
          + ("(checked)" if strict else "(float32: reported, not checked)"))
    t0 = time.perf_counter()
    results = cc.crosscheck(names, x, y, model=args.model, dtype=args.dtype, steps=args.steps,
                            batch_size=args.batch_size, seed=args.seed, optimizer=optimizer)
    for line in cc.report(results, tol, strict):
        print(line)
    failed = [r.backend for r in results if strict and r.worst.rel > tol]
    print(f"{time.perf_counter() - t0:.1f} s; " + (
        f"FAILED: {', '.join(failed)}" if failed else "all within tolerance"
        if all(r.worst.rel <= tol for r in results) else "differences reported"))
    return 1 if failed else 0


# -- info -----------------------------------------------------------------
def cmd_info(args):
    backend_name(None, flag=None)   # a bad $FASTCNN_BACKEND: one line, not a traceback
    fastcnn.show_config()
    return 0


# -- serve ----------------------------------------------------------------
def cmd_serve(args):
    from fastcnn.serve.command import run   # Flask is imported only here
    return run(args)


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "crosscheck": cmd_crosscheck, "info": cmd_info,
            "serve": cmd_serve}
