"""The head of a model: which output is explained, its activation, and the score before that activation.

Exporters hide the final activation behind ops that only move or relabel values: tf2onnx and Paddle end
`Gemm -> Softmax -> Identity`; the opset 11 -> 13 upgrade of `Softmax(axis=1)` on an input of unknown
rank writes `Flatten(axis=1) -> Softmax(axis=1) -> Reshape(to Shape(x))`; heads squeeze `(N, K, 1, 1)`
maps, cast float -> float or transpose. `detect_head` walks back from the output through such ops
(TAIL_OPS) to a Softmax, LogSoftmax or Sigmoid. The *tail* (the ops between the activation and the
output) is then re-applied to other functions of the activation's input, so every target kind scores a
tensor shaped like the output:

    logit            tail(z)                       z = the activation's input
    probability      tail(softmax(z)) | tail(sigmoid(z))     (the output itself when it has that head)
    log_probability  tail(log_softmax(z)) | tail(-softplus(-z))

A head without activation gets softmax / log-softmax over its class axis for the other kinds, or the
logistic sigmoid when it has one unit (a binary classifier that outputs its logit).

`choose_output` picks the explained output of a model with several float outputs and says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import helper

from ..errors import ModelError
from .utils import FLOAT_TYPES, attribute, constants, producers

TAIL_OPS = frozenset({"Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Cast", "Dropout"})
ACTIVATIONS = frozenset({"Softmax", "LogSoftmax", "Sigmoid"})
KIND_OF_ACTIVATION = {"Softmax": "probability", "Sigmoid": "probability", "LogSoftmax": "log_probability"}


@dataclass
class Head:
    """How the explained output is made from its scores.

    output:         the model output explained
    activation:     "Softmax" | "LogSoftmax" | "Sigmoid" | None
    pre_activation: the activation's input z (== output when there is no activation)
    tail:           nodes from the activation to the output, in order (no-ops on values)
    class_axis:     the class axis of the output; None for one score per sample (rank-1 output)
    shape:          the output's shape (batch None), when known
    """

    output: str
    activation: str | None
    pre_activation: str
    tail: list = field(default_factory=list, repr=False)
    activation_node: onnx.NodeProto | None = field(default=None, repr=False)
    class_axis: int | None = 1
    shape: tuple | None = None
    axis_guessed: bool = False  # the class axis could not be followed through the tail: a default was taken

    @property
    def logits(self) -> str:
        """The tensor holding tail(z): the output itself without activation, else a clone of the tail."""
        if self.activation is None:
            return self.output
        return self.pre_activation if not self.tail else f"{self.output}/logit"

    @property
    def num_classes(self) -> int | None:
        if self.class_axis is None:
            return 1
        if self.shape is None or len(self.shape) <= self.class_axis:
            return None
        return self.shape[self.class_axis]

    @property
    def dense(self) -> bool:
        """A score per pixel (or position), not per sample: rank > 2."""
        return self.shape is not None and len(self.shape) > 2

    def probability_function(self) -> str:
        """How class probabilities follow from logits for this head: 'softmax', 'sigmoid' or 'none'."""
        if self.activation in ("Softmax", "LogSoftmax"):
            return "softmax"
        if self.activation == "Sigmoid":
            return "sigmoid"
        if self.num_classes == 1:
            return "sigmoid"
        return "softmax" if self.class_axis is not None else "none"

    def describe(self) -> str:
        dims = "x".join("N" if d is None else str(d) for d in self.shape) if self.shape else "?"
        if self.activation is None:
            act = "no final activation"
        else:
            seen = " -> ".join(n.op_type for n in self.tail)
            act = f"{self.activation} head" + (f" (behind {seen})" if seen else "")
        classes = self.num_classes
        return f'output "{self.output}" [{dims}], {act}, {classes if classes is not None else "?"} class(es)'

    # -- nodes
    def logit_nodes(self) -> list[onnx.NodeProto]:
        """Nodes computing `self.logits` (the tail applied to z); none when the output has no activation."""
        if self.activation is None or not self.tail:
            return []
        return self._clone_tail(self.pre_activation, "logit")

    def score_nodes(self, kind: str, dtype: int) -> tuple[list[onnx.NodeProto], str]:
        """(nodes to append, tensor name) of the score explained for a target kind, shaped like the output."""
        if kind == "logit":
            return [], self.logits
        if self.activation is not None and KIND_OF_ACTIVATION[self.activation] == kind:
            return [], self.output
        z, prefix = (self.pre_activation, f"{self.output}/{kind}") if self.activation else (self.output, f"{self.output}/{kind}")
        fn = self.probability_function()
        if fn == "none":
            raise ModelError(f"output {self.output!r} has one score per sample and no activation: only target_kind='logit' applies")
        nodes: list[onnx.NodeProto] = []
        act_out = f"{prefix}/act"
        if fn == "softmax":
            axis = self._activation_axis()
            op = "Softmax" if kind == "probability" else "LogSoftmax"
            nodes.append(helper.make_node(op, [z], [act_out], axis=axis, name=act_out))
        elif kind == "probability":
            nodes.append(helper.make_node("Sigmoid", [z], [act_out], name=act_out))
        else:  # log sigmoid(z) = -softplus(-z), stable for large |z|
            nodes += [
                helper.make_node("Neg", [z], [f"{prefix}/neg"], name=f"{prefix}/neg"),
                helper.make_node("Softplus", [f"{prefix}/neg"], [f"{prefix}/softplus"], name=f"{prefix}/softplus"),
                helper.make_node("Neg", [f"{prefix}/softplus"], [act_out], name=act_out),
            ]
        if self.activation is None or not self.tail:
            nodes[-1].output[0] = prefix
            nodes[-1].name = prefix
            return nodes, prefix
        return nodes + self._clone_tail(act_out, kind), prefix

    def _activation_axis(self) -> int:
        if self.activation in ("Softmax", "LogSoftmax"):
            return int(attribute(self.activation_node, "axis", -1))
        return self.class_axis if self.class_axis is not None else -1

    def _clone_tail(self, start: str, kind: str) -> list[onnx.NodeProto]:
        nodes, current = [], start
        for node in self.tail:
            clone = onnx.NodeProto()
            clone.CopyFrom(node)
            clone.input[0] = current
            out = node.output[0]
            del clone.output[:]
            clone.output.append(f"{out}/{kind}" if out != self.output else f"{self.output}/{kind}")
            clone.name = f"{node.name or out}/{kind}"
            nodes.append(clone)
            current = clone.output[0]
        return nodes


def _axes(node: onnx.NodeProto, consts: dict) -> list[int] | None:
    axes = attribute(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = consts.get(node.input[1])
        axes = None if value is None else value.ravel().tolist()
    return None if axes is None else [int(a) for a in axes]


def default_class_axis(shape: tuple | None, layout: str) -> int | None:
    """Class axis of a score tensor without a softmax to say so: (N,) none; (N, K) 1; (N, L, K) 2;
    (N, K, H, W) 1, or 3 for a model with channels-last images."""
    rank = len(shape) if shape is not None else 2
    if rank <= 1:
        return None
    if rank == 2:
        return 1
    if rank == 3:
        return 2
    if rank == 4 and layout == "NHWC":
        return 3
    return 1


def detect_head(model: onnx.ModelProto, output: str, shapes: dict, layout: str = "NCHW") -> Head:
    """The Head of `output`: see the module docstring."""
    made = producers(model.graph)
    consts = constants(model.graph)
    dtypes = {}
    for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        if vi.type.HasField("tensor_type"):
            dtypes[vi.name] = vi.type.tensor_type.elem_type
    out_shape = shapes.get(output)
    tail: list[onnx.NodeProto] = []
    node = made.get(output)
    while node is not None and node.domain in ("", "ai.onnx") and node.op_type in TAIL_OPS:
        if node.op_type in ("Cast", "CastLike"):
            to = attribute(node, "to", None)
            if to not in FLOAT_TYPES or dtypes.get(node.input[0], to) not in FLOAT_TYPES:
                break
        if node.op_type == "Dropout" and len([o for o in node.output if o]) > 1:
            break
        tail.insert(0, node)
        node = made.get(node.input[0])
    if node is None or node.op_type not in ACTIVATIONS or node.domain not in ("", "ai.onnx"):
        return Head(output, None, output, [], None, default_class_axis(out_shape, layout), out_shape)
    z = node.input[0]
    zshape = shapes.get(z)
    if node.op_type == "Sigmoid":  # elementwise: the class axis of z, wherever the tail moves it
        axis = default_class_axis(zshape, layout) if zshape is not None else None
    else:
        axis = int(attribute(node, "axis", -1))
        if zshape is not None:
            axis %= len(zshape)
        elif axis < 0:
            axis = None
    mapped = _map_axis(axis, tail, shapes, consts, zshape) if tail else axis
    head = Head(output, node.op_type, z, tail, node, mapped, out_shape)
    if mapped is None or mapped == 0 or (out_shape is not None and mapped >= len(out_shape)):
        head.class_axis = default_class_axis(out_shape, layout)
        head.axis_guessed = head.class_axis is not None and (node.op_type != "Sigmoid" or len(out_shape or ()) > 2)
    return head


def refine_class_axis(graph) -> None:
    """Dense (N, ., ., .) scores whose class axis no softmax names: take it from the layout of the tensor.

    Channel-first ops (Conv, pools) make NCHW tensors and Transposes (0,2,3,1)/(0,3,1,2) switch layout
    (graph/layers.py), so a Conv head permuted to NHWC has classes on axis 3, and an NHWC-input model whose
    convolutions end in NCHW has them on axis 1. When neither a softmax nor the layout says, onnxsal says
    which axis it assumed (graph.choices).
    """
    from .layers import _layouts

    head = graph.head
    named = head.activation in ("Softmax", "LogSoftmax") and not head.axis_guessed
    if head.shape is not None and len(head.shape) == 4 and not named:
        tag = _layouts(graph).get(graph.output_name)
        if tag is not None:
            head.class_axis = 1 if tag == "NCHW" else 3
            head.axis_guessed = False
            graph.class_axis = head.class_axis
    if head.axis_guessed:
        dims = "x".join("N" if d is None else str(d) for d in head.shape) if head.shape else "?"
        graph.choices.append(f'could not follow the class axis of output "{graph.output_name}" [{dims}] through '
                             f"{' -> '.join(n.op_type for n in head.tail) or 'the graph'}; assuming axis {head.class_axis}")


def _map_axis(axis, tail, shapes, consts, in_shape) -> int | None:
    """Where the activation's axis ends up in the output, through the tail's ops."""
    for node in tail:
        out_shape = shapes.get(node.output[0])
        if axis is None:
            return None
        op = node.op_type
        if op in ("Identity", "Cast", "CastLike", "Dropout"):
            pass
        elif op == "Transpose":
            perm = list(attribute(node, "perm", []) or [])
            if not perm and in_shape is not None:
                perm = list(range(len(in_shape)))[::-1]
            axis = perm.index(axis) if axis in perm else None
        elif op == "Squeeze":
            axes = _axes(node, consts)
            if axes is None:  # every size-1 axis
                if in_shape is None:
                    return None
                axes = [i for i, d in enumerate(in_shape) if d == 1]
            rank = len(in_shape) if in_shape is not None else max(axes + [axis]) + 1
            axes = [a % rank for a in axes]
            axis = None if axis in axes else axis - sum(a < axis for a in axes)
        elif op == "Unsqueeze":
            axes = _axes(node, consts)
            if axes is None:
                return None
            rank = (len(out_shape) if out_shape is not None else (len(in_shape) + len(axes)) if in_shape is not None else None)
            if rank is None:
                return None
            for a in sorted(x % rank for x in axes):
                if a <= axis:
                    axis += 1
        elif op == "Flatten":
            f = int(attribute(node, "axis", 1))
            axis = 0 if axis < f else 1
        elif op == "Reshape":
            # the axis survives when every dimension up to it, or from it on, is unchanged
            if in_shape is None or out_shape is None:
                return None
            i, o = tuple(in_shape), tuple(out_shape)
            if i[1:axis + 1] == o[1:axis + 1] and None not in i[1:axis + 1]:
                pass
            elif len(i) - axis <= len(o) - 1 and i[axis:] == o[len(o) - (len(i) - axis):] and None not in i[axis:]:
                axis = len(o) - (len(i) - axis)
            else:
                return None
        in_shape = out_shape
    return axis


def _ancestors(model: onnx.ModelProto, tensor: str) -> set[str]:
    made = producers(model.graph)
    seen, stack = set(), [tensor]
    while stack:
        node = made.get(stack.pop())
        if node is None:
            continue
        for t in node.input:
            if t and t not in seen:
                seen.add(t)
                stack.append(t)
    return seen


def choose_output(model: onnx.ModelProto) -> tuple[str, str | None]:
    """(output name, a note saying what was chosen and why, or None when there was no choice).

    Among several float outputs the one that looks most like class scores wins: one ending in a
    Softmax / LogSoftmax / Sigmoid head (seen through no-op ops), then one computed from another output
    (logits from an embedding), then rank 2; ties go to the first.
    """
    outputs = list(model.graph.output)
    floats = [o for o in outputs if o.type.HasField("tensor_type") and o.type.tensor_type.elem_type in FLOAT_TYPES]
    if not floats:
        listed = ", ".join(f"{o.name} ({onnx.TensorProto.DataType.Name(o.type.tensor_type.elem_type)})" for o in outputs)
        raise ModelError(f"the model has no float output to explain (outputs: {listed}); onnxsal explains float scores")
    if len(floats) == 1:
        if len(outputs) > 1:
            return floats[0].name, f'explaining output "{floats[0].name}", the only float output'
        return floats[0].name, None
    names = {o.name for o in floats}

    def score(o) -> tuple:
        head = detect_head(model, o.name, {})
        rank = len(o.type.tensor_type.shape.dim)
        downstream = bool(_ancestors(model, o.name) & (names - {o.name}))
        return (head.activation is not None, downstream, rank == 2)

    ranked = [(score(o), -i, o) for i, o in enumerate(floats)]
    best = max(ranked, key=lambda t: (t[0], t[1]))
    why = best[0]
    reason = ("it ends in a " + detect_head(model, best[2].name, {}).activation + " head") if why[0] else \
        "it is computed from another output" if why[1] else "it has the shape of class scores (N, K)" if why[2] else \
        "it is the first"

    def dims(o):
        return "x".join(str(d.dim_value) if d.HasField("dim_value") else ("N" if i == 0 else "?")
                        for i, d in enumerate(o.type.tensor_type.shape.dim))

    listed = ", ".join(f'"{o.name}" [{dims(o)}]' for o in floats[:4]) + (f", ... {len(floats) - 4} more" if len(floats) > 4 else "")
    return best[2].name, (f'the model has {len(floats)} float outputs ({listed}); explaining "{best[2].name}" '
                          f"because {reason}; choose another with --output-name NAME (output_name=)")


