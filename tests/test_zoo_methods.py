"""Methods on the real zoo models and the example photos.

Grad-CAM on the cat, measured two ways:
  1. chelsea.png: the peak of the Grad-CAM map (top class), mapped back to photo coordinates through the
     centre crop, lies in the cat's face: the box x 110..350, y 60..290 of the 451x300 photo, drawn by eye
     around both eyes and the nose (the blurred background is the strip x > 380).
  2. a 2x2 collage, cat top-left and espresso cup bottom-right (gray elsewhere): Grad-CAM for a cat class
     peaks in the cat's quadrant and puts most of the map's mass there, and for espresso (967) in the cup's.
Integrated Gradients completeness on the zoo models: the 1e-2 relative gap is reached with error control
(tolerance=0.01); plain 50-point Gauss-Legendre stays within a few percent (the integrand jumps wherever a
ReLU6 switches; see methods/integrated_gradients.py).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from onnxsal import Explainer, zoo
from onnxsal.preprocess import load_image

FACE = (110, 60, 350, 290)  # x0, y0, x1, y1 in chelsea.png
CATS = (281, 282, 285, 287)
MODELS = ["mobilenet_v2", "efficientnet_lite0"]


@pytest.fixture(scope="module", params=MODELS)
def explainer(request):
    return Explainer(request.param)


def test_grad_cam_peak_is_on_the_cats_face(explainer):
    photo = load_image(zoo.example_image("chelsea"))
    res = explainer.explain(explainer.preprocessing.batch([photo]), "grad_cam", target="top")
    assert res.targets[0] in CATS
    row, col = np.unravel_index(np.argmax(res.maps[0]), res.maps[0].shape)
    left, top, right, _ = explainer.preprocessing.crop_box(*photo.size)
    scale = (right - left) / res.maps.shape[-1]
    x, y = left + (col + 0.5) * scale, top + (row + 0.5) * scale
    assert FACE[0] <= x <= FACE[2] and FACE[1] <= y <= FACE[3], (x, y)


def collage() -> Image.Image:
    canvas = Image.new("RGB", (448, 448), (124, 116, 104))
    for name, corner in (("chelsea", (0, 0)), ("coffee", (224, 224))):
        im = load_image(zoo.example_image(name))
        w, h = im.size
        s = min(w, h)
        canvas.paste(im.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2)).resize((224, 224), Image.BICUBIC), corner)
    return canvas


@pytest.mark.parametrize("method", ["grad_cam", "cam"])
def test_grad_cam_is_class_discriminative_on_a_collage(explainer, method):
    x = replace(explainer.preprocessing, crop=1.0).batch([collage()])
    cat = next(c for c, _, _ in explainer.top_classes(x, 20)[0] if c in CATS)
    quadrants = {}
    for target in (cat, 967):
        m = explainer.explain(x, method, target=target).maps[0]
        half = m.shape[0] // 2
        row, col = np.unravel_index(np.argmax(m), m.shape)
        quadrants[target] = ((row < half, col < half), m[:half, :half].sum() / m.sum(), m[half:, half:].sum() / m.sum())
    (peak, cat_share, cup_share) = quadrants[cat]
    assert peak == (True, True) and cat_share >= 0.6 and cup_share <= 0.1, quadrants
    (peak, cat_share, cup_share) = quadrants[967]
    assert peak == (False, False) and cup_share >= 0.6 and cat_share <= 0.2, quadrants


def test_integrated_gradients_completeness(explainer):
    photos = [load_image(zoo.example_image(name)) for name in zoo.EXAMPLES]
    x = explainer.preprocessing.batch(photos)
    seeds = None
    for options, bound in (({"tolerance": 1e-2}, 1e-2), ({}, 5e-2)):
        res = explainer.explain(x, "integrated_gradients", steps=50, baseline="black", **options)
        if seeds is None:
            seeds = np.zeros((len(x), 1000), np.float32)
            seeds[np.arange(len(x)), res.targets] = 1
            span = res.scores - explainer.score(explainer.baselines(x, "black")[0], seeds)
        gap = np.abs(res.delta) / np.abs(span)
        assert (gap <= bound).all(), (options, gap, res.info)
