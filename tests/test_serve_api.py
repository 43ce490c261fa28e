"""`fastcnn serve`: the preprocessing, the JSON API through Flask's test client,
and the command.

The preprocessing is checked against real MNIST (its digits are already
MNIST-normalised, so ``to_mnist`` must leave them as they are, and must
recover them from a 10x enlargement drawn anywhere on the canvas) and
against a brute-force resampler. The API's answers are checked against the
model run directly and a NumPy convolution; every bad request must get a
4xx JSON error, never a traceback. Tests needing Flask skip without the web
extra; the browser test is tests/test_serve_browser.py.
"""
import base64
import json
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

import fastcnn
from fastcnn import checkpoint, models
from fastcnn.datasets import load_mnist
from fastcnn.datasets.mnist import MEAN, STD
from fastcnn.nn.optim import make_optimizer
from fastcnn.serve import preprocess
from fastcnn.serve.payload import MAX_BODY_BYTES

WEB = 'the web extra is not installed: pip install "fastcnn[web]"'


@pytest.fixture(scope="module")
def digits():
    """The first 200 MNIST test images as ink in [0, 1] (exact grey levels), labels."""
    data = load_mnist(train=False, limit_test=200)
    ink = np.round((data.test_images[:, 0].astype(np.float64) * STD + MEAN) * 255) / 255
    return np.clip(ink, 0, 1), data.test_labels


# -- preprocessing ----------------------------------------------------------------
def test_area_matrix_matches_brute_force_resampling():
    rng = np.random.default_rng(0)
    for n_in, n_out in ((7, 3), (280, 20), (13, 20), (20, 20), (3, 1)):
        v = rng.random(n_in)
        # each input pixel split into n_out samples, each output the mean of n_in of them
        brute = np.repeat(v, n_out).reshape(n_out, n_in).mean(axis=1)
        np.testing.assert_allclose(preprocess.area_matrix(n_in, n_out) @ v, brute, rtol=1e-12)


def test_mnist_digits_are_left_as_they_are(digits):
    images, _ = digits
    for image in images:
        before = image.copy()
        np.testing.assert_array_equal(preprocess.to_mnist(image), image)
        np.testing.assert_array_equal(image, before)


def test_an_enlarged_digit_anywhere_on_the_canvas_comes_back(digits):
    images, _ = digits
    rng = np.random.default_rng(1)
    errors = []
    for image in images[:50]:
        big = np.kron(image, np.ones((8, 8)))     # 224 x 224, the digit 160 px tall or wide
        canvas = np.zeros((280, 280))
        top, left = rng.integers(0, 280 - big.shape[0], 2)
        canvas[top:top + big.shape[0], left:left + big.shape[1]] = big
        out = preprocess.to_mnist(canvas)
        errors.append(np.abs(out - image).mean())
        r, c = preprocess.centre_of_mass(out)
        assert abs(r - 14) <= 0.5 and abs(c - 14) <= 0.5
    assert np.mean(errors) < 0.01 and max(errors) < 0.05, errors


def test_a_thin_stroke_keeps_its_aspect_ratio():
    canvas = np.zeros((280, 280))
    canvas[40:240, 100:120] = 1           # 200 x 20: a '1' as a bar
    out = preprocess.to_mnist(canvas)
    rows, cols = np.flatnonzero(out.max(1)), np.flatnonzero(out.max(0))
    assert (len(rows), len(cols)) == (20, 2)
    assert preprocess.centre_of_mass(out) == (13.5, 13.5) or abs(
        preprocess.centre_of_mass(out)[0] - 14) <= 0.5
    assert out.sum() == pytest.approx(40)


def test_a_blank_image_is_refused():
    with pytest.raises(ValueError, match="blank"):
        preprocess.to_mnist(np.zeros((280, 280)))


# -- the API ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An untrained light model: the API tests compare against the model itself."""
    model = models.build("light", seed=3)
    path = tmp_path_factory.mktemp("serve") / "light.npz"
    opt = make_optimizer({"name": "sgd", "lr": 0.01, "momentum": 0.9}, model.parameters())
    checkpoint.save(path, model, opt, model_name="light", seed=3, epoch=0)
    return path, model.eval()


@pytest.fixture(scope="module")
def client(model_file):
    pytest.importorskip("flask", reason=WEB)
    from fastcnn.serve.app import create_app
    from fastcnn.serve.inference import Predictor
    predictor = Predictor.from_checkpoint(model_file[0], "im2col")
    app = create_app(predictor)
    return app.test_client()


def post(client, body, content_type="application/json"):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post("/api/predict", data=data, content_type=content_type)


def test_info(client, model_file):
    r = client.get("/api/info")
    assert r.status_code == 200
    info = r.get_json()
    assert info["model"]["name"] == "light" and info["model"]["file"] == "light.npz"
    assert info["model"]["parameters"] == sum(p.data.size for p in model_file[1].parameters())
    assert set(info["backends"]) == set(fastcnn.available_backends())
    assert info["default_backend"] == "im2col"
    assert info["versions"]["fastcnn"] == fastcnn.__version__
    assert info["limits"]["max_body_bytes"] == MAX_BODY_BYTES


