"""The Python API: Explainer(model).explain(x, method=..., target=...) -> Explanation.

x is a float batch in the model's input layout (a single image without batch axis is accepted too);
results are numpy arrays. See onnxsal.methods() for the methods and their options.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import InputError, MethodError
from .graph.layers import Layer, candidate_layers, select_layer
from .graph.model import TARGET_KINDS, load_model
from .preprocess import Preprocessing, sidecar_for
from .runtime import Engine, GradientOutputs
from .targets import as_target

BASELINES = ("black", "zeros", "gray", "mean", "blur", "uniform")


def default_preprocessing(source, zoo_name: str | None) -> "Preprocessing | None":
    """A model's own preprocessing: its zoo entry's, else `<model>.preprocess.json` / `.toml` beside the model
    file (the CLI's default too), else None."""
    from . import zoo

    if zoo_name is not None:
        return Preprocessing.from_dict(zoo.entry(zoo_name)["preprocessing"])
    if isinstance(source, (str, os.PathLike)):
        sidecar = sidecar_for(Path(source))
        if sidecar is not None:
            return Preprocessing.from_file(sidecar)
    return None


class Explainer:
    """Explanations of one ONNX model.

    model: a path, bytes, onnx.ModelProto or the name of a zoo model (which brings its preprocessing and labels).
    layer: the layer CAM methods weight: 'auto' (the last feature map), a tensor name or a node name.
    target_kind: which score is explained: 'logit' (default; a trailing Softmax is cut), 'probability',
        'log_probability'.
    providers: onnxruntime execution providers (default: CUDA when available, then CPU).
    batch_size: samples per onnxruntime run (default: sized from the activations, at most 64).
    preprocessing: how images map to model inputs (enables the 'black' and 'gray' baselines); default: the
        zoo model's, else `<model>.preprocess.json` / `.preprocess.toml` beside an .onnx path, as in the CLI.
    input_shape: fixes dynamic input dimensions, e.g. (None, 3, 224, 224).
    """

    def __init__(self, model, layer: str = "auto", *, input_name: str | None = None, output_name: str | None = None,
                 target_kind: str = "logit", providers: Sequence[str] | None = None, batch_size: int | None = None,
                 preprocessing: Preprocessing | dict | None = None, input_shape: tuple | None = None,
                 labels: Sequence[str] | None = None):
        from . import zoo

        if target_kind not in TARGET_KINDS:
            raise MethodError(f"unknown target_kind {target_kind!r}; choose one of {', '.join(TARGET_KINDS)}")
        source, zoo_name = zoo.resolve(model) if isinstance(model, str) or model is None else (model, None)
        if preprocessing is None:
            preprocessing = default_preprocessing(source, zoo_name)
        if zoo_name is not None:
            labels = labels if labels is not None else zoo.labels(zoo_name)
        if isinstance(preprocessing, dict):
            preprocessing = Preprocessing.from_dict(preprocessing)
        self.zoo_name = zoo_name
        self.preprocessing = preprocessing
        self.labels = list(labels) if labels is not None else None
        self.target_kind = target_kind
        protected = () if layer in (None, "auto") else (layer,)
        if input_shape is None and preprocessing is not None and zoo_name is None:
            input_shape = _shape_for(source, preprocessing, input_name)
        self.graph = load_model(source, input_name=input_name, output_name=output_name, input_shape=input_shape,
                                protected=protected)
        if self.preprocessing is not None and len(self.graph.input_shape) == 4:
            # as the CLI does: the model decides layout, channel count and size (a sidecar need not say them)
            channels = self.graph.input_shape[3 if self.graph.layout == "NHWC" else 1]
            self.preprocessing = replace(self.preprocessing, layout=self.graph.layout, size=tuple(self.graph.spatial_shape),
                                         channels=channels if channels in (1, 3, 4) else self.preprocessing.channels)
        self.engine = Engine(self.graph, providers=providers, batch_size=batch_size)
        self._layer_spec = layer or "auto"
        self._layer: Layer | None = None
        if self._layer_spec != "auto":
            self._layer = select_layer(self.graph, self._layer_spec)

    # -- model facts
    @property
    def layer(self) -> Layer:
        if self._layer is None:
            self._layer = select_layer(self.graph, self._layer_spec)
        return self._layer

    def layers(self) -> list[Layer]:
        return candidate_layers(self.graph)

    @property
    def num_classes(self) -> int | None:
        return self.graph.num_classes

    # -- running the model
    def _batch(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype.kind not in "fiu":
            raise InputError(f"x must be a numeric array, not {x.dtype}")
        if x.ndim == len(self.graph.input_shape) - 1:
            x = x[None]
        return np.ascontiguousarray(x, dtype=np.float32)

    def predict(self, x) -> np.ndarray:
        """Scores (target_kind) for a batch."""
        return self.engine.forward(self._batch(x), self.target_kind)[0]

    def score(self, x, seeds) -> np.ndarray:
        """sum(seed * score) per sample, float64."""
        scores = self.engine.forward(x, self.target_kind)[0]
        return (scores.astype(np.float64) * seeds).reshape(len(x), -1).sum(axis=1)

    def gradients(self, x, seeds, layers: Sequence[str] = (), ruleset: str = "gradient", input_grad: bool = True,
                  reference=None) -> GradientOutputs:
        """One backward pass under `ruleset`; `reference` (shaped like x) for rule sets with a reference pass (deeplift)."""
        return self.engine.gradients(x, seeds, layers=layers, ruleset=ruleset, target_kind=self.target_kind, input_grad=input_grad,
                                     reference=reference)

    def activations(self, x, tensor: str) -> np.ndarray:
        return self.engine.forward(x, self.target_kind, layers=[tensor])[1][tensor]

    # -- baselines (model space) for path and perturbation methods
    def baselines(self, x: np.ndarray, spec, seed: int = 0, blur_sigma: float = 10.0) -> list[np.ndarray]:
        """Reference inputs shaped like x: one per entry of `spec` (a name, a number, an array, or a list of them)."""
        if spec is None:
            spec = "black" if self.preprocessing is not None else "zeros"
        if isinstance(spec, (list, tuple)) and not (len(spec) and isinstance(spec[0], (int, float)) and len(spec) == x.shape[1]):
            if not spec:
                raise MethodError("the list of baselines is empty")
            return [self.baselines(x, s, seed + i, blur_sigma)[0] for i, s in enumerate(spec)]
        nhwc = self.graph.layout == "NHWC"
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            return [np.full_like(x, float(spec))]
        if isinstance(spec, np.ndarray):
            b = spec.astype(np.float32)
            if b.shape == x.shape:
                return [b]
            if b.shape == x.shape[1:] or b.shape == (1, *x.shape[1:]):  # one sample, with or without its batch axis
                return [np.broadcast_to(b.reshape(x.shape[1:]), x.shape).copy()]
            raise MethodError(f"a baseline array must be shaped like x {x.shape} or one sample {x.shape[1:]} "
                              f"(or (1, {', '.join(map(str, x.shape[1:]))})), not {b.shape}")
        if not isinstance(spec, str) or spec not in BASELINES:
            raise MethodError(f"unknown baseline {spec!r}; choose one of {', '.join(BASELINES)}, a number or an array")
        if spec == "zeros" or spec == "mean":
            # 'mean': the dataset mean pixel, which mean/std normalisation maps to 0
            return [np.zeros_like(x)]
        if spec in ("black", "gray"):
            if self.preprocessing is None:
                raise MethodError(f"the {spec} baseline needs the model's preprocessing (Explainer(..., preprocessing=...)); "
                                  "or use baseline='zeros'")
            channels = x.shape[3 if nhwc else 1]
            if self.preprocessing.channels != channels:
                raise MethodError(f"the preprocessing has {self.preprocessing.channels} channel(s), the input {channels}")
            value = self.preprocessing.pixel_value(0.0 if spec == "black" else 127.5)
            shape = (1, 1, 1, channels) if nhwc else (1, channels, 1, 1)
            return [np.broadcast_to(value.reshape(shape), x.shape).astype(np.float32).copy()]
        if spec == "uniform":
            from .methods.base import image_rngs

            rngs = image_rngs(seed, x)  # per image: its reference does not depend on the other images
            if self.preprocessing is not None:
                size = (*self.graph.spatial_shape, x.shape[3 if nhwc else 1])
                values = np.stack([self.preprocessing.normalize(r.uniform(0, 255, size=size)) for r in rngs])
                return [np.ascontiguousarray(values if nhwc else values.transpose(0, 3, 1, 2), np.float32)]
            return [np.stack([r.uniform(xi.min(), xi.max(), size=xi.shape) for r, xi in zip(rngs, x)]).astype(np.float32)]
        return [gaussian_blur(x, blur_sigma, nhwc)]

    # -- explaining
    def explain(self, x, method: str = "saliency", target="top", *, progress: Callable[[float], None] | None = None,
                **options):
        """Attributions of `target` for a batch x; returns an Explanation (maps (N, H, W), attributions, ...)."""
        from .methods import METHODS, Explanation

        if method not in METHODS:
            raise MethodError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        x = self._batch(x)
        impl = METHODS[method](self, **options)
        if impl.uses_layer:
            _ = self.layer  # fail early on a model without a usable layer
        goal = as_target(target, self.labels)
        if hasattr(goal, "kind"):
            goal.kind = self.target_kind  # the kind of the scores its seeds() will see
        axis = self.graph.class_axis
        scores = None
        if goal.in_graph and impl.in_graph_top and axis is not None:
            seeds = None  # the gradient graph picks each sample's top class: no separate forward pass
        else:
            shape = None if goal.needs_scores else self.graph.score_shape
            if shape is None:
                scores = self.engine.forward(x, self.target_kind)[0]  # the seed needs the values, or the shape is unknown
            template = scores if scores is not None else np.zeros((len(x),) + shape, np.float32)
            seeds = goal.seeds(template, axis)
        impl.goal = goal  # methods that need more than the seed (D-RISE's box) read it
        result = impl.attribute(x, seeds, progress=progress)
        if result.scores is not None:
            scores = result.scores
        elif scores is None:
            scores = self.engine.forward(x, self.target_kind)[0]
        if seeds is None:
            seeds = goal.seeds(scores, axis)
        classes = goal.classes(scores, axis)
        explained = (scores.astype(np.float64) * seeds).reshape(len(x), -1).sum(axis=1)
        return Explanation(
            maps=result.maps, attributions=result.attributions, targets=classes, scores=explained.astype(np.float32),
            method=method, signed=bool(impl.signed), delta=result.delta,
            layer=self.layer.tensor if impl.uses_layer else None, options=dict(impl.options), info=dict(result.info),
            output=self.graph.output_name, target_kind=self.target_kind, target=goal.describe(self.labels),
            logits=scores if self.target_kind == "logit" and scores.ndim == 2 else None,
        )

    def export(self, path=None, method: str = "grad_cam", *, normalize: bool = True, class_input: bool = True,
               overlay: bool = False, cmap: str | None = None, alpha: float = 0.6, with_preprocessing: bool = False,
               **options):
        """An ONNX model from image to heatmap (onnxsal/export.py): inputs `image` and int64 `class` ((N,) or (1,);
        -1 = top; left out with class_input=False: always the top class), outputs `scores`, `target`, `heatmap`
        (N, H, W), normalised as the CLI shows maps unless normalize=False, and with overlay=True `overlay`
        (N, H, W, 3) uint8 drawn as the CLI draws it (cmap, alpha as in the CLI). with_preprocessing=True: `image`
        is uint8 RGB (N, H0, W0, 3) of any size, resized, cropped and normalised in the graph (no antialiasing,
        unlike PIL). Written to `path` when given;
        returns the onnx.ModelProto. `options` are the method's (e.g. reduce='sum')."""
        from .export import export_model

        model = export_model(self, method, normalize=normalize, class_input=class_input, overlay=overlay, cmap=cmap,
                             alpha=alpha, with_preprocessing=with_preprocessing, **options)
        if path is not None:
            from .files import write_output

            write_output(Path(path), model.SerializeToString())
        return model

    def _known_score_shape(self) -> tuple | None:
        """The score tensor's shape without the batch axis, when shape inference knows it."""
        return self.graph.score_shape

    @property
    def head(self):
        """The explained output's head (graph/head.py): activation, class axis, number of classes."""
        return self.graph.head

    def describe(self) -> str:
        """One line: which output is explained, its head, and the score kind."""
        kind = {"logit": "the score before the activation" if self.graph.final_activation else "the raw score",
                "probability": "the probability", "log_probability": "the log-probability"}[self.target_kind]
        return f"{self.graph.head.describe()}; explaining {kind} (target kind {self.target_kind})"

    def top_classes(self, x, k: int = 5) -> list[list[tuple[int, str, float]]]:
        """[(class, name, value)] * k per sample, highest first, for models with one score per class.

        The value is the probability by the head's own activation: softmax over classes (a Softmax or
        LogSoftmax head, or a multi-class head without activation), the sigmoid of each unit (Sigmoid heads
        and one-unit heads: multi-label / binary); [] for dense outputs and one-score-per-sample outputs.
        """
        return self.top_from_logits(self.engine.forward(self._batch(x), "logit")[0], k)

    def top_from_logits(self, scores: np.ndarray, k: int = 5) -> list[list[tuple[int, str, float]]]:
        """top_classes from the logits already computed (an Explanation's `logits` with target_kind='logit')."""
        head = self.graph.head
        if scores.ndim != 2 or head.class_axis != 1:
            return [[] for _ in scores]
        z = scores.astype(np.float64)
        if head.probability_function() == "sigmoid":
            probs = 1.0 / (1.0 + np.exp(-z))
        else:
            e = np.exp(z - z.max(axis=1, keepdims=True))
            probs = e / e.sum(axis=1, keepdims=True)
        out = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[:k]
            out.append([(int(c), self.labels[c] if self.labels and c < len(self.labels) else str(c), float(row[c])) for c in order])
        return out


def _shape_for(source, preprocessing: Preprocessing, input_name) -> tuple | None:
    """The input shape a model with dynamic spatial dimensions gets from the preprocessing's size, else None."""
    from .graph.model import find_input, read_model

    try:
        proto, _, _ = read_model(source)
        dims = find_input(proto, input_name).type.tensor_type.shape.dim
    except Exception:  # noqa: BLE001 - load_model reports a bad model properly
        return None
    if len(dims) != 4 or all(d.HasField("dim_value") and d.dim_value > 0 for d in dims[1:]):
        return None
    from .workflow import model_input_shape

    return model_input_shape(source, preprocessing.size, input_name)


def gaussian_blur(x: np.ndarray, sigma: float, nhwc: bool) -> np.ndarray:
    """Separable Gaussian blur of each channel (reflect padding), radius 3 sigma."""
    if sigma <= 0:
        return x.copy()
    radius = max(1, int(3 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= kernel.sum()
    axes = (1, 2) if nhwc else (2, 3)
    out = x.astype(np.float64)
    for axis in axes:
        size = out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (min(radius, size - 1), min(radius, size - 1))
        padded = np.pad(out, pad, mode="reflect") if size > 1 else out
        r = pad[axis][0]
        acc = np.zeros_like(out)
        for offset, weight in zip(range(-r, r + 1), kernel[radius - r:radius + r + 1] / kernel[radius - r:radius + r + 1].sum()):
            acc += weight * np.take(padded, np.arange(r + offset, r + offset + size), axis=axis)
        out = acc
    return out.astype(np.float32)
