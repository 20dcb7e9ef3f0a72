"""Load an ONNX model and bring it to canonical form (a ModelGraph).

load_model(path | bytes | ModelProto) -> ModelGraph:
  read (external data too) -> check -> pick the image input and the explained output -> opset >= 17
  -> drop Identity/Dropout -> static spatial size, symbolic batch (reshapes rewritten, shape arithmetic
  folded) -> fold BatchNormalization and zero Pads into Conv -> find the pre-softmax score tensor
  -> shape inference.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from .. import cache
from ..errors import ModelError
from . import canonicalize as canon
from .head import Head, choose_output, detect_head, refine_class_axis
from .utils import (
    FLOAT_TYPES,
    constants,
    consumers,
    default_opset,
    infer_shapes,
    producers,
    tensor_types,
    value_info_shape,
)

TARGET_KINDS = ("logit", "probability", "log_probability")


@dataclass
class ModelGraph:
    """A canonical model and what the autodiff and the methods need to know about it."""

    model: onnx.ModelProto
    input_name: str
    input_shape: tuple  # (None, d1, d2, d3): batch symbolic, the rest static
    input_dtype: int
    layout: str  # "NCHW" or "NHWC" (for rank-4 image inputs), else "other"
    output_name: str  # the model output the user explains
    logits_name: str  # the score before the head's activation, shaped like the output (== output_name without one)
    final_activation: str | None  # "Softmax" | "LogSoftmax" | "Sigmoid" | None
    class_axis: int | None  # class axis of the output; None for one score per sample
    sha256: str
    dtypes: dict = field(repr=False, default_factory=dict)
    shapes: dict = field(repr=False, default_factory=dict)
    notes: list = field(default_factory=list)
    batchable: bool | None = None  # decided by runtime.check_batching
    protected: tuple = ()  # tensors the canonicalizers kept (layers chosen by name)
    head: Head | None = field(default=None, repr=False)
    choices: list = field(default_factory=list)  # what onnxsal chose for the user (the output), said once

    @property
    def opset(self) -> int:
        return default_opset(self.model)

    @property
    def graph(self) -> onnx.GraphProto:
        return self.model.graph

    @property
    def spatial_shape(self) -> tuple[int, int]:
        """(H, W) of the image input."""
        if self.layout == "NHWC":
            return tuple(self.input_shape[1:3])
        return tuple(self.input_shape[-2:])

    @property
    def num_classes(self) -> int | None:
        return self.head.num_classes if self.head is not None else None

    @property
    def score_shape(self) -> tuple | None:
        """The explained output's shape without the batch axis, when every size is known."""
        shape = self.shapes.get(self.logits_name) or self.shapes.get(self.output_name)
        if shape is None or any(d is None for d in shape[1:]):
            return None
        return tuple(shape[1:])

    def constants(self) -> dict[str, np.ndarray]:
        return constants(self.graph)

    def producers(self):
        return producers(self.graph)

    def consumers(self):
        return consumers(self.graph)


def read_model(model) -> tuple[onnx.ModelProto, bytes | None, Path | None]:
    """(ModelProto, serialized bytes when cheap, base directory) from a path, bytes or ModelProto."""
    if isinstance(model, onnx.ModelProto):
        return model, None, None
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
        try:
            return onnx.load_from_string(data), data, None
        except Exception:  # noqa: BLE001
            raise ModelError("the bytes given are not an ONNX model (protobuf parse failed)") from None
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.exists():
            raise ModelError(f"model file not found: {path}")
        if path.is_dir():
            raise ModelError(f"{path} is a directory; give the path of an .onnx file")
        from ..files import require_regular

        require_regular(path, "model", ModelError)  # a pipe would block, and the file is read more than once
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read model file {path}: {exc.strerror}") from None
        try:
            proto = onnx.load_from_string(data)
        except Exception:  # noqa: BLE001
            raise ModelError(f"{path} is not an ONNX model (protobuf parse failed); check the file") from None
        if not proto.graph.node and not proto.graph.input:
            raise ModelError(f"{path} is not an ONNX model (it holds no graph); check the file")
        external = any(onnx.external_data_helper.uses_external_data(t) for t in proto.graph.initializer)
        try:
            onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"cannot load the external data of {path}: {exc}") from None
        # the digest must cover the weights: hash the whole model when they live in other files
        return proto, (None if external else data), path.parent
    raise ModelError(f"a model is a path, bytes or onnx.ModelProto, not {type(model).__name__}")


