"""Input and layer gradients of whole exported models against two independent oracles.

For every classifier family in torch_models, exported by torch's TorchScript and dynamo exporters:
  - torch autograd on the same weights (input gradient, and the gradient at the `auto` layer when that
    layer is the output of the family's `feature` module: checked by comparing the activations too);
  - onnxruntime-training's GradientGraphBuilder on the exported ONNX graph itself.
Thresholds from the issue: cosine >= 0.9999 and max relative error <= 1e-3.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import torch_models as tm
from oracles import cosine, max_rel_err, ortt_gradients
from onnxsal.graph import load_model, select_layer
from onnxsal.runtime import Engine

COS, REL = 0.9999, 1e-3
RNG = np.random.default_rng(7)
X = RNG.standard_normal((3, 3, tm.SIZE, tm.SIZE)).astype(np.float32)
SEED = RNG.standard_normal((3, tm.CLASSES)).astype(np.float32)
EXPORTS: dict = {}


def exported(family: str, exporter: str) -> tuple:
    key = (family, exporter)
    if key not in EXPORTS:
        model = tm.build(family)
        EXPORTS[key] = (model, tm.export(model, exporter))
    return EXPORTS[key]


def ours(data: bytes, x=X, seed=SEED):
    graph = load_model(data)
    layer = select_layer(graph, "auto")
    out = Engine(graph).gradients(x, seed, layers=[layer.tensor])
    return graph, layer, out


def assert_close(got, want, what):
    c, r = cosine(got, want), max_rel_err(got, want)
    assert c >= COS and r <= REL, f"{what}: cosine {c:.7f}, max relative error {r:.2e}"


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("family", list(tm.FAMILIES))
def test_gradients_match_torch_autograd(family, exporter):
    model, data = exported(family, exporter)
    graph, layer, out = ours(data)
    logits, gx, act, gact = tm.torch_gradients(model, X, SEED, model.feature)
    assert_close(out.scores, logits, "scores")
    assert_close(out.input_grad, gx, "input gradient")
    if act is not None:
        assert out.activations[layer.tensor].shape == act.shape
        assert_close(out.activations[layer.tensor], act, f"activation at {layer.tensor}")
        assert_close(out.layer_grads[layer.tensor], gact, f"gradient at {layer.tensor}")


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("family", list(tm.FAMILIES))
def test_gradients_match_onnxruntime_training(family, exporter, ortt_python, tmp_path):
    _, data = exported(family, exporter)
    graph, layer, out = ours(data, X[:1], SEED[:1])
    gx, (ga,) = ortt_gradients(onnx.load_from_string(data), graph.input_name, graph.logits_name, [layer.tensor],
                               X[:1], SEED[:1], tmp_path)
    assert_close(out.input_grad, gx, "input gradient")
    assert_close(out.layer_grads[layer.tensor], ga, f"gradient at {layer.tensor}")


def test_auto_layer_is_the_last_feature_map():
    for family in ("resnet", "mobilenet_v2", "efficientnet", "densenet"):
        model, data = exported(family, "torchscript")
        _, layer, out = ours(data)
        _, _, act, _ = tm.torch_gradients(model, X, SEED, model.feature)
        assert np.allclose(out.activations[layer.tensor], act, atol=1e-5), family


def test_opset11_export_is_upgraded_and_differentiated():
    model = tm.build("resnet")
    data = tm.export(model, "torchscript", opset=11)
    assert next(i.version for i in onnx.load_from_string(data).opset_import if i.domain == "") == 11
    graph, _, out = ours(data)
    assert graph.opset >= 17
    _, gx, _, _ = tm.torch_gradients(model, X, SEED, None)
    assert_close(out.input_grad, gx, "input gradient")


def test_batch_one_export_runs_batched_after_reshape_rewrite():
    _, data = exported("vgg", "torchscript")  # x.view(x.size(0), -1) folds to a constant [1, 1024]
    graph, _, _ = ours(data)
    assert graph.batchable
    assert Engine(graph).batch_size > 1


@pytest.fixture
def no_rebatching(monkeypatch):
    """Canonicalize without the pass that re-batches baked batch sizes: the ViT export stays unbatchable."""
    from onnxsal import cache
    from onnxsal.graph import canonicalize

    monkeypatch.setattr(canonicalize, "rebatch_baked_batch", lambda model, *args: model)
    monkeypatch.setattr(cache, "MEMORY", cache.ByteLRU())
    monkeypatch.setenv("ONNXSAL_CACHE", "0")


def test_unbatchable_export_falls_back_to_one_sample_at_a_time(no_rebatching):
    model, data = exported("vit", "torchscript")  # attention reshapes bake batch * heads
    with pytest.warns(UserWarning, match="one sample at a time"):
        graph, _, out = ours(data)
    assert graph.batchable is False
    _, gx, _, _ = tm.torch_gradients(model, X, SEED, None)
    assert_close(out.input_grad, gx, "input gradient")


def test_batch_probe_of_an_unbatchable_export_prints_nothing(capfd, no_rebatching):
    _, data = exported("vit", "torchscript")
    graph = load_model(data)
    graph.batchable = None  # probe again, even if an earlier test already did
    with pytest.warns(UserWarning, match="one sample at a time"):
        Engine(graph)
    assert graph.batchable is False
    err = capfd.readouterr().err
    assert "onnxruntime" not in err and "Non concat axis" not in err, err


def test_dynamic_batch_export_is_batchable():
    model = tm.build("vit")
    graph = load_model(tm.export(model, "torchscript", dynamic=True))
    Engine(graph)
    assert graph.batchable
