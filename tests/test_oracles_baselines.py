"""Baselines (references of Integrated Gradients, fills of occlusion) against their definitions, with the
expected numbers worked out in the test, and the blur against scipy.ndimage's Gaussian filter."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import tiny_onnx
from onnxsal import Explainer
from onnxsal.errors import MethodError
from onnxsal.preprocess import Preprocessing

IMAGENET = Preprocessing(size=24)  # ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), pixels / 255
# (0 - mean) / std and (127.5 / 255 - mean) / std, channel by channel
BLACK = [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]
GRAY = [(0.5 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0.5 - 0.406) / 0.225]


@pytest.fixture(scope="module", params=["NCHW", "NHWC"])
def layout(request):
    return request.param


def explainer(layout, h=24, w=24, prep=IMAGENET):
    return Explainer(tiny_onnx.classifier(h, w, layout), preprocessing=prep)


def sample(layout, n=2, h=24, w=24, seed=0):
    shape = (n, 3, h, w) if layout == "NCHW" else (n, h, w, 3)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def per_channel(b, layout):
    """(N, 3, H*W) view of a baseline in either layout."""
    return (b if layout == "NCHW" else b.transpose(0, 3, 1, 2)).reshape(len(b), 3, -1)


@pytest.mark.parametrize("name,values", [("black", BLACK), ("gray", GRAY), ("zeros", [0, 0, 0]), ("mean", [0, 0, 0])])
def test_constant_baselines(layout, name, values):
    ex, x = explainer(layout), sample(layout)
    (b,) = ex.baselines(x, name)
    assert b.shape == x.shape and b.dtype == np.float32
    c = per_channel(b, layout)
    for k in range(3):
        np.testing.assert_allclose(c[:, k], values[k], rtol=1e-6, atol=1e-7)


def test_black_and_gray_follow_the_models_own_preprocessing():
    # EfficientNet-style (p - 127) / 128: black = -127/128, gray = 0.5/128
    ex = explainer("NCHW", prep=Preprocessing(size=24, scale=1.0, mean=127.0, std=128.0))
    x = sample("NCHW")
    np.testing.assert_allclose(ex.baselines(x, "black")[0], -127 / 128, rtol=1e-7)
    np.testing.assert_allclose(ex.baselines(x, "gray")[0], 0.5 / 128, rtol=1e-6)
    bgr = explainer("NCHW", prep=Preprocessing(size=24, scale=1.0, mean=(10.0, 20.0, 30.0), std=(1.0, 2.0, 4.0), bgr=True))
    np.testing.assert_allclose(per_channel(bgr.baselines(x, "black")[0], "NCHW")[0, :, 0], [-10, -10, -7.5])


def test_numbers_arrays_lists_and_the_default():
    ex, x = explainer("NCHW"), sample("NCHW")
    np.testing.assert_array_equal(ex.baselines(x, 0.25)[0], np.full(x.shape, 0.25, np.float32))
    np.testing.assert_array_equal(ex.baselines(x, x[0])[0], np.stack([x[0], x[0]]))
    black, gray = ex.baselines(x, ["black", "gray"])
    np.testing.assert_allclose(per_channel(black, "NCHW")[0, :, 0], BLACK, rtol=1e-6)
    np.testing.assert_allclose(per_channel(gray, "NCHW")[0, :, 0], GRAY, rtol=1e-6)
    np.testing.assert_array_equal(ex.baselines(x, None)[0], black)
    bare = Explainer(tiny_onnx.classifier(24, 24))
    np.testing.assert_array_equal(bare.baselines(x, None)[0], np.zeros_like(x))
    with pytest.raises(MethodError, match="needs the model's preprocessing"):
        bare.baselines(x, "gray")


def test_uniform_is_uniform_over_the_pixel_range(layout):
    # pixels uniform on [0, 255], then normalised: per channel uniform on [black_c, white_c],
    # mean (0.5 - m_c) / s_c and standard deviation 1 / (sqrt(12) s_c)
    ex, x = explainer(layout, 48, 48), sample(layout, 2, 48, 48)
    (b,) = ex.baselines(x, "uniform", seed=3)
    c = per_channel(b, layout).astype(np.float64)
    std = np.array([0.229, 0.224, 0.225])
    lo, hi = np.array(BLACK), (1 - np.array([0.485, 0.456, 0.406])) / std
    assert (c >= lo[None, :, None] - 1e-5).all() and (c <= hi[None, :, None] + 1e-5).all()
    # ... and fills it: 2304 draws per channel come within 0.5 % of both ends
    span = (hi - lo)[None, :]
    assert (c.min(axis=2) - lo < 0.005 * span).all() and (hi - c.max(axis=2) < 0.005 * span).all()
    np.testing.assert_allclose(c.mean(axis=2), np.broadcast_to(GRAY, (2, 3)), atol=0.05 / 0.229)
    np.testing.assert_allclose(c.std(axis=2), np.broadcast_to(1 / (np.sqrt(12) * std), (2, 3)), rtol=0.05)
    assert not np.allclose(c[0], c[1])  # each sample draws its own
    np.testing.assert_array_equal(ex.baselines(x, "uniform", seed=3)[0], b)
    assert not np.array_equal(ex.baselines(x, "uniform", seed=4)[0], b)


def test_uniform_without_preprocessing_spans_the_inputs_range():
    bare = Explainer(tiny_onnx.classifier(48, 48))
    x = sample("NCHW", 2, 48, 48) * 3 + 1
    x[1] = x[1] * 0.5 - 4  # another range: each image's reference spans its own
    (b,) = bare.baselines(x, "uniform")
    for bi, xi in zip(b, x):
        assert bi.min() >= xi.min() and bi.max() <= xi.max()
        assert bi.min() < xi.min() + 0.01 * np.ptp(xi) and bi.max() > xi.max() - 0.01 * np.ptp(xi)
        assert abs(bi.mean() - (xi.min() + xi.max()) / 2) < 0.02 * np.ptp(xi)
    # an image's reference is its own: the same alone as beside another image, in either order
    np.testing.assert_array_equal(bare.baselines(x[1:], "uniform")[0][0], b[1])
    np.testing.assert_array_equal(bare.baselines(x[::-1], "uniform")[0][1], b[0])


@pytest.mark.parametrize("sigma", [1.0, 2.0, 10.0])
def test_blur_is_scipys_gaussian_filter(layout, sigma):
    # a Gaussian of standard deviation sigma truncated at 3 sigma, mirrored at the border (numpy's 'reflect',
    # scipy's 'mirror'), over the two spatial axes only; 72 x 64 keeps the radius inside the image
    ex, x = explainer(layout, 72, 64), sample(layout, 2, 72, 64)
    (b,) = ex.baselines(x, "blur", blur_sigma=sigma)
    axes = (2, 3) if layout == "NCHW" else (1, 2)
    want = ndimage.gaussian_filter(x.astype(np.float64), sigma, mode="mirror", truncate=3.0, axes=axes)
    np.testing.assert_allclose(b, want, atol=1e-5)


def test_blur_of_sigma_zero_is_the_input():
    ex, x = explainer("NCHW"), sample("NCHW")
    np.testing.assert_array_equal(ex.baselines(x, "blur", blur_sigma=0.0)[0], x)
