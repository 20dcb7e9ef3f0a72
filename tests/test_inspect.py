"""`onnxsal inspect` dry-runs the backward build (issue 9, kind 6).

It lists every node of the gradient path that cannot be differentiated, with its name and the reason, not
only ops without a rule: here an op without a rule (InstanceNormalization) and a node whose rule refuses
its form (DepthToSpace in CRD mode) on the same path; the real build fails on the first of them.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxsal.autodiff.augment import gradient_model
from onnxsal.cli import main
from onnxsal.errors import UnsupportedOpError
from onnxsal.graph import load_model
from onnxsal.graph.report import inspect_model


def two_problem_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((4, 3, 3, 3)), "s": np.ones(1), "b": np.zeros(1)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("DepthToSpace", ["c"], ["d"], blocksize=2, mode="CRD", name="to_space"),
             helper.make_node("InstanceNormalization", ["d", "s", "b"], ["n"], name="inorm"),
             helper.make_node("GlobalAveragePool", ["n"], ["p"], name="gap"), helper.make_node("Flatten", ["p"], ["y"], name="flat")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_inspect_reports_every_node_that_cannot_be_differentiated_and_why():
    graph = load_model(two_problem_model())
    report = inspect_model(graph)
    failures = report["missing_rules"]["gradient"]
    assert [(f["op"], f["node"]) for f in failures] == [
        ("InstanceNormalization", 'InstanceNormalization node "inorm"'),
        ("DepthToSpace", 'DepthToSpace node "to_space"'),  # before: not listed (the op has a rule)
    ]
    assert "no backward rule for InstanceNormalization" in failures[0]["why"]
    assert "CRD" in failures[1]["why"]


def test_inspect_agrees_with_the_build():
    graph = load_model(two_problem_model())
    first = inspect_model(graph)["missing_rules"]["gradient"][0]
    with pytest.raises(UnsupportedOpError, match=first["node"]):
        gradient_model(graph)
    fixed = two_problem_model()
    fixed.graph.node[2].op_type = "LayerNormalization"  # a rule exists; DepthToSpace CRD still refuses
    del fixed.graph.node[2].input[2]
    graph = load_model(fixed)
    (only,) = inspect_model(graph)["missing_rules"]["gradient"]
    with pytest.raises(UnsupportedOpError, match=only["node"]):
        gradient_model(graph)


def test_inspect_command_prints_node_names_and_reasons(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(two_problem_model(), path)
    runner = CliRunner()
    text = runner.invoke(main, ["inspect", str(path)]).output
    assert "2 node(s) on the path cannot be differentiated" in text
    assert 'DepthToSpace node "to_space"' in text and 'InstanceNormalization node "inorm"' in text
    report = json.loads(runner.invoke(main, ["inspect", str(path), "--json"]).output)
    assert len(report["missing_rules"]["gradient"]) == 2
