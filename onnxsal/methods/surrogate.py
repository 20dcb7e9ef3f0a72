"""LIME and KernelSHAP: a weighted linear model of the score over superpixels switched on and off (black box).

Interpretable features: the F superpixels of a segmentation of the input (`segments`): a grid of
`cells` x `cells` rectangles (default), SLIC superpixels (scikit-image, optional), or labels given as
an (H, W) or (N, H, W) integer array. A binary sample z' in {0, 1}^F keeps the superpixels with z'_j = 1
and replaces the others by `fill` (the baseline, zeros by default, as in Captum):
    x(z') = m * x + (1 - m) * fill,   m = z'[labels]  (every channel of a pixel together).
The score of each sample is S(x(z')) = sum(seed * score) (any target). Samples are drawn with
numpy's Generator(seed) and stream through the model in batches; only (z', S, weight) rows are kept.

LIME (Ribeiro et al. 2016, eq. 1 and sec. 3.3-3.4): z'_j ~ Bernoulli(1/2) (the first sample is all
    ones, as in the lime package); weight pi(z') = exp(-D(z')^2 / sigma^2) with D the cosine distance
    between z' and the all-ones vector (the distance in the interpretable space, as lime's image
    explainer; lime also multiplies D by 100, we do not) and sigma = `kernel_width` (0.25, lime's);
    g = weighted ridge regression with intercept and penalty `alpha` * |w|^2 (alpha=1, lime's Ridge).
KernelSHAP (Lundberg & Lee 2017, Theorem 2): the first two samples are all ones and all zeros with
    weight 1e6 (the efficiency constraints g(1) = f(x), g(0) = f(fill), enforced softly as Captum does);
    the others draw the number of kept features k with p(k) proportional to (F - 1) / (k (F - k)),
    k = 1..F-1, then k features uniformly, with weight 1: sampling by the Shapley kernel
    pi(z') = (F - 1) / (C(F, k) k (F - k)) instead of weighting by it. g = weighted least squares with
    intercept (alpha = 0).
The map gives each pixel its superpixel's coefficient; `info` holds the intercept and the fit's R^2.
"""

from __future__ import annotations

import numpy as np

from .base import Attribution, Method, register
from ..errors import MethodError

INF_WEIGHT = 1e6


def grid_segments(height: int, width: int, cells) -> np.ndarray:
    """(H, W) labels of a rows x cols grid of near-equal rectangles, row-major."""
    rows, cols = (cells, cells) if isinstance(cells, (int, np.integer)) else tuple(cells)
    r = (np.arange(height) * rows) // height
    c = (np.arange(width) * cols) // width
    return (r[:, None] * cols + c[None, :]).astype(np.int64)


def slic_segments(image_hwc: np.ndarray, n_segments: int, seed: int) -> np.ndarray:
    try:
        from skimage.segmentation import slic
    except ImportError:
        raise MethodError("segments='slic' needs scikit-image (pip install scikit-image); or use segments='grid'") from None
    lo, hi = float(image_hwc.min()), float(image_hwc.max())
    scaled = (image_hwc - lo) / (hi - lo if hi > lo else 1.0)
    return slic(scaled.astype(np.float64), n_segments=n_segments, channel_axis=-1, start_label=0).astype(np.int64)


def lime_samples(n: int, features: int, rng: np.random.Generator) -> np.ndarray:
    """(n, F) float64 binary samples: all ones, then Bernoulli(1/2)."""
    z = (rng.random((n, features)) < 0.5).astype(np.float64)
    z[0] = 1
    return z


def kernel_shap_samples(n: int, features: int, rng: np.random.Generator) -> np.ndarray:
    """(n, F) float64 binary samples: all ones, all zeros, then subsets drawn by the Shapley kernel."""
    if features < 2:
        raise MethodError("kernel_shap needs at least 2 superpixels")
    k = np.arange(1, features)
    p = (features - 1) / (k * (features - k))
    z = np.zeros((n, features))
    z[0] = 1
    sizes = rng.choice(k, size=max(n - 2, 0), p=p / p.sum())
    for row, size in enumerate(sizes, start=2):
        z[row, rng.permutation(features)[:size]] = 1
    return z[:n]


def lime_weights(z: np.ndarray, width: float) -> np.ndarray:
    """exp(-D^2 / width^2), D = 1 - cos(z', 1)."""
    norms = np.sqrt((z * z).sum(axis=1))
    cos = np.where(norms > 0, z.sum(axis=1) / (norms * np.sqrt(z.shape[1]) + (norms == 0)), 0.0)
    d = 1 - cos
    return np.exp(-(d * d) / (width * width))


def kernel_shap_weights(z: np.ndarray) -> np.ndarray:
    kept = z.sum(axis=1)
    return np.where((kept == 0) | (kept == z.shape[1]), INF_WEIGHT, 1.0)


