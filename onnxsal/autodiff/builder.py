"""Reverse-mode differentiation of an ONNX graph into ONNX nodes.

build_gradient_model(model, output, wrt) returns a model that, besides the original outputs, takes an
input `seed` shaped like `output` and returns d sum(seed * output) / d t as `<t>_grad` for every t in
wrt (graph inputs or intermediate tensors, the latter also exposed as outputs). Only nodes on a path
from some t in wrt to `output` are differentiated; contributions to a tensor read by several nodes are
summed; no weight gradient is ever built. Each node's vector-Jacobian product comes from its rule.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import LayerError, OnnxsalError, UnsupportedOpError
from ..graph.utils import (
    FLOAT_TYPES,
    attribute,
    constants,
    default_opset,
    node_label,
    tensor_types,
    value_info_shape,
)
from . import registry


class InternalRuleError(Exception):
    """A rule emitted something wrong; the driver turns it into an error naming the node."""


def _np_dtype(elem_type: int):
    return helper.tensor_dtype_to_np_dtype(elem_type)


class Emitter:
    """Owns the nodes and constants added to a graph, with unique names and a Shape cache."""

    def __init__(self, model: onnx.ModelProto, prefix: str = "onnxsal"):
        self.model = model
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.dtypes, self.shapes = tensor_types(model)
        self.consts = constants(model.graph)
        self.opset = default_opset(model)
        self.prefix = prefix
        self._count = 0
        self._shape_cache: dict[str, str] = {}
        self._taken = {n for node in model.graph.node for n in list(node.input) + list(node.output)}
        self._taken |= {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
        # rule sets that need a reference forward pass (DeepLIFT): tensor -> its value at the reference input,
        # and forward node (by its first output) -> its copy in the reference pass; see reference_pass()
        self.refs: dict[str, str] = {}
        self.ref_nodes: dict[str, onnx.NodeProto] = {}

    def fresh(self, hint: str) -> str:
        while True:
            self._count += 1
            name = f"{self.prefix}/{hint}_{self._count}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, domain: str = "", **attrs):
        names = [self.fresh(op_type) for _ in range(outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        node = helper.make_node(op_type, list(inputs), names, name=names[0], domain=domain, **attrs)
        self.nodes.append(node)
        self._infer(node)
        return names[0] if outputs == 1 else names

    def _infer(self, node: onnx.NodeProto) -> None:
        """Element type (and shape, where onnx can tell) of an emitted node's outputs, by onnx's own type
        inference of that one node; the types later rules and constants `like` these outputs depend on."""
        types, data = {}, {}
        for name in node.input:
            if name and name in self.dtypes:
                shape = self.shapes.get(name)
                types[name] = helper.make_tensor_type_proto(self.dtypes[name], None if shape is None else list(shape))
                value = self.consts.get(name)
                if value is not None and value.dtype.kind in "iu" and value.size <= 64:
                    data[name] = numpy_helper.from_array(np.asarray(value))
        try:
            schema = onnx.defs.get_schema(node.op_type, self.opset, node.domain)
            inferred = onnx.shape_inference.infer_node_outputs(schema, node, types, data or None)
        except Exception as exc:  # noqa: BLE001 - onnx raises several types
            if all(not name or name in types for name in node.input):
                line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise InternalRuleError(f"emitted an invalid {node.op_type} node ({line})") from None
            # an input of unknown type (a forward tensor shape inference did not reach): its first typed input's
            known = next((self.dtypes[n] for n in node.input if n in self.dtypes), None)
            if known is not None:
                for name in node.output:
                    self.dtypes.setdefault(name, known)
            return
        for name in node.output:
            t = inferred.get(name)
            if t is None or not t.HasField("tensor_type") or not t.tensor_type.elem_type:
                continue
            self.dtypes[name] = t.tensor_type.elem_type
            if t.tensor_type.HasField("shape"):
                self.shapes[name] = value_info_shape(helper.make_value_info(name, t))

    def constant(self, value, dtype=None, like: str | None = None) -> str:
        if like is not None:
            dtype = _np_dtype(self.dtypes.get(like, TensorProto.FLOAT))
        array = np.asarray(value, dtype=dtype)
        name = self.fresh("const")
        self.initializers.append(numpy_helper.from_array(array, name))
        self.dtypes[name] = helper.np_dtype_to_tensor_dtype(array.dtype)
        self.shapes[name] = array.shape
        self.consts[name] = array
        return name

    def ints(self, values) -> str:
        return self.constant(np.asarray(values, dtype=np.int64))

    def shape_of(self, name: str) -> str:
        if name not in self._shape_cache:
            self._shape_cache[name] = self.op("Shape", name)
        return self._shape_cache[name]


class RuleContext:
    """What a rule sees: its forward node, incoming gradients and helpers that emit ONNX nodes."""

    def __init__(self, emitter: Emitter, node: onnx.NodeProto, grads_out: list, needs: list[bool]):
        self.e = emitter
        self.node = node
        self._grads_out = grads_out
        self._needs = needs

    # -- the forward node
    @property
    def opset(self) -> int:
        return self.e.opset

    def x(self, i: int = 0) -> str:
        return self.node.input[i] if i < len(self.node.input) else ""

    def y(self, i: int = 0) -> str:
        return self.node.output[i] if i < len(self.node.output) else ""

    def dy(self, i: int = 0) -> str | None:
        return self._grads_out[i] if i < len(self._grads_out) else None

    def needs(self, i: int) -> bool:
        return i < len(self._needs) and self._needs[i]

    def attr(self, name: str, default=None):
        value = attribute(self.node, name, default)
        return value.decode() if isinstance(value, bytes) else value

    def shape(self, name: str) -> tuple | None:
        return self.e.shapes.get(name)

    def rank(self, name: str) -> int:
        shape = self.shape(name)
        if shape is None:
            raise UnsupportedOpError(f"{node_label(self.node)}: the rank of {name!r} is unknown (shape inference failed)")
        return len(shape)

    def static_shape(self, name: str, skip_batch: bool = False) -> tuple:
        """Static dims of `name`; raises when one is unknown (the batch dim may be allowed to be None)."""
        shape = self.shape(name)
        dims = shape[1:] if (skip_batch and shape) else shape
        if shape is None or any(d is None for d in dims):
            raise UnsupportedOpError(
                f"{node_label(self.node)}: needs the static shape of {name!r}, which shape inference could not "
                "determine; give a fixed input size"
            )
        return shape

    def dims(self, name: str, axes) -> list[int]:
        """Static sizes of `name` on `axes` only (a rule asks for no more than it needs); raises naming the axis
        when shape inference left one unknown (e.g. the batch axis, wherever it sits)."""
        shape = self.shape(name)
        rank = self.rank(name)
        axes = [int(a) % rank for a in axes]
        unknown = [a for a in axes if shape[a] is None]
        if unknown:
            raise UnsupportedOpError(
                f"{node_label(self.node)}: needs the size of axis {unknown[0]} of {name!r}, which is not static "
                "(the batch axis, or a size shape inference could not derive)"
            )
        return [int(shape[a]) for a in axes]

    def const(self, name: str) -> np.ndarray | None:
        return self.e.consts.get(name) if name else None

    def require_const(self, name: str, what: str) -> np.ndarray:
        value = self.const(name)
        if value is None:
            raise UnsupportedOpError(f"{node_label(self.node)}: its {what} must be a constant to differentiate it")
        return value

    def np_dtype(self, name: str):
        return _np_dtype(self.e.dtypes.get(name, TensorProto.FLOAT))

    def data_grad(self, dx: str | None) -> list:
        """[dx, None, ...]: the gradient of input 0 only; the node's other inputs (weights, shapes, axes,
        indices) get none, as no weight gradient is ever built."""
        return [dx] + [None] * (len(self.node.input) - 1)

    # -- emitting
    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs):
        return self.e.op(op_type, *inputs, outputs=outputs, **attrs)

    def constant(self, value, like: str | None = None, dtype=None) -> str:
        return self.e.constant(value, dtype=dtype, like=like if like is not None else (None if dtype else self.x(0)))

    def ints(self, values) -> str:
        return self.e.ints(values)

    def shape_of(self, name: str) -> str:
        return self.e.shape_of(name)

    def ref(self, name: str) -> str:
        """The value of tensor `name` in the reference forward pass (rule sets that need one, e.g. DeepLIFT's
        Delta y = y - y_ref); a tensor that does not depend on the input (a weight, a shape) is its own reference."""
        return self.e.refs.get(name, name) if name else name

    def ref_output(self, i: int) -> str:
        """forward_output(i) of this node's copy in the reference pass (e.g. MaxPool's Indices at the reference)."""
        twin = self.e.ref_nodes.get(self.node.output[0])
        if twin is None:
            raise InternalRuleError(f"asked for the reference pass of a {self.node.op_type} node that has none")
        while len(twin.output) <= i:
            twin.output.append("")
        if not twin.output[i]:
            twin.output[i] = self.e.fresh(f"{self.node.op_type}_ref_out{i}")
        return twin.output[i]

    def forward_output(self, i: int) -> str:
        """Name of optional output i of the forward node, adding it when the model did not ask for it."""
        while len(self.node.output) <= i:
            self.node.output.append("")
        if not self.node.output[i]:
            self.node.output[i] = self.e.fresh(f"{self.node.op_type}_out{i}")
        return self.node.output[i]

    def zeros_like(self, name: str) -> str:
        zero = numpy_helper.from_array(np.zeros(1, dtype=self.np_dtype(name)))
        return self.op("ConstantOfShape", self.shape_of(name), value=zero)

    def reshape_like(self, grad: str, like: str) -> str:
        shape = self.shape(like)
        if shape is not None and all(d is not None for d in shape):
            return self.op("Reshape", grad, self.ints(shape))
        return self.op("Reshape", grad, self.shape_of(like))

    def reduce_sum(self, x: str, axes, keepdims: int = 1) -> str:
        return self.op("ReduceSum", x, self.ints(list(axes)), keepdims=keepdims)

    def unsqueeze(self, x: str, axes) -> str:
        return self.op("Unsqueeze", x, self.ints(list(axes)))

    def mul(self, a: str, b: str) -> str:
        return self.op("Mul", a, b)

    def masked(self, grad: str, mask: str) -> str:
        """grad where the boolean mask holds, else 0: Mul by the mask as a number (far faster than Where in onnxruntime)."""
        return self.op("Mul", grad, self.op("Cast", mask, to=self.e.dtypes.get(grad, TensorProto.FLOAT)))

    def scale(self, x: str, factor: float) -> str:
        return self.op("Mul", x, self.constant(factor, like=x))


    def sum_to(self, grad: str, out_shape: tuple | None, in_shape: tuple | None, like: str) -> str:
        """Sum `grad` of shape out_shape down to in_shape (numpy broadcasting in reverse); `like` has in_shape."""
        if out_shape is None or in_shape is None:
            return self._unbroadcast_dynamic(grad, like)
        lead = len(out_shape) - len(in_shape)
        if lead < 0:
            return self._unbroadcast_dynamic(grad, like)
        axes = list(range(lead))
        for i, d in enumerate(in_shape):
            o = out_shape[lead + i]
            if d == 1 and o != 1:
                axes.append(lead + i)
            elif d is not None and o is not None and d != o:
                return self._unbroadcast_dynamic(grad, like)
        if not axes:
            return grad
        summed = self.reduce_sum(grad, axes, keepdims=1)
        if lead == 0:
            return summed
        if all(d is not None for d in in_shape):
            return self.op("Reshape", summed, self.ints(in_shape))
        return self.op("Reshape", summed, self.shape_of(like))

    def _unbroadcast_dynamic(self, grad: str, like: str) -> str:
        # axes = nonzero(pad_left(shape(like), rank(grad)) != shape(grad)); sum there; reshape to shape(like)
        gshape, lshape = self.op("Shape", grad), self.shape_of(like)
        grank, lrank = self.op("Shape", gshape), self.op("Shape", lshape)
        pad = self.op("Sub", grank, lrank)
        ones = self.op("Expand", self.ints([1]), pad)
        padded = self.op("Concat", ones, lshape, axis=0)
        differ = self.op("Not", self.op("Equal", padded, gshape))
        axes = self.op("Reshape", self.op("NonZero", differ), self.ints([-1]))
        summed = self.op("ReduceSum", grad, axes, keepdims=1, noop_with_empty_axes=1)
        return self.op("Reshape", summed, lshape)


def _needed_nodes(nodes, output: str, active: set[str]):
    """Nodes on a path from an active tensor to `output`, in reverse topological order."""
    needed = {output}
    path = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output) and any(i in active for i in node.input):
            path.append(node)
            needed.update(i for i in node.input if i in active)
    return path, needed


def _active_tensors(nodes, wrt: Sequence[str], dtypes: dict) -> set[str]:
    active = set(wrt)
    for node in nodes:
        if any(i in active for i in node.input):
            active.update(o for o in node.output if o and dtypes.get(o, TensorProto.FLOAT) in FLOAT_TYPES)
    return active


def _op_name(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def _positions(record: registry.RuleSet, path, wrt) -> dict[int, registry.NodePosition]:
    """NodePosition of every node on the path whose op is one of the rule set's layer ops (by id of the node)."""
    if not record.layer_ops:
        return {}
    layers = [n for n in reversed(path) if n.op_type in record.layer_ops and n.domain in ("", "ai.onnx")]
    sources = set(wrt)
    return {id(n): registry.NodePosition(i, len(layers), any(x in sources for x in n.input)) for i, n in enumerate(layers)}


