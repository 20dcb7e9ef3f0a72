"""The right target on any head: hidden softmaxes, sigmoid heads, other score ranks, dense top, several outputs.

Oracles: torch autograd on the same torch module (exported with the TorchScript exporter), or gradients
computed by hand for linear models built with onnx.helper (d z_c / dx = W_c for z = W x + b).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import onnxsal
from onnxsal.errors import TargetError
from onnxsal.targets import ClassTarget, RegionTarget, TopKTarget, TopTarget, WeightsTarget

RNG = np.random.default_rng(3)
X = RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)
W = RNG.standard_normal((5, 48)).astype(np.float32)
B = RNG.standard_normal(5).astype(np.float32)


def _model(nodes, output_shape, extra_inits=(), out="prob", opset=17):
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B"), *extra_inits]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, output_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _logits(x=X):
    return x.reshape(len(x), -1) @ W.T + B


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


GEMM = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "W", "B"], ["z"], transB=1)]

HIDDEN_SOFTMAX = {
    # tf2onnx / Paddle: the softmax behind an Identity
    "identity": GEMM + [helper.make_node("Softmax", ["z"], ["p"], axis=1), helper.make_node("Identity", ["p"], ["prob"])],
    # what onnx's version converter writes for an opset-11 Softmax(axis=1) on an input of unknown rank
    "upgrade": GEMM + [helper.make_node("Shape", ["z"], ["zs"]), helper.make_node("Flatten", ["z"], ["zf"], axis=1),
                       helper.make_node("Softmax", ["zf"], ["pf"], axis=1), helper.make_node("Reshape", ["pf", "zs"], ["prob"])],
    # a float -> float Cast and a Transpose pair after the softmax
    "cast_transpose": GEMM + [helper.make_node("Softmax", ["z"], ["p"], axis=1),
                              helper.make_node("Cast", ["p"], ["pc"], to=TensorProto.FLOAT),
                              helper.make_node("Transpose", ["pc"], ["pt"], perm=[1, 0]),
                              helper.make_node("Transpose", ["pt"], ["prob"], perm=[1, 0])],
    # (N, K, 1, 1) -> Softmax(axis=1) -> Squeeze
    "squeeze": GEMM + [helper.make_node("Unsqueeze", ["z", "axes"], ["z4"]),
                       helper.make_node("Softmax", ["z4"], ["p4"], axis=1), helper.make_node("Squeeze", ["p4", "axes"], ["prob"])],
}


@pytest.mark.parametrize("pattern", list(HIDDEN_SOFTMAX))
def test_softmax_hidden_behind_noops_is_found(pattern):
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    data = _model(HIDDEN_SOFTMAX[pattern], ["N", 5], [axes])
    c = 3
    ex = onnxsal.Explainer(data)
    assert ex.graph.final_activation == "Softmax" and ex.graph.class_axis == 1
    # logit: the score before the softmax, gradient W_c
    logit = ex.explain(X, "gradient_x_input", target=c)
    np.testing.assert_allclose(logit.scores, _logits()[:, c], rtol=1e-5)
    np.testing.assert_allclose(logit.attributions, X * W[c].reshape(3, 4, 4), rtol=1e-4, atol=1e-6)
    # probability: the softmax once (not twice); d p_c / dx = p_c (W_c - sum_j p_j W_j)
    p = _softmax(_logits())
    prob = onnxsal.Explainer(data, target_kind="probability").explain(X, "saliency", target=c, abs=False, reduce="sum")
    np.testing.assert_allclose(prob.scores, p[:, c], rtol=1e-5)
    grad = p[:, c:c + 1] * (W[c] - p @ W)
    np.testing.assert_allclose(prob.maps, grad.reshape(2, 3, 4, 4).sum(axis=1), rtol=1e-4, atol=1e-7)
    # log-probability: log_softmax, d/dx = W_c - sum_j p_j W_j
    logp = onnxsal.Explainer(data, target_kind="log_probability").explain(X, "saliency", target=c, abs=False, reduce="sum")
    np.testing.assert_allclose(logp.scores, np.log(p[:, c]), rtol=1e-5)
    np.testing.assert_allclose(logp.maps, (W[c] - p @ W).reshape(2, 3, 4, 4).sum(axis=1), rtol=1e-4, atol=1e-6)
    # the top classes printed are the softmax of the logits (once)
    tops = ex.top_classes(X, 2)
    for i in range(2):
        assert tops[i][0][0] == int(p[i].argmax())
        assert tops[i][0][2] == pytest.approx(p[i].max(), rel=1e-5)


def _torch_onnx(module, shape=(1, 3, 4, 4), outputs=("out",)):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(*shape),), f, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=list(outputs), dynamic_axes={"x": {0: "batch"}})
    return f.getvalue()


def _torch_grad(fn, x=X):
    xt = torch.as_tensor(x).clone().requires_grad_(True)
    value = fn(xt)
    value.sum().backward()
    return value.detach().numpy(), xt.grad.numpy()


class Binary(nn.Module):
    """Linear(48, 1) -> Sigmoid: a binary classifier, output (N, 1)."""

    def __init__(self, units=1, squeeze=False):
        super().__init__()
        torch.manual_seed(1)
        self.fc = nn.Linear(48, units)
        self.squeeze = squeeze

    def logit(self, x):
        z = self.fc(x.flatten(1))
        return z.squeeze(1) if self.squeeze else z

    def forward(self, x):
        return torch.sigmoid(self.logit(x))


@pytest.mark.parametrize("units", [1, 4])
def test_sigmoid_heads_follow_the_head(units):
    module = Binary(units)
    data = _torch_onnx(module)
    c = units - 1
    ex = onnxsal.Explainer(data)
    assert ex.graph.final_activation == "Sigmoid"
    # logit: the pre-sigmoid score
    z, gz = _torch_grad(lambda t: module.logit(t)[:, c])
    res = ex.explain(X, "gradient_x_input", target=c)
    np.testing.assert_allclose(res.scores, z, rtol=1e-5)
    np.testing.assert_allclose(res.attributions, X * gz, rtol=1e-4, atol=1e-6)
    # probability: the sigmoid, not a softmax over one unit (which is 1 with zero gradient)
    p, gp = _torch_grad(lambda t: module(t)[:, c])
    prob = onnxsal.Explainer(data, target_kind="probability").explain(X, "gradient_x_input", target=c)
    np.testing.assert_allclose(prob.scores, p, rtol=1e-5)
    assert np.abs(prob.attributions).max() > 1e-4
    np.testing.assert_allclose(prob.attributions, X * gp, rtol=1e-4, atol=1e-7)
    # log-probability: log sigmoid
    lp, glp = _torch_grad(lambda t: nn.functional.logsigmoid(module.logit(t)[:, c]))
    logp = onnxsal.Explainer(data, target_kind="log_probability").explain(X, "gradient_x_input", target=c)
    np.testing.assert_allclose(logp.scores, lp, rtol=1e-5)
    np.testing.assert_allclose(logp.attributions, X * glp, rtol=1e-4, atol=1e-7)
    # printed values are the head's own sigmoid per unit
    probs = module(torch.as_tensor(X)).detach().numpy()
    tops = ex.top_classes(X, units)
    for i in range(2):
        got = {cls: value for cls, _, value in tops[i]}
        for k in range(units):
            assert got[k] == pytest.approx(probs[i, k], rel=1e-5)


def test_one_unit_head_without_activation_uses_the_logistic_function():
    class Logit(Binary):
        def forward(self, x):
            return self.logit(x)

    module = Logit(1)
    ex = onnxsal.Explainer(_torch_onnx(module), target_kind="probability")
    p, gp = _torch_grad(lambda t: torch.sigmoid(module.logit(t))[:, 0])
    res = ex.explain(X, "gradient_x_input")
    np.testing.assert_allclose(res.scores, p, rtol=1e-5)
    np.testing.assert_allclose(res.attributions, X * gp, rtol=1e-4, atol=1e-7)


def test_rank1_scores_work_with_every_kind_of_method():
    class Squeezed(Binary):
        def forward(self, x):
            return self.logit(x)

    module = Squeezed(1, squeeze=True)
    ex = onnxsal.Explainer(_torch_onnx(module))
    assert ex.graph.class_axis is None and ex.num_classes == 1
    z, gz = _torch_grad(lambda t: module.logit(t))
    options = {"occlusion": {"window": 2, "stride": 2}, "smoothgrad": {"samples": 4}}
    for method in ("saliency", "gradient_x_input", "integrated_gradients", "smoothgrad", "occlusion"):
        res = ex.explain(X, method, **options.get(method, {}))
        assert res.maps.shape == (2, 4, 4) and np.all(np.isfinite(res.maps)), method
        np.testing.assert_array_equal(res.targets, [0, 0])
        np.testing.assert_allclose(res.scores, z, rtol=1e-5)
    res = ex.explain(X, "saliency", target=0)
    np.testing.assert_allclose(res.maps, np.abs(gz).max(axis=1), rtol=1e-4, atol=1e-7)
    with pytest.raises(TargetError, match="one unit"):
        ex.explain(X, "saliency", target=1)


class Seg(nn.Module):
    """Conv features -> 1x1 classifier conv -> bilinear upsampling: (N, 4, 8, 8) scores."""

    def __init__(self, nhwc=False, softmax=False):
        super().__init__()
        torch.manual_seed(2)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, stride=2, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(6, 4, 1)
        self.nhwc, self.softmax = nhwc, softmax

    def forward(self, x):
        y = self.classifier(self.features(x))
        y = nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.nhwc:
            y = y.permute(0, 2, 3, 1)
        return torch.softmax(y, dim=-1 if self.nhwc else 1) if self.softmax else y


XS = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("nhwc", [False, True])
def test_dense_top_has_one_meaning(nhwc):
    module = Seg(nhwc=nhwc, softmax=nhwc)
    ex = onnxsal.Explainer(_torch_onnx(module, (1, 3, 8, 8)))
    axis = 3 if nhwc else 1
    assert ex.graph.class_axis == axis

    def logits(t):
        y = module.classifier(module.features(t))
        y = nn.functional.interpolate(y, size=t.shape[-2:], mode="bilinear", align_corners=False)
        return y.permute(0, 2, 3, 1) if nhwc else y

    scores = logits(torch.as_tensor(XS)).detach().numpy()
    top = np.moveaxis(scores, axis, 1).reshape(2, 4, -1).sum(axis=2).argmax(axis=1)
    # saliency seeds "top" inside the graph; gradient_x_input through numpy: both must explain the same class
    for method in ("saliency", "gradient_x_input"):
        res = ex.explain(XS, method)
        np.testing.assert_array_equal(res.targets, top)
        want = np.moveaxis(scores, axis, 1)[np.arange(2), top].reshape(2, -1).sum(axis=1)
        np.testing.assert_allclose(res.scores, want, rtol=1e-4)
    c = int(top[0])
    g = _torch_grad(lambda t: torch.movedim(logits(t), axis, 1)[:, c].sum(dim=(1, 2)), XS)[1]
    res = ex.explain(XS[:1], "saliency", abs=False, reduce="sum")
    np.testing.assert_allclose(res.maps[0], g[0].sum(axis=0), rtol=1e-4, atol=1e-6)


def test_region_target_sums_one_class_over_a_box_or_its_predicted_pixels():
    module = Seg()
    ex = onnxsal.Explainer(_torch_onnx(module, (1, 3, 8, 8)))
    out = module(torch.as_tensor(XS)).detach().numpy()
    box = (2, 1, 6, 5)
    _, g = _torch_grad(lambda t: module(t)[:, 2, 1:5, 2:6].sum(dim=(1, 2)), XS)
    res = ex.explain(XS, "gradient_x_input", target=RegionTarget(2, box))
    np.testing.assert_allclose(res.scores, out[:, 2, 1:5, 2:6].sum(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(res.attributions, XS * g, rtol=1e-4, atol=1e-6)
    assert res.target == "class 2 summed over box (2, 1, 6, 5)"
    predicted = out.argmax(axis=1) == 1
    res = ex.explain(XS, "gradient_x_input", target=RegionTarget(1))
    np.testing.assert_allclose(res.scores, (out[:, 1] * predicted).sum(axis=(1, 2)), rtol=1e-5)
    with pytest.raises(TargetError, match="not inside"):
        ex.explain(XS, "saliency", target=RegionTarget(1, (0, 0, 9, 4)))


def test_topk_and_weights_targets():
    data = _model(HIDDEN_SOFTMAX["identity"], ["N", 5])
    ex = onnxsal.Explainer(data)
    z = _logits()
    top2 = np.argsort(-z, axis=1)[:, :2]
    res = ex.explain(X, "gradient_x_input", target=TopKTarget(2))
    want = np.stack([X[i] * W[top2[i]].sum(axis=0).reshape(3, 4, 4) for i in range(2)])
    np.testing.assert_allclose(res.attributions, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.scores, np.take_along_axis(z, top2, 1).sum(axis=1), rtol=1e-5)
    w = np.array([0.5, 0, 0, -1, 0], np.float32)
    res = ex.explain(X, "gradient_x_input", target=WeightsTarget(w))
    np.testing.assert_allclose(res.attributions, X * (w @ W).reshape(3, 4, 4), rtol=1e-4, atol=1e-6)
    assert list(res.targets) == [-1, -1]
    assert ex.explain(X, "saliency", target=TopTarget()).target == "the top class"
    assert ex.explain(X, "saliency", target=ClassTarget(4)).target == "class 4"


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.body = nn.Linear(48, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        e = self.body(x.flatten(1))
        return e, self.fc(torch.relu(e))


def test_several_outputs_pick_the_class_scores_and_say_so():
    module = TwoOutputs()
    data = _torch_onnx(module, outputs=("embedding", "logits"))
    ex = onnxsal.Explainer(data)
    assert ex.graph.output_name == "logits" and ex.num_classes == 10
    assert any('explaining "logits"' in note and "embedding" in note for note in ex.graph.choices)
    z, g = _torch_grad(lambda t: module(t)[1][:, 7])
    res = ex.explain(X, "gradient_x_input", target=7)
    np.testing.assert_allclose(res.attributions, X * g, rtol=1e-4, atol=1e-6)
    assert res.output == "logits"
    chosen = onnxsal.Explainer(data, output_name="embedding")
    assert chosen.num_classes == 16 and not chosen.graph.choices


def test_auto_layer_is_not_the_score_of_a_segmentation_model():
    module = Seg()
    ex = onnxsal.Explainer(_torch_onnx(module, (1, 3, 8, 8)))
    layer = ex.layer
    assert layer.shape[1:] == (6, 4, 4) and layer.op_type == "Relu"
    names = {l.tensor for l in ex.layers()}
    assert ex.graph.output_name not in names
    res = ex.explain(XS, "grad_cam", target=RegionTarget(1, (0, 0, 8, 8)))
    assert np.abs(res.maps).max() > 0


class GapHead(nn.Module):
    """conv -> relu -> [AvgPool2d(whole map) | GAP] -> flatten -> linear, a SqueezeNet-style head, or a 1x1 conv head."""

    def __init__(self, pool="avgpool", squeeze=False, mlp=False, conv_head=False):
        super().__init__()
        torch.manual_seed(5)
        self.conv = nn.Conv2d(3, 5 if squeeze else 6, 3, padding=1)
        self.pool = nn.AvgPool2d(4) if pool == "avgpool" else nn.AdaptiveAvgPool2d(1)
        self.fc = None if squeeze else (nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 5)) if mlp else nn.Linear(6, 5))
        self.conv_head = nn.Conv2d(6, 5, 1) if conv_head else None

    def forward(self, x):
        y = self.pool(torch.relu(self.conv(x)))
        if self.conv_head is not None:
            return self.conv_head(y).flatten(1)
        y = y.flatten(1)
        return y if self.fc is None else self.fc(y)


def _cam_matches_grad_cam(data):
    ex = onnxsal.Explainer(data)
    cam = ex.explain(X, "cam", target=2).maps
    grad_cam = ex.explain(X, "grad_cam", target=2).maps
    # on a GAP + linear head, Grad-CAM's weights are W_c / (h w): CAM = h w * Grad-CAM (Selvaraju et al. 2017, sec. 3)
    np.testing.assert_allclose(cam, 16 * grad_cam, rtol=1e-4, atol=1e-5)
    assert cam.max() > 0


@pytest.mark.parametrize("pool,squeeze,conv_head", [("avgpool", False, False), ("gap", True, False), ("gap", False, True)])
def test_cam_accepts_real_gap_linear_heads(pool, squeeze, conv_head):
    _cam_matches_grad_cam(_torch_onnx(GapHead(pool, squeeze, conv_head=conv_head)))


def test_cam_sees_through_float_casts_around_the_linear_layer():
    conv_w = RNG.standard_normal((6, 3, 3, 3)).astype(np.float32)
    fc = RNG.standard_normal((6, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "cw"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Cast", ["f"], ["f64"], to=TensorProto.DOUBLE), helper.make_node("Cast", ["f64"], ["f32"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["f32", "fc"], ["m"]), helper.make_node("Cast", ["m"], ["mc"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["mc", "B"], ["prob"]),
    ]
    data = _model(nodes, ["N", 5], [numpy_helper.from_array(conv_w, "cw"), numpy_helper.from_array(fc, "fc")])
    _cam_matches_grad_cam(data)


def test_cam_refuses_a_head_that_is_not_gap_plus_one_linear_layer():
    from onnxsal.errors import MethodError

    ex = onnxsal.Explainer(_torch_onnx(GapHead("gap", mlp=True)))
    with pytest.raises(MethodError, match="global average pooling followed by one linear layer"):
        ex.explain(X, "cam")


def test_dense_top_is_the_class_with_the_highest_sum_not_a_per_pixel_choice():
    # scores = Conv1x1(x): class 0 = 10 x[0], class 1 = x[1]. Class 0 wins one pixel by far (max 500),
    # class 1 wins every other pixel and the sum (64 > 50): "top" is class 1, seeded at every pixel.
    w = np.zeros((2, 3, 1, 1), np.float32)
    w[0, 0], w[1, 1] = 10.0, 1.0
    nodes = [helper.make_node("Conv", ["x", "w"], ["prob"])]
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 2, 8, 8])],
                              [numpy_helper.from_array(w, "w")])
    ex = onnxsal.Explainer(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    x = np.zeros((1, 3, 8, 8), np.float32)
    x[0, 0, 3, 3] = 5.0
    x[0, 1] = 1.0
    for method in ("saliency", "gradient_x_input"):  # the graph's seed and the numpy seed
        res = ex.explain(x, method, **({"abs": False, "reduce": "sum"} if method == "saliency" else {}))
        np.testing.assert_array_equal(res.targets, [1])
        assert res.scores[0] == pytest.approx(64.0)
    # d(sum of class 1)/dx = W[1] at every pixel: channel sum 1 everywhere (a per-pixel seed gives 10 at (3, 3))
    np.testing.assert_array_equal(ex.explain(x, "saliency", abs=False, reduce="sum").maps[0], np.ones((8, 8), np.float32))


class Dense4(nn.Module):
    """Conv features -> 4-class 1x1 conv on 8x8, then one of the exporter-style tails of the review's findings."""

    def __init__(self, tail):
        super().__init__()
        torch.manual_seed(12)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.cls = nn.Conv2d(6, 4, 1)
        self.tail = tail

    def logits(self, x):
        if self.tail == "nhwc_input":
            x = x.permute(0, 3, 1, 2)
        return self.cls(torch.relu(self.conv(x)))  # (N, 4, 8, 8)

    def forward(self, x):
        z = self.logits(x)
        t = self.tail
        if t == "sigmoid_permute":
            return torch.sigmoid(z).permute(0, 2, 3, 1)
        if t == "softmax_reshape":
            return torch.softmax(z, 1).reshape(z.shape[0], 4, 64)
        if t == "tokens":
            tokens = z.flatten(2).transpose(1, 2)  # (N, 64, 4)
            return torch.softmax(tokens, -1).reshape(-1, 8, 8, 4)
        if t == "permute":
            return z.permute(0, 2, 3, 1)
        return z  # nhwc_input: NCHW scores of a channels-last model


