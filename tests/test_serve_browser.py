"""`fastcnn serve` in a real browser: headless Chromium draws digits on the page.

A small model is trained for a few seconds on MNIST training images; the
server (``fastcnn.serve.command.make_server``, as the command uses it) runs in
a thread on a free localhost port; Chromium, driven by Selenium, loads the
page and traces a '1' and a '7' from held-out MNIST test images onto the
canvas, stroke by stroke with pointer events (the '7' with touch), and the
test checks what the page shows: the prediction, the bars, the 28x28 input,
the feature maps, every backend's time and their agreement. A screenshot is
saved to $FASTCNN_SCREENSHOT_DIR (default: the test's tmp folder).

Skips, saying why, only where selenium, Chromium or chromedriver is missing
(Debian: apt-get install chromium chromium-driver; pip install selenium) or
the web extra is not installed. What the API does with bad requests is
tests/test_serve_api.py's.
"""
import os
import shutil
import threading

import numpy as np
import pytest

pytest.importorskip("flask", reason='the web extra is not installed: pip install "fastcnn[web]"')
webdriver = pytest.importorskip("selenium.webdriver",
                                reason="selenium is not installed: pip install selenium")

import fastcnn  # noqa: E402
from fastcnn import models, training  # noqa: E402
from fastcnn.datasets import load_mnist  # noqa: E402
from fastcnn.datasets.mnist import MEAN, STD  # noqa: E402
from fastcnn.nn.optim import make_optimizer  # noqa: E402
from fastcnn.serve.command import make_server  # noqa: E402

CANVAS = 280
SCALE = CANVAS // 28


# -- the model and the server ---------------------------------------------------
@pytest.fixture(scope="module")
def mnist():
    return load_mnist(limit_train=12000)


@pytest.fixture(scope="module")
def model_path(mnist, tmp_path_factory):
    """The light model after 3 epochs on up to 12,000 training images (about 95% on
    the test images): a few seconds with im2col."""
    model = models.build("light", seed=0)
    opt = make_optimizer(training.optimizer_config("adam"), model.parameters())
    path = tmp_path_factory.mktemp("serve") / "light.npz"
    with fastcnn.use_backend("im2col"):
        metrics = training.fit(model, opt, (mnist.train_images, mnist.train_labels),
                               (mnist.test_images[:1000], mnist.test_labels[:1000]),
                               epochs=3, batch_size=64, seed=0, save=str(path),
                               model_name="light")
    assert metrics["test_accuracy"] > 0.93, metrics["test_accuracy"]
    return path


@pytest.fixture(scope="module")
def url(model_path):
    server, _ = make_server(str(model_path), "im2col", "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def browser():
    from selenium.common.exceptions import WebDriverException
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("Chromium or chromedriver is not installed "
                    "(Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1200,1000", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=webdriver.ChromeService(driver_path),
                                  options=options)
    except WebDriverException as e:
        pytest.fail(f"Chromium is installed but does not start: {e.msg}")
    try:
        yield driver
    finally:
        driver.quit()


# -- tracing an MNIST digit into strokes ---------------------------------------
def thin(binary):
    """Zhang and Suen's thinning (CACM 1984) of a 0/1 image to one-pixel lines."""
    img = np.pad(binary.astype(np.uint8), 1)
    while True:
        changed = False
        for step in (0, 1):
            p = [np.roll(np.roll(img, -di, 0), -dj, 1) for di, dj in
                 ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))]
            neighbours = sum(p)
            ring = p + p[:1]
            transitions = sum(((ring[k] == 0) & (ring[k + 1] == 1)).astype(int)
                              for k in range(8))
            p2, p4, p6, p8 = p[0], p[2], p[4], p[6]
            if step == 0:
                cond = (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0)
            else:
                cond = (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0)
            remove = (img == 1) & (neighbours >= 2) & (neighbours <= 6) & (transitions == 1) & cond
            if remove.any():
                img[remove] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1]


def strokes_of(image):
    """Pen strokes that retrace ``image`` (28x28 in [0, 1]): its skeleton, walked
    from end points, as lists of (row, column) pixels."""
    skeleton = thin(image > 0.5)
    left = {tuple(p) for p in np.argwhere(skeleton)}

    def neighbours(p):
        return [(p[0] + di, p[1] + dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)
                if (di or dj) and (p[0] + di, p[1] + dj) in left]

    strokes = []
    while left:
        ends = [p for p in left if len(neighbours(p)) <= 1]
        p = min(ends or left)        # the top-most end, as a pen would start
        stroke = [p]
        left.discard(p)
        while True:
            nxt = neighbours(p)
            if not nxt:
                break
            # prefer the straight (4-connected) neighbour: no corner cutting
            p = min(nxt, key=lambda q: abs(q[0] - p[0]) + abs(q[1] - p[1]))
            stroke.append(p)
            left.discard(p)
        if len(stroke) >= 3:         # thinning leaves the odd stray pixel
            strokes.append(stroke)
    return strokes