def _rules_on_path(record: registry.RuleSet, path, wrt) -> dict[int, object]:
    """The rule of every node on the path under `record` (None where it has none), by id of the node."""
    positions = _positions(record, path, wrt)
    return {id(n): (record.rule_for(n, positions.get(id(n))) if n.domain in ("", "ai.onnx") else None) for n in path}


def missing_rules(model: onnx.ModelProto, output: str, wrt: Sequence[str], ruleset: str = "gradient"):
    """[(op_type, node label)] for nodes on the gradient path that have no rule."""
    dtypes, _ = tensor_types(model)
    nodes = list(model.graph.node)
    path, _ = _needed_nodes(nodes, output, _active_tensors(nodes, wrt, dtypes))
    chosen = _rules_on_path(registry.get(ruleset), path, wrt)
    return [(_op_name(node), node_label(node)) for node in reversed(path) if chosen[id(node)] is None]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _run_rule(rule, ctx: RuleContext) -> list:
    """The rule's gradients, checked: one tensor name or None per node input, each typed like its input.

    Every failure becomes an UnsupportedOpError (or the OnnxsalError the rule raised) whose one-line
    message names the node and its op type.
    """
    node, e = ctx.node, ctx.e
    label = node_label(node)
    try:
        results = rule(ctx)
    except OnnxsalError as exc:
        message = _first_line(exc)
        raise type(exc)(message if label in message else f"{label}: {message}") from None
    except InternalRuleError as exc:
        raise UnsupportedOpError(f"{label}: its backward rule {exc}; please report this with the model") from None
    except Exception as exc:  # noqa: BLE001 - a bug in a rule must still name the node
        raise UnsupportedOpError(
            f"{label}: its backward rule failed ({type(exc).__name__}: {_first_line(exc)}); please report this with the model"
        ) from None
    if not isinstance(results, (list, tuple)) or len(results) != len(node.input):
        got = f"{len(results)} gradients" if isinstance(results, (list, tuple)) else type(results).__name__
        raise UnsupportedOpError(
            f"{label}: its backward rule returned {got} for {len(node.input)} inputs (one gradient or None per input); "
            "please report this"
        )
    results = list(results)
    for i, g in enumerate(results):
        if g is None or not ctx.needs(i):
            continue
        if not isinstance(g, str) or g not in e.dtypes:
            raise UnsupportedOpError(f"{label}: its backward rule returned {g!r} for input {i}, not a tensor it emitted; please report this")
        want, got = e.dtypes.get(node.input[i]), e.dtypes.get(g)
        if want is not None and got != want:
            raise UnsupportedOpError(
                f"{label}: the gradient of input {i} is {TensorProto.DataType.Name(got)}, the input is "
                f"{TensorProto.DataType.Name(want)}; please report this"
            )
        results[i] = _reduce_broadcast(ctx, g, node.input[i], label, i)
    return results


