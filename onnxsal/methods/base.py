"""The method interface, its registry, and the result every method returns.

A method turns a batch x (model layout) and seeds (weights over the score tensor) into per-pixel
attributions (shaped like x; None for CAM methods) and maps (N, H, W). Methods that average over many
model runs (SmoothGrad, Integrated Gradients, Occlusion) stream them through ONNX Runtime in batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import MethodError

METHODS: dict[str, type["Method"]] = {}


def register(cls):
    METHODS[cls.name] = cls
    return cls


@dataclass
class Explanation:
    maps: np.ndarray  # (N, H, W) float32: one value per input pixel
    attributions: np.ndarray | None  # shaped like x (pixel-space methods), else None
    targets: np.ndarray  # (N,) class per sample (-1 where the target was a weighting)
    scores: np.ndarray  # (N,) the explained score sum(seed * score) per sample
    method: str
    signed: bool  # whether maps carry a sign (IG, gradient x input): shown with a diverging colormap
    delta: np.ndarray | None = None  # (N,) completeness gap of path methods
    layer: str | None = None
    options: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # what the method measured (e.g. model evaluations used)
    output: str | None = None  # the model output explained
    target_kind: str = "logit"  # logit | probability | log_probability
    target: str = ""  # the target, in words ("the top class", "class 3 (cat)", ...)
    logits: np.ndarray | None = None  # (N, K) the scores, for one-score-per-class outputs explained as logits


@dataclass
class Attribution:
    """What Method.attribute returns; the Explainer adds targets and scores."""

    maps: np.ndarray
    attributions: np.ndarray | None = None
    delta: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    scores: np.ndarray | None = None  # the model's score tensor at x, when the method computed it


class Method:
    name = ""
    description = ""
    reference = ""
    signed = False
    uses_layer = False
    in_graph_top = False  # accepts seeds=None: the top class chosen inside the gradient graph
    requires: tuple = ()  # optional packages the method imports: (module, pip name); 'all' skips it without them
    defaults: dict = {}

    def __init__(self, explainer, **options):
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            valid = ", ".join(sorted(self.defaults)) or "none"
            raise MethodError(f"unknown option(s) {', '.join(unknown)} for {self.name}; its options: {valid}")
        for key, value in options.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise MethodError(f"option {key} of {self.name} must be a finite number, not {value!r}")
        self.ex = explainer
        self.options = {**self.defaults, **options}

    @property
    def layout(self) -> str:
        return self.ex.graph.layout

    def attribute(self, x: np.ndarray, seeds: np.ndarray, progress: Callable[[int], None] | None = None) -> Attribution:
        raise NotImplementedError

    def runs_per_sample(self) -> int:
        """How many model evaluations one sample costs (for progress bars)."""
        return 1


REDUCTIONS = ("max_abs", "sum", "abs_sum", "l2", "sum_sq")


def image_rngs(seed, x) -> list:
    """One numpy Generator per image of x (N, ...), seeded by `seed` and the image's own values (CRC-32 of its
    bytes), so an image's random draws (noise, path points, references) do not depend on the other images in the
    call or on its place in the batch: a photo gets the same map alone or in a folder. seed None: fresh entropy."""
    import zlib

    if seed is None:
        return [np.random.default_rng() for _ in range(len(x))]
    return [np.random.default_rng([int(seed), zlib.crc32(np.ascontiguousarray(xi).tobytes())]) for xi in x]


def reduce_channels(attributions: np.ndarray, layout: str, how: str) -> np.ndarray:
    """(N, H, W) map from (N, C, H, W) or (N, H, W, C) attributions.

    max_abs: max_c |a| (Simonyan et al. 2013);  sum: sum_c a (signed);  abs_sum: sum_c |a|;
    l2: sqrt(sum_c a^2);  sum_sq: sum_c a^2 (sensitivity analysis, Baehrens et al. 2010).
    """
    if attributions.ndim != 4:
        raise MethodError(f"maps need a rank-4 image input, this one has shape {attributions.shape}")
    if how not in REDUCTIONS:
        raise MethodError(f"unknown channel reduction {how!r}; choose one of {', '.join(REDUCTIONS)}")
    from .. import postprocess as pp

    m = pp.reduce_channels(pp.NUMPY, attributions.astype(np.float32, copy=False), how, 3 if layout == "NHWC" else 1)
    return np.ascontiguousarray(m, dtype=np.float32)


def to_nchw(t: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(t.transpose(0, 3, 1, 2) if layout == "NHWC" else t, dtype=np.float32)


def from_nchw(t: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(t.transpose(0, 2, 3, 1) if layout == "NHWC" else t)
