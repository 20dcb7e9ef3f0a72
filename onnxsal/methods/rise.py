"""RISE and D-RISE: black-box saliency from randomly masked copies of the input (forward passes only).

Masks (Petsiuk et al. 2018, sec. 3.2): a binary grid of cells x cells, each cell 1 with probability p,
upsampled bilinearly to (cells + 1) * ceil(H / cells) x (cells + 1) * ceil(W / cells) and cropped at a
random shift in [0, ceil(H / cells)) x [0, ceil(W / cells)) to H x W, giving smooth masks M_i in [0, 1].
A masked input is  x_i = M_i * x + (1 - M_i) * fill  (fill: the baseline, black by default).

RISE (eq. 6):    S = 1 / (N p) * sum_i f(x_i) M_i,   f = sum(seed * score): any target, dense ones too.
D-RISE (Petsiuk et al. 2021, eq. 1-3): the score of a masked copy is how well it still detects the target
box: w_i = max_j IoU(L_t, L_j) * cos(P_t, P_j) * O_j over the masked copy's proposals j. With the target
class as P_t (one-hot) and the decoders' single class score, cos(P_t, P_j) O_j reduces to the proposal's
score when its class is the target's and 0 otherwise (our simplification, documented).
S = sum_i w_i M_i / N  (no 1/p: D-RISE normalises the weights, not the masks).
Masks stream through ONNX Runtime in batches; only the running sum is kept.
"""

from __future__ import annotations

import numpy as np

from .base import Attribution, Method, register
from ..errors import MethodError, TargetError


def rise_masks(n: int, height: int, width: int, cells: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """(n, H, W) float32 RISE masks (see the module docstring)."""
    from PIL import Image

    ch, cw = -(-height // cells), -(-width // cells)
    grid = (rng.random((n, cells, cells)) < p).astype(np.float32)
    shifts = rng.integers(0, [ch, cw], size=(n, 2))
    big = ((cells + 1) * ch, (cells + 1) * cw)
    out = np.empty((n, height, width), np.float32)
    for i in range(n):
        up = np.asarray(Image.fromarray(grid[i], mode="F").resize((big[1], big[0]), Image.BILINEAR), np.float32)
        dy, dx = shifts[i]
        out[i] = up[dy:dy + height, dx:dx + width]
    return out


class _MaskMethod(Method):
    defaults = {"masks": 1000, "cells": 7, "p": 0.5, "seed": 0, "fill": None, "batch_size": None}

    def __init__(self, explainer, **options):
        super().__init__(explainer, **options)
        o = self.options
        if not isinstance(o["masks"], (int, np.integer)) or o["masks"] < 1:
            raise MethodError(f"masks must be a positive number of masks, not {o['masks']!r}")
        if not isinstance(o["cells"], (int, np.integer)) or o["cells"] < 1:
            raise MethodError(f"cells must be a positive number of grid cells, not {o['cells']!r}")
        if not (isinstance(o["p"], (int, float)) and 0 < o["p"] <= 1):
            raise MethodError(f"p is the probability of keeping a cell, in (0, 1], not {o['p']!r}")

    def runs_per_sample(self) -> int:
        return int(self.options["masks"])

    def _masked(self, x, fill, masks, i):
        """The masked copies of sample i, (len(masks),) + x.shape[1:]."""
        m = masks[:, :, :, None] if self.layout == "NHWC" else masks[:, None]
        return (m * x[i] + (1 - m) * fill[i]).astype(np.float32)

    def _run(self, x, weigh, progress, normaliser):
        n = len(x)
        h, w = self.ex.graph.spatial_shape
        fill = self.ex.baselines(x, self.options["fill"])[0]
        rng = np.random.default_rng(self.options["seed"])
        count = int(self.options["masks"])
        batch = int(self.options["batch_size"] or self.ex.engine.batch_size)
        total = np.zeros((n, h, w), np.float64)
        for start in range(0, count, batch):
            masks = rise_masks(min(batch, count - start), h, w, int(self.options["cells"]), float(self.options["p"]), rng)
            for i in range(n):
                weights = weigh(self._masked(x, fill, masks, i), i)  # (len(masks),)
                total[i] += np.tensordot(weights.astype(np.float64), masks, axes=1)
                if progress:
                    progress(len(masks) / n)
        maps = (total / normaliser).astype(np.float32)
        return Attribution(maps=maps)


@register
class RISE(_MaskMethod):
    name = "rise"
    description = "RISE: the target's score on randomly masked copies, averaged with the masks (black box)"
    reference = "Petsiuk et al. 2018, RISE: Randomized Input Sampling for Explanation, eq. 6"

    def attribute(self, x, seeds, progress=None):
        def weigh(masked, i):
            return self.ex.score(masked, np.repeat(seeds[i:i + 1], len(masked), axis=0))

        return self._run(x, weigh, progress, int(self.options["masks"]) * float(self.options["p"]))


@register
class DRISE(_MaskMethod):
    name = "drise"
    description = "D-RISE: how well masked copies still detect the target box (black box, detectors)"
    reference = "Petsiuk et al. 2021, Black-box Explanation of Object Detectors via Saliency Maps, eq. 1-3"
    defaults = {**_MaskMethod.defaults, "decoder": None, "proposal_threshold": 0.05}
    needs_goal = True

    def attribute(self, x, seeds, progress=None):
        from ..detection import BoxTarget, detect, iou, make_decoder

        goal = getattr(self, "goal", None)
        if not isinstance(goal, BoxTarget):
            raise TargetError("drise explains a detected box: give a BoxTarget (--box N or --box x0,y0,x1,y1 with --decoder)")
        if self.options["decoder"] is None:
            raise MethodError("drise needs the detector's layout: decoder='yolov8', 'yolov5', 'centernet' or 'centerface'")
        decoder = make_decoder(self.options["decoder"], self.ex.graph, threshold=float(self.options["proposal_threshold"]))
        decoder.iou_threshold = 1.0  # every proposal counts, no NMS

        def weigh(masked, i):
            target = goal.detections[i]
            if target is None:
                return np.zeros(len(masked))
            found = detect(self.ex, masked, decoder)
            return np.array([max([iou(target.box, d.box) * d.score for d in dets if d.label == target.label], default=0.0)
                             for dets in found])

        return self._run(x, weigh, progress, int(self.options["masks"]))