def _reduce_broadcast(ctx: RuleContext, g: str, x: str, label: str, i: int) -> str:
    """g summed over the axes x was broadcast along, for ops that broadcast (their rules return gradients
    shaped like the node's output); a gradient whose known shape cannot be x's is a rule bug.

    Where shape inference knows which axes differ, the sum is static; where it does not (an unknown size
    against a size-1 axis of x, or unknown ranks), it is computed at run time."""
    gshape, xshape = ctx.e.shapes.get(g), ctx.e.shapes.get(x)
    broadcasting = ctx.node.op_type in BROADCASTING_OPS
    if gshape is None or xshape is None:
        return ctx._unbroadcast_dynamic(g, x) if broadcasting else g
    gshape, xshape = tuple(gshape), tuple(xshape)
    lead = len(gshape) - len(xshape)
    aligned = list(zip(xshape, gshape[max(lead, 0):]))
    if lead < 0 or (lead > 0 and not broadcasting) or any(
            d is not None and o is not None and d != o and not (d == 1 and broadcasting) for d, o in aligned):
        raise UnsupportedOpError(
            f"{label}: its backward rule returned a gradient shaped {list(gshape)} for input {i} shaped "
            f"{list(xshape)}; please report this"
        )
    if not broadcasting or (lead == 0 and all(d == o or d is None for d, o in aligned)):
        return g
    if any(d == 1 and o is None for d, o in aligned):
        return ctx._unbroadcast_dynamic(g, x)
    return ctx.sum_to(g, gshape, xshape, x)