def weighted_ridge(z: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """(coefficients, intercept) minimising sum_i w_i (y_i - z_i . b - c)^2 + alpha |b|^2 (c not penalised; the
    objective of scikit-learn's Ridge / LinearRegression with sample weights).

    Centring by the weighted means removes the intercept; the problem is then least squares on the
    sqrt(w)-scaled rows stacked with sqrt(alpha) I, solved in float64."""
    wn = w / w.sum()
    zm, ym = wn @ z, wn @ y
    sw = np.sqrt(w)[:, None]
    a = (z - zm) * sw
    b = (y - ym) * sw[:, 0]
    if alpha > 0:
        a = np.vstack([a, np.sqrt(alpha) * np.eye(z.shape[1])])
        b = np.concatenate([b, np.zeros(z.shape[1])])
    coef = np.linalg.lstsq(a, b, rcond=None)[0]
    return coef, float(ym - zm @ coef)


class _Surrogate(Method):
    signed = True
    defaults = {"samples": 1000, "segments": "grid", "cells": 8, "n_segments": 50, "fill": "zeros", "seed": 0,
                "batch_size": None}
    penalised = False

    def __init__(self, explainer, **options):
        super().__init__(explainer, **options)
        o = self.options
        if not isinstance(o["samples"], (int, np.integer)) or o["samples"] < 2:
            raise MethodError(f"samples must be an integer of at least 2, not {o['samples']!r}")
        if o["batch_size"] is not None and (not isinstance(o["batch_size"], (int, np.integer)) or o["batch_size"] < 1):
            raise MethodError(f"batch_size must be a positive integer, not {o['batch_size']!r}")
        if isinstance(o["segments"], str) and o["segments"] not in ("grid", "slic"):
            raise MethodError(f"segments is 'grid', 'slic' or an integer label array, not {o['segments']!r}")

    def runs_per_sample(self) -> int:
        return int(self.options["samples"])

    def segmentation(self, x: np.ndarray, i: int) -> np.ndarray:
        h, w = self.ex.graph.spatial_shape
        spec = self.options["segments"]
        if isinstance(spec, str) and spec == "grid":
            labels = grid_segments(h, w, self.options["cells"])
        elif isinstance(spec, str):
            image = x[i] if self.layout == "NHWC" else x[i].transpose(1, 2, 0)
            labels = slic_segments(image, int(self.options["n_segments"]), int(self.options["seed"]))
        else:
            labels = np.asarray(spec)
            if labels.dtype.kind not in "iu" or labels.shape[-2:] != (h, w) or labels.ndim not in (2, 3):
                raise MethodError(f"segments as an array must be integer labels shaped (H, W) or (N, H, W) = (.., {h}, {w})")
            labels = labels[i] if labels.ndim == 3 else labels
        return np.unique(labels, return_inverse=True)[1].reshape(h, w)  # labels 0..F-1

    def draw(self, n, features, rng):
        raise NotImplementedError

    def kernel(self, z):
        raise NotImplementedError

    def attribute(self, x, seeds, progress=None):
        n = len(x)
        h, w = self.ex.graph.spatial_shape
        nhwc = self.layout == "NHWC"
        fill = self.ex.baselines(x, self.options["fill"])[0]
        rng = np.random.default_rng(self.options["seed"])
        batch = int(self.options["batch_size"] or self.ex.engine.batch_size)
        count = int(self.options["samples"])
        maps = np.zeros((n, h, w), np.float32)
        intercepts, fits = [], []
        for i in range(n):
            labels = self.segmentation(x, i)
            features = int(labels.max()) + 1
            z = self.draw(count, features, rng)
            y = np.empty(count)
            for start in range(0, count, batch):
                rows = z[start:start + batch]
                m = rows[:, labels].astype(np.float32)  # (b, H, W)
                m = m[:, :, :, None] if nhwc else m[:, None]
                masked = (m * x[i] + (1 - m) * fill[i]).astype(np.float32)
                y[start:start + len(rows)] = self.ex.score(masked, np.repeat(seeds[i:i + 1], len(rows), axis=0))
                if progress:
                    progress(len(rows))
            weights = self.kernel(z)
            coef, intercept = weighted_ridge(z, y, weights, float(self.options.get("alpha", 0.0)))
            fitted = z @ coef + intercept
            wn = weights / weights.sum()
            ss = wn @ (y - wn @ y) ** 2
            fits.append(float(1 - (wn @ (y - fitted) ** 2) / ss) if ss > 0 else 1.0)
            intercepts.append(intercept)
            maps[i] = coef[labels]
        shape = (n, 1, h, w) if not nhwc else (n, h, w, 1)
        attributions = np.broadcast_to(maps.reshape(shape), x.shape).astype(np.float32)
        return Attribution(maps=maps, attributions=attributions,
                           info={"evaluations": count, "intercept": intercepts, "r2": fits})


@register
class Lime(_Surrogate):
    name = "lime"
    description = "LIME: a locally weighted ridge regression of the score on superpixels kept or removed (black box)"
    reference = "Ribeiro, Singh & Guestrin 2016, Why Should I Trust You?, eq. 1-2 and sec. 3.4"
    defaults = {**_Surrogate.defaults, "kernel_width": 0.25, "alpha": 1.0}

    def __init__(self, explainer, **options):
        super().__init__(explainer, **options)
        if not float(self.options["kernel_width"]) > 0 or float(self.options["alpha"]) < 0:
            raise MethodError("kernel_width must be positive and alpha non-negative")

    def draw(self, n, features, rng):
        return lime_samples(n, features, rng)

    def kernel(self, z):
        return lime_weights(z, float(self.options["kernel_width"]))


@register
class KernelShap(_Surrogate):
    name = "kernel_shap"
    description = "KernelSHAP: Shapley values of superpixels by a regression under the Shapley kernel (black box)"
    reference = "Lundberg & Lee 2017, A Unified Approach to Interpreting Model Predictions, Theorem 2"

    def draw(self, n, features, rng):
        return kernel_shap_samples(n, features, rng)

    def kernel(self, z):
        return kernel_shap_weights(z)