def model_digest(proto: onnx.ModelProto, data: bytes | None) -> str:
    return hashlib.sha256(data if data is not None else proto.SerializeToString()).hexdigest()


def _check(proto: onnx.ModelProto) -> None:
    if not proto.graph.node:
        raise ModelError("the model has no nodes; check that the file is a complete ONNX model")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"the model fails the ONNX checker: {line}") from None


def find_input(proto: onnx.ModelProto, name: str | None) -> onnx.ValueInfoProto:
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if name is not None:
        for i in inputs:
            if i.name == name:
                if i.type.tensor_type.elem_type not in FLOAT_TYPES:
                    raise ModelError(f'input "{name}" is not a float tensor; name the image input')
                return i
        raise ModelError(f'the model has no input "{name}"; its inputs are: {", ".join(i.name for i in inputs)}')
    floats = [i for i in inputs if i.type.HasField("tensor_type") and i.type.tensor_type.elem_type in FLOAT_TYPES]
    if not floats:
        found = ", ".join(f"{i.name} ({TensorProto.DataType.Name(i.type.tensor_type.elem_type)})" for i in inputs)
        raise ModelError(
            f"the model has no float input to attribute to (inputs: {found or 'none'}); "
            "onnxsal explains models that take a float image tensor"
        )
    if len(floats) == 1:
        return floats[0]
    rank4 = [i for i in floats if len(i.type.tensor_type.shape.dim) == 4]
    if len(rank4) == 1:
        return rank4[0]
    raise ModelError(
        f"the model has several float inputs ({', '.join(i.name for i in floats)}); "
        "choose one with input_name= (--input-name)"
    )


def find_output(proto: onnx.ModelProto, name: str | None) -> str:
    """The explained output: `name` (an output or any tensor), else the one that looks like class scores."""
    return pick_output(proto, name)[0]


def pick_output(proto: onnx.ModelProto, name: str | None) -> tuple[str, str | None]:
    """(output name, a note when onnxsal chose among several outputs)."""
    outputs = [o.name for o in proto.graph.output]
    if name is None:
        return choose_output(proto)
    if name in outputs:
        return name, None
    if name in producers(proto.graph):
        return name, None
    raise ModelError(f'the model has no output or tensor "{name}"; its outputs are: {", ".join(outputs)}')


def detect_layout(proto: onnx.ModelProto, input_name: str, shape: tuple) -> str:
    """NCHW or NHWC for a rank-4 image input: from how the graph uses it, else from where a size 1/3 channel sits."""
    if len(shape) != 4:
        return "other"
    users = consumers(proto.graph).get(input_name, [])
    frontier = list(users)
    for _ in range(8):  # follow a few elementwise ops (normalisation) to the first Conv or Transpose
        nxt = []
        for node in frontier:
            if node.op_type in ("Conv", "MaxPool", "AveragePool", "BatchNormalization"):
                return "NCHW"
            if node.op_type == "Transpose":
                perm = [int(p) for p in next((a.ints for a in node.attribute if a.name == "perm"), [])]
                if perm == [0, 3, 1, 2]:
                    return "NHWC"
                if perm == [0, 2, 3, 1]:
                    return "NCHW"
            if node.op_type in ("Add", "Sub", "Mul", "Div", "Cast", "Identity", "Relu", "Clip"):
                nxt += consumers(proto.graph).get(node.output[0], [])
        frontier = nxt
    if shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        return "NHWC"
    return "NCHW"




