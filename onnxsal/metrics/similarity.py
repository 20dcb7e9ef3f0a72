"""Similarity of two maps: Spearman rank correlation and SSIM (Wang et al. 2004).

Spearman: Pearson correlation of the ranks (ties share their average rank); 0 when either map is constant.

SSIM (Wang, Bovik, Sheikh & Simoncelli 2004, eq. 13 with the Gaussian window of sec. III-C):
    SSIM(a, b) = mean over pixels of  (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2))
with local means, variances and covariance weighted by an 11 x 11 Gaussian of sigma 1.5 (normalised),
C1 = (K1 L)^2, C2 = (K2 L)^2, K1 = 0.01, K2 = 0.03, L the data range. The window is evaluated where it fits
inside the image (no padding: the border (5 px) is left out of the mean). As in Adebayo et al. 2018, maps
are first scaled to [0, 1] (min-max), so L = 1.
"""

from __future__ import annotations

import numpy as np


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a flat array, ties averaged."""
    v = np.asarray(values, np.float64).ravel()
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_v)) + 1]
    ends = np.r_[starts[1:], len(v)]
    ranks_sorted = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    ranks = np.empty(len(v))
    ranks[order] = ranks_sorted
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


def scale01(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    t = np.arange(size) - (size - 1) / 2
    g = np.exp(-(t * t) / (2 * sigma * sigma))
    g /= g.sum()
    return g


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable correlation with g along both axes, 'valid' part only."""
    k = len(g)
    rows = sum(g[i] * img[i:img.shape[0] - k + 1 + i, :] for i in range(k))
    return sum(g[j] * rows[:, j:rows.shape[1] - k + 1 + j] for j in range(k))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if min(a.shape) < window:  # small maps: the largest odd window that fits
        window = min(a.shape) - (1 - min(a.shape) % 2)
    g = gaussian_window(window, sigma)
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    s_aa = _filter_valid(a * a, g) - mu_a * mu_a
    s_bb = _filter_valid(b * b, g) - mu_b * mu_b
    s_ab = _filter_valid(a * b, g) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (s_aa + s_bb + c2))
    return float(index.mean())


def similarities(original: np.ndarray, other: np.ndarray) -> dict:
    """The randomisation figures of one pair of maps (H, W)."""
    return {
        "spearman_abs": spearman(np.abs(original), np.abs(other)),
        "spearman": spearman(original, other),
        "ssim": ssim(scale01(np.abs(original)), scale01(np.abs(other))),
    }
