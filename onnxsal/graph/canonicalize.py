"""Canonicalizers: graph-to-graph passes run before differentiation.

Each pass takes a ModelProto that it may modify in place and returns it. Together they bring any
exported classifier to one form: default-domain opset >= 17, no Identity/Dropout, BatchNormalization
folded into the preceding Conv where the Conv feeds nothing else, a symbolic batch dimension "N"
(with Reshape constants that baked in the export batch rewritten), and static spatial dimensions.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

from ..errors import ModelError
from .utils import (attribute, constants, consumers, default_opset, inferred_types, producers,
                    without_initializers)

MIN_OPSET = 17
BATCH_DIM = "N"


def upgrade_opset(model: onnx.ModelProto, min_version: int = MIN_OPSET) -> onnx.ModelProto:
    """Convert the default domain to opset `min_version` when the model is older (onnx version converter),
    then lift the IR version to what that opset needs (lift_ir_version)."""
    current = default_opset(model)
    if current >= min_version:
        return lift_ir_version(model)
    try:
        upgraded = version_converter.convert_version(model, min_version)
        onnx.checker.check_model(upgraded)
    except Exception as exc:  # noqa: BLE001 - the converter raises many types
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"could not upgrade the model from opset {current} to {min_version} ({first_line}); "
            f"re-export it with opset {min_version} or newer"
        ) from None
    return lift_ir_version(upgraded)


def lift_ir_version(model: onnx.ModelProto) -> onnx.ModelProto:
    """Raise the IR version to the one the model's opsets need, and make initializers plain constants.

    IR 3 (opset <= 8) requires every initializer to be a graph input too, an invariant every later pass
    would have to keep (a folded constant, a dropped weight). From IR 4 on, an initializer that is also a
    graph input is only an overridable default; onnxsal never feeds one, so such inputs are removed.
    """
    needed = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    if model.ir_version < needed:
        model.ir_version = needed
    inits = {i.name for i in model.graph.initializer}
    if any(i.name in inits for i in model.graph.input):
        kept = [i for i in model.graph.input if i.name not in inits]
        del model.graph.input[:]
        model.graph.input.extend(kept)
    return model


def _rewire(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _replace_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    del graph.node[:]
    graph.node.extend(nodes)


def _drop_nodes(graph: onnx.GraphProto, indices: set[int]) -> None:
    if indices:
        _replace_nodes(graph, [n for i, n in enumerate(graph.node) if i not in indices])


def remove_identity_dropout(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop Identity and (inference) Dropout nodes; y = x, so consumers read x directly."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    keep = []
    for node in graph.node:
        passthrough = node.op_type == "Identity" or (
            node.op_type == "Dropout" and (len(node.output) < 2 or not node.output[1])
        )
        if passthrough and node.domain in ("", "ai.onnx") and node.output[0] not in outputs:
            _rewire(graph, node.output[0], node.input[0])
            continue
        keep.append(node)
    _replace_nodes(graph, keep)
    return model


def fold_batchnorm(model: onnx.ModelProto, protected: set[str] = frozenset()) -> onnx.ModelProto:
    """Conv -> BatchNormalization into one Conv: W' = W * s, B' = (B - mean) * s + bias, s = scale / sqrt(var + eps).

    Only where the Conv output feeds the BatchNormalization alone, is not a graph output or a protected
    tensor (a layer the user selected), and all parameters are constants; other BatchNormalization
    nodes stay and are differentiated by their own rule.
    """
    graph = model.graph
    consts = constants(graph)
    users = consumers(graph)
    made = producers(graph)
    outputs = {o.name for o in graph.output}
    drop: set[int] = set()
    new_inits = []
    for index, node in enumerate(graph.node):
        if node.op_type != "BatchNormalization" or len([o for o in node.output if o]) != 1:
            continue
        if attribute(node, "training_mode", 0):
            continue
        conv = made.get(node.input[0])
        if conv is None or conv.op_type != "Conv" or len(users.get(conv.output[0], [])) != 1:
            continue
        if conv.output[0] in outputs or conv.output[0] in protected:
            continue
        params = [consts.get(n) for n in node.input[1:5]]
        weight = consts.get(conv.input[1])
        bias = consts.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if weight is None or any(p is None for p in params) or (len(conv.input) > 2 and conv.input[2] and bias is None):
            continue
        scale, shift, mean, var = (p.astype(np.float64) for p in params)
        eps = attribute(node, "epsilon", 1e-5)
        s = scale / np.sqrt(var + eps)
        w = (weight.astype(np.float64) * s.reshape((-1,) + (1,) * (weight.ndim - 1))).astype(weight.dtype)
        b0 = bias.astype(np.float64) if bias is not None else np.zeros_like(s)
        b = ((b0 - mean) * s + shift).astype(weight.dtype)
        w_name, b_name = f"{conv.output[0]}/folded_W", f"{conv.output[0]}/folded_B"
        new_inits += [numpy_helper.from_array(w, w_name), numpy_helper.from_array(b, b_name)]
        data = conv.input[0]
        del conv.input[:]
        conv.input.extend([data, w_name, b_name])
        conv.output[0] = node.output[0]
        drop.add(index)
    _drop_nodes(graph, drop)
    graph.initializer.extend(new_inits)
    return model


def make_batch_symbolic(model: onnx.ModelProto, input_name: str) -> int | None:
    """Give the image input (and outputs of the same batch) a symbolic batch "N"; returns the export batch, if fixed."""
    graph = model.graph
    inp = next(i for i in graph.input if i.name == input_name)
    dim0 = inp.type.tensor_type.shape.dim[0]
    if not dim0.HasField("dim_value"):
        dim0.dim_param = BATCH_DIM
        return None
    batch = dim0.dim_value
    dim0.Clear()
    dim0.dim_param = BATCH_DIM
    for out in graph.output:
        dims = out.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == batch:
            dims[0].Clear()
            dims[0].dim_param = BATCH_DIM
    del graph.value_info[:]
    return batch


def rewrite_batch_reshapes(model: onnx.ModelProto, batch: int | None) -> onnx.ModelProto:
    """Rewrite Reshape target shapes that baked in the export batch.

    A Reshape whose constant target shape starts with the export batch b, applied to a tensor whose first
    dimension is symbolic, gets 0 there (copy the input's dim; -1 when allowzero=1). Repeats until no
    Reshape changes, since one rewrite can make the next tensor symbolic. Whether the result truly runs
    with another batch is checked at run time (runtime.check_batching).
    """
    if batch is None:
        return model
    graph = model.graph
    for _ in range(len(graph.node) + 1):
        del graph.value_info[:]
        _, shapes = inferred_types(model)
        consts = constants(graph)
        inits = {init.name for init in graph.initializer}
        changed = False
        for node in graph.node:
            if node.op_type != "Reshape" or len(node.input) < 2:
                continue
            target = consts.get(node.input[1])
            data_shape = shapes.get(node.input[0])
            if target is None or target.ndim != 1 or len(target) == 0 or int(target[0]) != batch:
                continue
            if not data_shape or data_shape[0] is not None:
                continue
            new = target.astype(np.int64).copy()
            if attribute(node, "allowzero", 0):
                # 0 would be a literal zero: make the batch the one -1, resolving an existing -1 first
                if (new[1:] == -1).any():
                    if any(d is None for d in data_shape[1:]) or (new[1:] == 0).any():
                        continue
                    rest = int(np.prod(data_shape[1:]))
                    known = int(np.prod([d for d in new[1:] if d != -1]))
                    new[1:][new[1:] == -1] = rest // known
                new[0] = -1
            else:
                new[0] = 0
            name = f"{node.input[1]}/dynamic_batch"
            if name not in inits:
                graph.initializer.append(numpy_helper.from_array(new, name))
                inits.add(name)
            node.input[1] = name
            changed = True
        if not changed:
            break
    return model


def set_static_spatial(model: onnx.ModelProto, input_name: str, shape: tuple | None,
                       notes: list | None = None) -> onnx.ModelProto:
    """Fix every non-batch input dimension to a number (from `shape` where given, else from the model).

    A size in `shape` that differs from a static size the model declares overrides it (fully
    convolutional networks exported at one size run at others): the declared output sizes are dropped
    and a line saying so goes to `notes`. Whether the network really runs at that size shows at run time.
    """
    inp = next(i for i in model.graph.input if i.name == input_name)
    dims = inp.type.tensor_type.shape.dim
    declared = ["N" if i == 0 else (str(d.dim_value) if d.HasField("dim_value") else "?") for i, d in enumerate(dims)]
    overridden = False
    for axis in range(1, len(dims)):
        if dims[axis].HasField("dim_value") and dims[axis].dim_value > 0:
            if shape is not None and shape[axis] not in (None, dims[axis].dim_value):
                dims[axis].Clear()
                dims[axis].dim_value = int(shape[axis])
                overridden = True
            continue
        if shape is None or shape[axis] is None:
            raise ModelError(
                f'input "{input_name}" has a dynamic size on axis {axis}; give the input size '
                "(input_shape=... in Python, --size on the command line)"
            )
        dims[axis].Clear()
        dims[axis].dim_value = int(shape[axis])
    if overridden:
        for out in model.graph.output:  # their declared sizes belong to the export size
            for d in out.type.tensor_type.shape.dim[1:]:
                d.Clear()
        if notes is not None:
            now = "x".join(["N"] + [str(d.dim_value) for d in dims[1:]])
            notes.append(f'input "{input_name}" is declared {"x".join(declared)}; using {now} as asked '
                         "(the network must be fully convolutional for this to hold)")
    return model


def _needed_for(graph: onnx.GraphProto, targets: set[str]) -> list[onnx.NodeProto]:
    needed, keep = set(targets), []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    return list(reversed(keep))


def _subgraph_inputs(nodes) -> set[str]:
    """Names read inside the subgraphs (If / Loop / Scan bodies) of `nodes`: outer-scope values they may use."""
    names: set[str] = set()
    for node in nodes:
        for attr in node.attribute:
            for g in list(attr.g.node and [attr.g] or []) + list(attr.graphs):
                for inner in g.node:
                    names.update(inner.input)
                names |= _subgraph_inputs(g.node)
    return names


def fold_constants(model: onnx.ModelProto, input_name: str) -> onnx.ModelProto:
    """Replace shape arithmetic and input-independent subgraphs by initializers.

    Exporters compute slice bounds, split sizes and reshape targets from Shape(x) at run time. With all
    dims static but the batch, such an integer tensor either never changes or follows the batch size.
    Both are evaluated by onnxruntime at batch 2 and 3 (random inputs); integer and bool tensors equal in
    both runs, and every tensor that does not depend on the input at all, become initializers. If the
    model cannot run with batch 2 (a batch baked in somewhere), two batch-1 runs with different inputs
    decide instead: the model then runs one sample at a time anyway.
    """
    import onnxruntime as ort

    graph = model.graph
    dtypes, shapes = inferred_types(model)
    live = {input_name}
    for node in graph.node:
        if any(i in live for i in node.input):
            live.update(o for o in node.output if o)
    already = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    users = consumers(graph)
    candidates = []
    for node in graph.node:
        if node.op_type == "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for out in node.output:
            if not out or out in already or out not in users:
                continue
            integral = dtypes.get(out) in (onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL)
            if out not in live or integral:
                candidates.append(out)
    if not candidates:
        return model
    # the probe holds only the initializers its nodes read (shape arithmetic rarely reads weights): copying all of
    # them made canonicalization the peak of a whole explanation (ResNet-50: +470 MB for 100 MB of weights)
    needed = _needed_for(graph, set(candidates))
    read = {i for n in needed for i in n.input} | _subgraph_inputs(needed)
    probe = without_initializers(model, keep=read)
    del probe.graph.node[:]
    probe.graph.node.extend(needed)
    from ..safety import fits_budget, sample_bytes

    if not fits_budget(3 * sample_bytes(shapes, [input_name] + [o for n in probe.graph.node for o in n.output])):
        return model  # a batch of 3 would not fit: leave it unfolded (the Engine refuses such a model up front)
    del probe.graph.output[:]
    for name in candidates:
        probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    del probe.graph.value_info[:]
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - folding is an optimisation of the graph, never a requirement
        return model
    inp = next(i for i in graph.input if i.name == input_name)
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    np_type = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
    rng = np.random.default_rng(0)
    needs_input = input_name in {i.name for i in sess.get_inputs()}

    def run(batch):
        draw = rng.standard_normal([batch] + dims[1:], dtype=np.float32)  # float32: half the bytes of a float64 draw
        feeds = {input_name: draw.astype(np_type, copy=False)} if needs_input else {}
        return sess.run(candidates, feeds)

    try:
        first, second = run(2), run(3)
    except Exception:  # noqa: BLE001
        try:
            first, second = run(1), run(1)
        except Exception:  # noqa: BLE001
            return model
    folded = {}
    for name, a, b in zip(candidates, first, second):
        if name not in live or (a.shape == b.shape and np.array_equal(a, b)):
            folded[name] = a
    if not folded:
        return model
    for name, value in folded.items():
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), f"{name}/folded"))
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in folded:
                node.input[i] = f"{name}/folded"
    return remove_dead_nodes(model)


def remove_dead_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes none of whose outputs reach a graph output, and unused initializers."""
    graph = model.graph
    _replace_nodes(graph, _needed_for(graph, {o.name for o in graph.output}))
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return model


def fold_pad_into_conv(model: onnx.ModelProto, protected: set[str] = frozenset()) -> onnx.ModelProto:
    """Pad(x, zeros on the spatial axes) -> Conv(pads=p) becomes Conv(pads=p + pad).

    tf2onnx and TF-derived exports emulate SAME padding with an explicit Pad; a convolution over a
    zero-padded input is the convolution with those pads. Only constant-mode, zero-valued, non-negative
    pads on spatial axes, feeding a single Conv with explicit pads, are folded.
    """
    graph = model.graph
    consts = constants(graph)
    users = consumers(graph)
    outputs = {o.name for o in graph.output}
    drop: set[int] = set()
    for index, pad in enumerate(graph.node):
        if pad.op_type != "Pad" or attribute(pad, "mode", b"constant") not in (b"constant", "constant"):
            continue
        amounts = consts.get(pad.input[1]) if len(pad.input) > 1 else None
        value = consts.get(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(())
        has_axes = len(pad.input) > 3 and pad.input[3]
        conv_users = users.get(pad.output[0], [])
        if (amounts is None or value is None or has_axes or np.any(value != 0) or len(conv_users) != 1
                or pad.output[0] in outputs or pad.output[0] in protected):
            continue
        conv = conv_users[0]
        if conv.op_type != "Conv" or conv.input[0] != pad.output[0]:
            continue
        if attribute(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        rank = len(amounts) // 2
        begin, end = amounts[:rank].astype(int), amounts[rank:].astype(int)
        if rank < 3 or begin[:2].any() or end[:2].any() or (begin < 0).any() or (end < 0).any():
            continue
        spatial = rank - 2
        old = list(attribute(conv, "pads", [0] * (2 * spatial)))
        new = [int(b) + o for b, o in zip(begin[2:], old[:spatial])] + [int(e) + o for e, o in zip(end[2:], old[spatial:])]
        for a in list(conv.attribute):
            if a.name == "pads":
                conv.attribute.remove(a)
        conv.attribute.append(helper.make_attribute("pads", new))
        conv.input[0] = pad.input[0]
        drop.add(index)
    _drop_nodes(graph, drop)
    return model


def _probe_session(model: onnx.ModelProto, outputs: list[str]):
    """An onnxruntime session of `model` computing `outputs` (any tensors of the graph), or None."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.node[:]
    probe.graph.node.extend(_needed_for(model.graph, set(outputs)))  # nothing after them runs
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in outputs)
    del probe.graph.value_info[:]
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001
        return None


def _run(session, feeds) -> list | None:
    import onnxruntime as ort

    quiet = ort.RunOptions()
    quiet.log_severity_level = 4
    try:
        return session.run(None, feeds, quiet)
    except Exception:  # noqa: BLE001 - a failing batch of 2 is an answer here
        return None


def _stacked(value: np.ndarray, one: np.ndarray, two: np.ndarray) -> str | None:
    """'outer' or 'inner' when value is the batch-1 results `one` and `two` joined on some axis, the batch its
    outer factor (concatenated, as in N * heads) or its inner factor (interleaved, as in L * N); else None."""
    if value.ndim != one.ndim:
        return None
    finite = np.abs(one[np.isfinite(one)]) if one.size else one
    tol = dict(rtol=1e-4, atol=1e-5 * (float(finite.max()) + 1 if finite.size else 1), equal_nan=True)
    for axis in range(value.ndim):
        if value.shape[axis] == 2 * one.shape[axis] and value.shape[:axis] + value.shape[axis + 1:] == one.shape[:axis] + one.shape[axis + 1:]:
            if np.allclose(value, np.concatenate([one, two], axis), **tol):
                return "outer"
            if np.allclose(value, np.stack([one, two], axis + 1).reshape(value.shape), **tol):
                return "inner"
    return None


def rebatch_baked_batch(model: onnx.ModelProto, input_name: str, batch: int | None) -> onnx.ModelProto:
    """Make a model exported with a fixed batch of 1 take any batch, where the batch was baked in off axis 0.

    TorchScript exports without dynamic axes bake the batch into constants that rewrite_batch_reshapes cannot
    see: an expanded class token folded to a [1, 1, C] constant concatenated with [N, L, C] patches, and
    attention reshapes whose target holds N * heads or L * N ([17, 2, 8] for N = 1, 2 heads). With a batch
    of 1 the place of N in such a target is ambiguous, so it is decided by data: the model is run per sample
    (references) and with both samples as a batch of 2, and each Reshape target gets -1 on the one axis that
    makes its output the two references joined along some axis. A constant with leading size 1 concatenated
    with a batch tensor is expanded to the batch at run time. The result is kept only if the whole model
    then gives, at batch 2, the two batch-1 outputs; otherwise the model is returned unchanged (it runs one
    sample at a time).
    """
    if batch != 1 or not _probe_fits(model):
        return model
    try:
        return _rebatch(model, input_name)
    except Exception:  # noqa: BLE001 - an optimisation of the graph, never a requirement: keep the model
        return model


def _probe_fits(model: onnx.ModelProto) -> bool:
    """Whether the probe's runs fit the memory budget: every tensor kept (all node outputs are exposed) for a
    batch of 2 and the two single samples, 4 x each tensor's batch-1 bytes (unknown dimensions count as 1).
    A model too large to probe keeps its baked batch and runs one sample at a time; the budget check that
    follows canonicalisation decides whether it runs at all (a 16000 x 16000 model held 20 GB here before)."""
    from ..safety import fits_budget

    _, shapes = inferred_types(model)
    weights = {init.name for init in model.graph.initializer}  # held once, not per run
    total = 0.0
    for name, shape in shapes.items():
        if shape is not None and name not in weights:
            total += 4 * 4.0 * float(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in shape], dtype=np.float64))
    return fits_budget(int(total))


def _rebatch(model: onnx.ModelProto, input_name: str) -> onnx.ModelProto:
    graph = model.graph
    inp = next(i for i in graph.input if i.name == input_name)
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    if any(d <= 0 for d in dims[1:]):
        return model
    rng = np.random.default_rng(0)
    np_type = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
    x0, x1 = (rng.standard_normal([1] + dims[1:]).astype(np_type) for _ in range(2))
    both = np.concatenate([x0, x1])
    outputs = [o.name for o in graph.output]

    def batch_ok(m) -> bool:
        sess = _probe_session(m, outputs)
        got = _run(sess, {input_name: both}) if sess is not None else None
        if got is None:
            return False
        ones, twos = _run(sess, {input_name: x0}), _run(sess, {input_name: x1})
        return all(_stacked(g, a, b) for g, a, b in zip(got, ones, twos))

    if batch_ok(model):
        return model
    names = [o for n in graph.node for o in n.output if o]
    sess = _probe_session(model, names)
    refs = [_run(sess, {input_name: x}) for x in (x0, x1)] if sess is not None else [None]
    if any(r is None for r in refs):
        return model
    ref0, ref1 = (dict(zip(names, r)) for r in refs)

    work = onnx.ModelProto()
    work.CopyFrom(model)
    g = work.graph
    live = {input_name}
    for node in g.node:
        if any(i in live for i in node.input):
            live.update(o for o in node.output if o)
    # a [1, ...] constant concatenated (off axis 0) with a batch tensor: expand it to the batch at run time
    added, known = [], constants(g)
    for node in g.node:
        if node.op_type != "Concat" or attribute(node, "axis", 0) in (0,) or not any(i in live for i in node.input):
            continue
        anchor = next(i for i in node.input if i in live)
        for k, name in enumerate(node.input):
            value = ref0[name] if name in ref0 else known.get(name)
            if name in live or value is None or value.ndim < 2 or value.shape[0] != 1:
                continue
            out = f"{name}/per_sample/{node.name or node.output[0]}/{k}"
            n, shape, ones = f"{out}/batch", f"{out}/shape", f"{out}/ones"
            g.initializer.append(numpy_helper.from_array(np.ones(value.ndim - 1, np.int64), ones))
            added.append((node, [helper.make_node("Shape", [anchor], [n], start=0, end=1),
                                 helper.make_node("Concat", [n, ones], [shape], axis=0),
                                 helper.make_node("Expand", [name, shape], [out])]))
            node.input[k] = out
    for node, new in added:  # each before its Concat
        index = list(g.node).index(node)
        for offset, extra in enumerate(new):
            g.node.insert(index + offset, extra)

    consts = constants(g)
    reshapes = [n for n in g.node if n.op_type == "Reshape" and n.input[0] in live and n.input[1] in consts]

    def options(node, known: dict) -> list | None:
        """Targets under which this Reshape's output is the two references joined (None: its input is not).
        `known` holds batch-2 values computed so far under the current choices; it is extended in place."""
        if node.input[0] not in known:
            known.update(_segment(work, known, node.input[0]) or {})
        data, one = known.get(node.input[0]), ref0.get(node.input[0])
        if data is None or one is None or not _stacked(data, one, ref1[node.input[0]]):
            return None
        target = consts[node.input[1]].astype(np.int64)
        want0, want1 = ref0[node.output[0]], ref1[node.output[0]]
        copy_zero = not attribute(node, "allowzero", 0)
        current = [data.shape[i] if (copy_zero and t == 0 and i < data.ndim) else int(t) for i, t in enumerate(target)]
        candidates = [current] + [[-1 if i == j else d for i, d in enumerate(want0.shape)] for j in range(want0.ndim)]
        found = []
        for k, candidate in enumerate(candidates):
            try:
                reshaped = data.reshape(candidate)
            except ValueError:
                continue
            how = _stacked(reshaped, want0, want1)
            if how:
                if k == 0:
                    return [None]  # already batches
                found.append((how != "outer", candidate))
        return [candidate for _, candidate in sorted(found, key=lambda f: f[0])]  # the batch as outer factor first

    def search(i: int, known: dict) -> bool:
        """Choose targets for reshapes[i:], backtracking when a choice makes a later reshape's input wrong."""
        if i == len(reshapes):
            return batch_ok(work)
        node = reshapes[i]
        choices = options(node, known)
        if not choices:
            return False
        original = node.input[1]
        for candidate in choices:
            if candidate is not None:
                name = f"{original}/rebatched/{'_'.join(str(int(c)) for c in candidate)}"
                if name not in {t.name for t in g.initializer}:
                    g.initializer.append(numpy_helper.from_array(np.asarray(candidate, np.int64), name))
                node.input[1] = name
            # values downstream of this reshape depend on the choice: later levels work on a copy
            if search(i + 1, {k: v for k, v in known.items() if k not in after[node.output[0]]}):
                return True
            node.input[1] = original
        return False

    # tensors computed from each reshape's output (invalidated when its target changes)
    after = {}
    for r in reshapes:
        reached = {r.output[0]}
        for n in g.node:
            if any(t in reached for t in n.input):
                reached.update(o for o in n.output if o)
        after[r.output[0]] = reached
    return remove_dead_nodes(work) if search(0, {input_name: both}) else model


def _segment(model: onnx.ModelProto, known: dict, target: str) -> dict | None:
    """Values of `target` and every tensor computed on the way, running only the nodes between the tensors
    in `known` (fed as inputs) and `target`; None when onnxruntime fails."""
    import onnxruntime as ort

    graph = model.graph
    made = producers(graph)
    inits = {i.name: i for i in graph.initializer}
    nodes, wanted, seen = [], [target], set()
    while wanted:
        name = wanted.pop()
        if name in seen or name in known or name in inits or name not in made:
            continue
        seen.add(name)
        node = made[name]
        nodes.append(node)
        wanted.extend(i for i in node.input if i)
    order = {id(n): k for k, n in enumerate(graph.node)}
    nodes = sorted({id(n): n for n in nodes}.values(), key=lambda n: order[id(n)])
    used = {i for n in nodes for i in n.input if i}
    feeds = {name: known[name] for name in used if name in known}
    outputs = [o for n in nodes for o in n.output if o]
    sub = helper.make_graph(
        nodes, "segment",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in feeds.items()],
        [helper.make_empty_tensor_value_info(o) for o in outputs],
        [inits[name] for name in used if name in inits],
    )
    probe = helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001
        return None
    got = _run(sess, feeds)
    return None if got is None else dict(zip(outputs, got))
