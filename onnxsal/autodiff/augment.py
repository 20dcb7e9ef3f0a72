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
from . import registry
from .builder import build_gradient_model

SEED = "seed"


def reference_input(graph: ModelGraph) -> str:
    """The name of the reference input that rule sets with a reference pass (DeepLIFT) add beside the model input."""
    return f"{graph.input_name}_reference"


def _with_score(graph: ModelGraph, target_kind: str) -> tuple[onnx.ModelProto, str]:
    """The model with the score of `target_kind` (graph/head.py): shaped like the explained output."""
    if target_kind not in TARGET_KINDS:
        raise OnnxsalError(f"unknown target kind {target_kind!r}; choose one of {', '.join(TARGET_KINDS)}")
    model = copy.deepcopy(graph.model)
    dtypes, shapes = tensor_types(model)
    nodes, name = graph.head.score_nodes(target_kind, dtypes.get(graph.logits_name, onnx.TensorProto.FLOAT))
    if nodes:
        model.graph.node.extend(nodes)
        shape = shapes.get(graph.logits_name)
        dims = None if shape is None else ["N" if d is None else d for d in shape]
        for node in nodes:
            model.graph.value_info.append(helper.make_tensor_value_info(node.output[0], dtypes[graph.logits_name],
                                                                        dims if node.output[0] == name else None))
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


def _top_seed(model: onnx.ModelProto, score: str, axis: int, rank: int) -> str:
    """Nodes computing the seed of TopTarget (targets.py) in the graph: the one-hot of each sample's top class.

    rank 2:  c = argmax_k score[n, k]                      (the first maximum, as numpy's argmax)
    dense:   c = argmax_k sum_{other axes} score[n, ..., k, ...], seeded at every position of class c
    seed = [range(K) == c], broadcast to the score's shape.
    """
    p = f"{score}/top"
    dtypes, _ = tensor_types(model)
    init = model.graph.initializer
    nodes = []
    summed = score
    others = [a for a in range(1, rank) if a != axis]
    if others:
        init.append(onnx.numpy_helper.from_array(np.array(others, np.int64), f"{p}/other_axes"))
        nodes.append(helper.make_node("ReduceSum", [score, f"{p}/other_axes"], [f"{p}/summed"], keepdims=1, name=f"{p}/summed"))
        summed = f"{p}/summed"
    view = [1] * rank
    view[axis] = -1
    init.extend([
        onnx.numpy_helper.from_array(np.array(0, np.int64), f"{p}/zero"),
        onnx.numpy_helper.from_array(np.array(1, np.int64), f"{p}/one"),
        onnx.numpy_helper.from_array(np.array([axis], np.int64), f"{p}/axis"),
        onnx.numpy_helper.from_array(np.array(view, np.int64), f"{p}/view"),
    ])
    nodes += [
        helper.make_node("ArgMax", [summed], [f"{p}/index"], axis=axis, keepdims=1, select_last_index=0, name=f"{p}/index"),
        helper.make_node("Shape", [score], [f"{p}/shape"], name=f"{p}/shape"),
        helper.make_node("Gather", [f"{p}/shape", f"{p}/axis"], [f"{p}/k1"], axis=0, name=f"{p}/k1"),
        helper.make_node("Squeeze", [f"{p}/k1"], [f"{p}/k"], name=f"{p}/k"),
        helper.make_node("Range", [f"{p}/zero", f"{p}/k", f"{p}/one"], [f"{p}/range"], name=f"{p}/range"),
        helper.make_node("Reshape", [f"{p}/range", f"{p}/view"], [f"{p}/classes"], name=f"{p}/classes"),
        helper.make_node("Equal", [f"{p}/classes", f"{p}/index"], [f"{p}/hit"], name=f"{p}/hit"),
        helper.make_node("Cast", [f"{p}/hit"], [f"{p}/onehot"], to=dtypes.get(score, onnx.TensorProto.FLOAT),
                         name=f"{p}/onehot"),
    ]
    seed = f"{p}/onehot"
    if others:
        nodes.append(helper.make_node("Expand", [seed, f"{p}/shape"], [f"{p}/seed"], name=f"{p}/seed"))
        seed = f"{p}/seed"
    model.graph.node.extend(nodes)
    # the seed's type and rank, for the backward driver's type inference (it flows into every rule)
    model.graph.value_info.append(helper.make_tensor_value_info(seed, dtypes.get(score, onnx.TensorProto.FLOAT), [None] * rank))
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
    the prediction and its gradients). A rule set with a reference pass (DeepLIFT) adds the input
    reference_input(graph), shaped like the model input, before the seed.
    """
    model, score = _with_score(graph, target_kind)
    wrt = ([graph.input_name] if input_grad else []) + [t for t in layers if t != graph.input_name]
    if not wrt:
        raise OnnxsalError("nothing to differentiate: ask for the input gradient or at least one layer")
    if top and graph.class_axis is None:
        raise OnnxsalError("the in-graph top class needs a class axis; this output has one score per sample")
    rank = len(graph.shapes.get(graph.logits_name) or (None, None))
    seed = _top_seed(model, score, graph.class_axis, rank) if top else None
    reference = {graph.input_name: reference_input(graph)} if registry.needs_reference(ruleset) else None
    return build_gradient_model(model, score, wrt, ruleset=ruleset, seed_name=SEED, seed_tensor=seed,
                                reference=reference), score
