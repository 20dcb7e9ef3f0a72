"""What to explain: a Target turns the model's score tensor into the seed that weights it.

The explained quantity is  S_n = sum(seed[n] * score[n])  per sample n, where score is the explained
output (shaped (N,), (N, K), (N, K, H, W), (N, H, W, K), ...) and the class axis comes from the head
(graph/head.py). Targets (after pytorch-grad-cam's ClassifierOutputTarget / SemanticSegmentationTarget):

  TopTarget()              each sample's highest class; for a dense score, the class with the highest
                           sum over positions (one definition, shared by the numpy path and the graph seed)
  ClassTarget(c)           one class (int) for every sample, or one per sample
  TopKTarget(k)            the sum of each sample's k highest classes
  WeightsTarget(w)         float weights over the classes (K,) / (N, K) or shaped like the score
  RegionTarget(c, mask)    class c summed over a region of a dense score: the pixels predicted as c
                           ("predicted", the default), a box (x0, y0, x1, y1) in score pixels, or a
                           boolean / float mask (H, W) or (N, H, W)

`as_target(spec, labels)` accepts those objects or the short forms "top", an int, ints per sample, a
class name, or a float array. `resolve(...)` gives the seeds with the classes and a description.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from .errors import TargetError


@dataclass
class Targets:
    seeds: np.ndarray  # shaped like the score tensor
    classes: np.ndarray  # (N,) int64; -1 where the target is a weighting
    description: str


def _name(c: int, labels) -> str:
    return f"{c} ({labels[c]})" if labels and 0 <= c < len(labels) else str(c)


def _classes_view(scores: np.ndarray, class_axis: int | None) -> np.ndarray:
    """(N, K, P): scores with the class axis second and the other axes flattened (K = 1 without a class axis)."""
    n = scores.shape[0]
    if class_axis is None:
        return scores.reshape(n, 1, -1)
    return np.moveaxis(scores, class_axis, 1).reshape(n, scores.shape[class_axis], -1)


def _from_view(view: np.ndarray, shape: tuple, class_axis: int | None) -> np.ndarray:
    if class_axis is None:
        return np.ascontiguousarray(view.reshape(shape), dtype=np.float32)
    moved = view.reshape((shape[0], shape[class_axis]) + tuple(np.delete(np.array(shape[1:]), class_axis - 1)))
    return np.ascontiguousarray(np.moveaxis(moved, 1, class_axis), dtype=np.float32)


def one_hot(classes: np.ndarray, shape: tuple, class_axis: int | None) -> np.ndarray:
    """Seeds selecting class classes[n] of sample n at every position."""
    n = shape[0]
    k = 1 if class_axis is None else shape[class_axis]
    p = int(np.prod(shape[1:], dtype=np.int64)) // k
    view = np.zeros((n, k, p), np.float32)
    view[np.arange(n), np.asarray(classes, np.int64)] = 1.0
    return _from_view(view, shape, class_axis)


def _check_classes(classes: np.ndarray, k: int) -> None:
    bad = classes[(classes < 0) | (classes >= k)]
    if len(bad):
        if k == 1:
            raise TargetError(f"class {int(bad[0])} does not exist: the output has one unit (class 0)")
        raise TargetError(f"class index {int(bad[0])} is out of range: the model has {k} classes (0..{k - 1})")


class Target:
    """A target: seeds(scores, class_axis) -> seed array shaped like scores; describe() for people."""

    in_graph = False  # the gradient graph can compute the seed itself (no forward pass first)
    needs_scores = False  # the seed depends on the score values, not only on their shape

    def seeds(self, scores: np.ndarray, class_axis: int | None) -> np.ndarray:
        raise NotImplementedError

    def classes(self, scores: np.ndarray, class_axis: int | None) -> np.ndarray:
        """(N,) the class each sample's seed selects, -1 for a weighting of several."""
        return np.full(len(scores), -1, np.int64)

    def describe(self, labels=None) -> str:
        raise NotImplementedError


class TopTarget(Target):
    in_graph = True
    needs_scores = True

    def classes(self, scores, class_axis):
        return _classes_view(scores, class_axis).sum(axis=2).argmax(axis=1).astype(np.int64)

    def seeds(self, scores, class_axis):
        return one_hot(self.classes(scores, class_axis), scores.shape, class_axis)

    def describe(self, labels=None):
        return "the top class"


