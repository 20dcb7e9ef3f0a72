"""The narrow runner metrics use: scores of perturbed inputs in bounded batches, and explanations.

A metric never touches the Explainer directly: it asks the runner for `score(x, seeds, kind)` (one float per
sample: sum(seed * score)), for `explain(x, classes)` (maps and attributions of fixed classes), and for the
batch size. Perturbed copies are built and scored `batch` at a time, so memory stays bounded whatever the
number of steps or draws (DESIGN.md: one streaming helper for every many-evaluation method).
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from ..targets import one_hot


class Runner:
    def __init__(self, explainer, method: str, options: dict | None = None, batch_size: int | None = None):
        self.ex = explainer
        self.method = method
        self.options = dict(options or {})
        # the engine's batch is sized for forward + backward (~3x the forward's activations); metrics run forwards only
        engine = explainer.engine
        self.batch_size = int(batch_size or (1 if not engine.graph.batchable else min(64, 3 * engine.batch_size)))

    @property
    def layout(self) -> str:
        return self.ex.graph.layout

    def seeds(self, classes: np.ndarray, n: int) -> np.ndarray:
        """One-hot seeds (n, *score_shape) for one class per sample."""
        shape = self.ex.graph.score_shape
        if shape is None:
            shape = self.ex.engine.forward(np.zeros((1, *self.ex.graph.input_shape[1:]), np.float32))[0].shape[1:]
        return one_hot(np.asarray(classes, np.int64), (n, *shape), self.ex.graph.class_axis)

    def score(self, x: np.ndarray, seeds: np.ndarray, kind: str | None = None) -> np.ndarray:
        """sum(seed * score) per sample, float64; `kind`: logit, probability, log_probability (default: the explainer's)."""
        scores = self.ex.engine.forward(np.ascontiguousarray(x, np.float32), kind or self.ex.target_kind,
                                        batch_size=self.batch_size)[0]
        return (scores.astype(np.float64) * seeds).reshape(len(x), -1).sum(axis=1)

    def stream(self, count: int, build: Callable[[slice], tuple[np.ndarray, np.ndarray]], kind: str | None = None) -> np.ndarray:
        """Scores of `count` perturbed inputs, made by build(slice) -> (inputs, seeds) `batch_size` at a time."""
        out = np.empty(count, np.float64)
        for start in range(0, count, self.batch_size):
            sl = slice(start, min(count, start + self.batch_size))
            inputs, seeds = build(sl)
            out[sl] = self.score(inputs, seeds, kind)
        return out

    def explain(self, x: np.ndarray, classes, explainer=None):
        """The method's Explanation of fixed classes (one per sample), on `explainer` (default: the runner's)."""
        ex = explainer or self.ex
        target = [int(c) for c in np.asarray(classes).ravel()]
        return ex.explain(x, self.method, target=target if len(target) > 1 else target[0], **self.options)


def pixel_attributions(explanation, x: np.ndarray, layout: str) -> np.ndarray:
    """Attributions shaped like x: the method's own, else (CAM maps) the map repeated over channels."""
    if explanation.attributions is not None:
        return explanation.attributions.astype(np.float64)
    maps = explanation.maps.astype(np.float64)
    shape = (len(maps), 1, *maps.shape[1:]) if layout != "NHWC" else (*maps.shape, 1)
    return np.broadcast_to(maps.reshape(shape), x.shape).copy()


def chunked(items: Iterable, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