# ops whose inputs broadcast against each other (numpy rules): their gradients are reduced by the driver
BROADCASTING_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Sum", "Mean", "Max", "Min", "Where", "Expand",
                              "PRelu", "Gemm"})


def reference_pass(emitter: Emitter, nodes, inputs: dict[str, str]) -> None:
    """A second copy of every forward node that depends on `inputs` (graph input -> reference input name), reading
    the references instead: the reference forward pass of DeepLIFT (Shrikumar et al. 2017, sec. 2: the activation
    of every neuron at the reference input). Fills emitter.refs (tensor -> reference tensor) and emitter.ref_nodes;
    the copies are emitted before any backward node. Nodes that do not depend on the input are shared."""
    refs = emitter.refs
    refs.update(inputs)
    for name, ref in inputs.items():
        emitter.dtypes[ref], emitter.shapes[ref] = emitter.dtypes.get(name), emitter.shapes.get(name)
    for node in nodes:
        if not any(i in refs for i in node.input):
            continue
        twin = copy.deepcopy(node)
        twin.input[:] = [refs.get(i, i) for i in node.input]
        outputs = []
        for o in node.output:
            if not o:
                outputs.append("")
                continue
            r = emitter.fresh(f"ref/{o.split('/')[-1] or 'tensor'}")
            refs[o] = r
            if o in emitter.dtypes:
                emitter.dtypes[r] = emitter.dtypes[o]
            if o in emitter.shapes:
                emitter.shapes[r] = emitter.shapes[o]
            outputs.append(r)
        twin.output[:] = outputs
        twin.name = emitter.fresh("ref/" + (node.name or node.op_type).split("/")[-1])
        emitter.nodes.append(twin)
        if node.output:
            emitter.ref_nodes[node.output[0]] = twin


