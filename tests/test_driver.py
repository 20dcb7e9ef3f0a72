"""The backward driver checks what every rule returns and names the node on every failure.

Broken rules are registered in a throw-away rule set (they fall back to the real rules for other ops),
so each test shows one kind of silent failure the driver now turns into a one-line error.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from oracles import session
from onnxsal.autodiff import build_gradient_model, registry
from onnxsal.autodiff.builder import Emitter, dry_run
from onnxsal.errors import UnsupportedOpError


def two_input_model() -> onnx.ModelProto:
    # y = relu(a + b) * 2, both a and b graph inputs
    nodes = [helper.make_node("Add", ["a", "b"], ["s"], name="add1"), helper.make_node("Relu", ["s"], ["r"], name="relu1"),
             helper.make_node("Mul", ["r", "two"], ["y"], name="mul1")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


@pytest.fixture
def ruleset(monkeypatch):
    """Register rules for ops in a fresh rule set named 'broken'."""
    registry.rulesets()  # load the real rules first
    table: dict = {}
    monkeypatch.setitem(registry.RULES, "broken", table)
    return table


def test_a_rule_returning_too_few_gradients_is_an_error_naming_the_node(ruleset):
    ruleset["Add"] = lambda ctx: [ctx.dy()]  # forgets b: before, b's gradient was silently zero
    with pytest.raises(UnsupportedOpError, match=r'^Add node "add1": its backward rule returned 1 gradients for 2 inputs'):
        build_gradient_model(two_input_model(), "y", ["a", "b"], ruleset="broken")


def test_a_rule_exception_becomes_one_line_naming_node_and_op(ruleset):
    def broken(ctx):
        return {}["missing"]

    ruleset["Relu"] = broken
    with pytest.raises(UnsupportedOpError) as info:
        build_gradient_model(two_input_model(), "y", ["a"], ruleset="broken")
    message = str(info.value)
    assert message.startswith('Relu node "relu1": its backward rule failed (KeyError')
    assert "\n" not in message


def test_a_rule_error_without_the_node_name_gets_it(ruleset):
    def refuses(ctx):
        raise UnsupportedOpError("its slope must be a constant")

    ruleset["Relu"] = refuses
    with pytest.raises(UnsupportedOpError, match=r'^Relu node "relu1": its slope must be a constant$'):
        build_gradient_model(two_input_model(), "y", ["a"], ruleset="broken")


def test_a_gradient_of_the_wrong_dtype_is_caught(ruleset):
    ruleset["Relu"] = lambda ctx: [ctx.op("Cast", ctx.dy(), to=TensorProto.DOUBLE)]
    with pytest.raises(UnsupportedOpError, match=r'Relu node "relu1": the gradient of input 0 is DOUBLE, the input is FLOAT'):
        build_gradient_model(two_input_model(), "y", ["a"], ruleset="broken")


def test_an_invalid_emitted_node_names_the_forward_node(ruleset):
    ruleset["Relu"] = lambda ctx: [ctx.op("MatMul", ctx.dy(), ctx.constant(np.ones((5, 5)), like=ctx.x()))]  # (2,3) @ (5,5)
    with pytest.raises(UnsupportedOpError, match=r'^Relu node "relu1": its backward rule emitted an invalid MatMul node'):
        build_gradient_model(two_input_model(), "y", ["a"], ruleset="broken")


def test_emitted_tensor_types_come_from_onnx_type_inference():
    e = Emitter(two_input_model())
    # ops the old dtype table did not know: Size and ArgMax are int64, IsNaN is bool
    assert e.dtypes[e.op("Size", "a")] == TensorProto.INT64
    assert e.dtypes[e.op("ArgMax", "a", axis=1)] == TensorProto.INT64
    assert e.dtypes[e.op("IsNaN", "a")] == TensorProto.BOOL
    # and shapes come with them
    assert e.shapes[e.op("Transpose", "a", perm=[1, 0])] == (3, 2)
    assert e.shapes[e.op("Reshape", "a", e.ints([-1]))] == (6,)


def test_correct_rules_still_give_the_hand_computed_gradient():
    aug = build_gradient_model(two_input_model(), "y", ["a", "b"])
    a = np.array([[1, -2, 3], [0.5, -0.1, 2]], np.float32)
    b = np.array([[-3, 1, 1], [1, 1, -5]], np.float32)
    seed = np.arange(6, dtype=np.float32).reshape(2, 3)
    ga, gb = session(aug).run(["a_grad", "b_grad"], {"a": a, "b": b, "seed": seed})
    want = 2 * seed * (a + b > 0)  # d/da sum(seed * 2 relu(a + b))
    assert np.array_equal(ga, want) and np.array_equal(gb, want)


def test_dry_run_lists_every_failing_node_and_keeps_going(ruleset):
    def refuses(ctx):
        raise UnsupportedOpError("refused for the test")

    ruleset["Relu"] = refuses
    ruleset["Add"] = lambda ctx: [ctx.dy()]
    errors = dry_run(two_input_model(), "y", ["a", "b"], ruleset="broken")
    # Relu refuses; zeros stand in for its gradient, so Add (before it) is checked too
    assert [(op, label) for op, label, _ in errors] == [("Relu", 'Relu node "relu1"'), ("Add", 'Add node "add1"')]
    assert "returned 1 gradients for 2 inputs" in errors[1][2]
    errors = dry_run(two_input_model(), "y", ["a", "b"], ruleset="gradient")
    assert errors == []


def test_the_driver_sums_broadcast_gradients_and_rejects_shapes_that_cannot_broadcast(ruleset):
    # y = relu(a + b) * 2 with b (1, 3) broadcast over a (2, 3): Add's rule returns dy for both inputs, the
    # driver sums b's over axis 0 (hand-computed: 2 * sum_rows(seed * [a + b > 0]))
    model = two_input_model()
    model.graph.input[1].type.tensor_type.shape.dim[0].dim_value = 1
    model = onnx.shape_inference.infer_shapes(model)
    aug = build_gradient_model(model, "y", ["a", "b"])
    a = np.array([[1, -2, 3], [0.5, -0.1, 2]], np.float32)
    b = np.array([[-3, 1, 1]], np.float32)
    seed = np.arange(6, dtype=np.float32).reshape(2, 3)
    (gb,) = session(aug).run(["b_grad"], {"a": a, "b": b, "seed": seed})
    np.testing.assert_array_equal(gb, (2 * seed * (a + b > 0)).sum(0, keepdims=True))
    ruleset["Relu"] = lambda ctx: [ctx.op("Concat", ctx.dy(), ctx.dy(), axis=1)]  # (2, 6) for a (2, 3) input
    with pytest.raises(UnsupportedOpError, match=r'^Relu node "relu1": its backward rule returned a gradient shaped \[2, 6\]'):
        build_gradient_model(two_input_model(), "y", ["a"], ruleset="broken")
