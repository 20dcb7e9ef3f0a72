"""Method post-processing against formulas written in the test: channel reductions, the noise of the
SmoothGrad family (Smilkov et al. 2017: sigma = noise level x (max - min) of the input) and its three
statistics, Guided Grad-CAM's upsampling against torch's interpolate, occlusion against a plain loop that
runs the model with onnxruntime directly."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

import tiny_onnx
from onnxsal import Explainer
from onnxsal.methods import METHODS
from onnxsal.methods.base import reduce_channels

R = np.random.default_rng(12)


def batch(layout, n=2, h=24, w=24, scale=1.0):
    shape = (n, 3, h, w) if layout == "NCHW" else (n, h, w, 3)
    return (R.standard_normal(shape) * scale).astype(np.float32)


@pytest.fixture(scope="module", params=["NCHW", "NHWC"])
def tiny(request):
    return request.param, Explainer(tiny_onnx.classifier(24, 24, request.param))


# -- channel reductions ---------------------------------------------------------------------------------------

# one sample, 3 channels, 1 x 2 pixels: (3, -4, 0) and (-1, 2, -2)
PIXELS = np.array([[3.0, -4.0, 0.0], [-1.0, 2.0, -2.0]], np.float32)
EXPECTED = {"max_abs": [4, 2], "sum": [-1, -1], "abs_sum": [7, 5], "l2": [5, 3], "sum_sq": [25, 9]}


@pytest.mark.parametrize("how", sorted(EXPECTED))
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_reductions_by_hand(how, layout):
    a = PIXELS.T.reshape(1, 3, 1, 2) if layout == "NCHW" else PIXELS.reshape(1, 1, 2, 3)
    np.testing.assert_allclose(reduce_channels(a, layout, how), np.array(EXPECTED[how], np.float32).reshape(1, 1, 2))


FORMULAS = {
    "max_abs": lambda a, axis: np.abs(a).max(axis=axis),
    "sum": lambda a, axis: a.sum(axis=axis),
    "abs_sum": lambda a, axis: np.abs(a).sum(axis=axis),
    "l2": lambda a, axis: np.sqrt((a.astype(np.float64) ** 2).sum(axis=axis)),
    "sum_sq": lambda a, axis: (a.astype(np.float64) ** 2).sum(axis=axis),
}


@pytest.mark.parametrize("how", sorted(FORMULAS))
def test_methods_reduce_their_attributions_by_the_formula(tiny, how):
    layout, ex = tiny
    x = batch(layout)
    axis = 1 if layout == "NCHW" else 3
    for method in ("saliency", "gradient_x_input", "guided_backprop"):
        res = ex.explain(x, method, target=[1, 3], reduce=how)
        np.testing.assert_allclose(res.maps, FORMULAS[how](res.attributions, axis), rtol=1e-5, atol=1e-7)
    # and the attributions themselves: |gradient| for saliency, x * gradient for gradient x input
    grad = ex.explain(x, "saliency", target=[1, 3], abs=False).attributions
    np.testing.assert_allclose(ex.explain(x, "saliency", target=[1, 3]).attributions, np.abs(grad))
    np.testing.assert_allclose(ex.explain(x, "gradient_x_input", target=[1, 3]).attributions, grad * x, rtol=1e-6)


# -- SmoothGrad, SmoothGrad^2, VarGrad -------------------------------------------------------------------------

def record_base(monkeypatch, base="saliency"):
    """Every batch the wrapped method receives (inputs, seeds) and returns (attributions or maps), in order."""
    seen = []
    cls = METHODS[base]
    original = cls.attribute

    def recording(self, x, seeds, progress=None):
        out = original(self, x, seeds, progress)
        seen.append((x.copy(), (out.attributions if out.attributions is not None else out.maps).copy(), seeds))
        return out

    monkeypatch.setattr(cls, "attribute", recording)
    return seen


@pytest.mark.parametrize("method", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_scale_is_noise_level_times_the_input_range(tiny, method, monkeypatch):
    layout, ex = tiny
    x = batch(layout)
    x[1] *= 3  # a second sample with a three times wider range gets three times the noise
    samples, level = 40, 0.2
    seen = record_base(monkeypatch)
    ex.explain(x, method, target=[0, 2], samples=samples, noise_level=level, batch_size=7)
    noisy = np.concatenate([s[0] for s in seen]).reshape((2, samples) + x.shape[1:])
    noise = noisy.astype(np.float64) - x[:, None]
    for i in range(2):
        sigma = level * (x[i].max() - x[i].min())  # Smilkov et al. 2017, sec. 3: sigma / (x_max - x_min)
        assert abs(noise[i].std() / sigma - 1) < 0.02, (i, noise[i].std(), sigma)
        assert abs(noise[i].mean()) < 0.02 * sigma
        # independent draws: different samples of one image see different noise
        assert abs(np.corrcoef(noise[i, 0].ravel(), noise[i, 1].ravel())[0, 1]) < 0.1


def test_stdev_overrides_the_noise_level(tiny, monkeypatch):
    layout, ex = tiny
    x = batch(layout)
    seen = record_base(monkeypatch)
    ex.explain(x, "smoothgrad", target=[0, 2], samples=30, stdev=0.7, noise_level=0.01)
    noise = np.concatenate([s[0] for s in seen]).reshape((2, 30) + x.shape[1:]) - x[:, None]
    assert abs(noise.std() / 0.7 - 1) < 0.02


@pytest.mark.parametrize("method", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_statistics_of_the_noisy_attributions(tiny, method, monkeypatch):
    # smoothgrad: mean over samples (Smilkov eq. 3); smoothgrad_sq: mean of squares (Hooker et al. 2019);
    # vargrad: variance (Adebayo et al. 2018), the population variance as in Captum's NoiseTunnel
    layout, ex = tiny
    x = batch(layout)
    samples = 6
    seen = record_base(monkeypatch)
    res = ex.explain(x, method, target=[4, 1], samples=samples, batch_size=5,
                     base_options={"abs": False, "reduce": "l2"})
    a = np.concatenate([s[1] for s in seen]).reshape((2, samples) + x.shape[1:]).astype(np.float64)
    want = {"smoothgrad": a.mean(axis=1), "smoothgrad_sq": (a ** 2).mean(axis=1), "vargrad": a.var(axis=1)}[method]
    assert res.attributions.dtype == np.float32 and res.maps.dtype == np.float32
    np.testing.assert_allclose(res.attributions, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    # the map reduces with the base method's reduction (l2 here)
    axis = 1 if layout == "NCHW" else 3
    np.testing.assert_allclose(res.maps, np.sqrt((want ** 2).sum(axis=axis)), rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_given_noise_is_added_as_it_is_with_the_targets_seeds(tiny, monkeypatch):
    layout, ex = tiny
    x = batch(layout)
    noise = R.standard_normal((2 * 3,) + x.shape[1:]).astype(np.float32)  # image j's sample i at j * 3 + i
    seen = record_base(monkeypatch)
    res = ex.explain(x, "smoothgrad", target=[4, 1], samples=3, noise=noise, batch_size=4)
    inputs = np.concatenate([s[0] for s in seen])
    np.testing.assert_array_equal(inputs, np.repeat(x, 3, axis=0) + noise)
    seeds = np.concatenate([s[2] for s in seen])
    np.testing.assert_array_equal(seeds, np.eye(tiny_onnx.CLASSES, dtype=np.float32)[[4, 4, 4, 1, 1, 1]])
    np.testing.assert_allclose(res.attributions, np.concatenate([s[1] for s in seen]).reshape((2, 3) + x.shape[1:]).mean(1),
                               rtol=1e-5, atol=1e-7)


def test_seed_makes_the_draws_reproducible(tiny):
    layout, ex = tiny
    x = batch(layout)
    a, b, c = (ex.explain(x, "smoothgrad", target=[0, 1], samples=3, seed=s).attributions for s in (7, 7, 8))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_wrapping_a_cam_method_averages_its_maps(tiny, monkeypatch):
    layout, ex = tiny
    x = batch(layout)
    seen = record_base(monkeypatch, "grad_cam")
    res = ex.explain(x, "vargrad", base="grad_cam", target=[2, 3], samples=4, batch_size=3)
    maps = np.concatenate([s[1] for s in seen]).reshape(2, 4, 24, 24).astype(np.float64)
    assert res.attributions is None
    np.testing.assert_allclose(res.maps, maps.var(axis=1), rtol=1e-4, atol=1e-6 * maps.var(axis=1).max())


def test_progress_counts_every_base_evaluation(tiny):
    from onnxsal.methods.smoothgrad import SmoothGrad

    layout, ex = tiny
    x = batch(layout)
    ticks = []
    ex.explain(x, "smoothgrad", target=[0, 1], samples=5, batch_size=3, progress=ticks.append)
    assert sum(ticks) == 2 * 5 and all(t > 0 for t in ticks)
    ticks = []  # a base that costs 3 evaluations per sample
    ex.explain(x, "smoothgrad", target=[0, 1], samples=2, base="integrated_gradients", base_options={"steps": 3},
               progress=ticks.append)
    assert sum(ticks) == 2 * 2 * 3
    assert SmoothGrad(ex, samples=5).runs_per_sample() == 5
    assert SmoothGrad(ex, samples=5, base="grad_cam").uses_layer and not SmoothGrad(ex).uses_layer


@pytest.mark.parametrize("options,message", [
    ({"samples": 0}, "samples must be at least 1"),
    ({"base": "nope"}, "unknown base method 'nope' for smoothgrad; choose one of grad_cam, grad_cam_plus_plus, "),
    ({"base": "vargrad"}, "smoothgrad cannot wrap another noise wrapper (vargrad)"),
])
def test_smoothgrad_refuses_bad_options(tiny, options, message):
    from onnxsal.errors import MethodError

    _, ex = tiny
    with pytest.raises(MethodError) as err:
        ex.explain(batch(tiny[0]), "smoothgrad", **options)
    assert str(err.value).startswith(message) and (str(err.value) == message or "nope" in message)


def test_one_sample_without_noise_is_the_base_method(tiny):
    layout, ex = tiny
    x = batch(layout)
    one = ex.explain(x, "smoothgrad", target=[4, 1], samples=1, stdev=0.0)
    np.testing.assert_allclose(one.attributions, ex.explain(x, "saliency", target=[4, 1]).attributions, rtol=1e-6)


# -- Guided Grad-CAM ----------------------------------------------------------------------------------------------

def test_guided_grad_cam_is_guided_backprop_times_the_interpolated_grad_cam(tiny):
    # the layer is 12 x 12 (stride 2): the Grad-CAM map goes up to 24 x 24 with half-pixel bilinear interpolation
    layout, ex = tiny
    x = batch(layout)
    target = [2, 0]
    seeds = np.eye(tiny_onnx.CLASSES, dtype=np.float32)[target]
    out = ex.gradients(x, seeds, layers=["features"], input_grad=False)
    a, g = out.activations["features"].astype(np.float64), out.layer_grads["features"].astype(np.float64)
    assert a.shape[2:] == (12, 12)
    small = np.maximum((g.mean(axis=(2, 3), keepdims=True) * a).sum(axis=1), 0)  # Selvaraju et al. eq. 1-2
    cam = torch.nn.functional.interpolate(torch.from_numpy(small)[:, None], size=(24, 24), mode="bilinear",
                                          align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(ex.explain(x, "grad_cam", target=target).maps, cam, rtol=1e-5, atol=1e-6 * cam.max())
    guided = ex.gradients(x, seeds, ruleset="guided_backprop").input_grad.astype(np.float64)
    channel = 1 if layout == "NCHW" else 3
    res = ex.explain(x, "guided_grad_cam", target=target)
    np.testing.assert_allclose(res.attributions, guided * np.expand_dims(cam, channel), rtol=1e-5,
                               atol=1e-6 * np.abs(guided).max() * cam.max())


# -- occlusion ---------------------------------------------------------------------------------------------------------

def occlusion_loop(model: bytes, x, target, window, stride, fill, layout):
    """Zeiler & Fergus's occlusion written out: slide, cover, run, subtract; average where windows overlap."""
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])

    def score(image):
        return float(sess.run(None, {"image": image[None]})[0][0, target])

    chw = x if layout == "NCHW" else x.transpose(2, 0, 1)
    fill_chw = np.broadcast_to(np.asarray(fill, np.float32).reshape(-1, 1, 1), chw.shape)
    _, h, w = chw.shape
    starts = []
    for size, win, step in ((h, window[0], stride[0]), (w, window[1], stride[1])):
        pos, p = [], 0
        while True:  # slide until a window reaches the border; that last one may hang over it
            pos.append(p)
            if p + win >= size:
                break
            p += step
        starts.append(pos)
    total, count = np.zeros((h, w)), np.zeros((h, w))
    base = score(x)
    for r in starts[0]:
        for c in starts[1]:
            covered = chw.copy()
            covered[:, r:r + window[0], c:c + window[1]] = fill_chw[:, r:r + window[0], c:c + window[1]]
            fed = covered if layout == "NCHW" else covered.transpose(1, 2, 0)
            total[r:r + window[0], c:c + window[1]] += base - score(np.ascontiguousarray(fed))
            count[r:r + window[0], c:c + window[1]] += 1
    return total / count