def _differentiate(emitter: Emitter, nodes, output: str, wrt: Sequence[str], ruleset: str, seed_name: str,
                   errors: list | None = None) -> dict[str, list[str]]:
    """Emit the backward nodes; returns the gradient parts of every tensor reached, by tensor name.

    With `errors` (a list), a node that cannot be differentiated is recorded there as (op type, node label,
    reason) and passes zeros on instead of raising: a dry run that finds every such node.
    """
    active = _active_tensors(nodes, wrt, emitter.dtypes)
    path, needed = _needed_nodes(nodes, output, active)
    record = registry.get(ruleset)
    chosen = _rules_on_path(record, path, wrt)
    start = record.start(emitter, seed_name, output) if record.start is not None else seed_name
    grads: dict[str, list[str]] = {output: [start]}

    def accumulated(t: str) -> str | None:
        parts = grads.get(t)
        if not parts:
            return None
        if len(parts) > 1:
            grads[t] = [emitter.op("Sum", *parts)]
        return grads[t][0]

    for node in path:
        grads_out = [accumulated(o) if o else None for o in node.output]
        if all(g is None for g in grads_out):
            continue
        rule = chosen[id(node)]
        try:
            if rule is None:
                raise UnsupportedOpError(f"{node_label(node)}: no backward rule for {_op_name(node)}")
            needs = [bool(i) and i in active and i in needed for i in node.input]
            results = _run_rule(rule, RuleContext(emitter, node, grads_out, needs))
        except OnnxsalError as exc:
            if errors is None:
                raise
            errors.append((_op_name(node), node_label(node), str(exc)))
            # a stand-in gradient (zeros) flows on, so that the nodes before this one are checked too
            stand_in = RuleContext(emitter, node, grads_out, [])
            needs = [bool(i) and i in active and i in needed for i in node.input]
            results = [stand_in.zeros_like(i) if need else None for i, need in zip(node.input, needs)]
        for i, g in enumerate(results):
            if g is not None and needs[i]:
                grads.setdefault(node.input[i], []).append(g)
    for t in grads:
        accumulated(t)
    return grads


