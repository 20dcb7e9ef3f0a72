"""Baselines from the command line and the API, found in a new user's trial: refused before any model runs (exit 2),
a .npy file accepted, export's reference stated and choosable, one-sample arrays with a batch axis, non-finite SHAP."""

from __future__ import annotations

import shutil

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import onnxsal
from onnxsal import zoo
from onnxsal.cli import main
from onnxsal.errors import MethodError
from onnxsal.preprocess import load_image


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in zoo.EXAMPLES:
        shutil.copy(zoo.example_image(name), folder / f"{name}.png")
    return folder


@pytest.mark.parametrize("value, words", [("blak", "unknown baseline 'blak'"), ("black+", "empty part"),
                                          ("nan", "finite number"), ("missing.npy", "not a readable .npy array")])
def test_bad_baseline_is_refused_before_any_model_runs(photos, tmp_path, monkeypatch, value, words):
    import onnxsal.cli as cli

    monkeypatch.setattr(cli, "_setup", lambda *a, **k: pytest.fail("the model was loaded before --baseline was checked"))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["explain", str(photos), "--method", "deeplift", "--baseline", value, "--out", str(out)])
    assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_baseline_from_a_npy_file_equals_the_named_one(photos, tmp_path):
    """--baseline b.npy (one sample in model space) gives the map of the baseline it holds (here: gray)."""
    ex = onnxsal.Explainer("mobilenet_v2")
    photo = photos / f"{zoo.EXAMPLES[0]}.png"
    gray = ex.baselines(ex.preprocessing.batch([load_image(photo)]), "gray")[0]
    np.save(tmp_path / "b.npy", gray)  # (1, 3, 224, 224)
    maps = {}
    for name, value in (("file", str(tmp_path / "b.npy")), ("named", "gray")):
        result = CliRunner().invoke(main, ["explain", str(photo), "--method", "deeplift", "--baseline", value,
                                           "--out", str(tmp_path / name), "--format", "npy", "-q"])
        assert result.exit_code == 0, result.output
        maps[name] = np.load(next((tmp_path / name).glob("*deeplift*.npy")))
    np.testing.assert_array_equal(maps["file"], maps["named"])
    x = ex.preprocessing.batch([load_image(photo)])
    np.testing.assert_allclose(maps["named"][None] if maps["named"].ndim == 2 else maps["named"],
                               ex.explain(x, "deeplift", baseline="gray").maps, rtol=1e-5, atol=1e-7)


def test_compare_on_a_folder_says_it_draws_one_image(photos):
    result = CliRunner().invoke(main, ["compare", str(photos), "--methods", "grad_cam"])
    assert result.exit_code == 2 and "compare draws one image" in result.output and "holds 2" in result.output


def test_export_states_and_takes_the_reference(tmp_path):
    """The exported deeplift graph's reference is named in the output, and --baseline zeros bakes zeros in: its raw
    heatmap equals the API's map with baseline='zeros' (and differs from black's)."""
    ex = onnxsal.Explainer("mobilenet_v2")
    x = ex.preprocessing.batch([load_image(zoo.example_image(n)) for n in zoo.EXAMPLES])
    out = tmp_path / "dl.onnx"
    result = CliRunner().invoke(main, ["export", "mobilenet_v2", "--method", "deeplift", "--baseline", "zeros", "--raw",
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "reference  zeros" in result.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    heat = session.run(["heatmap"], {"image": x, "class": np.array([-1], np.int64)})[0]
    zeros = ex.explain(x, "deeplift", baseline="zeros").maps
    # the exported graph folds its constant reference pass (another Conv algorithm): float32 rounding, ~1e-5 of the max
    np.testing.assert_allclose(heat, zeros, rtol=0, atol=1e-4 * np.abs(zeros).max())
    assert np.abs(ex.explain(x, "deeplift", baseline="black").maps - zeros).max() > 0.01 * np.abs(zeros).max()
    default = CliRunner().invoke(main, ["export", "mobilenet_v2", "--method", "deeplift", "-o", str(tmp_path / "d.onnx")])
    assert "reference  black" in default.output
    refused = CliRunner().invoke(main, ["export", "mobilenet_v2", "--method", "grad_cam", "--baseline", "zeros",
                                        "-o", str(tmp_path / "g.onnx")])
    assert refused.exit_code == 2 and "bake a reference" in refused.output


def test_one_sample_baseline_with_its_batch_axis_serves_a_batch():
    ex = onnxsal.Explainer("mobilenet_v2")
    x = ex.preprocessing.batch([load_image(zoo.example_image(n)) for n in zoo.EXAMPLES])
    one = ex.baselines(x[:1], "gray")[0]  # (1, 3, 224, 224), as preprocessing.batch gives it
    a, b = ex.explain(x, "deeplift", baseline=one).maps, ex.explain(x, "deeplift", baseline=one[0]).maps
    # the second call runs the folded reference pass (another Conv algorithm): float32 rounding. DeepLIFT's secant is
    # discontinuous where a unit's input equals the reference's to rounding (Delta x ~ 1e-7 across a ReLU6 kink gives
    # 0.5 or 1), so a few pixels move, by up to 0.15 % of the max here (4 of 100352), and 99.7 % agree to 1e-5
    np.testing.assert_allclose(a, b, rtol=0, atol=5e-3 * np.abs(b).max())
    assert np.mean(np.abs(a - b) > 1e-5 * np.abs(b).max()) < 1e-2  # 0.3 % of the pixels here


@pytest.mark.parametrize("method", ["deeplift_shap", "gradient_shap"])
def test_non_finite_references_are_refused_not_returned_as_nan_maps(method):
    ex = onnxsal.Explainer("mobilenet_v2")
    x = ex.preprocessing.batch([load_image(zoo.example_image(zoo.EXAMPLES[0]))])
    with pytest.raises(MethodError, match="non-finite attributions"):
        ex.explain(x, method, references=np.full((2, 3, 224, 224), np.inf, np.float32))


def test_evaluate_set_reads_a_baseline_as_explain_does():
    from onnxsal.metrics.files import parse_assignments

    _, options = parse_assignments(["deeplift.baseline=black+blur", "integrated_gradients.baseline=0.5"])
    assert options == {"deeplift": {"baseline": ["black", "blur"]}, "integrated_gradients": {"baseline": 0.5}}
    with pytest.raises(MethodError, match="unknown baseline 'blak'"):
        parse_assignments(["deeplift.baseline=blak"])
