"""From a canonical ModelGraph to the ONNX models the runtime executes.

forward_model:  outputs the explained score tensor (and chosen layer activations).
gradient_model: adds input `seed` and outputs `<input>_grad`, `<layer>`, `<layer>_grad`
                for the differentiated quantity sum(seed * score).
The score is the logit (default), or Softmax / LogSoftmax of it (target_kind), added here when the
model does not end with one.
"""

from __future__ import annotations

import copy
from typing import Sequence

import onnx
from onnx import helper

from ..errors import OnnxsalError
from ..graph.model import TARGET_KINDS, ModelGraph
from ..graph.utils import tensor_types
from .builder import build_gradient_model

SEED = "seed"


def _with_score(graph: ModelGraph, target_kind: str) -> tuple[onnx.ModelProto, str]:
    if target_kind not in TARGET_KINDS:
        raise OnnxsalError(f"unknown target kind {target_kind!r}; choose one of {', '.join(TARGET_KINDS)}")
    model = copy.deepcopy(graph.model)
    name = graph.explained_name(target_kind)
    if name not in (graph.logits_name, graph.output_name):
        op = "Softmax" if target_kind == "probability" else "LogSoftmax"
        model.graph.node.append(helper.make_node(op, [graph.logits_name], [name], axis=graph.class_axis, name=name))
        dtypes, shapes = tensor_types(model)
        shape = shapes.get(graph.logits_name)
        dims = None if shape is None else ["N" if d is None else d for d in shape]
        model.graph.value_info.append(helper.make_tensor_value_info(name, dtypes[graph.logits_name], dims))
    return model, name


def _expose(model: onnx.ModelProto, names: Sequence[str]) -> None:
    dtypes, shapes = tensor_types(model)
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            shape = shapes.get(name)
            dims = None if shape is None else ["N" if d is None else d for d in shape]
            model.graph.output.append(helper.make_tensor_value_info(name, dtypes[name], dims))
            present.add(name)


def forward_model(graph: ModelGraph, target_kind: str = "logit", layers: Sequence[str] = ()) -> tuple[onnx.ModelProto, str]:
    """(model whose outputs include the score and the layers, score tensor name)."""
    model, score = _with_score(graph, target_kind)
    _expose(model, [score, *layers])
    return model, score


def gradient_model(
    graph: ModelGraph,
    layers: Sequence[str] = (),
    ruleset: str = "gradient",
    target_kind: str = "logit",
    input_grad: bool = True,
) -> tuple[onnx.ModelProto, str]:
    """(augmented model, score tensor name); see the module docstring for its inputs and outputs."""
    model, score = _with_score(graph, target_kind)
    wrt = ([graph.input_name] if input_grad else []) + [t for t in layers if t != graph.input_name]
    if not wrt:
        raise OnnxsalError("nothing to differentiate: ask for the input gradient or at least one layer")
    return build_gradient_model(model, score, wrt, ruleset=ruleset, seed_name=SEED), score
