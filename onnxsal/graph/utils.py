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


_LIGHT_LIMIT = 4096  # float initializers with more elements than this are only typed, not copied, for inference


def without_initializers(model: onnx.ModelProto, keep=frozenset()) -> onnx.ModelProto:
    """A copy of the model with only the initializers named in `keep`, made field by field (the others are never
    copied: CopyFrom then deleting would hold every weight twice)."""
    out = onnx.ModelProto()
    for desc, value in model.ListFields():
        if desc.name == "graph":
            continue
        if hasattr(value, "extend"):  # repeated
            getattr(out, desc.name).extend(value)
        elif desc.message_type is not None:
            getattr(out, desc.name).CopyFrom(value)
        else:
            setattr(out, desc.name, value)
    for desc, value in model.graph.ListFields():
        if desc.name == "initializer":
            out.graph.initializer.extend(t for t in value if t.name in keep)
        elif hasattr(value, "extend"):
            getattr(out.graph, desc.name).extend(value)
        elif desc.message_type is not None:
            getattr(out.graph, desc.name).CopyFrom(value)
        else:
            setattr(out.graph, desc.name, value)
    return out


def _light(model: onnx.ModelProto) -> tuple[onnx.ModelProto, set[str]]:
    """(a copy of the model whose large float initializers are graph inputs of the same type and shape instead,
    their names); the model itself when it has none."""
    heavy = {t.name for t in model.graph.initializer
             if t.data_type in _FLOAT_TENSORS and int(np.prod(t.dims, dtype=np.int64)) > _LIGHT_LIMIT}
    if not heavy:
        return model, heavy
    light = without_initializers(model, keep={t.name for t in model.graph.initializer if t.name not in heavy})
    light.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in model.graph.initializer if t.name in heavy)
    return light, heavy


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx shape inference with constant propagation through shape arithmetic; never raises.

    A model with weights gets the inferred value_info in place (and is returned): onnx's inference serializes and
    parses the whole model several times (a peak of ~4 copies of the weights), so it runs on a copy where the large
    float initializers are typed graph inputs instead. A model without returns onnx's new model."""
    light, heavy = _light(model)
    if not heavy:
        return _infer_shapes(model)
    inferred = _infer_shapes(light)
    if inferred is light:
        return model  # inference failed: the model as it was
    del model.graph.value_info[:]
    model.graph.value_info.extend(v for v in inferred.graph.value_info if v.name not in heavy)
    for mine, theirs in zip(model.graph.output, inferred.graph.output):
        mine.CopyFrom(theirs)
    return model


def inferred_types(model: onnx.ModelProto) -> tuple[dict, dict]:
    """tensor_types after shape inference, leaving the model as it is (inference on its weightless copy)."""
    light, _ = _light(model)
    return tensor_types(_infer_shapes(light))  # onnx's inference returns a new model: `model` is left alone


_FLOAT_TENSORS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
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
