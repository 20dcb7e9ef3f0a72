"""The static page web/index.html runs an exported MobileNetV2 Grad-CAM graph (with its overlay) in headless
Chromium through onnxruntime-web's wasm back end, served from 127.0.0.1 (the wasm files do not load from
file://). The heatmap it computes equals the Python API's (<= 1e-3), it names the same class, and its
screenshot shows the overlay.

Needs Chromium (Debian's `chromium`) and web/node_modules (npm ci); skipped, with the reason, where they are
missing and cannot be installed."""

from __future__ import annotations

import base64
import functools
import html
import json
import re
import shutil
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from onnxsal import Explainer, postprocess as pp, zoo
from onnxsal.preprocess import load_image
from web_helpers import WEB, require_node_modules

TOL = 1e-3


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium here (Debian: apt-get install -y chromium): the browser check needs a headless browser")


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder served over HTTP: the page, onnxruntime-web, the exported model, its preprocessing, labels, the photo tensor."""
    browser = chromium()
    require_node_modules("onnxruntime-web")
    root = tmp_path_factory.mktemp("site")
    for name in ("index.html", "app.js"):
        shutil.copy(WEB / name, root / name)
    (root / "node_modules").symlink_to(WEB / "node_modules")
    ex = Explainer("mobilenet_v2")
    ex.export(root / "explain.onnx", "grad_cam", overlay=True)
    prep = ex.preprocessing
    (root / "explain.prep.json").write_text(json.dumps({"size": 224, "crop": prep.crop, "mean": prep.mean, "std": prep.std,
                                                        "scale": prep.scale}))
    (root / "labels.txt").write_text("\n".join(ex.labels))
    x = prep.batch([load_image(zoo.example_image("chelsea"))])
    x.tofile(root / "x.f32")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html?input=x.f32&labels=labels.txt"
    yield browser, url, ex, x, root
    server.shutdown()


def headless(browser, *args):
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=60000", *args],
                          capture_output=True, text=True, timeout=180)


def test_page_heatmap_equals_the_python_api(site):
    browser, url, ex, x, _ = site
    dom = headless(browser, "--dump-dom", url).stdout
    status = re.search(r'id="status"[^>]*>([^<]*)<', dom)
    assert status and status.group(1).startswith("done"), f"the page did not finish: {status and html.unescape(status.group(1))}"
    heat = np.frombuffer(base64.b64decode(re.search(r'<textarea id="heatmap"[^>]*>([^<]*)</textarea>', dom).group(1)),
                         np.float32).reshape(1, 224, 224)
    res = ex.explain(x, "grad_cam")
    want = pp.normalize(pp.NUMPY, res.maps, 224 * 224, pp.display_percentile("grad_cam"), res.signed)
    assert int(re.search(r'data-target="(\d+)"', dom).group(1)) == res.targets[0]
    assert ex.labels[res.targets[0]] in html.unescape(dom)  # the top classes and the caption name it
    err = np.abs(heat - want).max()
    assert err <= TOL, f"onnxruntime-web differs from the Python API by {err:.2e}"


def test_screenshot_shows_the_overlay(site, tmp_path):
    from PIL import Image

    browser, url, _, _, _ = site
    shot = tmp_path / "page.png"
    headless(browser, "--window-size=960,430", "--hide-scrollbars", f"--screenshot={shot}", url)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    # jet's hot end blended over the cat (alpha 0.5): strongly red pixels, which neither the photo nor the page has
    hot = (r > 180) & (g < 90) & (b < 90)
    assert hot.sum() > 2000, f"only {hot.sum()} overlay-red pixels in the screenshot"
    # and jet's cold end (cyan/blue-green tints where the map is low; matplotlib's jet keeps cyan to a narrower band
    # of values than MATLAB's, 412 such pixels on the cat at this window size)
    cold = (b > r + 40) & (g > r + 20)
    assert cold.sum() > 200, f"only {cold.sum()} overlay-cyan pixels"