def load_model(
    model,
    input_name: str | None = None,
    output_name: str | None = None,
    input_shape: tuple | None = None,
    protected: tuple[str, ...] = (),
) -> ModelGraph:
    """Read, check and canonicalize a model (path, bytes or ModelProto).

    input_shape fixes dynamic non-batch input dimensions (e.g. (None, 3, 224, 224)); protected names
    tensors the passes must keep (layers chosen by tensor name). A model canonicalized before in this
    process (same content, same options) is returned from memory.
    """
    proto, data, _ = read_model(model)
    digest = model_digest(proto, data)
    key = ("graph", digest, input_name, output_name, tuple(input_shape) if input_shape else None, tuple(protected))
    found = cache.MEMORY.get(key)
    if found is None:
        found = _canonical(proto, data, digest, input_name, output_name, input_shape, protected)
        from ..safety import model_bytes

        cache.MEMORY.put(key, found, model_bytes(found))
    return found


def _canonical(proto, data, digest, input_name, output_name, input_shape, protected) -> ModelGraph:
    _check(proto)
    proto = onnx.ModelProto.FromString(proto.SerializeToString()) if data is None else proto
    inp = find_input(proto, input_name)
    input_name = inp.name
    inits = {i.name for i in proto.graph.initializer}
    others = [i.name for i in proto.graph.input if i.name not in inits and i.name != input_name]
    if others:
        listed = ", ".join(repr(o) for o in others)
        raise ModelError(f"the model also needs input(s) {listed} beside the image {input_name!r}; onnxsal feeds only the "
                         "image: fold the others into the model as constants (or give them initializers)")
    output_name, chosen = pick_output(proto, output_name)
    notes: list[str] = []
    choices = [chosen] if chosen else []

    proto = canon.upgrade_opset(proto)
    if output_name not in {o.name for o in proto.graph.output}:
        # an intermediate tensor chosen as the output: expose it so passes keep it
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(output_name))
    proto = canon.remove_identity_dropout(proto)
    proto = canon.set_static_spatial(proto, input_name, input_shape, choices)
    export_batch = canon.make_batch_symbolic(proto, input_name)
    proto = canon.rewrite_batch_reshapes(proto, export_batch)
    proto = canon.fold_constants(proto, input_name)
    proto = canon.rewrite_batch_reshapes(proto, export_batch)
    proto = canon.rebatch_baked_batch(proto, input_name, export_batch)
    proto = canon.fold_batchnorm(proto, protected=set(protected))
    proto = canon.fold_pad_into_conv(proto, protected=set(protected))
    # declared shapes of outputs are re-derived: clear stale value_info so inference is consistent
    del proto.graph.value_info[:]
    proto = infer_shapes(proto)
    dtypes, shapes = tensor_types(proto)

    inp = next(i for i in proto.graph.input if i.name == input_name)
    ishape = value_info_shape(inp)
    layout = detect_layout(proto, input_name, ishape)
    head = detect_head(proto, output_name, shapes, layout)
    extra = head.logit_nodes()
    if extra:  # the logit in the output's shape: the tail re-applied to the activation's input
        proto.graph.node.extend(extra)
        proto = infer_shapes(proto)
        dtypes, shapes = tensor_types(proto)
    graph = ModelGraph(
        model=proto,
        input_name=input_name,
        input_shape=ishape,
        input_dtype=inp.type.tensor_type.elem_type,
        layout=layout,
        output_name=output_name,
        logits_name=head.logits,
        final_activation=head.activation,
        class_axis=head.class_axis,
        sha256=digest,
        dtypes=dtypes,
        shapes=shapes,
        notes=notes,
        protected=tuple(protected),
        head=head,
        choices=choices,
    )
    refine_class_axis(graph)
    return graph
