"""From a canonical ModelGraph to the ONNX models the runtime executes.

forward_model:  outputs the explained score tensor (and chosen layer activations).
gradient_model: adds input `seed` and outputs `<input>_grad`, `<layer>`, `<layer>_grad`
                for the differentiated quantity sum(seed * score); with top=True the seed is the
                one-hot of each sample's top class, computed in the graph.
The score is the logit (default), or Softmax / LogSoftmax of it (target_kind), added here when the
model does not end with one.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
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


def _top_seed(model: onnx.ModelProto, score: str, axis: int, opset: int) -> str:
    """Nodes computing seed = [score == max over the class axis] (one-hot of the top class)."""
    top, hit, seed = f"{score}/top", f"{score}/is_top", f"{score}/top_seed"
    if opset >= 18:
        axes = f"{score}/class_axis"
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([axis], np.int64), axes))
        reduce = helper.make_node("ReduceMax", [score, axes], [top], keepdims=1, name=top)
    else:
        reduce = helper.make_node("ReduceMax", [score], [top], axes=[axis], keepdims=1, name=top)
    dtypes, _ = tensor_types(model)
    model.graph.node.extend([
        reduce,
        helper.make_node("Equal", [score, top], [hit], name=hit),
        helper.make_node("Cast", [hit], [seed], to=dtypes.get(score, onnx.TensorProto.FLOAT), name=seed),
    ])
    return seed


def gradient_model(
    graph: ModelGraph,
    layers: Sequence[str] = (),
    ruleset: str = "gradient",
    target_kind: str = "logit",
    input_grad: bool = True,
    top: bool = False,
) -> tuple[onnx.ModelProto, str]:
    """(augmented model, score tensor name); see the module docstring for its inputs and outputs.

    top=True: no seed input; the graph seeds the top-scoring class of each sample itself (one run gives
    the prediction and its gradients).
    """
    model, score = _with_score(graph, target_kind)
    wrt = ([graph.input_name] if input_grad else []) + [t for t in layers if t != graph.input_name]
    if not wrt:
        raise OnnxsalError("nothing to differentiate: ask for the input gradient or at least one layer")
    seed = _top_seed(model, score, graph.class_axis, graph.opset) if top else None
    return build_gradient_model(model, score, wrt, ruleset=ruleset, seed_name=SEED, seed_tensor=seed), score
