"""The ``fastcnn`` command (and ``python -m fastcnn``): tune the process, then run the CLI.

The command owns its process, so it applies ``fastcnn.tune_runtime()``
unless ``--no-tune`` is among its arguments or ``FASTCNN_TUNE=0``. It must do
that before numpy (OpenBLAS) is loaded, which is why this launcher exists
apart from ``fastcnn.cli``: it imports nothing heavy before tuning. The
argument parsing proper is ``fastcnn.cli``'s.
"""
import os
import sys


def tuning_wanted(argv):
    """False for ``--no-tune`` or FASTCNN_TUNE=0/false/no/off."""
    off = os.environ.get("FASTCNN_TUNE", "").strip().lower() in ("0", "false", "no", "off")
    return not off and "--no-tune" not in argv


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if tuning_wanted(argv):
        from fastcnn._runtime import tune_runtime
        tune_runtime()
    from fastcnn.cli import main as cli_main
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
