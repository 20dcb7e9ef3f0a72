"""Every CLI command through click's CliRunner, including the error paths (one line, non-zero exit)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnxsal.cli import main
from onnxsal.graph import load_model, select_layer
from onnxsal.runtime import Engine


@pytest.fixture()
def runner():
    return CliRunner()


def one_line_error(result, pattern):
    assert result.exit_code != 0
    out = result.output.strip()
    assert "Traceback" not in out
    assert len(out.splitlines()) == 1, out
    assert out.startswith("Error: ") and pattern in out, out


def test_inspect_zoo_model(runner):
    result = runner.invoke(main, ["inspect", "mobilenet_v2"])
    assert result.exit_code == 0, result.output
    assert "* /features/features.18/features.18.2/Clip_output_0  [Nx1280x7x7] NCHW" in result.output
    assert "every op on the gradient path has a rule" in result.output
    assert "batch: dynamic" in result.output


def test_inspect_json_lists_missing_rules(runner, tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("InstanceNormalization", ["c", "s", "b"], ["n"]),
             helper.make_node("GlobalAveragePool", ["n"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])]
    inits = [helper.make_tensor(k, TensorProto.FLOAT, v.shape, v.ravel()) for k, v in
             {"w": np.ones((2, 3, 3, 3), np.float32), "s": np.ones(2, np.float32), "b": np.zeros(2, np.float32)}.items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], inits)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    result = runner.invoke(main, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [m["op"] for m in report["missing_rules"]["gradient"]] == ["InstanceNormalization"]
    assert [layer["tensor"] for layer in report["layers"] if layer["auto"]] == ["n"]
    text = runner.invoke(main, ["inspect", str(path)]).output
    assert "no backward rule for 1 node(s)" in text and "InstanceNormalization" in text


def test_export_runs_in_plain_onnxruntime_and_matches_the_engine(runner, tmp_path):
    out = tmp_path / "explain.onnx"
    result = runner.invoke(main, ["export", "mobilenet_v2", "-o", str(out), "--layer", "auto", "--rules", "guided_backprop"])
    assert result.exit_code == 0, result.output
    model = onnx.load(out)
    onnx.checker.check_model(model)
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    layer = "/features/features.18/features.18.2/Clip_output_0"
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    seed = np.zeros((2, 1000), np.float32)
    seed[0, 281], seed[1, 967] = 1, 1
    got = sess.run(["input_grad", layer, f"{layer}_grad"], {"input": x, "seed": seed})
    graph = load_model(_zoo("mobilenet_v2"))
    want = Engine(graph).gradients(x, seed, layers=[layer], ruleset="guided_backprop")
    np.testing.assert_allclose(got[0], want.input_grad, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got[2], want.layer_grads[layer], rtol=1e-4, atol=1e-7)


def _zoo(name):
    from onnxsal import zoo

    return zoo.model_path(name)


@pytest.mark.parametrize("args,pattern", [
    (["inspect", "no_such_model"], "neither a zoo model"),
    (["inspect", "missing.onnx"], "model file not found"),
    (["export", "mobilenet_v2", "-o", "x.onnx", "--layer", "nope"], 'unknown layer "nope"'),
    (["export", "mobilenet_v2", "-o", "x.onnx", "--rules", "lrp"], "unknown rule set 'lrp'"),
])
def test_errors_are_one_line(runner, args, pattern, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(runner.invoke(main, args), pattern)
    assert not (tmp_path / "x.onnx").exists()


def test_corrupt_model_file(runner, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x12\x34not a model at all" * 50)
    one_line_error(runner.invoke(main, ["inspect", str(bad)]), "not an ONNX model")
