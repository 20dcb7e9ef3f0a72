"""Old ONNX files (issue 9, kind 4): opset 7/8, IR version 3, every initializer also a graph input.

The canonical model must be valid ONNX (the upgrade lifts the IR version, so a folded constant needs no
graph input), run with any batch, and give torch autograd's gradient of the same function.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from oracles import cosine
from onnxsal.graph import load_model
from onnxsal.runtime import Engine

R = np.random.default_rng(3)
W = R.standard_normal((4, 3, 3, 3)).astype(np.float32)
B = R.standard_normal(4).astype(np.float32)
F = (R.standard_normal((4 * 8 * 8, 5)) * 0.1).astype(np.float32)


def ir3_model(opset: int) -> onnx.ModelProto:
    # y = flatten(relu(conv(x, W) + B)) @ F, the flatten target computed from Shape as old exporters wrote it:
    # [Shape(r)[0], Shape(r)[1] * 64] (the second entry folds to a constant, a new initializer)
    inits = [numpy_helper.from_array(v, k) for k, v in
             {"W": W, "B": B, "F": F, "zero": np.array(0, np.int64), "one": np.array(1, np.int64),
              "hw": np.array(64, np.int64)}.items()]
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Shape", ["r"], ["sh"]),
        helper.make_node("Gather", ["sh", "zero"], ["n"], axis=0), helper.make_node("Unsqueeze", ["n"], ["n1"], axes=[0]),
        helper.make_node("Gather", ["sh", "one"], ["ch"], axis=0), helper.make_node("Mul", ["ch", "hw"], ["chw"]),
        helper.make_node("Unsqueeze", ["chw"], ["chw1"], axes=[0]),
        helper.make_node("Concat", ["n1", "chw1"], ["target"], axis=0),
        helper.make_node("Reshape", ["r", "target"], ["f"]), helper.make_node("MatMul", ["f", "F"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    inputs += [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in inits]  # IR 3: inits are inputs
    graph = helper.make_graph(nodes, "old", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 3
    onnx.checker.check_model(model)
    return model


def torch_grad(x, seed):
    xt = torch.tensor(x, requires_grad=True)
    y = torch.relu(torch.nn.functional.conv2d(xt, torch.tensor(W), torch.tensor(B), padding=1)).reshape(len(x), -1)
    (y @ torch.tensor(F) * torch.tensor(seed)).sum().backward()
    return xt.grad.numpy()


@pytest.mark.parametrize("opset", [7, 8])
def test_ir3_file_loads_runs_batched_and_matches_torch(opset):
    graph = load_model(ir3_model(opset).SerializeToString())
    assert graph.opset >= 17 and graph.model.ir_version >= 8
    onnx.checker.check_model(graph.model)  # before: "chw1/folded in initializer but not in graph input"
    inits = {i.name for i in graph.model.graph.initializer}
    assert [i.name for i in graph.model.graph.input if i.name in inits] == []
    engine = Engine(graph)
    assert graph.batchable  # before: the folded model failed to run ("Required inputs ... are missing")
    x = R.standard_normal((3, 3, 8, 8)).astype(np.float32)
    seed = R.standard_normal((3, 5)).astype(np.float32)
    out = engine.gradients(x, seed)
    assert cosine(out.input_grad, torch_grad(x, seed)) >= 0.99999


def test_initializers_listed_as_inputs_in_a_newer_ir_are_plain_constants():
    # torch's keep_initializers_as_inputs=True (IR >= 4): the weights are also graph inputs, overridable defaults
    import torch_models as tm

    model = tm.build("resnet")
    data = tm.export(model, "torchscript", opset=11, keep_initializers_as_inputs=True)
    proto = onnx.load_from_string(data)
    assert len(proto.graph.input) > 1
    graph = load_model(data)
    assert [i.name for i in graph.model.graph.input] == [graph.input_name]
    x = R.standard_normal((2, 3, tm.SIZE, tm.SIZE)).astype(np.float32)
    seed = R.standard_normal((2, tm.CLASSES)).astype(np.float32)
    _, gx, _, _ = tm.torch_gradients(model, x, seed, None)
    assert cosine(Engine(graph).gradients(x, seed).input_grad, gx) >= 0.9999
