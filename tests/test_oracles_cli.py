"""The CLI end to end: the .npy it writes equals the Python API's map for the same options, and the PNG's
pixels are the documented picture of that map (README, "Pictures"), rebuilt here from the map, the photo,
torch's bilinear interpolate and the colormaps' definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from onnxsal.cli import main
from onnxsal.zoo import example_image
from test_oracles_viz import assert_pixels, entry, mpl_table

CAT = example_image("chelsea")
# MobileNetV2 sees 224 of the 256-pixel short side: 262 of the cat photo's 300 (224 * 300 / 256 = 262.5 -> 262),
# centred in its 451 x 300: the box (94, 19, 356, 281); the PNG is that region at its own resolution
REGION = (94, 19, 356, 281)


def jet(index):
    """matplotlib's jet table at integer entries, as 0..255 floats: the documented colormap of CAM overlays."""
    return mpl_table("jet").astype(np.float64)[index]


def upsampled(m, side):
    return torch.nn.functional.interpolate(torch.from_numpy(m.astype(np.float32))[None, None], size=(side, side),
                                           mode="bilinear", align_corners=False)[0, 0].numpy().astype(np.float64)


def explain(tmp_path, method):
    """The CLI on the cat for one method, PNG and .npy (run inside each test, so a mutation tool sees the test
    reach the whole file pipeline)."""
    result = CliRunner().invoke(main, ["explain", str(CAT), "--model", "mobilenet_v2", "--method", method, "--target", "281",
                                       "--alpha", "0.4", "--format", "both", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    m = np.load(tmp_path / f"chelsea_{method}.npy")
    assert m.dtype == np.float32 and m.shape == (224, 224)
    with Image.open(tmp_path / f"chelsea_{method}.png") as png:
        assert png.size == (262, 262)
        return m.astype(np.float64), png.convert("RGB")


@pytest.fixture(scope="module")
def api():
    from onnxsal import Explainer
    from onnxsal.preprocess import load_image

    ex = Explainer("mobilenet_v2")
    return ex, ex.preprocessing.batch([load_image(CAT)])


def same_as_api(m, api, method):
    ex, x = api
    want = ex.explain(x, method, target=281).maps[0]
    np.testing.assert_allclose(m, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def photo_region():
    with Image.open(CAT) as im:
        return np.asarray(im.convert("RGB").crop(REGION), np.float64)


def test_cam_npy_and_png(tmp_path, api):
    # CAM maps: scaled by their maximum, jet, blended at constant opacity min(alpha, 0.5) = 0.4
    m, png = explain(tmp_path, "grad_cam")
    same_as_api(m, api, "grad_cam")
    values = upsampled(m / m.max(), 262)
    want = 0.6 * photo_region() + 0.4 * jet(entry(values, False))  # the nearest of the table's 256 entries
    assert_pixels(png, want, stray=1e-4)  # a few map values land on a border between two jet entries


def test_pixel_npy_and_png(tmp_path, api):
    # pixel maps: clipped at the 99th percentile of |map|, inferno with opacity sqrt(v) over the photo, which is
    # half desaturated and dimmed by 1 - 0.75 alpha
    m, png = explain(tmp_path, "saliency")
    same_as_api(m, api, "saliency")
    values = np.clip(upsampled(np.clip(m / np.percentile(np.abs(m), 99), 0, 1), 262), 0, 1)
    p = photo_region()
    dimmed = (0.5 * p + 0.5 * p.mean(axis=2, keepdims=True)) * (1 - 0.75 * 0.4)
    inferno = mpl_table("inferno").astype(np.float64)  # inferno as documented: matplotlib's table
    weight = np.sqrt(values)[..., None]
    want = (1 - weight) * dimmed + weight * inferno[entry(values, False)]
    assert_pixels(png, want, stray=1e-3)


def test_signed_npy_and_png(tmp_path, api):
    m, png = explain(tmp_path, "gradient_x_input")
    same_as_api(m, api, "gradient_x_input")
    values = np.clip(upsampled(np.clip(m / np.percentile(np.abs(m), 99), -1, 1), 262), -1, 1)
    p = photo_region()
    dimmed = (0.5 * p + 0.5 * p.mean(axis=2, keepdims=True)) * (1 - 0.75 * 0.4)
    weight = np.abs(values)[..., None]
    want = (1 - weight) * dimmed + weight * mpl_table("RdBu_r")[entry(values, True)]
    assert_pixels(png, want, stray=1e-3)


@pytest.mark.parametrize("alpha,opacity", [(0.9, 0.5), (0.2, 0.2)])
def test_cam_overlay_opacity_is_alpha_capped_at_one_half(alpha, opacity):
    # a CAM map covers the whole photo, so its blend is capped at 0.5 to keep the photo readable
    from onnxsal.methods.base import Explanation
    from onnxsal.workflow import picture

    rng = np.random.default_rng(0)
    m = rng.uniform(0, 3, (1, 8, 8)).astype(np.float32)
    res = Explanation(maps=m, attributions=None, targets=np.zeros(1, np.int64), scores=np.zeros(1, np.float32),
                      method="grad_cam", signed=False)
    im = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    want = (1 - opacity) * np.asarray(im, np.float64) + opacity * jet(entry(m[0] / m[0].max(), False))
    assert_pixels(picture(res, 0, im, "grad_cam", None, alpha), want, exact=0.9)
