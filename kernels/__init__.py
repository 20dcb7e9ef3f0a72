"""Numba kernels for the per-pixel work of attribution methods, installed as `onnxsal.kernels`.

Every kernel `name` has a numpy twin `name_numpy` with the same signature and result; tests check that
both agree. Kernels compile on first call (not on import) and are cached on disk (cache=True), so a
second process loads them instead of compiling. `prange` runs only over an index whose iterations write
disjoint parts of the output. Small work (one photo's maps) goes to the numpy twin, mid-sized work to a
serial compilation and large work to a parallel one (jit.py): Numba is imported only when needed.

Set ONNXSAL_KERNELS=numpy to use the numpy twins everywhere (no Numba compilation at all).
"""

from .cam import channel_mean, channel_mean_numpy, weighted_sum, weighted_sum_numpy
from .moments import accumulate, accumulate_numpy, accumulate_moments, accumulate_moments_numpy
from .normalize import percentile_normalize, percentile_normalize_numpy
from .pixelwise import guided_product, guided_product_numpy, scale_by_difference, scale_by_difference_numpy
from .resize import bilinear_resize, bilinear_resize_numpy

from .jit import FORCE_NUMPY as USE_NUMPY

__all__ = [
    "accumulate", "accumulate_numpy", "accumulate_moments", "accumulate_moments_numpy",
    "bilinear_resize", "bilinear_resize_numpy", "channel_mean", "channel_mean_numpy",
    "guided_product", "guided_product_numpy", "percentile_normalize", "percentile_normalize_numpy",
    "scale_by_difference", "scale_by_difference_numpy", "weighted_sum", "weighted_sum_numpy", "USE_NUMPY",
]
