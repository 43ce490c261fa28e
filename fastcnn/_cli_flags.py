"""The flags of the ``fastcnn`` command and the checks made on them before any work.

Each flag's value is checked where it is parsed (argparse ``type=``), and
what depends on more than one value or on the file system (output folders,
the backend in force) by ``check_outputs`` and ``backend_name``, called by
``fastcnn.cli`` before it loads data or compiles anything. A bad value is a
UsageError: one line on stderr, exit status 2. This module deliberately
runs nothing; the commands are in ``fastcnn.cli``.
"""
import argparse
import math
import os

import fastcnn
from fastcnn import _auto, backend, models, training

BACKENDS = (backend.AUTO,) + fastcnn.registered_backends()
OUTPUTS = ("save", "metrics", "plot")   # flags naming files a command writes


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
_seed = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
_fraction = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
_port = _number(int, lambda v: 0 <= v <= 65535, "a port number 0-65535")
_non_negative = _number(float, lambda v: v >= 0 and math.isfinite(v), "a number >= 0")


def _data_dir(text):
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is not a folder (it should hold the MNIST "
                                         f"IDX files)")
    if not os.access(text, os.R_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"folder {text} is not readable")
    return text


def build_parser():
    # acted on by fastcnn/__main__.py, before numpy loads; accepted anywhere here
    tune = _Parser(add_help=False)
    tune.add_argument("--no-tune", action="store_true", default=argparse.SUPPRESS,
                      help="leave the process-wide settings (OpenMP wait policy, BLAS "
                           "timeout, malloc) as they are; the same as FASTCNN_TUNE=0")
    parser = _Parser(prog="fastcnn", parents=[tune],
                     description="Train and check CNNs on MNIST with interchangeable "
                                 "conv/pool backends.",
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="examples:\n"
                            "  fastcnn train --backend im2col --epochs 1 --data-dir DIR\n"
                            "  fastcnn train --epochs 3 --save mnist.npz --metrics m.json "
                            "--plot curves.png\n"
                            "  fastcnn eval --model mnist.npz\n"
                            "  fastcnn crosscheck --dtype float64\n"
                            "  fastcnn info\n"
                            "  fastcnn serve --model mnist.npz\n"
                            "run 'fastcnn COMMAND --help' for a command's flags")
    from fastcnn._version import __version__
    parser.add_argument("--version", action="version", version=f"fastcnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    data = _Parser(add_help=False, parents=[tune])
    data.add_argument("--data-dir", type=_data_dir, metavar="DIR",
                      help="folder with the MNIST IDX files (.gz or not); default: "
                           "$FASTCNN_DATA, else load_mnist's default (the command prints "
                           "where the data came from)")
    common = _Parser(add_help=False, parents=[data])
    common.add_argument("--backend", choices=BACKENDS, default=None,
                        help="which implementation of the ops runs (default: "
                             "$FASTCNN_BACKEND, else auto = the fastest measured per op "
                             "and shape; FASTCNN_AUTO_CHOICES=FILE pins auto's choices, "
                             "e.g. to those in a --metrics file)")
    common.add_argument("--limit-test", type=_positive_int, metavar="N",
                        help="evaluate on the first N test images only")
    common.add_argument("--threads", type=_positive_int, metavar="N",
                        help="threads of fastcnn's thread pool (default: all CPUs; under "
                             "mpiexec, per process: the CPUs / the processes on the node; "
                             "more than the CPUs here is capped, with a warning)")

    t = sub.add_parser("train", parents=[common], help="train a model on MNIST",
                       description="Train an MNIST CNN, evaluating on the test set after "
                                   "every epoch (fastcnn.training.fit). Started by "
                                   "'mpiexec -n K' (K > 1), the K processes train "
                                   "data-parallel, each on its share of every --batch-size "
                                   "batch; rank 0 prints and writes the files "
                                   "(fastcnn.distributed; pip install 'fastcnn[mpi]').")
    t.add_argument("--model", choices=tuple(models.MODELS), default=None,
                   help="architecture: cnn (32/64 channels, dense 128), light (8/16, dense 32) "
                        "or mobile (MobileNet-style: depthwise-separable blocks, global "
                        "average pooling; 72k parameters) (default: cnn, or the "
                        "checkpoint's with --resume)")
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
    t.add_argument("--schedule", choices=training.SCHEDULES, default=None,
                   help="learning-rate schedule: cosine decay to 0 over all epochs "
                        "(default) or constant")
    t.add_argument("--momentum", type=_fraction, default=0.9,
                   help="SGD momentum (default: %(default)s)")
    t.add_argument("--weight-decay", type=_non_negative, default=0.0,
                   help="L2 penalty (default: 0)")
    t.add_argument("--seed", type=_seed, default=None,
                   help="seed for weights, batch order and dropout (default: 0)")
    t.add_argument("--limit-train", type=_positive_int, metavar="N",
                   help="train on the first N training images only")
    t.add_argument("--save", metavar="PATH",
                   help="write a checkpoint (.npz) after every epoch, atomically")
    t.add_argument("--resume", metavar="PATH",
                   help="continue from a checkpoint written by --save (up to --epochs), "
                        "with its seed, schedule and (backend auto) backend choices")
    t.add_argument("--metrics", metavar="PATH", help="write the run's metrics as JSON")
    t.add_argument("--plot", metavar="PATH",
                   help="draw loss and accuracy curves to a PNG (needs matplotlib: "
                        "pip install 'fastcnn[plot]')")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", parents=[common],
                       help="evaluate a saved model on the MNIST test set",
                       description="Test accuracy, per-class accuracy and confusion matrix "
                                   "of a checkpoint.")
    e.add_argument("--model", required=True, metavar="PATH", help="checkpoint from --save")

    c = sub.add_parser("crosscheck", parents=[data],
                       help="check that every backend trains identically",
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
    c.add_argument("--seed", type=_seed, default=0)
    c.add_argument("--tolerance", type=_positive_float, default=None,
                   help="largest relative difference allowed (default: 1e-9 in float64)")
    c.add_argument("--synthetic", action="store_true",
                   help="use seeded random images instead of MNIST")

    sub.add_parser("info", parents=[tune], help="backends, threads and versions")

    s = sub.add_parser("serve", parents=[tune],
                       help="a page to draw a digit and watch a trained model read it",
                       description="Serve a drawing page and its JSON API (fastcnn.serve; "
                                   "needs the web extra: pip install \"fastcnn[web]\").")
    s.add_argument("--model", metavar="PATH",
                   help="checkpoint from 'fastcnn train --save PATH'")
    s.add_argument("--backend", choices=BACKENDS, default=None,
                   help="backend whose results the page shows first (all available ones "
                        "run and are timed; default: the one in force)")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this machine only)")
    s.add_argument("--port", type=_port, default=8000,
                   help="(default: %(default)s; 0: any free port)")
    return parser


