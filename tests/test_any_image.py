"""The right pixels from any image, the same defaults in Python and the CLI, and what the CLI reports.

Oracles: pixel values computed by hand from the arrays written to disk (16-bit, 32-bit and float
files), PIL's documented luma formula, PIL resize/crop calls written out in the test, and torch modules
whose outputs and gradients torch computes.
"""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

import onnxsal
from onnxsal.cli import main
from onnxsal.preprocess import Preprocessing, load_image, pixels

RNG = np.random.default_rng(11)
PLAIN = dict(crop=1.0, mean=0.0, std=1.0, scale=1.0)  # x = pixel value, to read pixels back


def test_16bit_gray_png_keeps_its_range(tmp_path):
    raw = RNG.integers(0, 65536, size=(8, 8), dtype=np.uint16)
    Image.fromarray(raw).save(tmp_path / "g16.png")
    x = Preprocessing(size=8, **PLAIN).array(load_image(tmp_path / "g16.png"))
    want = raw.astype(np.float64) * 255.0 / 65535.0
    assert x.shape == (3, 8, 8)
    for c in range(3):
        np.testing.assert_allclose(x[c], want, rtol=1e-5, atol=1e-3)
    assert x.max() < 255.5 and x.min() >= 0  # not clamped to all 255


def test_32bit_integer_and_float_images(tmp_path):
    raw = RNG.integers(0, 2 ** 31 - 1, size=(6, 6), dtype=np.int32)
    Image.fromarray(raw).save(tmp_path / "i32.tif")
    x = Preprocessing(size=6, channels=1, **PLAIN).array(load_image(tmp_path / "i32.tif"))
    np.testing.assert_allclose(x[0], raw.astype(np.float64) * 255.0 / (2 ** 31 - 1), rtol=1e-5, atol=1e-3)
    values = RNG.uniform(0, 1, size=(6, 6)).astype(np.float32)
    Image.fromarray(values).save(tmp_path / "f.tif")
    x = Preprocessing(size=6, channels=1, **PLAIN).array(load_image(tmp_path / "f.tif"))
    np.testing.assert_allclose(x[0], values * 255.0, rtol=1e-5, atol=1e-3)


def test_one_channel_models_get_luma_and_matching_statistics():
    rgb = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    gray = pixels(Image.fromarray(rgb), 1)[..., 0]
    # PIL's "L": L = R * 299/1000 + G * 587/1000 + B * 114/1000 (rounded)
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    assert np.abs(gray - luma).max() <= 0.51
    prep = Preprocessing(channels=1)
    # ImageNet's statistics averaged for one channel: mean 0.449, std 0.226
    assert prep.mean == pytest.approx((0.449,), abs=1e-9) and prep.std == pytest.approx((0.226,), abs=1e-9)
    assert prep.pixel_value(0.0) == pytest.approx([-0.449 / 0.226], rel=1e-6)
    with pytest.raises(onnxsal.errors.InputError, match="mean needs 1 value for a 1-channel model, got 2"):
        Preprocessing(channels=1, mean=(0.1, 0.2))


def _onnx(module, shape, nhwc=False):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(*shape),), f, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "batch"}})
    return f.getvalue()


class Gray(nn.Module):
    def __init__(self, channels=1, nhwc=False, bias=0.0):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        with torch.no_grad():
            self.conv.bias += bias
        self.fc = nn.Linear(4, 3)
        self.nhwc = nhwc

    def forward(self, x):
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_baselines_follow_the_channel_count():
    ex = onnxsal.Explainer(_onnx(Gray(1), (1, 1, 8, 8)), preprocessing=Preprocessing(size=8, channels=1))
    x = RNG.standard_normal((2, 1, 8, 8)).astype(np.float32)
    black = ex.baselines(x, "black")[0]
    np.testing.assert_allclose(black, np.full_like(x, -0.449 / 0.226), rtol=1e-6)
    gray = ex.baselines(x, "gray")[0]
    np.testing.assert_allclose(gray, np.full_like(x, (127.5 / 255 - 0.449) / 0.226), rtol=1e-6)
    assert ex.baselines(x, "uniform")[0].shape == x.shape
    res = ex.explain(x, "integrated_gradients", steps=8)
    assert res.maps.shape == (2, 8, 8)


@pytest.fixture()
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(RNG.integers(0, 256, size=(30, 50, 3), dtype=np.uint8)).save(path)
    return path


