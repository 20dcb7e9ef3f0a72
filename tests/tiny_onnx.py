"""A tiny convolutional classifier written with onnx.helper (no exporter): for tests of what happens around
the model (baselines, occlusion, pictures) that need a real graph but not a particular architecture.

    image -> [Transpose to NCHW] -> Conv 3x3 (3 -> 4, pad 1, stride s) -> Relu -> GlobalAveragePool -> Flatten -> Gemm (4 -> 5)
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = 5


def classifier(height: int = 24, width: int = 24, layout: str = "NCHW", seed: int = 0, stride: int = 2) -> bytes:
    """The model as bytes; the feature map (the CAM layer, `features`) is ceil(height / stride) x ceil(width / stride)."""
    rng = np.random.default_rng(seed)
    shape = ["N", 3, height, width] if layout == "NCHW" else ["N", height, width, 3]
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32) * 0.1, "B"),
             numpy_helper.from_array(rng.standard_normal((CLASSES, 4)).astype(np.float32), "Wfc"),
             numpy_helper.from_array(rng.standard_normal(CLASSES).astype(np.float32), "Bfc")]
    nodes = []
    first = "image"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]))
        first = "nchw"
    nodes += [helper.make_node("Conv", [first, "W", "B"], ["conv"], pads=[1, 1, 1, 1], strides=[stride, stride]),
              helper.make_node("Relu", ["conv"], ["features"]),
              helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
              helper.make_node("Flatten", ["pooled"], ["flat"]),
              helper.make_node("Gemm", ["flat", "Wfc", "Bfc"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()
