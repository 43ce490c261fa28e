"""The ``fastcnn serve`` command: check the flags, load the model, serve the page.

It binds to 127.0.0.1 by default (the page is for the person at this
machine), prints the address to open, and serves until Ctrl-C with
Werkzeug's threaded server, which Flask itself runs on. A missing model,
a missing web extra or a busy port is one line and exit status 2, never a
traceback. This module deliberately holds no request handling (``app.py``).
"""
import ipaddress
import os
import socket
import sys

from fastcnn._cli_flags import UsageError, backend_name

WEB_EXTRA = 'pip install "fastcnn[web]"'


def check_web_extra():
    """UsageError naming the extra when Flask is not installed."""
    try:
        import flask  # noqa: F401
    except ImportError:
        raise UsageError(f"fastcnn serve needs Flask, which is not installed: "
                         f"{WEB_EXTRA}") from None


def make_server(model_path, backend, host, port):
    """(server, predictor): a Werkzeug server bound to host:port (0: a free
    port, ``server.port`` says which) serving the checkpoint."""
    from werkzeug.serving import make_server as werkzeug_server

    from fastcnn.serve.app import create_app
    from fastcnn.serve.inference import Predictor
    predictor = Predictor.from_checkpoint(model_path, backend)
    predictor.warm_up()
    # bound here, not by Werkzeug, which would print its own lines and exit on a
    # busy port; the family follows Werkzeug's rule for the host it is handed
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listener = socket.create_server((host, port), family=family)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port} ({e.strerror or e}); "
                         f"choose another --port or --host") from None
    with listener:   # Werkzeug serves on a duplicate of its descriptor
        server = werkzeug_server(host, port, create_app(predictor), threaded=True,
                                 fd=listener.fileno())
    return server, predictor


def run(args):
    """``fastcnn serve``; returns the exit status."""
    if not args.model:
        raise UsageError("--model PATH is needed: a checkpoint from training, e.g. "
                         "'fastcnn train --save mnist.npz' (then "
                         "'fastcnn serve --model mnist.npz')")
    if not os.path.isfile(args.model):
        raise UsageError(f"--model {args.model}: no such file (make one with "
                         f"'fastcnn train --save {args.model}')")
    check_web_extra()
    where = backend_name(args.backend)
    server, predictor = make_server(args.model, where, args.host, args.port)
    about = predictor.about
    host = f"[{args.host}]" if ":" in args.host else args.host
    epochs = about["epochs"]
    print(f"model {about['name']} from {args.model} ({about['parameters']:,} parameters, "
          f"{epochs} epoch{'' if epochs == 1 else 's'}); backends "
          f"{', '.join(predictor.backends)}, shown first: {predictor.default}")
    if not _is_loopback(args.host):
        print(f"fastcnn serve: warning: --host {args.host} lets other machines reach the "
              f"page; this is a development server, not hardened for the open network",
              file=sys.stderr)
    print(f"open http://{host}:{server.port}/ in a browser (Ctrl-C stops the server)",
          flush=True)
    try:
        server.serve_forever()   # Werkzeug's returns on Ctrl-C
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("fastcnn serve: stopped", file=sys.stderr)
    return 0


def _is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