def test_cli_explains_one_channel_and_refuses_two(tmp_path, photo):
    runner = CliRunner()
    (tmp_path / "gray.onnx").write_bytes(_onnx(Gray(1), (1, 1, 16, 16)))
    result = runner.invoke(main, ["explain", str(photo), "--model", str(tmp_path / "gray.onnx"), "--method", "saliency",
                                  "--out", str(tmp_path / "out"), "--format", "both"])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "out" / "photo_saliency.npy").shape == (16, 16)
    (tmp_path / "two.onnx").write_bytes(_onnx(Gray(2), (1, 2, 16, 16)))
    result = runner.invoke(main, ["explain", str(photo), "--model", str(tmp_path / "two.onnx")])
    assert result.exit_code == 1 and "takes 2 channels" in result.output and len(result.output.strip().splitlines()) == 1


def test_non_square_geometry_against_pil_by_hand():
    im = Image.fromarray(RNG.integers(0, 256, size=(30, 100, 3), dtype=np.uint8))  # 100 wide, 30 high
    prep = Preprocessing(size=(12, 20), **PLAIN)
    # resize_crop: s = max(12 / 30, 20 / 100) = 0.4 -> 40 x 12, centre crop 20 x 12 from x = 10
    want = np.asarray(im.resize((40, 12), Image.BILINEAR).crop((10, 0, 30, 12)), np.float32)
    np.testing.assert_array_equal(prep.array(im), want.transpose(2, 0, 1))
    assert prep.crop_box(100, 30) == (25, 0, 75, 30)
    # crop_resize: the largest 5:3 region (50 x 30) in the middle, resized to 20 x 12
    prep = Preprocessing(size="12x20", order="crop_resize", **PLAIN)
    want = np.asarray(im.crop((25, 0, 75, 30)).resize((20, 12), Image.BILINEAR), np.float32)
    np.testing.assert_array_equal(prep.array(im), want.transpose(2, 0, 1))


def test_cli_non_square_models_and_nhwc_sizes(tmp_path, photo):
    runner = CliRunner()
    (tmp_path / "wide.onnx").write_bytes(_onnx(Gray(3), (1, 3, 12, 20)))
    result = runner.invoke(main, ["explain", str(photo), "--model", str(tmp_path / "wide.onnx"), "--method", "grad_cam",
                                  "--out", str(tmp_path / "o1"), "--format", "npy"])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "o1" / "photo_grad_cam.npy").shape == (12, 20)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Gray(3, nhwc=True).eval(), (torch.randn(1, 12, 20, 3),), f, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "b", 1: "h", 2: "w"}})
    (tmp_path / "nhwc.onnx").write_bytes(f.getvalue())
    result = runner.invoke(main, ["inspect", str(tmp_path / "nhwc.onnx"), "--size", "12x20"])
    assert result.exit_code == 0, result.output
    assert "[Nx12x20x3] NHWC" in result.output
    result = runner.invoke(main, ["explain", str(photo), "--model", str(tmp_path / "nhwc.onnx"), "--size", "12x20",
                                  "--method", "saliency", "--out", str(tmp_path / "o2"), "--format", "npy"])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "o2" / "photo_saliency.npy").shape == (12, 20)
    result = runner.invoke(main, ["inspect", str(tmp_path / "nhwc.onnx"), "--size", "12y20"])
    assert result.exit_code == 2 and "HxW" in result.output


def test_python_reads_the_same_sidecar_as_the_cli(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(_onnx(Gray(3), (1, 3, 8, 8)))
    settings = {"size": 8, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "crop": 1.0}
    (tmp_path / "model.preprocess.json").write_text(json.dumps(settings))
    ex = onnxsal.Explainer(str(path))
    assert ex.preprocessing is not None and ex.preprocessing.mean == (0.5, 0.4, 0.3)
    x = np.zeros((1, 3, 8, 8), np.float32)
    black = ex.baselines(x, "black")[0][0, :, 0, 0]
    np.testing.assert_allclose(black, [-0.5 / 0.2, -0.4 / 0.25, -0.3 / 0.3], rtol=1e-6)
    # a plain <model>.json is not a preprocessing file
    (tmp_path / "model.preprocess.json").unlink()
    (tmp_path / "model.json").write_text(json.dumps({"size": "abc"}))
    assert onnxsal.Explainer(str(path)).preprocessing is None


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 6)

    def forward(self, x):
        e = torch.relu(self.body(x)).mean(dim=(2, 3))
        return e, torch.softmax(self.fc(e), dim=1)