def dry_run(model: onnx.ModelProto, output: str, wrt: Sequence[str], ruleset: str = "gradient") -> list[tuple[str, str, str]]:
    """[(op type, node label, why)] for every node on the gradient path that cannot be differentiated.

    Runs every rule as the real build does, on copies of the nodes only (the weights are read, never
    copied), and keeps going past failures.
    """
    emitter = Emitter(model)
    nodes = [copy.deepcopy(n) for n in model.graph.node]  # rules may add optional outputs to their node
    if output not in emitter.dtypes:
        raise LayerError(f"unknown output tensor {output!r}")
    seed = emitter.fresh("seed")
    emitter.dtypes[seed], emitter.shapes[seed] = emitter.dtypes[output], emitter.shapes.get(output)
    errors: list = []
    _differentiate(emitter, nodes, output, wrt, ruleset, seed, errors)
    return errors


def build_gradient_model(
    model: onnx.ModelProto,
    output: str,
    wrt: Sequence[str],
    ruleset: str = "gradient",
    seed_name: str = "seed",
    expose: Sequence[str] = (),
    seed_tensor: str | None = None,
    reference: dict[str, str] | None = None,
) -> onnx.ModelProto:
    """The model plus input `seed` and outputs `<t>_grad` = d sum(seed * output) / d t for t in wrt.

    `expose` names extra intermediate tensors to return as outputs (e.g. activations without gradient);
    `seed_tensor` names a tensor of the graph to use as the seed instead of a new input (treated as a
    constant: no gradient flows through it).
    `reference` ({graph input: name of a new input}) adds those inputs and a reference forward pass reading them
    (reference_pass), and the output `<output>_reference` (the output at the reference); rule sets that need
    one (registry.needs_reference) require it.
    """
    registry.get(ruleset)  # an unknown rule set: one line naming the known ones
    model = copy.deepcopy(model)
    graph = model.graph
    emitter = Emitter(model)
    dtypes, shapes = emitter.dtypes, emitter.shapes
    if output not in dtypes:
        raise LayerError(f"unknown output tensor {output!r}")
    nodes = list(graph.node)
    _, needed = _needed_nodes(nodes, output, _active_tensors(nodes, wrt, dtypes))
    for t in wrt:
        if t not in dtypes:
            raise LayerError(f"unknown tensor {t!r}: not an input or a tensor of the graph")
        if t not in needed and t != output:
            raise LayerError(f"tensor {t!r} does not influence {output!r}; choose a layer between the input and the output")

    missing = missing_rules(model, output, wrt, ruleset)
    if missing:
        ops = sorted({op for op, _ in missing})
        raise UnsupportedOpError(
            f"no backward rule for {', '.join(ops)} (first at {missing[0][1]}); "
            f"supported ops: {', '.join(registry.get(ruleset).supported_ops())}"
        )

    if registry.needs_reference(ruleset) and not reference:
        raise UnsupportedOpError(f"the {ruleset} rule set needs a reference input (build_gradient_model(reference=...))")
    if reference:
        inputs = {i.name: i for i in graph.input}
        for name, ref in reference.items():
            if name not in inputs or ref in dtypes:
                raise LayerError(f"cannot add reference input {ref!r} for {name!r}: not a graph input, or the name is taken")
            twin = copy.deepcopy(inputs[name])
            twin.name = ref
            dims = twin.type.tensor_type.shape.dim
            if dims and not dims[0].HasField("dim_value"):  # a batch of its own: one reference broadcast to the batch
                dims[0].dim_param = f"{ref}_batch"
            graph.input.append(twin)
        reference_pass(emitter, nodes, dict(reference))

    if seed_tensor is not None:
        seed_name = seed_tensor
    else:
        seed_name = seed_name if seed_name not in dtypes else emitter.fresh("seed")
        dtypes[seed_name], shapes[seed_name] = dtypes[output], shapes.get(output)
    grads = _differentiate(emitter, nodes, output, wrt, ruleset, seed_name)

    new_outputs = []
    existing_outputs = {o.name for o in graph.output}

    def value_info(name: str, like: str):
        shape = shapes.get(like)
        dims = None if shape is None else ["N" if d is None else d for d in shape]
        return helper.make_tensor_value_info(name, dtypes.get(like, TensorProto.FLOAT), dims)

    if output not in existing_outputs:
        new_outputs.append(value_info(output, output))
        existing_outputs.add(output)
    for t in list(expose) + [t for t in wrt if t not in {i.name for i in graph.input}]:
        if t not in existing_outputs:
            new_outputs.append(value_info(t, t))
            existing_outputs.add(t)
    for t in wrt:
        g = grads[t][0] if grads.get(t) else None
        if g is None:
            g = RuleContext(emitter, nodes[0] if nodes else helper.make_node("Identity", [t], [t]), [], []).zeros_like(t)
        grad_name = f"{t}_grad"
        emitter.nodes.append(helper.make_node("Identity", [g], [grad_name], name=f"{emitter.prefix}/{grad_name}"))
        new_outputs.append(value_info(grad_name, t))

    if reference:  # the score at the reference, for the summation-to-delta gap: <output>_reference, batched like the
        # output (a reference of batch 1 serves the whole batch: every reference-pass tensor broadcasts against x's)
        ref_score = f"{output}_reference"
        emitter.nodes.append(helper.make_node("Expand", [emitter.refs[output], emitter.shape_of(output)], [ref_score],
                                              name=f"{emitter.prefix}/{ref_score}"))
        new_outputs.append(value_info(ref_score, output))
    if seed_tensor is None:
        graph.input.append(value_info(seed_name, output))
        del dtypes[seed_name]
    graph.node.extend(emitter.nodes)
    graph.initializer.extend(emitter.initializers)
    graph.output.extend(new_outputs)
    return model