def test_the_page_and_its_files_are_served_from_here(client):
    page = client.get("/")
    assert page.status_code == 200 and b'<canvas id="pad"' in page.data
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    assert b"http://" not in page.data and b"https://" not in page.data


def _numpy_conv_relu(x, w, b):
    """conv 3x3 padding 1 then ReLU, (C, H, W) -> (F, H, W), by sliding windows."""
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(x, ((0, 0), (1, 1), (1, 1))),
                                                       (3, 3), axis=(1, 2))
    return np.maximum(np.einsum("chwij,fcij->fhw", windows, w) + b[:, None, None], 0)


def test_predict_a_28x28_image_as_given(client, model_file, digits):
    model = model_file[1]
    image = digits[0][0]
    r = post(client, {"pixels": image.tolist(), "preprocess": False, "backend": "loops"})
    assert r.status_code == 200, r.get_json()
    out = r.get_json()
    x = ((image - 0.1307) / 0.3081).astype(np.float32)[None, None]
    with fastcnn.use_backend("loops"):
        logits = model.forward(x)[0].astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    assert out["backend"] == "loops" and out["prediction"] == int(np.argmax(logits))
    np.testing.assert_allclose(out["probabilities"], p, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["image"], image, atol=5e-5)
    assert {b["name"] for b in out["backends"]} == set(fastcnn.available_backends())
    assert out["agree"] and all(b["prediction"] == out["prediction"] and b["ms"] > 0
                                for b in out["backends"])
    assert 0 <= out["max_logit_diff_from_loops"] < 1e-4
    # conv1's maps against a NumPy convolution of the same weights
    conv1 = out["feature_maps"][0]
    assert (conv1["name"], conv1["channels"], conv1["height"], conv1["width"]) == (
        "conv1", 8, 28, 28)
    maps = np.frombuffer(base64.b64decode(conv1["data"]), np.uint8).reshape(8, 28, 28)
    w, b = model[0].weight.data.astype(np.float64), model[0].bias.data.astype(np.float64)
    expected = _numpy_conv_relu(x[0].astype(np.float64), w, b)
    assert conv1["max"] == pytest.approx(expected.max(), rel=1e-5)
    np.testing.assert_allclose(maps / 255 * conv1["max"], expected, atol=conv1["max"] / 500)
    conv2 = out["feature_maps"][1]
    assert (conv2["name"], conv2["channels"], conv2["height"]) == ("conv2", 16, 14)


@pytest.mark.parametrize("backend", [None, "numba", "cython"])
def test_predict_a_canvas(client, digits, backend):
    if backend and backend not in fastcnn.available_backends():
        pytest.skip(f"backend {backend} is not available here")
    image = digits[0][2]
    canvas = np.zeros((280, 280))
    canvas[30:230, 50:250] = np.kron(image, np.ones((10, 10)))[40:240, 40:240]
    body = {"pixels": np.round(canvas, 3).tolist()}
    if backend:
        body["backend"] = backend
    r = post(client, body)
    assert r.status_code == 200, r.get_json()
    out = r.get_json()
    assert out["backend"] == (backend or "im2col")
    assert np.abs(np.array(out["image"]) - image).mean() < 0.01
    assert out["agree"]


def _with_first_pixel(text):
    """A 28x28 body whose first pixel is written as ``text``."""
    return json.dumps({"pixels": [[0] * 28] * 28}).replace("0", text, 1)


def _nested(depth):
    return "[" * depth + "]" * depth


