"""Wrappers that average another method over noisy copies of the input.

smoothgrad     Smilkov et al. 2017, eq. 3:  M_hat(x) = 1/n sum_i M(x + N(0, sigma^2))
smoothgrad_sq  the mean of squared attributions (Hooker et al. 2019's SmoothGrad^2)
vargrad        Adebayo et al. 2018: the variance of the attributions over the noisy copies
sigma = noise_level * (max(x) - min(x)) per sample (Smilkov et al.: 10-20% works best), or `stdev`.
Samples stream through the base method in batches; only running sums are kept (kernels/moments.py).
"""

from __future__ import annotations

import numpy as np

from .base import METHODS, Attribution, Method, image_rngs, reduce_channels, register
from ..errors import MethodError


@register
class SmoothGrad(Method):
    name = "smoothgrad"
    description = "SmoothGrad: the base method averaged over Gaussian-noised copies of the input"
    reference = "Smilkov et al. 2017, SmoothGrad: removing noise by adding noise"
    defaults = {"base": "saliency", "samples": 50, "noise_level": 0.15, "stdev": None, "seed": 0,
                "batch_size": None, "base_options": None, "noise": None}
    statistic = "mean"

    def __init__(self, explainer, **options):
        super().__init__(explainer, **options)
        base = self.options["base"]
        if base not in METHODS:
            raise MethodError(f"unknown base method {base!r} for {self.name}; choose one of {', '.join(METHODS)}")
        if issubclass(METHODS[base], SmoothGrad):
            raise MethodError(f"{self.name} cannot wrap another noise wrapper ({base})")
        self.base = METHODS[base](explainer, **(self.options["base_options"] or {}))
        self.uses_layer = self.base.uses_layer
        if int(self.options["samples"]) < 1:
            raise MethodError("samples must be at least 1")

    @property
    def signed(self):
        return self.statistic == "mean" and self.base.signed

    def runs_per_sample(self) -> int:
        return int(self.options["samples"]) * self.base.runs_per_sample()

    def _sigma(self, x: np.ndarray) -> np.ndarray:
        if self.options["stdev"] is not None:
            return np.full(len(x), float(self.options["stdev"]), np.float32)
        flat = x.reshape(len(x), -1)
        return (float(self.options["noise_level"]) * (flat.max(axis=1) - flat.min(axis=1))).astype(np.float32)

    def attribute(self, x, seeds, progress=None):
        from .. import kernels

        n, samples = len(x), int(self.options["samples"])
        sigma = self._sigma(x)
        rngs = image_rngs(self.options["seed"], x)  # each image's noise from its own stream, in sample order
        given = self.options["noise"]
        if given is not None:
            given = np.asarray(given, np.float32).reshape((n * samples,) + x.shape[1:])
        batch = int(self.options["batch_size"] or self.ex.engine.batch_size)
        s1 = s2 = None
        has_attributions = None
        for start in range(0, n * samples, batch):
            pairs = np.arange(start, min(n * samples, start + batch))
            owner = pairs // samples  # sample i of image j sits at j * samples + i
            if given is not None:
                noise = given[pairs]
            else:  # owner is ascending: draw each image's share of this chunk from its stream, in order
                noise = np.concatenate([rngs[j].standard_normal((int(np.count_nonzero(owner == j)),) + x.shape[1:],
                                                                dtype=np.float32) for j in np.unique(owner)])
                noise *= sigma[owner].reshape((-1,) + (1,) * (x.ndim - 1))
            result = self.base.attribute(x[owner] + noise, seeds[owner])
            has_attributions = result.attributions is not None
            values = (result.attributions if has_attributions else result.maps).reshape(len(pairs), -1)
            if s1 is None:
                s1, s2 = np.zeros((n, values.shape[1])), np.zeros((n, values.shape[1]))
            kernels.accumulate_moments(s1, s2, np.ascontiguousarray(values, np.float32), owner)
            if progress:
                progress(len(pairs) * self.base.runs_per_sample())
        mean, mean_sq = s1 / samples, s2 / samples
        value = {"mean": mean, "sq": mean_sq, "var": np.maximum(mean_sq - mean * mean, 0)}[self.statistic].astype(np.float32)
        if has_attributions:
            attributions = value.reshape(x.shape)
            how = self.base.options.get("reduce", "max_abs")
            return Attribution(maps=reduce_channels(attributions, self.layout, how), attributions=attributions)
        return Attribution(maps=value.reshape((n,) + self.ex.graph.spatial_shape))


@register
class SmoothGradSquared(SmoothGrad):
    name = "smoothgrad_sq"
    description = "SmoothGrad^2: the mean of squared attributions over noisy copies"
    reference = "Hooker et al. 2019, A Benchmark for Interpretability Methods (SmoothGrad-Squared)"
    statistic = "sq"


@register
class VarGrad(SmoothGrad):
    name = "vargrad"
    description = "VarGrad: the variance of the attributions over noisy copies"
    reference = "Adebayo et al. 2018, Local Explanation Methods for Deep Neural Networks Lack Sensitivity"
    statistic = "var"