@pytest.mark.parametrize("tail,axis", [("sigmoid_permute", 3), ("softmax_reshape", 1), ("tokens", 3), ("permute", 3),
                                       ("nhwc_input", 1)])
def test_class_axis_followed_through_tails_and_layouts(tail, axis):
    module = Dense4(tail)
    shape = (1, 8, 8, 3) if tail == "nhwc_input" else (1, 3, 8, 8)
    data = _torch_onnx(module, shape)
    ex = onnxsal.Explainer(data)
    assert ex.graph.class_axis == axis and ex.num_classes == 4, ex.describe()
    assert not ex.graph.choices
    x = RNG.standard_normal((2,) + shape[1:]).astype(np.float32)
    z = module.logits(torch.as_tensor(x)).detach().numpy()  # (N, 4, 8, 8)
    top = z.reshape(2, 4, -1).sum(axis=2).argmax(axis=1)
    res = ex.explain(x, "gradient_x_input")
    np.testing.assert_array_equal(res.targets, top)
    np.testing.assert_allclose(res.scores, z.reshape(2, 4, -1).sum(axis=2)[np.arange(2), top], rtol=1e-4)
    assert ex.graph.output_name not in {l.tensor for l in ex.layers()}
    assert all("Softmax" not in l.tensor and "Sigmoid" not in l.tensor for l in ex.layers())