BAD = {
    "not JSON": ("{", 400, "not valid JSON"),
    "NaN": ('{"pixels": NaN}', 400, "not valid JSON"),
    "deeply nested": (_nested(100_000), 400, "not valid JSON"),
    "not UTF-8": (b'{"pixels": "\xff"}', 400, "not valid JSON"),
    "a list": ([], 400, "JSON object"),
    "no pixels": ({}, 400, "'pixels' is missing"),
    "unknown field": ({"pixels": [], "code": "1"}, 400, "unknown field 'code'"),
    "too small": ({"pixels": [[0.0] * 27] * 27}, 400, "28 to 280 rows"),
    "too large": ({"pixels": [[0] * 281] * 281}, 400, "28 to 280 rows"),
    "narrow rows": ({"pixels": [[0] * 20] * 28}, 400, "28 to 280 values"),
    "ragged": ({"pixels": [[0] * 28] * 27 + [[0] * 29]}, 400, "same length"),
    "a string pixel": ({"pixels": [["0.5"] * 28] * 28}, 400, "must be a number, got a string"),
    "a boolean pixel": ({"pixels": [[True] * 28] * 28}, 400, "must be a number"),
    "a null pixel": ({"pixels": [[None] * 28] * 28}, 400, "must be a number"),
    "a row not a list": ({"pixels": [0] * 28}, 400, "must be a list"),
    "out of range": ({"pixels": [[2] * 28] * 28}, 400, "in [0, 1]"),
    "negative": ({"pixels": [[-0.5] * 28] * 28}, 400, "in [0, 1]"),
    "infinite": (_with_first_pixel("1e999"), 400, "in [0, 1], got inf"),
    "huge integer": (_with_first_pixel("9" * 4000), 400, "in [0, 1]"),
    "blank": ({"pixels": [[0] * 28] * 28}, 400, "blank"),
    "preprocess not bool": ({"pixels": [[0] * 28] * 28, "preprocess": "no"}, 400,
                            "true or false"),
    "canvas as given": ({"pixels": [[0] * 280] * 280, "preprocess": False}, 400,
                        "28x28"),
    "unknown backend": ({"pixels": [[1] * 28] * 28, "backend": "gpu"}, 400,
                        "'backend' must be one of"),
    "backend not a string": ({"pixels": [[1] * 28] * 28, "backend": 1}, 400,
                             "must be a string"),
    "huge body": (b"[" + b"0," * (MAX_BODY_BYTES // 2) + b"0]", 413, "larger than"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_request_gets_a_clear_4xx(client, case):
    body, status, words = BAD[case]
    r = post(client, body)
    _assert_error(r, status, words)


def _assert_error(r, status, words):
    assert r.status_code == status, r.data[:300]
    assert r.mimetype == "application/json"
    message = r.get_json()["error"]
    assert isinstance(message, str) and words in message
    assert "Traceback" not in r.get_data(as_text=True) and "\n" not in message


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          ""])
def test_only_json_is_accepted(client, content_type):
    _assert_error(post(client, {"pixels": [[1] * 28] * 28}, content_type), 415,
                  "application/json")


def test_wrong_routes_and_methods_are_json_errors(client):
    _assert_error(client.get("/api/predict"), 405, "")
    _assert_error(client.get("/api/nothing"), 404, "")
    _assert_error(client.put("/api/info"), 405, "")


def test_a_server_fault_is_a_500_without_traceback(model_file, monkeypatch):
    pytest.importorskip("flask", reason=WEB)
    from fastcnn.serve.app import create_app
    from fastcnn.serve.inference import Predictor
    predictor = Predictor.from_checkpoint(model_file[0], "im2col")

    def broken(*args, **kwargs):
        raise RuntimeError("secret detail")
    monkeypatch.setattr(predictor, "predict", broken)
    app = create_app(predictor)
    app.logger.disabled = True
    r = post(app.test_client(), {"pixels": [[1] * 28] * 28})
    _assert_error(r, 500, "internal error")
    assert "secret detail" not in r.get_data(as_text=True)


# -- the command ----------------------------------------------------------------------
def _fastcnn(*args, **kw):
    return subprocess.run([sys.executable, "-m", "fastcnn", *args], capture_output=True,
                          text=True, timeout=120, **kw)


def test_serve_without_a_model_says_how_to_get_one():
    r = _fastcnn("serve")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "fastcnn train --save mnist.npz" in r.stderr


def test_serve_with_a_missing_file(tmp_path):
    r = _fastcnn("serve", "--model", str(tmp_path / "none.npz"))
    assert r.returncode == 2 and "no such file" in r.stderr and r.stderr.count("\n") == 1


def test_serve_without_flask_names_the_extra(model_file):
    code = ("import sys; sys.modules['flask'] = None; from fastcnn.cli import main; "
            f"sys.exit(main(['serve', '--model', {str(model_file[0])!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert 'pip install "fastcnn[web]"' in r.stderr


def test_serve_on_a_busy_port(model_file, client):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = _fastcnn("serve", "--model", str(model_file[0]), "--port",
                     str(busy.getsockname()[1]))
    assert r.returncode == 2 and "cannot listen on 127.0.0.1" in r.stderr
    assert r.stderr.count("\n") == 1


def test_serve_runs_says_where_and_stops_on_ctrl_c(model_file, client):
    import urllib.request
    # the child's Ctrl-C as a terminal gives it: a test run started in the
    # background (`pytest &`) hands its children SIGINT ignored, and Python
    # then installs no KeyboardInterrupt for it
    proc = subprocess.Popen([sys.executable, "-m", "fastcnn", "serve", "--model",
                             str(model_file[0]), "--port", "0", "--backend", "loops"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert "backends" in lines[0] and "shown first: loops" in lines[0], lines
        url = lines[1].split()[1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/"), lines
        with urllib.request.urlopen(url + "api/info", timeout=30) as response:
            assert json.load(response)["default_backend"] == "loops"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "stopped" in err


def test_the_page_is_installed_with_the_package():
    from importlib.resources import files
    static = files("fastcnn.serve") / "static"
    for name in ("index.html", "app.js", "style.css"):
        assert (static / name).is_file(), f"{name} is missing from the installed package"
