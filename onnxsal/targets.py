"""What to explain: from a user's target to the seed that weights the model's score tensor.

target is
  "top"                      the class with the highest score, per sample (default)
  int                        one class for every sample
  sequence of ints (len N)   one class per sample
  float array (K,) | (N, K) | shaped like the score tensor   weights over the outputs
For a score tensor of rank > 2 (say a segmentation map (N, K, H, W)), a class index selects that class
on the class axis everywhere (its scores are summed), as in Grad-CAM for segmentation.
The explained quantity is sum(seed * score), per sample.
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


def class_seed(classes: np.ndarray, score_shape: tuple, class_axis: int) -> np.ndarray:
    seeds = np.zeros(score_shape, dtype=np.float32)
    index = [slice(None)] * len(score_shape)
    for i, c in enumerate(classes):
        index[0], index[class_axis] = i, int(c)
        seeds[tuple(index)] = 1.0
    return seeds


def resolve(target, scores: np.ndarray, class_axis: int = 1, labels=None) -> Targets:
    """Targets for a batch whose score tensor is `scores` (from a forward pass)."""
    n, k = scores.shape[0], scores.shape[class_axis]
    if isinstance(target, str):
        if target != "top":
            if labels is not None and target in labels:
                return resolve(labels.index(target), scores, class_axis, labels)
            raise TargetError(f'target {target!r} is not "top", a class index or a known class name')
        flat = np.moveaxis(scores, class_axis, 1).reshape(n, k, -1).sum(axis=2)
        classes = flat.argmax(axis=1).astype(np.int64)
        return Targets(class_seed(classes, scores.shape, class_axis), classes, "top")
    if isinstance(target, numbers.Integral) and not isinstance(target, bool):
        return resolve([int(target)] * n, scores, class_axis, labels)
    array = np.asarray(target)
    if array.dtype.kind in "iu" or (array.dtype == object and all(isinstance(t, numbers.Integral) for t in array.ravel())):
        classes = array.astype(np.int64).reshape(-1)
        if len(classes) != n:
            raise TargetError(f"{len(classes)} class indices for a batch of {n}; give one per sample or a single int")
        bad = classes[(classes < 0) | (classes >= k)]
        if len(bad):
            raise TargetError(f"class index {int(bad[0])} is out of range: the model has {k} classes (0..{k - 1})")
        return Targets(class_seed(classes, scores.shape, class_axis), classes, "class")
    if array.dtype.kind == "f":
        weights = array.astype(np.float32)
        if weights.shape == scores.shape:
            seeds = weights
        elif weights.shape == scores.shape[1:]:
            seeds = np.broadcast_to(weights, scores.shape).copy()
        elif weights.ndim == 1 and len(weights) == k and scores.ndim == 2:
            seeds = np.broadcast_to(weights, scores.shape).copy()
        else:
            raise TargetError(f"target weights of shape {weights.shape} do not fit scores of shape {scores.shape}")
        return Targets(seeds, np.full(n, -1, dtype=np.int64), "weights")
    raise TargetError(f"cannot use {type(target).__name__} as a target; give 'top', an int, ints per sample or float weights")