@pytest.mark.parametrize("window,stride,fill", [(7, 5, 0.5), ((6, 9), (3, 4), "black"), (24, 24, "zeros")])
def test_occlusion_against_a_loop(window, stride, fill):
    from onnxsal.preprocess import Preprocessing

    for layout in ("NCHW", "NHWC"):
        model = tiny_onnx.classifier(24, 24, layout)
        ex = Explainer(model, preprocessing=Preprocessing(size=24))
        x = batch(layout)
        targets = [3, 1]
        res = ex.explain(x, "occlusion", target=targets, window=window, stride=stride, fill=fill, batch_size=6)
        win = window if isinstance(window, tuple) else (window, window)
        step = stride if isinstance(stride, tuple) else (stride, stride)
        value = {"black": [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225], "zeros": [0.0] * 3}.get(fill, [fill] * 3)
        for i, t in enumerate(targets):
            want = occlusion_loop(model, x[i], t, win, step, value, layout)
            np.testing.assert_allclose(res.maps[i], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
        channel = 1 if layout == "NCHW" else 3
        np.testing.assert_array_equal(res.attributions, np.broadcast_to(np.expand_dims(res.maps, channel), x.shape))


@pytest.mark.parametrize("method,options", [("smoothgrad", {"samples": 3}), ("vargrad", {"samples": 3}),
                                            ("gradient_shap", {"samples": 4, "noise_level": 0.1, "baseline": ["zeros", "uniform"]}),
                                            ("deeplift_shap", {"baseline": ["zeros", "uniform"]})])
def test_an_images_random_draws_do_not_depend_on_the_other_images(tiny, method, options):
    # each image draws from its own stream (seed and the image's values): its map is the same alone, after
    # another image, or in a batch run one sample at a time (the CLI groups a folder's photos by memory budget)
    layout, ex = tiny
    x = batch(layout, n=3)
    together = ex.explain(x, method, target=[1, 2, 3], **options).maps
    alone = ex.explain(x[2:], method, target=[3], **options).maps
    np.testing.assert_allclose(alone[0], together[2], rtol=1e-5, atol=1e-7)
    reordered = ex.explain(x[::-1], method, target=[3, 2, 1], batch_size=1, **options).maps
    np.testing.assert_allclose(reordered[2], together[0], rtol=1e-5, atol=1e-7)
    other_seed = ex.explain(x[2:], method, target=[3], seed=1, **options).maps
    assert not np.allclose(other_seed[0], alone[0])  # the draws do depend on the seed
