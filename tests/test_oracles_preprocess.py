"""Preprocessing against Pillow driven by hand in the test (sizes and boxes worked out below, not taken
from onnxsal), against the zoo models' documented recipes, and against torchvision when it is installed."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from onnxsal.preprocess import Preprocessing
from onnxsal.zoo import example_image

R = np.random.default_rng(12)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photo(width=300, height=200):
    """A random RGB photo (smooth enough that resampling differences show up as value errors, not noise)."""
    small = R.integers(0, 256, size=(height // 10, width // 10, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC))
    return Image.fromarray(np.clip(big.astype(int) + R.integers(-20, 21, big.shape), 0, 255).astype(np.uint8))


def normalized(pixels: np.ndarray, scale, mean, std) -> np.ndarray:
    """(H, W, 3) -> (3, H, W): (p * scale - mean_c) / std_c, channel by channel."""
    p = pixels.astype(np.float64)
    return np.stack([(p[..., c] * scale - mean[c]) / std[c] for c in range(3)])


# -- geometry ---------------------------------------------------------------------------------------------

def test_resize_then_crop_bilinear():
    # 300 x 200 photo, size 56, crop 0.875: short side to 56 / 0.875 = 64, so 96 x 64; centre 56 x 56 at (20, 4)
    im = photo()
    prep = Preprocessing(size=56, crop=0.875, order="resize_crop", interpolation="bilinear", mean=MEAN, std=STD)
    want = np.asarray(im.resize((96, 64), Image.Resampling.BILINEAR).crop((20, 4, 76, 60)))
    np.testing.assert_allclose(prep.array(im), normalized(want, 1 / 255, MEAN, STD), atol=1e-5)


@pytest.mark.parametrize("name,resample", [("bicubic", Image.Resampling.BICUBIC), ("bilinear", Image.Resampling.BILINEAR),
                                           ("nearest", Image.Resampling.NEAREST), ("lanczos", Image.Resampling.LANCZOS)])
def test_crop_then_resize(name, resample):
    # crop 0.875 of the short side 200 = 175 pixels, centred: (62, 12, 237, 187); then resampled to 56 x 56
    im = photo()
    prep = Preprocessing(size=56, crop=0.875, order="crop_resize", interpolation=name, scale=1.0, mean=127.0, std=128.0)
    want = np.asarray(im.crop((62, 12, 237, 187)).resize((56, 56), resample))
    np.testing.assert_allclose(prep.array(im), normalized(want, 1.0, (127,) * 3, (128,) * 3), atol=1e-5)
    assert prep.crop_box(300, 200) == (62, 12, 237, 187)


@pytest.mark.parametrize("kwargs,size,box", [
    ({}, (451, 300), (94, 19, 356, 281)),  # 224 of 256: 262.5 -> 262 of the short side 300, centred
    ({}, (300, 451), (19, 94, 281, 356)),
    ({"crop": 1.0, "size": 100}, (300, 200), (50, 0, 250, 200)),
    ({"order": "crop_resize", "crop": 0.5}, (600, 400), (200, 100, 400, 300)),
])
def test_crop_box_is_the_region_the_model_sees(kwargs, size, box):
    assert Preprocessing(**kwargs).crop_box(*size) == box


def test_one_value_means_all_three_channels():
    prep = Preprocessing(mean=[0.5], std=(0.25,), scale=1.0)
    assert prep.mean == (0.5, 0.5, 0.5) and prep.std == (0.25, 0.25, 0.25)
    np.testing.assert_allclose(prep.pixel_value(1.0), [2.0, 2.0, 2.0])


@pytest.mark.parametrize("kwargs,message", [
    ({"mean": (0.1, 0.2)}, "mean needs 1 or 3 values (one per channel) for a 3-channel model, got 2"),
    ({"std": (1.0, 0.0, 1.0)}, "std must be greater than 0"),
    ({"std": [1, 2, 3, 4]}, "std needs 1 or 3 values (one per channel) for a 3-channel model, got 4"),
    ({"crop": 0.0}, "crop must be greater than 0, not 0"),
    ({"crop": 1.01}, "crop must be at most 1, not 1.01"),
    ({"order": "squash"}, "order is resize_crop or crop_resize, not 'squash'"),
    ({"interpolation": "area"}, "interpolation is one of nearest, bilinear, bicubic, lanczos, not 'area'"),
    ({"layout": "CHW"}, "layout is NCHW or NHWC, not 'CHW'"),
    ({"size": 0}, "size must be at least 1, not 0"),
])
def test_invalid_settings_are_refused_with_the_reason(kwargs, message):
    from onnxsal.errors import InputError

    with pytest.raises(InputError) as err:
        Preprocessing(**kwargs)
    assert message in str(err.value)


def test_the_smallest_valid_settings():
    prep = Preprocessing(size=1, crop=1.0)
    assert prep.array(photo(30, 20)).shape == (3, 1, 1)


def test_settings_round_trip_through_dict_json_and_toml(tmp_path):
    from onnxsal.errors import InputError

    prep = Preprocessing(size=40, crop=0.9, order="crop_resize", interpolation="nearest", scale=2.0, mean=(1, 2, 3),
                         std=4.0, layout="NHWC", bgr=True)
    d = prep.to_dict()
    assert d == {"size": 40, "crop": 0.9, "order": "crop_resize", "interpolation": "nearest", "scale": 2.0,
                 "mean": [1.0, 2.0, 3.0], "std": [4.0, 4.0, 4.0], "layout": "NHWC", "bgr": True, "channels": 3}
    assert Preprocessing.from_dict(d) == prep
    import json

    (tmp_path / "p.json").write_text(json.dumps(d))
    assert Preprocessing.from_file(tmp_path / "p.json") == prep
    (tmp_path / "p.toml").write_text('[preprocessing]\nsize = 40\ncrop = 0.9\norder = "crop_resize"\n'
                                     'interpolation = "nearest"\nscale = 2.0\nmean = [1, 2, 3]\nstd = 4.0\n'
                                     'layout = "NHWC"\nbgr = true\n')
    assert Preprocessing.from_file(tmp_path / "p.toml") == prep
    with pytest.raises(InputError, match="unknown preprocessing keys: colour, gamma"):
        Preprocessing.from_dict({"size": 3, "gamma": 2.2, "colour": 1})
    with pytest.raises(InputError, match="preprocessing file not found"):
        Preprocessing.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{size: ")
    with pytest.raises(InputError, match="cannot parse preprocessing file"):
        Preprocessing.from_file(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="must hold a table of settings"):
        Preprocessing.from_file(tmp_path / "list.json")


@pytest.mark.parametrize("width,long_side,left", [(310, 99, 22), (316, 101, 22), (322, 103, 24)])
def test_odd_margins_round_half_to_even_as_torchvision(width, long_side, left):
    # short side 200 -> 64, long side int(64 * width / 200); the centre crop's left edge is Python's
    # round((long - 56) / 2): 21.5 -> 22, 22.5 -> 22, 23.5 -> 24
    im = photo(width, 200)
    prep = Preprocessing(size=56, crop=0.875, interpolation="bilinear", mean=0.0, std=1.0, scale=1.0)
    want = np.asarray(im.resize((long_side, 64), Image.Resampling.BILINEAR).crop((left, 4, left + 56, 60)))
    np.testing.assert_allclose(prep.array(im), normalized(want, 1.0, (0,) * 3, (1,) * 3), atol=1e-4)


def test_portrait_photo_and_no_crop():
    # 120 x 250 portrait, size 40, crop 1: short side 120 -> 40, long 250 -> 83 (250 * 40 / 120 = 83.3);
    # the centre crop starts at round(43 / 2) = 22 (Python's round, as torchvision's CenterCrop)
    im = photo(120, 250)
    prep = Preprocessing(size=40, crop=1.0, interpolation="nearest", mean=0.0, std=1.0, scale=1.0)
    want = np.asarray(im.resize((40, 83), Image.Resampling.NEAREST).crop((0, 22, 40, 62)))
    np.testing.assert_array_equal(prep.array(im), normalized(want, 1.0, (0,) * 3, (1,) * 3).astype(np.float32))


# -- values and layout --------------------------------------------------------------------------------------

def test_values_scale_mean_std_per_channel():
    pixels = np.array([[[0, 128, 255], [10, 20, 30]]], np.uint8)  # (1, 2, 3)
    prep = Preprocessing(scale=1 / 255, mean=MEAN, std=STD)
    got = prep.normalize(pixels)
    # worked by hand: red 0 -> -0.485 / 0.229, green 128 -> (128/255 - 0.456) / 0.224, blue 255 -> (1 - 0.406) / 0.225
    np.testing.assert_allclose(got[0, 0], [-2.117903930, 0.2051821, 2.64], rtol=1e-6)
    np.testing.assert_allclose(got[0, 1], [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (30 / 255 - 0.406) / 0.225],
                               rtol=1e-6)


def test_bgr_feeds_blue_first_with_the_mean_in_that_order():
    # Caffe-style models: channel 0 is blue, and mean/std are given in the order the channels are fed
    pixels = np.array([[[200, 100, 50]]], np.uint8)  # R, G, B
    prep = Preprocessing(scale=1.0, mean=(104.0, 117.0, 123.0), std=1.0, bgr=True)
    np.testing.assert_allclose(prep.normalize(pixels)[0, 0], [50 - 104, 100 - 117, 200 - 123])
    rgb = Preprocessing(scale=1.0, mean=(104.0, 117.0, 123.0), std=1.0, bgr=False)
    np.testing.assert_allclose(rgb.normalize(pixels)[0, 0], [200 - 104, 100 - 117, 50 - 123])


def test_nhwc_and_nchw_hold_the_same_values():
    im = photo()
    nchw = Preprocessing(size=48, layout="NCHW").batch([im, im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    nhwc = Preprocessing(size=48, layout="nhwc").batch([im, im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    assert nchw.shape == (2, 3, 48, 48) and nhwc.shape == (2, 48, 48, 3) and nchw.dtype == np.float32
    np.testing.assert_array_equal(nhwc, nchw.transpose(0, 2, 3, 1))
    # the second sample is the mirror image of the first (even crop offsets keep the mirror exact)
    np.testing.assert_allclose(nchw[1], nchw[0][:, :, ::-1], atol=1e-5)


def test_pixel_value_is_a_uniform_image_normalised():
    prep = Preprocessing(scale=1 / 255, mean=MEAN, std=STD)
    np.testing.assert_allclose(prep.pixel_value(0.0), [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225], rtol=1e-6)
    np.testing.assert_allclose(prep.pixel_value(255.0), [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225],
                               rtol=1e-6)


# -- the zoo models' documented recipes -----------------------------------------------------------------------

def _zoo_prep(name):
    from onnxsal import zoo

    return Preprocessing.from_dict(zoo.entry(name)["preprocessing"])


def test_mobilenet_v2_follows_torchvisions_imagenet_recipe_on_the_cat():
    # torchvision IMAGENET1K_V1: Resize(256) bilinear (the long side int(256 * long / short)), CenterCrop(224)
    # (offsets int(round((side - 224) / 2))), ToTensor, Normalize(ImageNet mean, std).  The cat is 451 x 300:
    # 256 * 451 / 300 = 384.85 -> 384 x 256, crop at (80, 16).
    im = Image.open(example_image("chelsea")).convert("RGB")
    assert im.size == (451, 300)
    want = np.asarray(im.resize((384, 256), Image.Resampling.BILINEAR).crop((80, 16, 304, 240)))
    np.testing.assert_allclose(_zoo_prep("mobilenet_v2").array(im), normalized(want, 1 / 255, MEAN, STD), atol=1e-5)


def test_efficientnet_lite0_crops_224_of_256_then_resizes_bicubic():
    # EfficientNet's eval recipe: centre crop of 224 / (224 + 32) of the short side, bicubic to 224, (p - 127) / 128.
    # The coffee photo is 600 x 400: crop 350 x 350 at (125, 25).
    im = Image.open(example_image("coffee")).convert("RGB")
    assert im.size == (600, 400)
    want = np.asarray(im.crop((125, 25, 475, 375)).resize((224, 224), Image.Resampling.BICUBIC))
    np.testing.assert_allclose(_zoo_prep("efficientnet_lite0").array(im), (want.transpose(2, 0, 1) - 127.0) / 128.0, atol=1e-6)


# -- torchvision (not installed by the test extras: it is 5.5 GB with its CUDA dependencies) --------------------

def test_against_torchvision_transforms():
    transforms = pytest.importorskip("torchvision.transforms", reason="torchvision is not installed (optional oracle)")
    im = Image.open(example_image("chelsea")).convert("RGB")
    recipe = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                 transforms.Normalize(MEAN, STD)])
    np.testing.assert_allclose(_zoo_prep("mobilenet_v2").array(im), recipe(im).numpy(), atol=1e-5)
