"""Layers: intermediate rank-4 feature maps a CAM method can weight, and how to choose one.

A layer is named by its tensor or by the node that produces it. `auto` is the last rank-4 float
feature map (in topological order) with a spatial size above 1 that depends on the input and feeds the
explained score: for a CNN, the activation just before the global pooling of the classifier head.

Channel-first ONNX ops (Conv, pools, BatchNormalization) produce NCHW tensors; Transposes with
perm (0,2,3,1)/(0,3,1,2) switch layout, as tf2onnx graphs do around every convolution; any other op
passes its input's layout on. That decides the channel axis of each candidate.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from ..errors import LayerError
from .model import ModelGraph
from .utils import FLOAT_TYPES, attribute

CHANNEL_FIRST_OPS = frozenset({
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
    "BatchNormalization", "InstanceNormalization", "LRN", "DepthToSpace", "SpaceToDepth", "MaxUnpool",
})


@dataclass(frozen=True)
class Layer:
    tensor: str
    node: str
    op_type: str
    shape: tuple
    layout: str | None  # "NCHW" | "NHWC" | None: not derived from a channel-first op (treated as NCHW)

    @property
    def channel_axis(self) -> int:
        return 3 if self.layout == "NHWC" else 1

    @property
    def spatial(self) -> tuple:
        return tuple(self.shape[1:3]) if self.layout == "NHWC" else tuple(self.shape[2:4])

    @property
    def channels(self):
        return self.shape[self.channel_axis]

    def describe(self) -> str:
        dims = "x".join("N" if d is None else str(d) for d in self.shape)
        return f"{self.tensor}  [{dims} {self.layout or 'layout unknown'}]  ({self.op_type} {self.node})"


def _layouts(graph: ModelGraph) -> dict[str, str]:
    tags = {graph.input_name: graph.layout}
    for node in graph.graph.node:
        rank4 = [t for t in node.input if t in tags]
        if node.op_type in CHANNEL_FIRST_OPS:
            tag = "NCHW"
        elif node.op_type == "Transpose" and rank4:
            perm = list(attribute(node, "perm", []) or [])
            src = tags[rank4[0]]
            if perm == [0, 2, 3, 1] and src == "NCHW":
                tag = "NHWC"
            elif perm == [0, 3, 1, 2] and src == "NHWC":
                tag = "NCHW"
            else:
                tag = None
        else:
            tag = tags[rank4[0]] if rank4 else None
        if tag is None:
            continue
        for out in node.output:
            shape = graph.shapes.get(out)
            if shape is not None and len(shape) == 4:
                tags[out] = tag
    return tags


def _depends_on_input(graph: ModelGraph) -> set[str]:
    live = {graph.input_name}
    for node in graph.graph.node:
        if any(t in live for t in node.input):
            live.update(o for o in node.output if o)
    return live


def _feeds(graph: ModelGraph, target: str) -> set[str]:
    needed = {target}
    for node in reversed(graph.graph.node):
        if any(o in needed for o in node.output):
            needed.update(t for t in node.input if t)
    return needed


# ops that carry scores to the output without mixing channels (upsampling, layout, affine with constants)
SCORE_CARRIERS = frozenset({
    "Resize", "Upsample", "Identity", "Cast", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
    "Softmax", "LogSoftmax", "Sigmoid", "Add", "Sub", "Mul", "Div", "Slice", "Dropout",
})
CLASSIFIERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def score_tensors(graph: ModelGraph) -> set[str]:
    """The score and what lies between it and the classifier that makes it: never a CAM layer.

    From the explained score back through SCORE_CARRIERS (following the one input that depends on the
    image) to the first classifier op (a 1x1 Conv, Gemm or MatMul), whose output is the last tensor
    included. A segmentation model's (N, K, H, W) logits, its Resize and its classifier conv are all in
    here, so CAM methods weight the features before them (otherwise Grad-CAM is relu(logits)).
    """
    made = graph.producers()
    live = _depends_on_input(graph)
    found = {graph.logits_name, graph.output_name}
    head = graph.head
    if head is not None and head.activation_node is not None:  # the activation's output and the tail after it
        found.add(head.activation_node.output[0])
        found.update(n.output[0] for n in head.tail)
    tensor = graph.logits_name
    for _ in range(64):
        node = made.get(tensor)
        if node is None:
            break
        found.add(tensor)
        if node.op_type in CLASSIFIERS:
            break
        if node.op_type not in SCORE_CARRIERS:
            break
        # the data input: input 0 of a unary/layout op (Resize's sizes may depend on the image's shape)
        data = [t for t in node.input if t in live] if node.op_type in ("Add", "Sub", "Mul", "Div") else node.input[:1]
        if len(data) != 1 or data[0] not in live:
            break
        tensor = data[0]
    return found


def candidate_layers(graph: ModelGraph) -> list[Layer]:
    """Rank-4 float feature maps that depend on the input and feed the score, in topological order.

    The score itself and the tensors between it and its classifier (score_tensors) are left out."""
    tags = _layouts(graph)
    live = _depends_on_input(graph)
    feeds = _feeds(graph, graph.logits_name)
    scores = score_tensors(graph)
    found = []
    for node in graph.graph.node:
        for out in node.output:
            shape = graph.shapes.get(out)
            if (
                out in live and out in feeds and out not in scores and shape is not None and len(shape) == 4
                and graph.dtypes.get(out) in FLOAT_TYPES
            ):
                found.append(Layer(out, node.name, node.op_type, shape, tags.get(out)))
    return found


def select_layer(graph: ModelGraph, spec: str = "auto") -> Layer:
    """A layer by tensor name, node name, or 'auto'."""
    layers = candidate_layers(graph)
    if spec in (None, "auto"):
        spatial = [layer for layer in layers
                   if layer.layout is not None and all(d is not None and d > 1 for d in layer.spatial)]
        if not spatial:
            raise LayerError(
                "found no rank-4 feature map with a spatial size above 1 before the output; "
                "name a layer explicitly (see `onnxsal inspect MODEL`)"
            )
        return spatial[-1]
    for layer in layers:
        if layer.tensor == spec:
            return layer
    for layer in layers:
        if layer.node and layer.node == spec:
            return layer
    producers = graph.producers()
    if spec in producers or spec in graph.shapes:
        shape = graph.shapes.get(spec)
        rank = len(shape) if shape is not None else "unknown"
        raise LayerError(
            f'"{spec}" is not a usable layer (rank {rank}, or it does not lie between the input and the output); '
            "CAM methods need a rank-4 feature map: see `onnxsal inspect MODEL`"
        )
    names = [layer.tensor for layer in layers] + [layer.node for layer in layers if layer.node]
    close = difflib.get_close_matches(spec, names, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise LayerError(f'unknown layer "{spec}".{hint} List the layers with `onnxsal inspect MODEL`')
