"""What ``POST /api/predict`` accepts, checked field by field before any work.

    {"pixels": [[...], ...],     H rows of W numbers in [0, 1] (0 = paper, 1 = ink),
                                 28 <= H, W <= 280 (a 28x28 MNIST image or the canvas)
     "preprocess": true,         optional: false feeds a 28x28 image as it is
     "backend": "numba"}         optional: whose results to show (all run anyway)

Every problem is a ``PayloadError`` naming the field and what was expected,
which the app answers with 400; nothing the client sends is evaluated or
stored. This module deliberately knows nothing of HTTP (the body size and the
content type are the app's) or of the model.
"""
import numpy as np

MAX_BODY_BYTES = 2 * 1024 * 1024   # a full 280x280 canvas as JSON numbers is under 1 MiB
MIN_SIDE, MAX_SIDE = 28, 280
FIELDS = ("pixels", "preprocess", "backend")


class PayloadError(ValueError):
    """A request body that cannot be used; the message is for the client."""


def parse_predict(body, backends):
    """(pixels as a float64 (H, W) array, preprocess, backend or None) from a
    decoded JSON body."""
    if not isinstance(body, dict):
        raise PayloadError(f"the body must be a JSON object with 'pixels', got "
                           f"{_kind(body)}")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise PayloadError(f"unknown field {unknown[0]!r}; expected {', '.join(FIELDS)}")
    if "pixels" not in body:
        raise PayloadError("'pixels' is missing: H rows of W numbers in [0, 1]")
    preprocess = body.get("preprocess", True)
    if not isinstance(preprocess, bool):
        raise PayloadError(f"'preprocess' must be true or false, got {_kind(preprocess)}")
    backend = body.get("backend")
    if backend is not None and backend not in backends:
        raise PayloadError(f"'backend' must be one of {', '.join(backends)}, got "
                           f"{backend!r}" if isinstance(backend, str) else
                           f"'backend' must be a string, got {_kind(backend)}")
    pixels = _pixels(body["pixels"])
    if not preprocess and pixels.shape != (MIN_SIDE, MIN_SIDE):
        raise PayloadError(f"'pixels' must be 28x28 with \"preprocess\": false, got "
                           f"{pixels.shape[0]}x{pixels.shape[1]}")
    return pixels, preprocess, backend


def _pixels(rows):
    if not isinstance(rows, list):
        raise PayloadError(f"'pixels' must be a list of rows, got {_kind(rows)}")
    if not MIN_SIDE <= len(rows) <= MAX_SIDE:
        raise PayloadError(f"'pixels' must have {MIN_SIDE} to {MAX_SIDE} rows, got {len(rows)}")
    width = len(rows[0]) if isinstance(rows[0], list) else 0
    if isinstance(rows[0], list) and not MIN_SIDE <= width <= MAX_SIDE:
        raise PayloadError(f"'pixels' rows must have {MIN_SIDE} to {MAX_SIDE} values, "
                           f"got {width}")
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise PayloadError(f"'pixels' row {i} must be a list of numbers, got {_kind(row)}")
        if len(row) != width:
            raise PayloadError(f"'pixels' rows must all have the same length: row 0 has "
                               f"{width}, row {i} has {len(row)}")
        for j, v in enumerate(row):
            # bool is an int in Python, and numpy would read "0.5" as a number
            if type(v) not in (int, float) or not 0 <= v <= 1:
                raise PayloadError(f"'pixels'[{i}][{j}] must be a number in [0, 1], got "
                                   f"{v!r}" if type(v) in (int, float) else
                                   f"'pixels'[{i}][{j}] must be a number, got {_kind(v)}")
    return np.array(rows, dtype=np.float64)


def _kind(value):
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value),
                                                                          type(value).__name__)