def draw(driver, pad, strokes, pointer):
    """Each stroke as one pointer down, moves through its points, pointer up."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput
    kind = {"mouse": interaction.POINTER_MOUSE, "touch": interaction.POINTER_TOUCH}[pointer]
    origin = pad.location_once_scrolled_into_view
    for stroke in strokes:
        actions = ActionBuilder(driver, mouse=PointerInput(kind, pointer), duration=5)
        xy = [(origin["x"] + 2 + SCALE * c + SCALE // 2, origin["y"] + 2 + SCALE * r + SCALE // 2)
              for r, c in stroke]
        actions.pointer_action.move_to_location(*xy[0])
        actions.pointer_action.pointer_down()
        for x, y in xy[1::2] + xy[-1:]:
            actions.pointer_action.move_to_location(x, y)
        actions.pointer_action.pointer_up()
        actions.perform()


# -- the test --------------------------------------------------------------------
def _held_out(mnist, digit):
    """The first test image of ``digit`` (never trained on), as ink in [0, 1]."""
    k = int(np.flatnonzero(mnist.test_labels == digit)[0])
    return np.clip(mnist.test_images[k, 0] * STD + MEAN, 0, 1)


def test_drawn_digits_are_read(browser, url, mnist, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(url)
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: "parameters" in d.find_element(By.ID, "model").text)
    assert "light" in browser.find_element(By.ID, "model").text
    pad = browser.find_element(By.ID, "pad")
    for digit, pointer in ((1, "mouse"), (7, "touch")):
        browser.find_element(By.ID, "clear").click()
        strokes = strokes_of(_held_out(mnist, digit))
        assert strokes, f"no strokes traced from the {digit}"
        before = int(browser.find_element(By.TAG_NAME, "body").get_attribute(
            "data-shown-stroke"))
        draw(browser, pad, strokes, pointer)
        wait.until(lambda d: int(d.find_element(By.TAG_NAME, "body").get_attribute(
            "data-shown-stroke")) == before + len(strokes))
        _check_page(browser, digit)
    folder = os.environ.get("FASTCNN_SCREENSHOT_DIR") or str(tmp_path)
    os.makedirs(folder, exist_ok=True)
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {   # the whole page
        "width": 1200, "height": height, "deviceScaleFactor": 1, "mobile": False})
    path = os.path.join(folder, "serve.png")
    assert browser.save_screenshot(path)
    print(f"screenshot: {path}")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors     # e.g. a Content-Security-Policy violation


def _check_page(browser, digit):
    from selenium.webdriver.common.by import By
    find = browser.find_element
    assert find(By.ID, "prediction").text == str(digit)
    assert "error" not in find(By.ID, "status").get_attribute("class")
    bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
    assert len(bars) == 10
    p = [float(b.get_attribute("data-p")) for b in bars]
    assert abs(sum(p) - 1) < 1e-3 and int(np.argmax(p)) == digit
    top = bars[digit].find_element(By.CLASS_NAME, "fill")
    assert top.size["width"] >= 0.4 * bars[digit].size["width"] > 0   # painted, not just set
    # every backend ran, agrees, and has a time
    rows = browser.find_elements(By.CSS_SELECTOR, "#backends tbody tr")
    names = [r.get_attribute("data-backend") for r in rows]
    assert set(fastcnn.available_backends()) <= set(names)
    for row in rows:
        cells = row.find_elements(By.TAG_NAME, "td")
        assert cells[2].text.endswith(" ms") and cells[3].text == str(digit), row.text
    assert f"backends say {digit}" in find(By.ID, "agree").text
    # the 28x28 input and the feature maps are painted, not blank
    ink = browser.execute_script("""
        const sums = [];
        const seen = document.getElementById('seen');
        for (const c of [seen, ...document.querySelectorAll('#maps canvas')]) {
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let s = 0; for (let k = 0; k < d.length; k += 4) s += d[k];
          sums.push(s);
        }
        return sums;""")
    layers = browser.find_elements(By.CSS_SELECTOR, "#maps .layer")
    assert [layer.get_attribute("data-layer") for layer in layers] == ["conv1", "conv2"]
    counts = [len(layer.find_elements(By.TAG_NAME, "canvas")) for layer in layers]
    assert counts == [8, 16] and len(ink) == 1 + 8 + 16
    assert ink[0] > 0 and sum(v > 0 for v in ink[1:]) >= 12, ink
