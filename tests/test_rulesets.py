"""guided_backprop and deconvnet rule sets: the papers' formulas on single ReLU-like nodes, and Captum's
GuidedBackprop / Deconvolution on whole torch models exported to ONNX.

Captum modifies nn.ReLU modules only, so the comparison uses families whose activations are all nn.ReLU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import torch_models as tm
from oracles import cosine, gradients, max_rel_err
from onnxsal.graph import load_model
from onnxsal.graph.utils import infer_shapes
from onnxsal.runtime import Engine

R = np.random.default_rng(11)


def single_node(op, x, **attrs):
    inits, inputs = [], ["x"]
    if op == "Clip":
        inits = [numpy_helper.from_array(np.array(0.0), "lo"), numpy_helper.from_array(np.array(6.0), "hi")]
        inputs = ["x", "lo", "hi"]
    node = helper.make_node(op, inputs, ["y"], **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, x.shape)],
                          [helper.make_tensor_value_info("y", TensorProto.DOUBLE, x.shape)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return infer_shapes(m)


@pytest.mark.parametrize("op,attrs,slope", [
    ("Relu", {}, lambda x: (x > 0) * 1.0),
    ("LeakyRelu", {"alpha": 0.2}, lambda x: np.where(x > 0, 1.0, 0.2)),
    ("Clip", {}, lambda x: ((x > 0) & (x < 6)) * 1.0),
])
def test_guided_and_deconvnet_formulas(op, attrs, slope):
    x = R.uniform(-8, 8, (4, 5))
    dy = R.standard_normal((4, 5))
    m = single_node(op, x, **attrs)
    (plain,), _ = gradients(m, "y", ["x"], {"x": x}, dy)
    (guided,), _ = gradients(m, "y", ["x"], {"x": x}, dy, ruleset="guided_backprop")
    (deconv,), _ = gradients(m, "y", ["x"], {"x": x}, dy, ruleset="deconvnet")
    np.testing.assert_allclose(plain, dy * slope(x))
    # Springenberg et al. 2015: R_l = (f_l > 0) (R_{l+1} > 0) R_{l+1}; LeakyReLU keeps its negative slope
    np.testing.assert_allclose(guided, np.maximum(dy, 0) * slope(x))
    # Zeiler & Fergus 2014: R_l = relu(R_{l+1}), whatever the forward input
    np.testing.assert_allclose(deconv, np.maximum(dy, 0))


def test_clip_that_is_not_relu_keeps_its_plain_gradient():
    x = R.uniform(-3, 3, (3, 4))
    node = helper.make_node("Clip", ["x", "lo", "hi"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, x.shape)],
                          [helper.make_tensor_value_info("y", TensorProto.DOUBLE, x.shape)],
                          [numpy_helper.from_array(np.array(-1.0), "lo"), numpy_helper.from_array(np.array(1.0), "hi")])
    m = infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    dy = R.standard_normal(x.shape)
    (guided,), _ = gradients(m, "y", ["x"], {"x": x}, dy, ruleset="guided_backprop")
    np.testing.assert_allclose(guided, dy * ((x > -1) & (x < 1)))


RELU_ONLY = ["resnet", "vgg", "inception", "regnet", "shufflenet"]


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("family", RELU_ONLY)
@pytest.mark.parametrize("ruleset", ["guided_backprop", "deconvnet"])
def test_rule_sets_match_captum(family, exporter, ruleset):
    from captum.attr import Deconvolution, GuidedBackprop

    model = tm.build(family)
    graph = load_model(tm.export(model, exporter))
    x = R.standard_normal((3, 3, tm.SIZE, tm.SIZE)).astype(np.float32)
    targets = [1, 4, 7]
    seed = np.zeros((3, tm.CLASSES), np.float32)
    seed[np.arange(3), targets] = 1.0
    ours = Engine(graph).gradients(x, seed, ruleset=ruleset).input_grad
    method = GuidedBackprop if ruleset == "guided_backprop" else Deconvolution
    theirs = method(model).attribute(torch.from_numpy(x), target=targets).detach().numpy()
    assert cosine(ours, theirs) >= 0.9999
    assert max_rel_err(ours, theirs) <= 1e-4
