"""The Flask app: the drawing page and its JSON API.

    GET  /              the page (static/index.html, app.js, style.css: package data,
                        nothing from the internet)
    GET  /api/info      the model, the backends, the versions, the request limits
    POST /api/predict   a drawing -> prediction, probabilities, the 28x28 image the
                        model saw, conv feature maps, each backend's time (payload.py)

Every API error is JSON ``{"error": message}`` with a 4xx status (415 for a body
that is not application/json, 413 above ``MAX_BODY_BYTES``, 400 for bad JSON or
bad fields, 404/405 for wrong routes); an unexpected failure is a 500 with a
one-line message, and the traceback goes to the server's log, never to the
client. Request bodies are read into memory, size-limited, parsed as JSON and
never written anywhere. This module deliberately holds no model logic
(``inference.py``) and no image logic (``preprocess.py``).
"""
import base64
import json
import os
import platform

import numpy as np
from flask import Flask, jsonify, request, send_from_directory
from werkzeug.exceptions import HTTPException

import fastcnn
from fastcnn.serve.payload import MAX_BODY_BYTES, MAX_SIDE, MIN_SIDE, parse_predict
from fastcnn.serve.preprocess import to_mnist

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


def create_app(predictor):
    """The WSGI app serving ``predictor`` (an ``inference.Predictor``)."""
    app = Flask("fastcnn.serve", static_folder=STATIC, static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False

    @app.get("/")
    def page():
        return send_from_directory(STATIC, "index.html")

    @app.get("/api/info")
    def info():
        return jsonify(model=predictor.about, backends=list(predictor.backends),
                       default_backend=predictor.default, reference_backend="loops",
                       versions=_versions(),
                       limits={"max_body_bytes": MAX_BODY_BYTES, "min_side": MIN_SIDE,
                               "max_side": MAX_SIDE})

    @app.post("/api/predict")
    def predict():
        if request.mimetype != "application/json":
            return _error(415, f"the body must be application/json, got "
                               f"{request.mimetype or 'no content type'}")
        raw = request.get_data(cache=False)   # 413 above MAX_CONTENT_LENGTH
        try:
            body = json.loads(raw, parse_constant=_no_constant)
        except (ValueError, RecursionError) as e:   # UnicodeDecodeError is a ValueError
            return _error(400, f"the body is not valid JSON: {_first_line(e)}")
        try:
            pixels, preprocess, backend = parse_predict(body, predictor.backends)
            image = to_mnist(pixels) if preprocess else pixels
        except ValueError as e:   # a PayloadError, or to_mnist's blank image
            return _error(400, str(e))
        result = predictor.predict(image, backend)
        result["image"] = np.round(image, 4).tolist()
        result["feature_maps"] = [_encode_maps(label, maps)
                                  for label, maps in result["feature_maps"]]
        return jsonify(result)

    @app.errorhandler(HTTPException)
    def http_error(e):
        if not request.path.startswith("/api/"):
            return e
        return _error(e.code, {413: f"the body is larger than {MAX_BODY_BYTES} bytes"}.get(
            e.code, e.description))

    @app.errorhandler(Exception)
    def unexpected(e):
        app.logger.exception("unexpected error on %s %s", request.method, request.path)
        return _error(500, f"internal error ({type(e).__name__}); see the server's log")

    @app.after_request
    def headers(response):
        # the page loads nothing from elsewhere, and says so to the browser
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; object-src 'none'; "
            "base-uri 'none'; frame-ancestors 'none'")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        return response

    return app


def _error(status, message):
    response = jsonify(error=message)
    response.status_code = status
    return response


def _no_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def _first_line(e):
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _encode_maps(label, maps):
    """Feature maps as bytes for the page to paint: (C, H, W) scaled by the
    layer's largest activation to 0..255 (one scale per layer, so that a weak
    map looks weak), base64 of the uint8 array in C order."""
    top = float(maps.max())
    scaled = maps / top * 255 if top > 0 else np.zeros_like(maps)
    data = np.round(scaled).astype(np.uint8).tobytes()
    channels, height, width = maps.shape
    return {"name": label, "channels": channels, "height": height, "width": width,
            "max": top, "data": base64.b64encode(data).decode("ascii")}


def _versions():
    from importlib.metadata import version
    return {"fastcnn": fastcnn.__version__, "numpy": np.__version__,
            "flask": version("flask"), "python": platform.python_version()}
