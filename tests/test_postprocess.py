"""postprocess.py: each map equation checked by hand-computed values, in both back ends (numpy, and the
ONNX nodes run by onnxruntime), against the kernels it replaces, and the two back ends against each other."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxsal import kernels, postprocess as pp, viz

R = np.random.default_rng(5)


def run_onnx(fn, *arrays, opset=17, shape=None, dtype=np.float32):
    """fn(ops, *names) built as an ONNX graph with the arrays as inputs, run by onnxruntime."""
    ops = pp.OnnxOps(opset)
    names = [f"in{i}" for i in range(len(arrays))]
    out = fn(ops, *names)
    if out in names:  # an equation that passes its input through
        return arrays[names.index(out)]
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for n, a in zip(names, arrays)]
    graph = helper.make_graph(ops.nodes + [helper.make_node("Identity", [out], ["out"])], "t", inputs,
                              [helper.make_tensor_value_info("out", helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)], ops.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    assert all(n.domain == "" for n in model.graph.node)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["out"], dict(zip(names, arrays)))[0]


def both(fn, *arrays, opset=17):
    here = fn(pp.NUMPY, *arrays)
    return here, run_onnx(fn, *arrays, opset=opset, shape=np.shape(here), dtype=np.asarray(here).dtype)


def f32(*shape):
    return R.standard_normal(shape).astype(np.float32)


def test_bilinear_matrix_by_hand():
    # 2 -> 4, half-pixel: source s = (d + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to [0, 1]
    want = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]], np.float32)
    np.testing.assert_array_equal(pp.bilinear_matrix(2, 4), want)
    assert np.allclose(pp.bilinear_matrix(7, 224).sum(axis=1), 1)


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_upsample_by_hand_and_against_onnx_resize(opset):
    m = np.array([[[0, 1], [2, 3]]], np.float32)
    col = np.array([0, 0.25, 0.75, 1], np.float32)
    want = col[None, :, None] * 2 + col[None, None, :]  # bilinear of a plane 2 row + col
    for got in both(lambda ops, t: pp.upsample(ops, t, (2, 2), (4, 4)), m, opset=opset):
        np.testing.assert_allclose(got, want, atol=1e-6)
    # ONNX Resize (linear, half_pixel) as an independent oracle, on an uneven size
    maps = f32(2, 7, 5)
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear", coordinate_transformation_mode="half_pixel")
    graph = helper.make_graph([node], "r", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, 7, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1, 30, 17])],
                              [helper.make_tensor("sizes", TensorProto.INT64, [4], [2, 1, 30, 17])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    resized = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": maps[:, None]})[0][:, 0]
    for got in both(lambda ops, t: pp.upsample(ops, t, (7, 5), (30, 17)), maps, opset=opset):
        np.testing.assert_allclose(got, resized, atol=1e-5)
    # and the kernel it replaces in the Grad-CAM path
    np.testing.assert_allclose(pp.upsample(pp.NUMPY, maps, (7, 5), (30, 17)), kernels.bilinear_resize(maps, 30, 17), atol=1e-5)


def test_weighted_sum_and_relu_by_hand():
    a = np.array([[[[1, -2]], [[3, 4]]]], np.float32)  # (1, 2, 1, 2)
    w = np.array([[[[2]], [[-1]]]], np.float32)  # (1, 2, 1, 1)
    # 2 * [1, -2] - [3, 4] = [-1, -8] -> relu 0, 0 ; without relu -1, -8
    for got in both(lambda ops, w_, a_: pp.weighted_sum(ops, w_, a_, True), w, a):
        np.testing.assert_array_equal(got, [[[0, 0]]])
    for got in both(lambda ops, w_, a_: pp.weighted_sum(ops, w_, a_, False), w, a):
        np.testing.assert_array_equal(got, [[[-1, -8]]])
    w2 = np.array([[[[-1]], [[1]]]], np.float32)  # -[1, -2] + [3, 4] = [2, 6]
    for got in both(lambda ops, w_, a_: pp.weighted_sum(ops, w_, a_, True), w2, a):
        np.testing.assert_array_equal(got, [[[2, 6]]])
    # per-element weights against the numba kernel's numpy twin
    a, w = f32(2, 5, 3, 4), f32(2, 5, 3, 4)
    for got in both(lambda ops, w_, a_: pp.weighted_sum(ops, w_, a_), w, a):
        np.testing.assert_allclose(got, kernels.cam.weighted_sum_numpy(w, a), atol=1e-5)


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("how", pp.REDUCTIONS)
@pytest.mark.parametrize("axis", [1, 3])
def test_reduce_channels_by_hand(how, axis, opset):
    a = np.array([3.0, -4.0, 0.0], np.float32)
    want = {"max_abs": 4.0, "sum": -1.0, "abs_sum": 7.0, "l2": 5.0, "sum_sq": 25.0}[how]
    shape = [1, 1, 1, 1]
    shape[axis] = 3
    x = np.broadcast_to(a.reshape(shape), [2, 3, 2, 2] if axis == 1 else [2, 2, 2, 3]).copy()
    for got in both(lambda ops, t: pp.reduce_channels(ops, t, how, axis), x, opset=opset):
        assert got.shape == (2, 2, 2)
        np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("how", ["identity", "abs", "square", "times_input"])
def test_finish_gradient_by_hand(how):
    g = np.array([[[[-2.0, 3.0]]]], np.float32)
    x = np.array([[[[5.0, -1.0]]]], np.float32)
    want = {"identity": [-2, 3], "abs": [2, 3], "square": [4, 9], "times_input": [-10, -3]}[how]
    for got in both(lambda ops, g_, x_: pp.finish_gradient(ops, how, g_, x_), g, x):
        np.testing.assert_array_equal(got.ravel(), want)


def test_normalize_by_hand():
    m = np.array([[[0, 2], [4, -8]]], np.float32)
    # q = 100: p = max |m| = 8
    for got in both(lambda ops, t: pp.normalize(ops, t, 4, 100.0, signed=False), m):
        np.testing.assert_array_equal(got, [[[0, 0.25], [0.5, 0]]])
    for got in both(lambda ops, t: pp.normalize(ops, t, 4, 100.0, signed=True), m):
        np.testing.assert_array_equal(got, [[[0, 0.25], [0.5, -1]]])
    # q = 50 of |m| = 0, 2, 4, 8: pos = 1.5 -> p = 2 + 0.5 (4 - 2) = 3
    for got in both(lambda ops, t: pp.normalize(ops, t, 4, 50.0, signed=True), m):
        np.testing.assert_allclose(got, [[[0, 2 / 3], [1, -1]]], rtol=1e-6)
    zero = np.zeros((2, 3, 3), np.float32)  # an all-zero map stays zero (no division by 0)
    for got in both(lambda ops, t: pp.normalize(ops, t, 9, 99.0), zero):
        np.testing.assert_array_equal(got, zero)


@pytest.mark.parametrize("n,q", [(5, 90.0), (5, 80.0), (2, 30.0), (1, 99.0), (1, 0.0), (4, 100.0)])
def test_percentile_on_few_values_against_numpy(n, q):
    # few values put lo = floor((n - 1) q / 100) on the last two order statistics (n = 5, q = 90: pos 3.6, lo 3,
    # hi 4) and n = 1 on the only one; numpy's 'linear' percentile is the oracle
    maps = np.abs(f32(3, 1, n)) + 0.1
    want = np.percentile(maps.reshape(3, -1), q, axis=1)
    for got in both(lambda ops, t: pp.percentile(ops, t, n, q), maps):
        np.testing.assert_allclose(np.asarray(got).ravel(), want, rtol=1e-6)


@pytest.mark.parametrize("q", [99.0, 100.0, 50.0, 0.0])
@pytest.mark.parametrize("signed", [False, True])
def test_normalize_matches_numpy_percentile_and_the_display_kernel(q, signed):
    maps = f32(3, 13, 11)
    maps[1] = 0
    for got in both(lambda ops, t: pp.normalize(ops, t, 13 * 11, q, signed), maps):
        np.testing.assert_allclose(got, kernels.normalize.percentile_normalize_numpy(maps, q, signed), atol=1e-6)
    np.testing.assert_allclose(pp.normalize(pp.NUMPY, maps, 13 * 11, q, signed), viz.normalize(maps, signed, q), atol=1e-6)


def test_guided_product_by_hand():
    g = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    cam = np.array([[[0, 1], [2, 0.5]]], np.float32)
    for got in both(pp.guided_product, g, cam):
        np.testing.assert_array_equal(got, [[[[0, 1], [4, 1.5]], [[0, 5], [12, 3.5]]]])


def test_overlay_by_hand():
    lut = np.stack([np.arange(256), 255 - np.arange(256), np.zeros(256)], axis=1).astype(np.uint8)  # lut[i] = (i, 255-i, 0)
    photo = np.array([[[[100, 50, 0]]]], np.float32)
    # smooth, alpha 0.5, v = 1: colour lut[255] = (255, 0, 0); 0.5 photo + 0.5 colour + 0.5, floored
    for got in both(lambda ops, p, v: pp.overlay(ops, p, v, False, True, lut, 0.5), photo, np.ones((1, 1, 1), np.float32)):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got.ravel(), [178, 25, 0])
    # pixel map, alpha 0.6, v = 0.25: gray 50, base = (75, 50, 25) * 0.55; colour lut[64] = (64, 191, 0); weight sqrt(.25)
    for got in both(lambda ops, p, v: pp.overlay(ops, p, v, False, False, lut, 0.6), photo, np.full((1, 1, 1), 0.25, np.float32)):
        np.testing.assert_array_equal(got.ravel(), [53, 109, 7])
    # signed, v = -0.5: index of (v + 1) / 2 = 0.25 -> 64 again, weight |v| = 0.5: the same pixel
    for got in both(lambda ops, p, v: pp.overlay(ops, p, v, True, False, lut, 0.6), photo, np.full((1, 1, 1), -0.5, np.float32)):
        np.testing.assert_array_equal(got.ravel(), [53, 109, 7])


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("bgr", [False, True])
def test_photo_from_input_recovers_the_pixels(layout, bgr):
    from onnxsal.preprocess import Preprocessing

    prep = Preprocessing(size=4, crop=1.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), layout=layout, bgr=bgr)
    pixels = R.integers(0, 256, (2, 4, 5, 3)).astype(np.uint8)
    x = np.stack([prep.normalize(p) for p in pixels])
    if layout == "NCHW":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    for got in both(lambda ops, t: pp.photo_from_input(ops, t, layout, prep.scale, prep.mean, prep.std, bgr), x):
        np.testing.assert_array_equal(got, pixels)


def test_photo_from_input_keeps_black_and_white_and_clips_what_lies_outside():
    # pixels 0 and 255 come back exactly; inputs that stand for -40 and 300 are clipped to 0 and 255
    scale, mean, std = 1 / 255, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    pixels = np.array([[0, 0, 0], [255, 255, 255], [-40, 300, 128]], np.float64).reshape(1, 1, 3, 3)
    x = ((pixels * scale - np.asarray(mean)) / np.asarray(std)).astype(np.float32)
    for got in both(lambda ops, t: pp.photo_from_input(ops, t, "NHWC", scale, mean, std), x):
        np.testing.assert_array_equal(np.asarray(got).reshape(3, 3), [[0, 0, 0], [255, 255, 255], [0, 255, 128]])