@dataclass
class ClassTarget(Target):
    index: object  # int, or a sequence of ints (one per sample)

    def _indices(self, n: int) -> np.ndarray:
        if isinstance(self.index, numbers.Integral):
            return np.full(n, int(self.index), np.int64)
        classes = np.asarray(self.index).astype(np.int64).reshape(-1)
        if len(classes) != n:
            raise TargetError(f"{len(classes)} class indices for a batch of {n}; give one per sample or a single int")
        return classes

    def classes(self, scores, class_axis):
        classes = self._indices(len(scores))
        _check_classes(classes, 1 if class_axis is None else scores.shape[class_axis])
        return classes

    def seeds(self, scores, class_axis):
        return one_hot(self.classes(scores, class_axis), scores.shape, class_axis)

    def describe(self, labels=None):
        if isinstance(self.index, numbers.Integral):
            return f"class {_name(int(self.index), labels)}"
        return "one class per sample"


@dataclass
class TopKTarget(Target):
    k: int
    needs_scores = True

    def __post_init__(self):
        if not isinstance(self.k, numbers.Integral) or self.k < 1:
            raise TargetError(f"top-k needs k >= 1, not {self.k!r}")

    def seeds(self, scores, class_axis):
        view = _classes_view(scores, class_axis)
        if self.k > view.shape[1]:
            raise TargetError(f"top-{self.k} asks for more classes than the model's {view.shape[1]}")
        totals = view.sum(axis=2)
        order = np.argsort(-totals, axis=1, kind="stable")[:, :self.k]
        seed = np.zeros_like(view, dtype=np.float32)
        for i, row in enumerate(order):
            seed[i, row] = 1.0
        return _from_view(seed, scores.shape, class_axis)

    def classes(self, scores, class_axis):
        if self.k == 1:
            return TopTarget().classes(scores, class_axis)
        return super().classes(scores, class_axis)

    def describe(self, labels=None):
        return f"the sum of the top {self.k} classes"


@dataclass
class WeightsTarget(Target):
    weights: np.ndarray

    def seeds(self, scores, class_axis):
        w = np.asarray(self.weights, np.float32)
        if not np.all(np.isfinite(w)):
            raise TargetError("target weights must be finite numbers")
        if w.shape == scores.shape:
            return np.ascontiguousarray(w)
        if w.shape == scores.shape[1:]:
            return np.ascontiguousarray(np.broadcast_to(w, scores.shape))
        k = 1 if class_axis is None else scores.shape[class_axis]
        if w.ndim in (1, 2) and w.shape[-1] == k and (w.ndim == 1 or w.shape[0] == len(scores)):
            rows = np.broadcast_to(w, (len(scores), k))
            p = int(np.prod(scores.shape[1:], dtype=np.int64)) // k
            return _from_view(np.repeat(rows[:, :, None], p, axis=2), scores.shape, class_axis)
        raise TargetError(f"target weights of shape {w.shape} do not fit scores of shape {scores.shape}")

    def classes(self, scores, class_axis):
        # a one-hot weighting names its class
        view = _classes_view(self.seeds(scores, class_axis), class_axis)
        totals = np.abs(view).sum(axis=2)
        best = totals.argmax(axis=1)
        single = (np.count_nonzero(totals, axis=1) == 1) & np.all(
            np.isin(view[np.arange(len(view)), best], (0.0, 1.0)), axis=1)
        return np.where(single, best, -1).astype(np.int64)

    def describe(self, labels=None):
        return "weighted classes"