def check_outputs(args):
    """Every file a command will write can be written: checked before any work.
    (Files are written atomically, by renaming into the folder: the folder's
    permissions decide, not an existing file's.)"""
    for flag in OUTPUTS:
        path = getattr(args, flag, None)
        if not path:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise UsageError(f"--{flag} {path} is a folder; give a file name")
        if os.path.exists(path) and not os.path.isfile(path):
            raise UsageError(f"--{flag} {path} exists and is not a regular file")
        if not os.path.isdir(folder):
            raise UsageError(f"--{flag} {path}: folder {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"--{flag} {path}: folder {folder} is not writable")
    if getattr(args, "plot", None):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plot needs matplotlib, which is not installed: "
                             "pip install 'fastcnn[plot]'") from None


def backend_name(name, flag="--backend"):
    """The backend a command runs on (None: the one in force), checked by the
    registry itself; for 'auto', $FASTCNN_AUTO_CHOICES too."""
    try:
        name = backend.resolve(name)
        if name == backend.AUTO:
            _auto.read_env()
        return name
    except ValueError as e:
        raise UsageError(f"{flag}: {e}" if flag else str(e)) from None


def threads_wanted(args):
    """(thread count to set or None, warning or None). --threads above the CPUs
    here is capped, with a warning; a bad $FASTCNN_NUM_THREADS is a UsageError."""
    try:
        fastcnn.get_num_threads()
    except ValueError as e:
        raise UsageError(str(e)) from None
    wanted, cpus = getattr(args, "threads", None), os.cpu_count() or 1
    if wanted is None or wanted <= cpus:
        return wanted, None
    return cpus, f"warning: --threads {wanted} is more than the {cpus} CPUs here; using {cpus}"