def test_cli_says_which_output_and_head_it_explains(tmp_path, photo):
    runner = CliRunner()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TwoHeads().eval(), (torch.randn(1, 3, 8, 8),), f, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["embedding", "prob"], dynamic_axes={"x": {0: "b"}})
    model = tmp_path / "two.onnx"
    model.write_bytes(f.getvalue())
    args = ["explain", str(photo), "--model", str(model), "--method", "saliency", "--out", str(tmp_path / "o")]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert 'explaining "prob" because it ends in a Softmax head' in result.output
    assert 'Softmax head' in result.output and "target kind logit" in result.output
    assert 'logit of class' in result.output and 'at output "prob"' in result.output
    result = runner.invoke(main, args + ["--output-name", "embedding"])
    assert result.exit_code == 0, result.output
    assert 'at output "embedding"' in result.output and "float outputs" not in result.output
    result = runner.invoke(main, args + ["--output-name", "nope"])
    assert result.exit_code == 1 and "its outputs are: embedding, prob" in result.output


def test_all_zero_maps_are_reported(tmp_path, photo):
    runner = CliRunner()
    model = tmp_path / "dead.onnx"
    model.write_bytes(_onnx(Gray(3, bias=-1e4), (1, 3, 8, 8)))  # every ReLU is off: Grad-CAM is 0 everywhere
    result = runner.invoke(main, ["explain", str(photo), "--model", str(model), "--method", "grad_cam", "--out",
                                  str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "warning: the grad_cam map of photo.png is all zeros" in result.output


def test_python_and_cli_adapt_a_sidecar_to_the_model(tmp_path, photo):
    # an NHWC 12x20 model and a sidecar that names only the statistics: both faces feed 12x20 NHWC
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Gray(3, nhwc=True).eval(), (torch.randn(1, 12, 20, 3),), f, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "b"}})
    (tmp_path / "nhwc.onnx").write_bytes(f.getvalue())
    (tmp_path / "nhwc.preprocess.json").write_text(json.dumps({"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}))
    ex = onnxsal.Explainer(str(tmp_path / "nhwc.onnx"))
    assert ex.preprocessing.layout == "NHWC" and ex.preprocessing.shape == (12, 20)
    x = ex.preprocessing.batch([load_image(photo)])
    assert x.shape == (1, 12, 20, 3)
    api = ex.explain(x, "saliency").maps[0]
    out = tmp_path / "o"
    result = CliRunner().invoke(main, ["explain", str(photo), "--model", str(tmp_path / "nhwc.onnx"), "--method", "saliency",
                                       "--format", "npy", "--out", str(out)])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(out / "photo_saliency.npy"), api, rtol=1e-5, atol=1e-8)
    # a one-channel model whose sidecar gives one mean and std (no "channels" key)
    (tmp_path / "gray.onnx").write_bytes(_onnx(Gray(1), (1, 1, 16, 16)))
    (tmp_path / "gray.preprocess.json").write_text(json.dumps({"mean": [0.5], "std": [0.25]}))
    result = CliRunner().invoke(main, ["explain", str(photo), "--model", str(tmp_path / "gray.onnx"), "--method", "saliency",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    ex = onnxsal.Explainer(str(tmp_path / "gray.onnx"))
    assert ex.preprocessing.channels == 1 and ex.preprocessing.mean == (0.5,)
    black = ex.baselines(np.zeros((1, 1, 16, 16), np.float32), "black")[0]
    np.testing.assert_allclose(black, -2.0)  # (0 - 0.5) / 0.25


def test_a_model_needing_another_input_is_refused_up_front(tmp_path, photo):
    class TwoInputs(nn.Module):
        def forward(self, meta, image):
            return image.mean(dim=(2, 3)) + meta

    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TwoInputs(), (torch.randn(1, 3), torch.randn(1, 3, 8, 8)), f, dynamo=False, opset_version=17,
                          input_names=["meta", "image"], output_names=["y"])
    (tmp_path / "two.onnx").write_bytes(f.getvalue())
    result = CliRunner().invoke(main, ["explain", str(photo), "--model", str(tmp_path / "two.onnx"), "--input-name", "image"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "also needs input(s) 'meta'" in lines[0], result.output
