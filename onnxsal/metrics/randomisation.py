"""Model-parameter randomisation tests (Adebayo et al. 2018, "Sanity Checks for Saliency Maps", sec. 3).

A layer is a Conv, ConvTranspose, Gemm or MatMul node whose weight is an initializer; layers are listed in
graph order and randomised from the output down. `cascading`: at checkpoint j every layer from the output
down to layer j is randomised; `independent`: only layer j. The rewrite replaces the layer's initializers
(weight and bias) in the model AS LOADED, before canonicalisation, so BatchNormalization folded into a Conv
later, or any other copy the canonicaliser makes, follows the new values.

New values: a truncated normal (resampled beyond 2 std, like TensorFlow's initializer Adebayo et al. used),
mean 0, with the standard deviation of the tensor it replaces (so activations keep their scale); a constant
tensor (an all-zero bias) stays as it is. Layer j's draw comes from numpy's generator seeded (seed, j), so
cascading and independent randomisation of a layer use the same values.

For each checkpoint the method's map of the SAME class is compared with the original map: Spearman rank
correlation of |map| and of the signed map, and SSIM of the min-max-scaled |map| (similarity.py). A method
that is sensitive to the model shows similarity falling towards 0 as more layers are randomised. `passes`
(our rule of thumb, not the paper's): the Spearman correlation of |map| is below 0.5 in absolute value both after
randomising the output layer alone and after cascading randomisation of every checked layer.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import MethodError
from .similarity import similarities

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
PASS_THRESHOLD = 0.5


def parameter_layers(proto: onnx.ModelProto) -> list[dict]:
    """[{"name", "op", "initializers": [names]}] in graph order (input side first)."""
    inits = {t.name for t in proto.graph.initializer}
    layers = []
    for k, node in enumerate(proto.graph.node):
        if node.op_type not in LAYER_OPS or len(node.input) < 2 or node.input[1] not in inits:
            continue
        names = [name for name in node.input[1:] if name in inits]
        layers.append({"name": node.name or node.output[0], "op": node.op_type, "initializers": names})
    return layers


def random_values(original: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    std = float(np.std(original.astype(np.float64)))
    if std == 0 or original.size == 0:
        return original
    z = rng.standard_normal(original.shape)
    for _ in range(100):
        out = np.abs(z) > 2
        if not out.any():
            break
        z[out] = rng.standard_normal(int(out.sum()))
    return np.clip(z, -2, 2).astype(original.dtype) * original.dtype.type(std)


def randomised(proto: onnx.ModelProto, layer_indices, seed: int = 0) -> tuple[onnx.ModelProto, dict]:
    """A copy of `proto` with the layers at `layer_indices` (of parameter_layers) re-drawn; returns (model, {init: values})."""
    layers = parameter_layers(proto)
    chosen = {}
    for j in layer_indices:
        rng = np.random.default_rng([int(seed), int(j)])
        for name in layers[j]["initializers"]:
            chosen.setdefault(name, rng)
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    written = {}
    for t in out.graph.initializer:
        if t.name in chosen:
            values = random_values(numpy_helper.to_array(t), chosen[t.name])
            written[t.name] = values
            t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(values), t.name))
    return out, written


def checkpoints(count: int, spec) -> list[int]:
    """Layer indices checked, output side first: `spec` = 'all', a number of checkpoints spread evenly, or indices."""
    if count == 0:
        raise MethodError("the model has no Conv/Gemm/MatMul layer with initializer weights to randomise")
    top_down = list(range(count - 1, -1, -1))
    if spec == "all":
        return top_down
    if isinstance(spec, (list, tuple)):
        return sorted({int(j) % count for j in spec}, reverse=True)
    k = max(1, min(int(spec), count))
    picks = np.unique(np.round(np.linspace(0, count - 1, k)).astype(int))
    return [top_down[p] for p in picks]


@contextlib.contextmanager
def no_disk_cache():
    """Randomised twins are used once: keep their augmented graphs out of the disk cache."""
    before = os.environ.get("ONNXSAL_CACHE")
    os.environ["ONNXSAL_CACHE"] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("ONNXSAL_CACHE", None)
        else:
            os.environ["ONNXSAL_CACHE"] = before


def twin(explainer, proto: onnx.ModelProto):
    """An Explainer of `proto` set up like `explainer` (preprocessing, labels, names, layer, target kind)."""
    from ..explainer import Explainer

    g = explainer.graph
    return Explainer(proto, layer=explainer._layer_spec, input_name=g.input_name, output_name=g.output_name,
                     target_kind=explainer.target_kind, providers=explainer.engine.providers,
                     batch_size=explainer.engine.batch_size, preprocessing=explainer.preprocessing,
                     input_shape=tuple(g.input_shape), labels=explainer.labels)


def run(runners: dict, x: np.ndarray, classes: np.ndarray, originals: dict, proto: onnx.ModelProto, *,
        layers="6", modes=("cascading", "independent"), seed: int = 0, progress=None) -> dict:
    """{method: {mode: [{"layer", "index", "op", per-image similarity lists}]}} for every runner (method)."""
    found = parameter_layers(proto)
    picks = checkpoints(len(found), layers if layers == "all" or isinstance(layers, (list, tuple)) else int(layers))
    out = {m: {mode: [] for mode in modes} for m in runners}
    first = next(iter(runners.values()))
    with no_disk_cache():
        for mode in modes:
            for j in picks:
                indices = range(j, len(found)) if mode == "cascading" else [j]
                model, _ = randomised(proto, indices, seed)
                ex = twin(first.ex, model)
                for method, runner in runners.items():
                    maps = runner.explain(x, classes, explainer=ex).maps
                    per_image = [similarities(originals[method][i], maps[i]) for i in range(len(x))]
                    out[method][mode].append({"layer": found[j]["name"], "index": j, "op": found[j]["op"],
                                              **{key: [p[key] for p in per_image] for key in per_image[0]}})
                if progress:  # one unit per method over all checkpoints and modes
                    progress(len(runners) / (len(picks) * len(modes)))
    return out


def passes(result: dict) -> list[bool]:
    """Per image: |Spearman| of |map| below 0.5 both after the output layer alone is randomised (the first
    cascading checkpoint: a map that survives it ignores what the classifier learned, Adebayo et al.'s finding for
    guided backprop) and after cascading randomisation down to the last checkpoint."""
    rows = result["cascading"]
    return [abs(a) < PASS_THRESHOLD and abs(b) < PASS_THRESHOLD
            for a, b in zip(rows[0]["spearman_abs"], rows[-1]["spearman_abs"])]
