"""Every Numba kernel against its numpy twin; the upsampler against ONNX Resize and torch."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onnxsal.kernels import cam, moments, normalize, pixelwise, resize

R = np.random.default_rng(5)


@pytest.fixture(autouse=True, params=["serial", "parallel"])
def compilation(request, monkeypatch):
    """Every kernel test runs the Numba kernels (never the numpy twin), in both compilations."""
    from onnxsal.kernels import jit

    monkeypatch.setattr(jit, "FORCE_NUMPY", False)
    monkeypatch.setattr(jit, "NUMPY_BELOW", 0)
    monkeypatch.setattr(jit, "PARALLEL_FROM", 1 << 62 if request.param == "serial" else 0)
    monkeypatch.setattr(normalize, "NUMBA_FROM", 0)  # the percentile kernel's own threshold (numpy at every size)
    return request.param


def f32(*shape):
    return R.standard_normal(shape).astype(np.float32)


def test_small_work_goes_to_the_numpy_twin_and_large_to_numba(monkeypatch):
    from onnxsal.kernels import jit

    monkeypatch.setattr(jit, "NUMPY_BELOW", 100)
    calls = []
    monkeypatch.setattr(cam, "channel_mean_numpy", lambda g: calls.append("numpy") or g.mean(axis=(2, 3)))
    cam.channel_mean(f32(1, 2, 3, 3))
    cam.channel_mean(f32(2, 8, 5, 5))
    assert calls == ["numpy"]


def test_channel_mean():
    g = f32(3, 5, 7, 6)
    np.testing.assert_allclose(cam.channel_mean(g), cam.channel_mean_numpy(g), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cam.channel_mean(g), g.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("elementwise", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_weighted_sum(elementwise, relu):
    a = f32(2, 6, 5, 4)
    w = f32(2, 6, 5, 4) if elementwise else f32(2, 6)
    got, want = cam.weighted_sum(w, a, relu), cam.weighted_sum_numpy(w, a, relu)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert (got >= 0).all() == relu or not relu


@pytest.mark.parametrize("size_in,size_out", [((7, 7), (224, 224)), ((5, 3), (17, 40)), ((4, 6), (4, 6)), ((1, 1), (5, 5))])
def test_bilinear_resize_matches_onnx_resize_and_torch(size_in, size_out):
    maps = f32(2, *size_in)
    got = resize.bilinear_resize(maps, *size_out)
    np.testing.assert_allclose(got, resize.bilinear_resize_numpy(maps, *size_out), rtol=1e-5, atol=1e-6)
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear", coordinate_transformation_mode="half_pixel")
    graph = helper.make_graph([node], "r", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, *size_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array([2, 1, *size_out], np.int64), "sizes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": maps[:, None]})[0]
    np.testing.assert_allclose(got, onnx_out[:, 0], rtol=1e-5, atol=1e-6)
    torch_out = torch.nn.functional.interpolate(torch.from_numpy(maps[:, None]), size=size_out, mode="bilinear", align_corners=False)
    np.testing.assert_allclose(got, torch_out[:, 0].numpy(), rtol=1e-5, atol=1e-6)


def test_guided_product_and_scale_by_difference():
    g, m = f32(2, 3, 8, 9), f32(2, 8, 9)
    np.testing.assert_allclose(pixelwise.guided_product(g, m), pixelwise.guided_product_numpy(g, m), rtol=1e-6)
    acc, x, b = f32(3, 2, 4, 5), f32(3, 2, 4, 5), f32(3, 2, 4, 5)
    np.testing.assert_allclose(pixelwise.scale_by_difference(acc, x, b), pixelwise.scale_by_difference_numpy(acc, x, b), rtol=1e-6)


def test_accumulate_with_shared_owners():
    v = f32(7, 20)
    owner = np.array([0, 2, 0, 1, 2, 2, 0], np.int64)
    weight = R.uniform(0, 1, 7).astype(np.float32)
    a, b = np.zeros((3, 20)), np.zeros((3, 20))
    moments.accumulate(a, v, owner, weight)
    moments.accumulate_numpy(b, v, owner, weight)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(a[1], weight[3] * v[3], rtol=1e-6)


def test_accumulate_moments():
    v = f32(9, 15)
    owner = np.repeat(np.arange(3), 3)
    s1, s2, t1, t2 = (np.zeros((3, 15)) for _ in range(4))
    moments.accumulate_moments(s1, s2, v, owner)
    moments.accumulate_moments_numpy(t1, t2, v, owner)
    np.testing.assert_allclose(s1, t1, rtol=1e-6)
    np.testing.assert_allclose(s2, t2, rtol=1e-6)
    np.testing.assert_allclose(s1 / 3, v.reshape(3, 3, 15).mean(1), rtol=1e-5)


@pytest.mark.parametrize("signed", [False, True])
def test_percentile_normalize(signed):
    maps = f32(3, 20, 30) * 4
    maps[1] = 0.0
    got = normalize.percentile_normalize(maps, 99.0, signed)
    want = normalize.percentile_normalize_numpy(maps, 99.0, signed)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got.min() >= (-1 if signed else 0) and got.max() <= 1
    assert (got[1] == 0).all()
    saturated = np.mean(np.abs(got[0]) == 1.0) if signed else np.mean(got[0] == 1.0)
    expected = 0.01 if signed else np.mean(maps[0] >= np.percentile(np.abs(maps[0]), 99))
    assert abs(saturated - expected) <= 0.005


def test_second_process_loads_kernels_from_the_cache():
    import subprocess
    import sys

    code = ("import numpy as np; from onnxsal.kernels import cam; "
            "cam._channel_mean(np.zeros((1, 2, 3, 3), np.float32)); "
            "s = cam._channel_mean.stats; print(len(s.cache_hits), len(s.cache_misses))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
            for _ in range(2)]
    hits, misses = map(int, runs[1])
    assert hits >= 1 and misses == 0, runs


def test_numpy_twins_give_the_same_explanation(tmp_path):
    import subprocess
    import sys

    code = ("import numpy as np, sys; from onnxsal import Explainer; "
            "ex = Explainer('mobilenet_v2'); x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32); "
            "np.save(sys.argv[1], np.stack([ex.explain(x, m).maps[0] for m in ('grad_cam', 'layer_cam', 'guided_grad_cam')]))")
    import os

    outs = []
    for mode in ("numba", "numpy"):
        path = tmp_path / f"{mode}.npy"
        subprocess.run([sys.executable, "-c", code, str(path)], check=True, env={**os.environ, "ONNXSAL_KERNELS": mode})
        outs.append(np.load(path))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-6 * np.abs(outs[1]).max())
