"""Input invariance (Kindermans et al. 2019, "The (Un)reliability of Saliency Methods", sec. 2).

The shifted twin of a model whose input feeds one Conv: it takes x2 = x + m (m a constant per channel, in
model-input units) and absorbs the shift in the first layer's bias, so twin(x + m) = model(x) exactly:

    Conv(x + m, W) + b - Conv(m, W) = Conv(x, W) + b        (Conv is linear; zero padding included)

Conv(m, W) is a constant map (1, C_out, H', W') because zero padding makes the border differ from the
interior; the rewrite drops the Conv's bias input and adds b - Conv(m, W) after it. The rewrite is made on the
model as loaded, before canonicalisation. The metric compares each method's map of the twin at x + m with its
map of the model at x (same class): `change` = ||map2 - map1||_F / ||map1||_F (0: input invariant), the Spearman
correlation of the signed maps, and `output_gap` = max |twin(x + m) - model(x)| over the scores, which checks the
twins agree. Default shift m = 1.0 in every channel.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import MethodError
from .similarity import spearman


def shifted_twin(proto: onnx.ModelProto, input_name: str, input_shape: tuple, shift) -> onnx.ModelProto:
    """A copy of `proto` that takes x + shift and computes what `proto` computes on x."""
    g = proto.graph
    consumers = [n for n in g.node if input_name in n.input]
    inits = {t.name: t for t in g.initializer}
    if len(consumers) != 1 or consumers[0].op_type != "Conv" or consumers[0].input[0] != input_name \
            or consumers[0].input[1] not in inits:
        raise MethodError("input invariance needs a model whose image input feeds one Conv with initializer weights "
                          "(NCHW); this model's input goes elsewhere")
    if len(input_shape) != 4 or any(d is None for d in input_shape[1:]):
        raise MethodError("input invariance needs a fixed input size (C, H, W)")
    conv = consumers[0]
    channels = input_shape[1]
    m = np.broadcast_to(np.asarray(shift, np.float32).reshape(-1), (channels,)).astype(np.float32)
    weight = numpy_helper.to_array(inits[conv.input[1]])
    bias = numpy_helper.to_array(inits[conv.input[2]]) if len(conv.input) > 2 and conv.input[2] else \
        np.zeros(weight.shape[0], weight.dtype)
    offset = _run_conv(conv, weight, np.broadcast_to(m.reshape(1, -1, 1, 1), (1, *input_shape[1:])).astype(np.float32),
                       proto)
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    node = next(n for n in out.graph.node if n.output[0] == conv.output[0] and n.op_type == "Conv")
    target = node.output[0]
    raw = f"{target}__before_shift_bias"
    bias_name = f"{target}__shift_bias"
    del node.input[2:]
    node.output[0] = raw
    const = (bias.reshape(1, -1, 1, 1).astype(np.float32) - offset).astype(weight.dtype)
    out.graph.initializer.append(numpy_helper.from_array(const, bias_name))
    position = list(out.graph.node).index(node)
    out.graph.node.insert(position + 1, helper.make_node("Add", [raw, bias_name], [target], name=f"{target}__shift"))
    return out


def _run_conv(conv, weight: np.ndarray, image: np.ndarray, proto: onnx.ModelProto) -> np.ndarray:
    """Conv(image, weight) without bias, with the node's attributes, by onnxruntime."""
    import onnxruntime as ort

    node = helper.make_node("Conv", ["x", "w"], ["y"], **{a.name: helper.get_attribute_value(a) for a in conv.attribute})
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, image.shape)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight.astype(np.float32), "w")])
    opset = max([o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] + [11])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(11, min(opset, 21)))])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": image})[0].astype(np.float64)


def compare(original: np.ndarray, shifted: np.ndarray) -> dict:
    a = np.asarray(original, np.float64)
    b = np.asarray(shifted, np.float64)
    norm = np.sqrt((a * a).sum())
    change = np.sqrt(((b - a) ** 2).sum())
    return {"change": float(change / norm) if norm > 0 else float(change), "spearman": spearman(a, b)}
