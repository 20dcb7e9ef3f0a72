"""`onnxsal evaluate` (issue 14): files written, one-line refusals, and a run on the zoo model and bundled photos."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnxsal.cli import main


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def refused(result, *patterns):
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for p in patterns:
        assert p in lines[0], lines[0]


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A dynamic-batch Conv -> Relu -> GAP -> Gemm model with a sidecar, and two photos."""
    from PIL import Image

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    fc = rng.standard_normal((5, 4)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 24, 24])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                              [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()),
                               helper.make_tensor("fc", TensorProto.FLOAT, fc.shape, fc.ravel())])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "tiny.onnx")
    (tmp_path / "tiny.preprocess.json").write_text(json.dumps({"size": 24, "crop": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3}))
    for name, size in (("a", (40, 30)), ("b", (30, 30))):
        pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
    (tmp_path / "boxes.json").write_text(json.dumps({"images": {
        "a": {"objects": [{"label": "thing", "box": [5, 0, 35, 30], "imagenet": [0, 1, 2, 3, 4]}]},
        "b": {"objects": [{"label": "thing", "box": [0, 0, 15, 15]}]}}}))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_evaluate_writes_json_table_and_plots(work):
    from PIL import Image

    result = cli("evaluate", "a.png", "b.png", "--model", "tiny.onnx", "--method", "saliency,grad_cam", "--metrics",
                 "default,randomisation", "--boxes", "boxes.json", "--set", "deletion.steps=8", "--set", "insertion.steps=8",
                 "--set", "pixel_flipping.steps=4", "--out", "ev", "-q")
    assert result.exit_code == 0, result.output
    data = json.loads((work / "ev" / "evaluation.json").read_text())
    metrics = ["deletion", "insertion", "pixel_flipping", "sparseness", "entropy", "pointing_game", "energy_pointing_game",
               "randomisation"]
    records = data["records"]
    assert len(records) == 2 * 2 * len(metrics)
    assert {(r["image"], r["method"], r["metric"]) for r in records} == {
        (i, m, k) for i in ("a", "b") for m in ("saliency", "grad_cam") for k in metrics}
    for r in records:
        if r["metric"] == "deletion":
            assert r["settings"]["steps"] == 8 and len(r["curve"]) == 9
            y = np.array(r["curve"])
            assert r["figures"]["auc"] == pytest.approx(((y[:-1] + y[1:]) / 2).mean(), rel=1e-6)
        if r["metric"] == "pixel_flipping":
            f = r["figures"]
            assert f["abpc"] == pytest.approx(f["lerf_auc"] - f["morf_auc"])
        if r["metric"] == "pointing_game":
            # a: 40x30 photo, crop 1.0 of the short side = x 5..35; the box covers the whole crop; b: the top-left quarter
            assert r["boxes"] == ([[0.0, 0.0, 24.0, 24.0]] if r["image"] == "a" else [[0.0, 0.0, 12.0, 12.0]])
            assert r["figures"]["hit"] in (0.0, 1.0)
            if r["image"] == "a":
                assert r["figures"]["hit"] == 1.0 and r["boxes_used"] == "objects of the explained class"
        if r["metric"] == "randomisation":
            assert [row["index"] for row in r["layers"]["cascading"]] == [1, 0]  # the Gemm, then the Conv
    table = (work / "ev" / "evaluation.md").read_text()
    assert "| `saliency` |" in table and "deletion auc" in table
    for name in ("a_curves.png", "b_curves.png", "a_randomisation.png", "b_randomisation.png"):
        with Image.open(work / "ev" / name) as im:
            assert im.width > 400 and im.height > 200


@pytest.mark.parametrize("args, patterns", [
    (["--metrics", "bogus"], ["unknown metric 'bogus'"]),
    (["--metrics", "pointing_game"], ["pointing_game needs object boxes"]),
    (["--set", "deletion.stepz=3"], ["unknown setting 'stepz' for metric deletion"]),
    (["--set", "nothing"], ["--set takes NAME.KEY=VALUE"]),
    (["--set", "deletion.steps=0"], ["deletion.steps must be an integer of at least 1"]),
    (["--set", "insertion.fill=plaid"], ["insertion.fill must be a finite number or one of"]),
    (["--set", "infidelity.noise=NaN"], ["infidelity.noise must be"]),
    (["--set", "randomisation.modes=sideways"], ["randomisation.modes must be"]),
    (["--set", "foo.steps=3"], ["'foo' is neither a metric nor a method"]),
    (["--method", "nosuch"], ["unknown method 'nosuch'"]),
    (["--boxes", "missing.json"], ["missing.json"]),
    (["--boxes", "bad.json"], ["not a boxes file"]),
    (["--boxes", "other.json"], ["has no boxes for a.png"]),
])
def test_evaluate_refusals(work, args, patterns):
    (work / "bad.json").write_text('{"images": {"a": {"objects": [{"box": [3, 3, 1, 1]}]}}}')
    (work / "other.json").write_text('{"images": {"zzz": {"objects": [{"box": [0, 0, 1, 1]}]}}}')
    refused(cli("evaluate", "a.png", "--model", "tiny.onnx", "--out", "ev", "-q", *args), *patterns)
    assert not (work / "ev" / "evaluation.json").exists()


@pytest.mark.slow
def test_evaluate_zoo_photos(tmp_path):
    """The default run: MobileNetV2, the two bundled photos and their boxes. Adebayo et al.'s finding holds: guided
    backprop's map barely changes when the classifier layer is randomised; Grad-CAM's does."""
    result = cli("evaluate", "--method", "grad_cam,guided_backprop", "--metrics", "deletion,pointing_game,randomisation",
                 "--set", "deletion.steps=10", "--set", "randomisation.layers=1", "--set", "randomisation.modes=[\"cascading\"]",
                 "--out", tmp_path, "-q")
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "evaluation.json").read_text())["records"]
    by = {(r["image"], r["method"], r["metric"]): r for r in records}
    assert {r["class"] for r in records if r["image"] == "coffee"} == {967}
    for image in ("chelsea", "coffee"):
        assert by[(image, "grad_cam", "pointing_game")]["figures"]["hit"] == 1.0
        top = by[(image, "guided_backprop", "randomisation")]["layers"]["cascading"]
        assert [row["op"] for row in top] == ["Gemm"]
        assert top[0]["spearman_abs"] > 0.9
        assert abs(by[(image, "grad_cam", "randomisation")]["layers"]["cascading"][0]["spearman_abs"]) < 0.9