@dataclass
class RegionTarget(Target):
    """Class `index` summed over a region of a dense score (N, K, H, W) / (N, H, W, K) / (N, 1, H, W).

    index None: each sample's top class (TopTarget's definition). After seeds(), `last_mask` holds the
    (N, H, W) region used (for drawing it).
    """

    index: int | None
    region: object = "predicted"  # "predicted" | (x0, y0, x1, y1) | mask (H, W) or (N, H, W)
    mean: bool = False  # average over the region instead of summing
    kind: str = "logit"  # the kind of the scores given (the Explainer sets it): where a one-unit map says "yes"

    last_mask = None

    @property
    def needs_scores(self):
        return isinstance(self.region, str) or self.index is None

    def _indices(self, scores, class_axis) -> np.ndarray:
        if self.index is None:
            return TopTarget().classes(scores, class_axis)
        k = 1 if class_axis is None else scores.shape[class_axis]
        _check_classes(np.array([self.index]), k)
        return np.full(len(scores), int(self.index), np.int64)

    def _spatial(self, scores, class_axis):
        if scores.ndim < 3:
            raise TargetError(f"a region target needs a dense score (N, K, H, W); this output has shape {scores.shape}")
        axes = [a for a in range(1, scores.ndim) if a != class_axis]
        return axes, tuple(scores.shape[a] for a in axes)

    def mask(self, scores, class_axis) -> np.ndarray:
        """(N, *spatial) float32 weights of the region."""
        axes, spatial = self._spatial(scores, class_axis)
        n = len(scores)
        k = 1 if class_axis is None else scores.shape[class_axis]
        classes = self._indices(scores, class_axis)
        if isinstance(self.region, str):
            if self.region != "predicted":
                raise TargetError(f'region is "predicted", a box (x0, y0, x1, y1) or a mask, not {self.region!r}')
            if class_axis is None or k == 1:
                unit = scores if class_axis is None else np.take(scores, 0, axis=class_axis)
                # one unit: predicted where the probability is above 1/2 (logit > 0, log-probability > log 1/2)
                cut = {"logit": 0.0, "probability": 0.5, "log_probability": float(np.log(0.5))}[self.kind]
                m = (unit > cut).astype(np.float32)
            else:
                shape = [n] + [1] * (scores.ndim - 2)
                m = (np.argmax(scores, axis=class_axis) == classes.reshape(shape)).astype(np.float32)
        elif isinstance(self.region, (tuple, list)) and len(self.region) == 4 and len(spatial) == 2:
            x0, y0, x1, y1 = (int(v) for v in self.region)
            h, w = spatial
            if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
                raise TargetError(f"box {self.region} is not inside the {w}x{h} score map (x0 < x1 <= {w}, y0 < y1 <= {h})")
            m = np.zeros((n, h, w), np.float32)
            m[:, y0:y1, x0:x1] = 1.0
        else:
            m = np.asarray(self.region, np.float32)
            if m.shape == spatial:
                m = np.broadcast_to(m, (n,) + spatial)
            if m.shape != (n,) + spatial:
                raise TargetError(f"a region mask must be shaped {spatial} or {(n,) + spatial}, not {m.shape}")
        m = np.ascontiguousarray(m, np.float32)
        self.last_mask = m
        if self.mean:
            area = m.reshape(n, -1).sum(axis=1).reshape((n,) + (1,) * len(spatial))
            m = m / np.maximum(area, 1e-12)
        return m

    def seeds(self, scores, class_axis):
        m = self.mask(scores, class_axis)
        if class_axis is None:
            return m.reshape(scores.shape)
        classes = self._indices(scores, class_axis)
        seed = np.zeros(scores.shape, np.float32)
        moved = np.moveaxis(seed, class_axis, 1)  # a view: (N, K, *spatial)
        moved[np.arange(len(scores)), classes] = m
        return seed

    def classes(self, scores, class_axis):
        return self._indices(scores, class_axis)

    def describe(self, labels=None):
        where = "its predicted pixels" if isinstance(self.region, str) else \
            f"box {tuple(self.region)}" if isinstance(self.region, (tuple, list)) else "a mask"
        what = "the top class" if self.index is None else f"class {_name(self.index, labels)}"
        return f"{what} {'averaged' if self.mean else 'summed'} over {where}"


def as_target(spec, labels=None) -> Target:
    """A Target from a Target, "top", an int, ints per sample, a class name, or float weights."""
    if isinstance(spec, Target):
        return spec
    if isinstance(spec, str):
        if spec == "top":
            return TopTarget()
        if labels is not None and spec in labels:
            return ClassTarget(list(labels).index(spec))
        raise TargetError(f'target {spec!r} is not "top", a class index or a known class name')
    if isinstance(spec, bool):
        raise TargetError("a target is 'top', a class index, class indices or float weights, not a bool")
    if isinstance(spec, numbers.Integral):
        return ClassTarget(int(spec))
    array = np.asarray(spec)
    if array.dtype.kind in "iu" or (array.dtype == object and all(isinstance(t, numbers.Integral) for t in array.ravel())):
        return ClassTarget([int(c) for c in array.astype(np.int64).reshape(-1)])
    if array.dtype.kind == "f":
        return WeightsTarget(array)
    raise TargetError(f"cannot use {type(spec).__name__} as a target; give 'top', an int, ints per sample or float weights")


def resolve(target, scores: np.ndarray, class_axis: int | None = 1, labels=None) -> Targets:
    """Seeds, classes and a description for a batch whose score tensor is `scores`."""
    goal = as_target(target, labels)
    seeds = goal.seeds(scores, class_axis)
    return Targets(seeds, goal.classes(scores, class_axis), goal.describe(labels))
