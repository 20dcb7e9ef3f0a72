"""Token-shaped and channels-last layers for CAM methods (issue 9, "transformers get CAMs too").

[N, t + h*w, C] sequences fold to an h x w grid (t leading class/distillation tokens dropped) and rank-4
maps that no channel-first op tagged are NHWC when their shape says so. Oracle: Grad-CAM computed from
torch autograd's activations and gradients at the same module.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import torch_models as tm
from oracles import cosine
from onnxsal import Explainer
from onnxsal.graph import load_model, select_layer
from onnxsal.graph.layers import token_grid


@pytest.mark.parametrize("length,size,want", [
    (17, (32, 32), (1, (4, 4))), (16, (32, 32), (0, (4, 4))), (197, (224, 224), (1, (14, 14))),
    (198, (224, 224), (2, (14, 14))), (50, (224, 224), (1, (7, 7))), (33, (32, 64), (1, (4, 8))),
    (18, (32, 32), (2, (4, 4))), (19, (32, 32), None), (1, (32, 32), None),
])
def test_token_grid(length, size, want):
    assert token_grid(length, *size) == want


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_vit_auto_layer_is_the_tokens_into_the_last_attention_and_grad_cam_matches_torch(exporter):
    model = tm.build("vit")
    data = tm.export(model, exporter, batch=2 if exporter == "dynamo" else 1, dynamic=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex = Explainer(data)
    layer = ex.layer
    assert layer.layout == "NLC" and layer.tokens == 1 and layer.grid == (4, 4)
    x = np.random.default_rng(2).standard_normal((3, 3, tm.SIZE, tm.SIZE)).astype(np.float32)
    targets = [1, 5, 7]
    seed = np.eye(tm.CLASSES, dtype=np.float32)[targets]
    _, _, act, grad = tm.torch_gradients(model, x, seed, model.feature)  # feature: ln1 of the (last) block
    out = ex.gradients(x, seed, layers=[layer.tensor], input_grad=False)
    assert cosine(out.activations[layer.tensor], act) >= 0.9999
    # Grad-CAM on the 4 x 4 grid of patch tokens, from torch: w_c = mean_ij g, M = relu(sum_c w_c A_c)
    a = act[:, 1:].reshape(3, 4, 4, -1).transpose(0, 3, 1, 2)
    g = grad[:, 1:].reshape(3, 4, 4, -1).transpose(0, 3, 1, 2)
    want = np.maximum((g.mean((2, 3), keepdims=True) * a).sum(1), 0)
    want = torch.nn.functional.interpolate(torch.from_numpy(want)[:, None], size=(tm.SIZE, tm.SIZE), mode="bilinear",
                                           align_corners=False)[:, 0].numpy()
    maps = ex.explain(x, "grad_cam", target=targets).maps
    assert maps.shape == (3, tm.SIZE, tm.SIZE)
    for m, w in zip(maps, want):
        assert cosine(m, w) >= 0.9999


def test_channels_last_map_from_reshapes_is_recognised_from_its_shape():
    # conv -> [N, 4, 8, 8] -> reshape/transpose to [N, 8, 8, 4] (no Transpose(0,2,3,1) to tag it) -> mean over 1,2 -> linear
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "s1": np.array([0, 4, 64], np.int64),
             "s2": np.array([0, 8, 8, 4], np.int64), "axes": np.array([1, 2], np.int64),
             "f": rng.standard_normal((4, 5)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Reshape", ["c", "s1"], ["r1"]),
             helper.make_node("Transpose", ["r1"], ["t"], perm=[0, 2, 1]), helper.make_node("Reshape", ["t", "s2"], ["hwc"]),
             helper.make_node("Relu", ["hwc"], ["feat"]), helper.make_node("ReduceMean", ["feat", "axes"], ["p"], keepdims=0),
             helper.make_node("MatMul", ["p", "f"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    layer = select_layer(load_model(model.SerializeToString()), "feat")
    assert layer.layout == "NHWC" and layer.spatial == (8, 8) and layer.channels == 4


@pytest.mark.parametrize("method", ["eigen_cam", "eigen_grad_cam", "score_cam", "ablation_cam", "grad_cam"])
def test_every_cam_runs_on_a_token_layer(method):
    """The CAMs that read activations themselves fold token sequences to the patch grid like the template does."""
    import numpy as np

    import onnxsal
    import torch_models as tm

    ex = onnxsal.Explainer(tm.export(tm.build("vit"), "torchscript", dynamic=True))
    assert ex.layer.layout == "NLC"
    x = np.random.default_rng(3).standard_normal((2, 3, tm.SIZE, tm.SIZE)).astype(np.float32)
    res = ex.explain(x, method, target=1)
    assert res.maps.shape == (2, tm.SIZE, tm.SIZE) and np.all(np.isfinite(res.maps))
