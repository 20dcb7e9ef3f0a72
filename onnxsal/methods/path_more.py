"""Path methods from PAIR: Blur IG, Guided IG and XRAI (its region ranking of IG attributions, at the end).

Blur IG (Xu et al. 2020, eq. 4 and its Riemann sum): the path runs from the input blurred with
max_sigma to the input, through L(x, s) = x blurred with a Gaussian of standard deviation s:
    BlurIG_i = - sum_{k=0}^{m-1} (s_{k+1} - s_k) * dL(x, s_k)/ds * dF(L(x, s_k))/dx_i
with s_k = k * max_sigma / m (or sqrt(k * max_sigma / m) with sqrt=True) and dL/ds by a forward
difference of `grad_step`. The blur is separable, over the spatial axes of the model input only, with
zero padding and a kernel cut at 4 sigma (PAIR's scipy.ndimage.gaussian_filter, mode='constant'),
applied as banded matrices. Completeness gap: delta = sum(attr) - (F(x) - F(L(x, max_sigma))).

Guided IG (Kapishnikov et al. 2021, Algorithm 1): the path from the baseline to the input moves, at each
of `steps` steps, the `fraction` of features with the smallest |gradient| (those not yet at the step's
upper bound), until the path's L1 distance to the input has shrunk by 1/steps of the total; features
stay within `max_dist` (in path fraction) of the straight line: those lagging behind alpha - max_dist
are snapped to it. attr += (x_new - x_old) * gradient at x_old. The path is kept in float64 (the model
sees float32); the samples of a batch advance in lockstep, one gradient run per step.
Completeness gap: delta = sum(attr) - (F(x) - F(baseline)).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .base import REDUCTIONS, Attribution, Method, reduce_channels, register
from ..errors import MethodError


@lru_cache(maxsize=64)
def blur_matrix(size: int, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """(size, size) matrix of a 1-D Gaussian blur with zero padding: out = K @ signal (read-only, cached)."""
    if sigma <= 0:
        k = np.eye(size)
    else:
        radius = int(truncate * sigma + 0.5)
        t = np.arange(-radius, radius + 1, dtype=np.float64)
        kernel = np.exp(-0.5 * (t / sigma) ** 2)
        kernel /= kernel.sum()
        offsets = np.arange(size)[None, :] - np.arange(size)[:, None]  # j - i
        k = np.where(np.abs(offsets) <= radius, kernel[np.clip(offsets + radius, 0, 2 * radius)], 0.0)
    k.setflags(write=False)
    return k


def spatial_blur(x: np.ndarray, sigma: float, nhwc: bool) -> np.ndarray:
    """x (N, C, H, W) or (N, H, W, C) blurred over H and W (float64): K_H @ x_c @ K_W^T per image and channel."""
    x = np.asarray(x, np.float64)
    if sigma <= 0:
        return x.copy()
    planes = x.transpose(0, 3, 1, 2) if nhwc else x
    out = blur_matrix(planes.shape[2], float(sigma)) @ planes @ blur_matrix(planes.shape[3], float(sigma)).T
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1)) if nhwc else out


class _PathMethod(Method):
    signed = True

    def __init__(self, explainer, **options):
        super().__init__(explainer, **options)
        if self.options["reduce"] not in REDUCTIONS:
            raise MethodError(f"unknown reduce {self.options['reduce']!r}; choose one of {', '.join(REDUCTIONS)}")
        steps = self.options["steps"]
        if not isinstance(steps, (int, np.integer)) or steps < 1:
            raise MethodError(f"steps must be a positive integer, not {steps!r}")
        b = self.options.get("batch_size")
        if b is not None and (not isinstance(b, (int, np.integer)) or b < 1):
            raise MethodError(f"batch_size must be a positive integer, not {b!r}")

    def runs_per_sample(self) -> int:
        return int(self.options["steps"])

    def _finish(self, x, seeds, reference, attributions, info):
        delta = attributions.reshape(len(x), -1).sum(axis=1) - (self.ex.score(x, seeds) - self.ex.score(reference, seeds))
        attributions = attributions.astype(np.float32)
        return Attribution(maps=reduce_channels(attributions, self.layout, self.options["reduce"]),
                           attributions=attributions, delta=delta.astype(np.float32), info=info)


@register
class BlurIG(_PathMethod):
    name = "blur_ig"
    description = "Blur IG: gradients integrated along a path from a heavily blurred input to the input"
    reference = "Xu, Venugopalan & Sundararajan 2020, Attribution in Scale and Space, eq. 4"
    defaults = {"steps": 100, "max_sigma": 50.0, "grad_step": 0.01, "sqrt": False, "batch_size": None, "reduce": "sum"}

    def __init__(self, explainer, **options):
        super().__init__(explainer, **options)
        if not float(self.options["max_sigma"]) > 0 or not float(self.options["grad_step"]) > 0:
            raise MethodError("max_sigma and grad_step must be positive")

    def attribute(self, x, seeds, progress=None):
        m = int(self.options["steps"])
        top, step = float(self.options["max_sigma"]), float(self.options["grad_step"])
        s = np.arange(m + 1) * top / m
        if self.options["sqrt"]:
            s = np.sqrt(s)
        nhwc = self.layout == "NHWC"
        n = len(x)
        total = np.zeros(x.shape, np.float64)
        batch = int(self.options["batch_size"] or self.ex.engine.batch_size)
        pairs = [(i, k) for i in range(n) for k in range(m)]
        for start in range(0, len(pairs), batch):
            chunk = pairs[start:start + batch]
            points, slopes = [], []
            for i, k in chunk:
                here = spatial_blur(x[i:i + 1], s[k], nhwc)[0]
                points.append(here)
                slopes.append((spatial_blur(x[i:i + 1], s[k] + step, nhwc)[0] - here) / step)  # dL/ds, forward difference
            rows = [i for i, _ in chunk]
            grads = self.ex.gradients(np.asarray(points, np.float32), seeds[rows]).input_grad.astype(np.float64)
            for (i, k), slope, g in zip(chunk, slopes, grads):
                total[i] -= (s[k + 1] - s[k]) * slope * g  # the path runs from sigma = max to 0: the sign flips
            if progress:
                progress(len(chunk))
        reference = spatial_blur(x, s[-1], nhwc).astype(np.float32)
        return self._finish(x, seeds, reference, total, {"evaluations": m})


@register
class GuidedIG(_PathMethod):
    name = "guided_ig"
    description = "Guided IG: an adaptive path that first moves the features with the smallest gradients"
    reference = "Kapishnikov et al. 2021, Guided Integrated Gradients, Algorithm 1"
    defaults = {"steps": 200, "fraction": 0.25, "max_dist": 0.02, "baseline": None, "reduce": "sum"}

    def __init__(self, explainer, **options):
        super().__init__(explainer, **options)
        if not 0 < float(self.options["fraction"]) <= 1 or not 0 <= float(self.options["max_dist"]) <= 1:
            raise MethodError("fraction must be in (0, 1] and max_dist in [0, 1]")

    def attribute(self, x, seeds, progress=None):
        baseline = self.ex.baselines(x, self.options["baseline"])[0]
        target, base = x.astype(np.float64), baseline.astype(np.float64)
        n, steps = len(x), int(self.options["steps"])
        fraction, max_dist = float(self.options["fraction"]), float(self.options["max_dist"])
        path = base.copy()
        attr = np.zeros_like(target)
        diff = target - base
        l1_total = np.abs(diff).reshape(n, -1).sum(axis=1)
        moving = diff != 0
        safe = np.where(moving, diff, 1.0)
        for t in range(steps):
            grads = self.ex.gradients(path.astype(np.float32), seeds).input_grad.astype(np.float64)
            alpha = (t + 1.0) / steps
            lo, hi = max(alpha - max_dist, 0.0), min(alpha + max_dist, 1.0)
            for i in range(n):
                if l1_total[i] == 0:
                    continue
                self._advance(path[i], attr[i], grads[i], target[i], base[i], diff[i], moving[i], safe[i], lo, hi,
                              l1_total[i] * (1 - (t + 1) / steps), fraction)
            if progress:
                progress(n)
        return self._finish(x, seeds, baseline, attr, {"evaluations": steps})

    @staticmethod
    def _advance(p, attr, g, target, base, diff, moving, safe, lo, hi, l1_goal, fraction):
        """One step of Algorithm 1 for one sample, in place on the path p and the attributions."""
        x_lo, x_hi = base + diff * lo, base + diff * hi
        magnitude = np.abs(g)
        k = int(math.floor(fraction * (magnitude.size - 1)))
        while True:
            before = p.copy()
            position = np.where(moving, (p - base) / safe, hi)  # alpha of each feature (hi where x = baseline)
            lagging = position < lo
            p[lagging] = x_lo[lagging]  # no feature more than max_dist behind the straight line
            l1_now = np.abs(p - target).sum()
            if math.isclose(l1_goal, l1_now, rel_tol=1e-9, abs_tol=1e-9):
                attr += (p - before) * g
                return
            magnitude[p == x_hi] = np.inf  # features already at the bound do not move further
            threshold = np.partition(magnitude.ravel(), k)[k]
            chosen = (magnitude <= threshold) & np.isfinite(magnitude)
            room = (np.abs(p - x_hi) * chosen).sum()
            gamma = (l1_now - l1_goal) / room if room > 0 else np.inf
            if gamma > 1:
                p[chosen] = x_hi[chosen]
            else:
                p[chosen] = (p + (x_hi - p) * gamma)[chosen]
            attr += (p - before) * g
            if gamma <= 1:
                return


# -- XRAI --------------------------------------------------------------------------------------------------

FELZENSZWALB_SCALES = (50, 100, 150, 250, 500, 1200)


def xrai_segments(image_hwc: np.ndarray, dilation_radius: int = 5, resize: bool = True) -> list[np.ndarray]:
    """Boolean (H, W) masks: Felzenszwalb segmentations at six scales (sigma 0.8, min size 150) of the image scaled
    to [-1, 1] (and resized to 224 x 224, segments resized back by nearest neighbour), each segment dilated by a
    disk of `dilation_radius` (Kapishnikov et al. 2019, sec. 3.1, with PAIR's parameters). Needs scikit-image."""
    try:
        from skimage import segmentation, transform
        from skimage.morphology import dilation, disk
    except ImportError:
        raise MethodError("xrai needs scikit-image for its Felzenszwalb segments (pip install scikit-image), "
                          "or segments given as a list of (H, W) boolean masks") from None
    im = np.asarray(image_hwc, np.float64)
    lo, hi = im.min(), im.max()
    im = (im - lo) / (hi - lo if hi > lo else 1.0) * 2.0 - 1.0
    shape = im.shape[:2]
    if resize:
        im = transform.resize(im, (224, 224), order=3, mode="constant", preserve_range=True, anti_aliasing=True)
    masks = []
    for scale in FELZENSZWALB_SCALES:
        seg = segmentation.felzenszwalb(im, scale=scale, sigma=0.8, min_size=150)
        if resize:
            seg = transform.resize(seg, shape, order=0, preserve_range=True, mode="constant", anti_aliasing=False).astype(int)
        masks += [seg == label for label in range(seg.min(), seg.max() + 1)]
    if dilation_radius:
        footprint = disk(dilation_radius)
        masks = [dilation(m, footprint=footprint) for m in masks]
    return masks


def xrai_regions(attr: np.ndarray, masks: list[np.ndarray], area: float = 1.0, min_pixels: int = 50) -> np.ndarray:
    """XRAI's greedy region ranking (Kapishnikov et al. 2019, Algorithm 1, full version) on an (H, W) attribution.

    Repeatedly add the mask whose not-yet-covered pixels have the highest mean attribution (masks adding fewer
    than `min_pixels` new pixels are dropped), give those pixels that mean, until the covered fraction exceeds
    `area` or no mask is left; pixels never covered get the mean attribution over them."""
    out = np.full(attr.shape, -np.inf)
    covered = np.zeros(attr.shape, bool)
    remaining = list(range(len(masks)))
    fraction = 0.0
    while fraction <= area:
        best, best_gain, keep = None, -np.inf, []
        for index in remaining:
            new = masks[index] & ~covered
            count = int(new.sum())
            if count < min_pixels:
                continue
            keep.append(index)
            gain = attr[new].mean()
            if gain > best_gain:
                best, best_gain = index, gain
        remaining = keep
        if not remaining:
            break
        new = masks[best] & ~covered
        out[new] = best_gain
        covered |= masks[best]
        fraction = covered.mean()
        remaining.remove(best)
    rest = out == -np.inf
    if rest.any():
        out[rest] = attr[rest].mean()
    return out


@register
class XRAI(Method):
    name = "xrai"
    description = "XRAI: regions ranked by the density of their Integrated Gradients attribution"
    reference = "Kapishnikov et al. 2019, XRAI: Better Attributions Through Regions, Algorithm 1"
    display = "smooth_from_min"  # region densities, possibly negative: drawn from the minimum, blended whole
    requires = (("skimage", "scikit-image"),)  # Felzenszwalb segments
    defaults = {"steps": 50, "integration": "gausslegendre", "baseline": ("min", "max"), "segments": None,
                "area": 1.0, "min_pixels": 50, "batch_size": None}

    def runs_per_sample(self) -> int:
        return int(self.options["steps"]) * (len(self.options["baseline"]) if isinstance(self.options["baseline"], (list, tuple)) else 1)

    def attribute(self, x, seeds, progress=None):
        from .integrated_gradients import IntegratedGradients

        baseline = self.options["baseline"]
        if isinstance(baseline, (list, tuple)) and set(baseline) <= {"min", "max"}:
            # PAIR's defaults: constant images at the input's minimum and maximum (per sample)
            flat = x.reshape(len(x), -1)
            baseline = [np.broadcast_to((flat.min(1) if b == "min" else flat.max(1)).reshape((-1,) + (1,) * (x.ndim - 1)),
                                        x.shape).astype(np.float32) for b in baseline]
        ig = IntegratedGradients(self.ex, steps=self.options["steps"], integration=self.options["integration"],
                                 baseline=list(baseline) if isinstance(baseline, tuple) else baseline,
                                 batch_size=self.options["batch_size"]).attribute(x, seeds, progress)
        nhwc = self.layout == "NHWC"
        attributions = ig.attributions
        channel_max = attributions.max(axis=3 if nhwc else 1).astype(np.float64)  # PAIR aggregates channels by max
        maps = np.empty(channel_max.shape, np.float32)
        for i in range(len(x)):
            spec = self.options["segments"]
            if spec is None:
                masks = xrai_segments(x[i] if nhwc else x[i].transpose(1, 2, 0))
            else:
                masks = list(spec[i]) if isinstance(spec, (list, tuple)) and len(spec) == len(x) and \
                    isinstance(spec[0], (list, tuple)) else list(spec)
            maps[i] = xrai_regions(channel_max[i], [np.asarray(m, bool) for m in masks], float(self.options["area"]),
                                   int(self.options["min_pixels"]))
        return Attribution(maps=maps, attributions=attributions, delta=ig.delta, info={"evaluations": ig.info.get("evaluations")})
