"""What `onnxsal inspect` reports about a model: inputs, outputs, layers, and every node of the gradient path
that cannot be differentiated and why (a dry run of the backward build)."""

from __future__ import annotations

from collections import Counter

import onnx
from onnx import TensorProto

from ..autodiff.builder import _active_tensors, _needed_nodes, dry_run
from ..autodiff.registry import rulesets
from .layers import candidate_layers, select_layer
from .model import ModelGraph
from .utils import tensor_types


def _dims(shape) -> str:
    if shape is None:
        return "?"
    return "x".join("N" if d is None else str(d) for d in shape)


def _tensor(name: str, elem: int, shape) -> dict:
    return {"name": name, "dtype": TensorProto.DataType.Name(elem).lower() if elem else "?", "shape": _dims(shape)}


def inspect_model(graph: ModelGraph, original: onnx.ModelProto | None = None) -> dict:
    """A JSON-able description of the model as onnxsal sees it (after canonicalization)."""
    report = {
        "sha256": graph.sha256,
        "opset": graph.opset,
        "input": {**_tensor(graph.input_name, graph.input_dtype, graph.input_shape), "layout": graph.layout},
        "outputs": [_tensor(o.name, graph.dtypes.get(o.name, 0), graph.shapes.get(o.name)) for o in graph.graph.output],
        "explained": {"output": graph.output_name, "score": graph.logits_name,
                      "trailing_activation_cut": graph.final_activation, "classes": graph.num_classes,
                      "class_axis": graph.class_axis, "head": graph.head.describe() if graph.head else None,
                      "chosen": list(graph.choices)},
        "batch": {True: "dynamic", False: "one sample at a time", None: "not checked"}[graph.batchable],
        "notes": list(graph.notes),
    }
    if original is not None:
        report["original_opset"] = next((i.version for i in original.opset_import if i.domain in ("", "ai.onnx")), None)
        report["original_nodes"] = len(original.graph.node)
    report["nodes"] = len(graph.graph.node)
    layers = candidate_layers(graph)
    try:
        auto = select_layer(graph, "auto").tensor
    except Exception:  # noqa: BLE001 - a model without feature maps still has a report
        auto = None
    report["layers"] = [{"tensor": layer.tensor, "node": layer.node, "op": layer.op_type, "shape": _dims(layer.shape),
                         "layout": layer.layout, "auto": layer.tensor == auto,
                         **({"tokens": layer.tokens, "grid": list(layer.grid)} if layer.layout == "NLC" else {})}
                        for layer in layers]
    dtypes, _ = tensor_types(graph.model)
    nodes = list(graph.graph.node)
    path, _ = _needed_nodes(nodes, graph.logits_name, _active_tensors(nodes, [graph.input_name], dtypes))
    report["gradient_path"] = {"nodes": len(path), "ops": dict(sorted(Counter(n.op_type for n in path).items()))}
    selection = [n for n in nodes if n.op_type in ("NonMaxSuppression", "TopK")]
    if selection:  # detectors: the boxes after NMS are chosen, not computed; explain the scores before it
        before = sorted({t for n in selection for t in n.input[:2] if t})
        report["notes"].append(
            f"the graph selects boxes with {', '.join(sorted({n.op_type for n in selection}))} (node {selection[0].name or '?'}); "
            f"that step has no gradient: explain a tensor before it with --output-name (e.g. {', '.join(before[:2])}) "
            "and decode it with --box/--decoder")
    # every rule on the path is run as the real build runs it (weights read, not copied): a node is listed when
    # it has no rule or its rule refuses this form of it (run-time sizes it cannot handle, unsupported attributes)
    failures = [{"op": op, "node": label, "why": why}
                for op, label, why in dry_run(graph.model, graph.logits_name, [graph.input_name], "gradient")]
    # guided_backprop and deconvnet change only ReLU-like ops and fall back to these rules for every other op;
    # LRP's rules emit other nodes (modified weights, bounds): its default composite gets a dry run of its own
    report["missing_rules"] = {name: failures for name in rulesets() if not name.startswith("lrp")}
    report["missing_rules"]["lrp"] = [{"op": op, "node": label, "why": why} for op, label, why in
                                      dry_run(graph.model, graph.logits_name, [graph.input_name], "lrp:epsilon_plus_flat")]
    return report


def format_report(report: dict, source: str, all_layers: bool = False) -> str:
    lines = [f"model   {source}", f"sha256  {report['sha256']}"]
    opset = report["opset"]
    if report.get("original_opset") not in (None, opset):
        lines.append(f"opset   {report['original_opset']} (upgraded to {opset})")
    else:
        lines.append(f"opset   {opset}")
    i = report["input"]
    lines.append(f"input   {i['name']}  {i['dtype']} [{i['shape']}] {i['layout']}   batch: {report['batch']}")
    for o in report["outputs"]:
        lines.append(f"output  {o['name']}  {o['dtype']} [{o['shape']}]")
    e = report["explained"]
    cut = f" (the {e['trailing_activation_cut']} is cut: target kind logit explains the score before it)" \
        if e["trailing_activation_cut"] else ""
    lines.append(f"head    {e['head']}")
    lines.append(f"score   {e['score']}{cut}, class axis {e['class_axis']}")
    for line in e.get("chosen", []):
        lines.append(f"note: {line}")
    lines.append("")
    layers = report["layers"]
    lines.append(f"layers  ({len(layers)} feature maps and token sequences; * = auto, the default for CAM methods)")
    if not all_layers and len(layers) > 12:
        hidden = [layer for layer in layers[:-12] if layer["auto"]]
        lines.append(f"    ... {len(layers) - 12} earlier layers (--all-layers lists them)"
                     + (f"; auto is {hidden[0]['tensor']} [{hidden[0]['shape']}] {hidden[0]['layout']}" if hidden else ""))
        layers = layers[-12:]
    for layer in layers:
        mark = "*" if layer["auto"] else " "
        grid = f" {layer['tokens']} + {layer['grid'][0]}x{layer['grid'][1]} tokens" if "grid" in layer else ""
        lines.append(f"  {mark} {layer['tensor']}  [{layer['shape']}] {layer['layout'] or ''}{grid}  ({layer['op']})")
    lines.append("")
    path = report["gradient_path"]
    ops = ", ".join(f"{op} x{n}" for op, n in path["ops"].items())
    lines.append(f"gradient path  {path['nodes']} nodes: {ops}")
    missing = report["missing_rules"]["gradient"]
    if missing:
        lines.append(f"{len(missing)} node(s) on the path cannot be differentiated: the model cannot be explained yet")
        for m in missing[:20]:
            lines.append(f"  {m['why']}")
        if len(missing) > 20:
            lines.append(f"  ... and {len(missing) - 20} more (--json lists them all)")
    else:
        lines.append("every op on the gradient path has a rule, and every rule builds (a dry run; rule sets: " + ", ".join(report["missing_rules"]) + ")")
    for note in report["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)
