"""The exported zoo MobileNetV2 Grad-CAM and saliency graphs in onnxruntime-node (web/explain-node.mjs) give the
Python API's heatmaps (<= 1e-4) and targets on the bundled photos.

Needs node and npm; web/node_modules is installed with `npm ci` (ONNXRUNTIME_NODE_INSTALL=skip: the bundled
CPU build, no CUDA download) when missing. Skipped, with the reason, only where node/npm are missing or the
pinned packages cannot be installed (no registry)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from onnxsal import Explainer, postprocess as pp, zoo
from onnxsal.preprocess import load_image
from web_helpers import WEB, require_node_modules

TOL = 1e-4


@pytest.fixture(scope="module")
def node_ready():
    require_node_modules("onnxruntime-node")


@pytest.fixture(scope="module")
def mobilenet():
    ex = Explainer("mobilenet_v2")
    photos = [load_image(zoo.example_image(name)) for name in ("chelsea", "coffee")]
    return ex, ex.preprocessing.batch(photos)


def run_node(model_path: Path, x: np.ndarray, tmp: Path, classes=()):
    x_path = tmp / "x.f32"
    np.ascontiguousarray(x, np.float32).tofile(x_path)  # the preprocessed tensor, raw float32
    prefix = tmp / "out"
    done = subprocess.run(["node", "explain-node.mjs", str(model_path), str(x_path), ",".join(map(str, x.shape)), str(prefix),
                           *map(str, classes)], cwd=WEB, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    meta = json.loads(Path(f"{prefix}.json").read_text())
    heat = np.fromfile(f"{prefix}.heatmap.f32", dtype=np.float32).reshape(meta["heatmapShape"])
    return meta, heat


@pytest.mark.parametrize("method", ["grad_cam", "saliency"])
def test_onnxruntime_node_equals_the_python_api(node_ready, mobilenet, method, tmp_path):
    ex, x = mobilenet
    model_path = tmp_path / f"{method}.onnx"
    ex.export(model_path, method)
    for classes, target in (((), "top"), ((283, -1), None)):
        meta, heat = run_node(model_path, x, tmp_path, classes)
        if target is None:  # class 283 for the cat, the top class (espresso) for the cup
            target = [283, int(ex.predict(x[1:]).argmax())]
        res = ex.explain(x, method, target=target)
        want = pp.normalize(pp.NUMPY, res.maps, 224 * 224, pp.display_percentile(method), res.signed)
        assert meta["inputs"] == ["image", "class"]
        assert meta["target"] == [int(t) for t in res.targets]
        np.testing.assert_allclose(np.asarray(meta["scores"]).reshape(meta["scoresShape"]), ex.predict(x), rtol=1e-4, atol=1e-4)
        err = np.abs(heat - want).max()
        assert err <= TOL, f"{method}: onnxruntime-node differs from the Python API by {err:.2e}"
        assert heat.max() > 0.5
