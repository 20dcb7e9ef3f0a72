"""Small read-only helpers over an onnx.GraphProto: shapes, constants, producers and consumers.

Shapes are tuples of dims; a dim is an int when static and None when symbolic or unknown (in a
canonical ModelGraph only the batch dimension is ever None).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16})


def attribute(node: onnx.NodeProto, name: str, default=None):
    """The value of attribute `name` of `node`, or `default` when it is absent."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def value_info_shape(vi: onnx.ValueInfoProto) -> tuple | None:
    """(dims...) of a tensor ValueInfo; None when the rank is unknown."""
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim)


def tensor_types(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, tuple | None]]:
    """(elem_type by name, shape by name) from the graph's inputs, outputs, value_info and initializers."""
    g = model.graph
    dtypes: dict[str, int] = {}
    shapes: dict[str, tuple | None] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type"):
            dtypes[vi.name] = vi.type.tensor_type.elem_type
            shapes[vi.name] = value_info_shape(vi)
    for init in g.initializer:
        dtypes[init.name] = init.data_type
        shapes[init.name] = tuple(init.dims)
    for node in g.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = constant_node_value(node)
            if value is not None:
                dtypes[node.output[0]] = helper.np_dtype_to_tensor_dtype(value.dtype)
                shapes[node.output[0]] = value.shape
    return dtypes, shapes


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx shape inference with constant propagation through shape arithmetic; never raises."""
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort; rules fall back to runtime shapes
        try:
            return onnx.shape_inference.infer_shapes(model, strict_mode=False)
        except Exception:  # noqa: BLE001
            return model


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None


class Constants(dict):
    """Values of initializers and Constant-node outputs, by tensor name, converted to numpy on first use.

    A dict whose values start as TensorProtos (or arrays) and are replaced by arrays when read, so that a
    model's weights are not copied until a rule or pass actually needs one of them.
    """

    def __getitem__(self, name):
        value = super().__getitem__(name)
        if isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
            super().__setitem__(name, value)
        return value

    def get(self, name, default=None):
        return self[name] if name in self else default

    def values(self):
        return [self[k] for k in self]

    def items(self):
        return [(k, self[k]) for k in self]


def constants(graph: onnx.GraphProto) -> Constants:
    """Values of initializers and Constant-node outputs, by tensor name (lazily converted; see Constants)."""
    values = Constants((init.name, init) for init in graph.initializer)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = constant_node_value(node)
            if value is not None:
                values[node.output[0]] = value
    return values


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                users.setdefault(name, []).append(node)
    return users


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def node_label(node: onnx.NodeProto) -> str:
    """How a node is named in messages: 'Conv node "conv1"' or 'Conv node producing "x"'."""
    if node.name:
        return f'{node.op_type} node "{node.name}"'
    return f'{node.op_type} node producing "{node.output[0]}"'
