"""Mixed-precision and float16 models (issue 9, kind 5).

A float16 network with float32 input and output (Cast nodes at the edges, as onnxconverter-common's
keep_io_types writes it) and an all-float16 one: exposed layers and their gradients keep float16 in the
graph and reach the user as float32; every CAM method runs. Oracle: torch autograd in float64 on the
same (float16-rounded) weights; float16 arithmetic allows cosine >= 0.999.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import onnxsal
from oracles import cosine
from onnxsal.autodiff.augment import gradient_model
from onnxsal.graph import load_model
from onnxsal.runtime import Engine

R = np.random.default_rng(5)
WEIGHTS = {k: v.astype(np.float16) for k, v in {
    "W1": R.standard_normal((4, 3, 3, 3)) * 0.3, "B1": R.standard_normal(4) * 0.1,
    "W2": R.standard_normal((6, 4, 3, 3)) * 0.3, "B2": R.standard_normal(6) * 0.1,
    "F": R.standard_normal((5, 6)), "C": R.standard_normal(5)}.items()}
LAYER = "r2"
CAM_METHODS = ["cam", "grad_cam", "grad_cam_plus_plus", "xgrad_cam", "layer_cam", "hires_cam", "grad_cam_elementwise",
               "guided_grad_cam"]


def model(io_type: int) -> bytes:
    # y = Gemm(flatten(GAP(relu(conv2(relu(conv1(x)))))), F^T) + C, computed in float16
    h = TensorProto.FLOAT16
    nodes = [helper.make_node("Conv", ["xh", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], [LAYER]), helper.make_node("GlobalAveragePool", [LAYER], ["p"]),
             helper.make_node("Flatten", ["p"], ["fl"]), helper.make_node("Gemm", ["fl", "F", "C"], ["yh"], transB=1)]
    if io_type == h:  # all float16: no edges to cast
        nodes = [helper.make_node("Identity", ["x"], ["xh"])] + nodes + [helper.make_node("Identity", ["yh"], ["y"])]
    else:
        nodes = [helper.make_node("Cast", ["x"], ["xh"], to=h)] + nodes + [helper.make_node("Cast", ["yh"], ["y"], to=io_type)]
    graph = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("x", io_type, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", io_type, ["N", 5])],
                              [numpy_helper.from_array(v, k) for k, v in WEIGHTS.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m.SerializeToString()


def torch_reference(x, seed):
    """(d sum(seed * y)/dx, activation at LAYER, its gradient) in float64 with the float16 weights."""
    w = {k: torch.tensor(v.astype(np.float64)) for k, v in WEIGHTS.items()}
    xt = torch.tensor(x.astype(np.float16).astype(np.float64), requires_grad=True)
    r1 = torch.relu(torch.nn.functional.conv2d(xt, w["W1"], w["B1"], padding=1))
    r2 = torch.relu(torch.nn.functional.conv2d(r1, w["W2"], w["B2"], padding=1, stride=2))
    r2.retain_grad()
    y = r2.mean((2, 3)) @ w["F"].T + w["C"]
    (y * torch.tensor(seed.astype(np.float64))).sum().backward()
    return xt.grad.numpy(), r2.detach().numpy(), r2.grad.numpy()


@pytest.mark.parametrize("io_type", [TensorProto.FLOAT, TensorProto.FLOAT16], ids=["float32-io", "float16-io"])
def test_float16_layers_and_gradients_come_back_as_float32_and_match_torch(io_type):
    graph = load_model(model(io_type))
    aug, _ = gradient_model(graph, layers=[LAYER])
    types = {o.name: o.type.tensor_type.elem_type for o in aug.graph.output}
    assert types[LAYER] == TensorProto.FLOAT16 and types[f"{LAYER}_grad"] == TensorProto.FLOAT16  # own precision in the graph
    x = R.standard_normal((3, 3, 8, 8)).astype(np.float32)
    seed = R.standard_normal((3, 5)).astype(np.float32)
    out = Engine(graph).gradients(x, seed, layers=[LAYER])
    gx, act, gact = torch_reference(x, seed)
    for got in (out.scores, out.input_grad, out.activations[LAYER], out.layer_grads[LAYER]):
        assert got.dtype == np.float32
    assert cosine(out.activations[LAYER], act) >= 0.999
    assert cosine(out.layer_grads[LAYER], gact) >= 0.999
    assert cosine(out.input_grad, gx) >= 0.999


@pytest.mark.parametrize("method", CAM_METHODS)
def test_every_cam_method_runs_on_a_keep_io_types_model(method):
    # before: "Unexpected output data type ... expected tensor(float16)" (layers were bound as float32)
    ex = onnxsal.Explainer(model(TensorProto.FLOAT), layer=LAYER)
    x = R.standard_normal((2, 3, 8, 8)).astype(np.float32)
    res = ex.explain(x, method=method, target=1)
    assert res.maps.dtype == np.float32 and res.maps.shape == (2, 8, 8) and np.isfinite(res.maps).all()
