"""Occlusion (Zeiler & Fergus 2014, sec. 4.2): how much the score drops when a patch is covered.

A window of `window` pixels slides with `stride` (positions k * stride for k = 0..ceil((H - h) / s), the
last one clipped at the border, so every pixel is covered); all channels under it are set to `fill`.
a_ij = mean over the windows covering (i, j) of  S(x) - S(x with the window filled).
Forward passes only, batched; positive values mark evidence for the target.
"""

from __future__ import annotations

import math

import numpy as np

from .base import Attribution, Method, register
from ..errors import MethodError


def _pair(value, what):
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise MethodError(f"{what} is one int or (height, width)")
    return value


def window_starts(size: int, window: int, stride: int) -> list[int]:
    return [k * stride for k in range(math.ceil((size - window) / stride) + 1)]


@register
class Occlusion(Method):
    name = "occlusion"
    description = "Occlusion: drop in the score when a sliding patch is covered (forward passes only)"
    reference = "Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks, sec. 4.2"
    signed = True
    defaults = {"window": 32, "stride": 16, "fill": "zeros", "batch_size": None}

    def __init__(self, explainer, **options):
        super().__init__(explainer, **options)
        h, w = explainer.graph.spatial_shape
        self.window = _pair(self.options["window"], "window")
        self.stride = _pair(self.options["stride"], "stride")
        if not (0 < self.window[0] <= h and 0 < self.window[1] <= w):
            raise MethodError(f"window {self.window} must fit the {h}x{w} input")
        if not all(0 < s <= k for s, k in zip(self.stride, self.window)):
            raise MethodError(f"stride {self.stride} must be positive and at most the window {self.window}")
        self.rows = window_starts(h, self.window[0], self.stride[0])
        self.cols = window_starts(w, self.window[1], self.stride[1])

    def runs_per_sample(self) -> int:
        return len(self.rows) * len(self.cols)

    def attribute(self, x, seeds, progress=None):
        n = len(x)
        nhwc = self.layout == "NHWC"
        fill = self.ex.baselines(x, self.options["fill"])[0]
        windows = [(r, c) for r in self.rows for c in self.cols]
        f_x = self.ex.score(x, seeds)
        h, w = self.ex.graph.spatial_shape
        total = np.zeros((n, h, w))
        count = np.zeros((h, w))
        for r, c in windows:
            count[r:r + self.window[0], c:c + self.window[1]] += 1
        batch = int(self.options["batch_size"] or self.ex.engine.batch_size)
        pairs = [(i, k) for i in range(n) for k in range(len(windows))]
        for start in range(0, len(pairs), batch):
            chunk = pairs[start:start + batch]
            occluded = np.stack([x[i] for i, _ in chunk])
            for row, (i, k) in enumerate(chunk):
                r, c = windows[k]
                box = (slice(r, r + self.window[0]), slice(c, c + self.window[1]))
                if nhwc:
                    occluded[row][box] = fill[i][box]
                else:
                    occluded[row][(slice(None),) + box] = fill[i][(slice(None),) + box]
            drop = f_x[[i for i, _ in chunk]] - self.ex.score(occluded, seeds[[i for i, _ in chunk]])
            for (i, k), d in zip(chunk, drop):
                r, c = windows[k]
                total[i, r:r + self.window[0], c:c + self.window[1]] += d
            if progress:
                progress(len(chunk))
        maps = (total / count).astype(np.float32)
        shape = (n, 1, h, w) if not nhwc else (n, h, w, 1)
        attributions = np.broadcast_to(maps.reshape(shape), x.shape).astype(np.float32)
        return Attribution(maps=maps, attributions=attributions)
