"""The augmented graph carries no second copy of the weights (issue 19): the stride-1 Conv backward reads the
forward's own weight tensor through Transpose / Slice nodes that onnxruntime folds when it builds the session."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxsal.autodiff import augment
from onnxsal.graph import load_model


def _conv_model(group: int) -> bytes:
    rng = np.random.default_rng(0)
    c = 8
    w1 = rng.standard_normal((16, c // group, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((4, 16, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], group=group),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w2"], ["c"]),
             helper.make_node("GlobalAveragePool", ["c"], ["d"]),
             helper.make_node("Flatten", ["d"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _weight_bytes(model: onnx.ModelProto) -> int:
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer if numpy_helper.to_array(t).size > 16)


def test_stride_1_conv_backward_stores_no_flipped_copy():
    for group in (1, 2, 8):
        graph = load_model(_conv_model(group))
        model, _ = augment.gradient_model(graph, [], "gradient", "logit", True)
        assert _weight_bytes(model) == _weight_bytes(graph.model), group
        ops = [n.op_type for n in model.graph.node]
        assert ops.count("Conv") == 4 and "ConvTranspose" not in ops  # both backward convs are plain Conv
        onnx.checker.check_model(model)


def _linear_conv(group: int, dilation: int) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(group)
    w = rng.standard_normal((24, 12 // group, 3, 2)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[2, 1, 2, 1], group=group, dilations=[dilation, 1]),
             helper.make_node("Flatten", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12, 9, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", None])],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), w


def test_flipped_weights_give_the_adjoint():
    """A linear model y = Conv(x): the input gradient of sum(seed * y) is the adjoint, <dx, v> = <seed, Conv(v)>
    for every v (checked in float64 against the forward run on v)."""
    rng = np.random.default_rng(1)
    for group, dilation in ((1, 1), (2, 1), (3, 2), (12, 1)):
        data, _ = _linear_conv(group, dilation)
        graph = load_model(data)
        model, _ = augment.gradient_model(graph, [], "gradient", "logit", True)
        assert "ConvTranspose" not in [n.op_type for n in model.graph.node]
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        plain = ort.InferenceSession(graph.model.SerializeToString(), providers=["CPUExecutionProvider"])
        v = rng.standard_normal((2, 12, 9, 7)).astype(np.float32)
        conv_v = plain.run(None, {graph.input_name: v})[0]
        seed = rng.standard_normal(conv_v.shape).astype(np.float32)
        names = [i.name for i in sess.get_inputs()]
        grad = sess.run([f"{graph.input_name}_grad"], {names[0]: v, names[1]: seed})[0]
        lhs = float((grad.astype(np.float64) * v).sum())
        rhs = float((seed.astype(np.float64) * conv_v).sum())
        assert abs(lhs - rhs) <= 1e-4 * (abs(rhs) + np.abs(seed * conv_v).sum()), (group, dilation, lhs, rhs)
