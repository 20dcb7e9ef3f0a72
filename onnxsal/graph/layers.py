"""Layers: intermediate feature maps a CAM method can weight, and how to choose one.

A layer is named by its tensor or by the node that produces it. Feature maps are rank-4 (NCHW or NHWC)
or token sequences [N, t + h*w, C] of vision transformers (t leading tokens such as a class token, then
an h x w grid of patches with the input's aspect ratio), folded to an (h, w) grid for CAM methods. `auto`
is the last rank-4 float feature map (in topological order) with a spatial size above 1 that depends on
the input and feeds the explained score: for a CNN, the activation just before the global pooling of the
classifier head. When token sequences come after it (a transformer), `auto` is the last sequence of the
model's width from which the score is reached through an attention Softmax (for ViT: the last block's
normalised input to attention; later sequences pass only the class token on to the head).

Channel-first ONNX ops (Conv, pools, BatchNormalization) produce NCHW tensors; Transposes with
perm (0,2,3,1)/(0,3,1,2) switch layout, as tf2onnx graphs do around every convolution; any other op
passes its input's layout on. That decides the channel axis of each candidate; a rank-4 map no such op
tagged (one that reshapes made: Swin and ConvNeXt blocks, window attention folded back) is NHWC when its
axes 1 and 2 divide the input's height and width by one factor and axes 2 and 3 do not, and NCHW the
other way round.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass

import numpy as np

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
    layout: str | None  # "NCHW" | "NHWC" | "NLC" (tokens) | None: not derived from a channel-first op (treated as NCHW)
    tokens: int = 0  # NLC: leading tokens that are not patches (a class token, a distillation token)
    grid: tuple | None = None  # NLC: (h, w) of the patch tokens

    @property
    def channel_axis(self) -> int:
        return {"NHWC": 3, "NLC": 2}.get(self.layout, 1)

    @property
    def spatial(self) -> tuple:
        if self.layout == "NLC":
            return tuple(self.grid)
        return tuple(self.shape[1:3]) if self.layout == "NHWC" else tuple(self.shape[2:4])

    def as_nchw(self, t: np.ndarray) -> np.ndarray:
        """Activations or gradients of this layer as float32 (N, C, h, w): tokens [N, t + h*w, C] lose the t
        leading ones and fold to the grid; NHWC is transposed."""
        if self.layout == "NLC":
            n, _, c = t.shape
            t = t[:, self.tokens:, :].reshape(n, self.grid[0], self.grid[1], c)
        if self.layout in ("NHWC", "NLC"):
            t = t.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(t, dtype=np.float32)

    @property
    def channels(self):
        return self.shape[self.channel_axis]

    def describe(self) -> str:
        dims = "x".join("N" if d is None else str(d) for d in self.shape)
        grid = f", {self.tokens} + {self.grid[0]}x{self.grid[1]} tokens" if self.layout == "NLC" else ""
        return f"{self.tensor}  [{dims} {self.layout or 'layout unknown'}{grid}]  ({self.op_type} {self.node})"


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


def token_grid(length: int, height: int, width: int) -> tuple[int, tuple[int, int]] | None:
    """(t, (h, w)) with length = t + h*w, t in 0..2 leading tokens, h x w patches of one stride s over the
    input (h = height / s, w = width / s), h and w above 1; None when no such split exists."""
    for lead in (0, 1, 2):
        n = length - lead
        h = int(round((n * height / width) ** 0.5)) if n > 0 else 0
        if h > 1 and n % h == 0 and n // h > 1 and height % h == 0 and height // h * (n // h) == width:
            return lead, (h, n // h)
    return None


def _layout_from_shape(shape: tuple, height: int, width: int) -> str | None:
    """NHWC when axes 1, 2 are the input's height and width divided by one stride and axes 2, 3 are not;
    NCHW the other way round; None when both or neither fit."""

    def grid(a, b):
        return bool(a and b and height % a == 0 and width % b == 0 and height // a == width // b)

    last, first = grid(shape[1], shape[2]), grid(shape[2], shape[3])
    return "NHWC" if last and not first else "NCHW" if first and not last else None


def candidate_layers(graph: ModelGraph) -> list[Layer]:
    """Feature maps (rank 4) and token sequences that depend on the input and feed the score, in topological order.

    The score itself and the tensors between it and its classifier (score_tensors) are left out."""
    tags = _layouts(graph)
    scores = score_tensors(graph)
    live = _depends_on_input(graph)
    feeds = _feeds(graph, graph.logits_name)
    height, width = graph.spatial_shape if len(graph.input_shape) == 4 else (None, None)
    found = []
    for node in graph.graph.node:
        for out in node.output:
            shape = graph.shapes.get(out)
            if out not in live or out not in feeds or out in scores or shape is None or graph.dtypes.get(out) not in FLOAT_TYPES:
                continue
            if len(shape) == 4:
                layout = tags.get(out)
                if layout is None and height:
                    layout = _layout_from_shape(shape, height, width)
                found.append(Layer(out, node.name, node.op_type, shape, layout))
            elif len(shape) == 3 and height and shape[0] in (None, 1) and shape[1] and shape[2]:
                # batch axis first: symbolic, or 1 where the export baked a batch of one in
                split = token_grid(shape[1], height, width)
                if split is not None:
                    found.append(Layer(out, node.name, node.op_type, shape, "NLC", split[0], split[1]))
    return found


def _auto_tokens(graph: ModelGraph, tokens: list[Layer]) -> Layer:
    """The last token sequence of the model's width (the most common C) that reaches the score through a
    Softmax (attention); else the last one of that width."""
    width = Counter(layer.shape[2] for layer in tokens).most_common(1)[0][0]
    tokens = [layer for layer in tokens if layer.shape[2] == width]
    softmax_inputs = set()
    feeds = _feeds(graph, graph.logits_name)
    for node in graph.graph.node:
        if node.op_type == "Softmax" and node.output[0] in feeds:
            softmax_inputs.add(node.input[0])
    for layer in reversed(tokens):
        downstream = {layer.tensor}
        for node in graph.graph.node:
            if any(t in downstream for t in node.input):
                downstream.update(o for o in node.output if o)
        if downstream & softmax_inputs:
            return layer
    return tokens[-1]


def select_layer(graph: ModelGraph, spec: str = "auto") -> Layer:
    """A layer by tensor name, node name, or 'auto'."""
    layers = candidate_layers(graph)
    if spec in (None, "auto"):
        spatial = [layer for layer in layers
                   if layer.layout is not None and all(d is not None and d > 1 for d in layer.spatial)]
        maps = [layer for layer in spatial if layer.layout != "NLC"]
        last_map = layers.index(maps[-1]) if maps else -1
        tokens = [layer for layer in layers[last_map + 1:] if layer.layout == "NLC"]
        if tokens:
            return _auto_tokens(graph, tokens)
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
            "CAM methods need a rank-4 feature map or a token sequence [N, tokens, C]: see `onnxsal inspect MODEL`"
        )
    names = [layer.tensor for layer in layers] + [layer.node for layer in layers if layer.node]
    close = difflib.get_close_matches(spec, names, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise LayerError(f'unknown layer "{spec}".{hint} List the layers with `onnxsal inspect MODEL`')
