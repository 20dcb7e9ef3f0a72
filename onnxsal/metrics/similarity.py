"""Similarity of two maps: Spearman rank correlation and SSIM (Wang et al. 2004).

Spearman: Pearson correlation of the ranks (ties share their average rank); 0 when either map is constant.

SSIM (Wang, Bovik, Sheikh & Simoncelli 2004, eq. 13 with the Gaussian window of sec. III-C):
    SSIM(a, b) = mean over pixels of  (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2))
with local means, variances and covariance weighted by an 11 x 11 Gaussian of sigma 1.5 (normalised),
C1 = (K1 L)^2, C2 = (K2 L)^2, K1 = 0.01, K2 = 0.03, L the data range. The window is evaluated where it fits
inside the image (no padding: the border (5 px) is left out of the mean). As in Adebayo et al. 2018, maps
are first scaled to [0, 1] (min-max), so L = 1.

HOG similarity (Adebayo et al. 2018, sec. 3: "the Pearson correlation of the histogram of gradients (HOG)
derived from two maps"): Pearson correlation of the HOG feature vectors (Dalal & Triggs 2005) of the two
min-max-scaled |maps|. HOG as in scikit-image's `hog` with its defaults but the cell size: central-difference
gradients (zero on the border rows / columns), unsigned orientation in [0, 180) voted by magnitude into 9 bins
of 20 degrees per cell (cell histogram = sum / cell area), cells of `cell` pixels (16, or a third of the
map's short side when smaller), blocks of 3 x 3 cells normalised by L2-Hys (clip 0.2, eps 1e-5).
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


def hog(image: np.ndarray, orientations: int = 9, cell: int = 16, block: int = 3) -> np.ndarray:
    """HOG feature vector of a 2-D image (order: block row, block column, cell row, cell column, orientation)."""
    img = np.asarray(image, np.float64)
    g_row = np.zeros_like(img)
    g_col = np.zeros_like(img)
    g_row[1:-1, :] = img[2:, :] - img[:-2, :]
    g_col[:, 1:-1] = img[:, 2:] - img[:, :-2]
    magnitude = np.hypot(g_col, g_row)
    orientation = np.rad2deg(np.arctan2(g_row, g_col)) % 180
    width = 180.0 / orientations
    bins = np.searchsorted(width * np.arange(orientations), orientation, side="right") - 1  # [i w, (i + 1) w)
    n_r, n_c = img.shape[0] // cell, img.shape[1] // cell
    if n_r < block or n_c < block:
        raise ValueError(f"a {img.shape} map is too small for {block} x {block} cells of {cell} pixels")
    votes = (bins[..., None] == np.arange(orientations)) * magnitude[..., None]
    votes = votes[:n_r * cell, :n_c * cell].reshape(n_r, cell, n_c, cell, orientations)
    cells = votes.sum(axis=(1, 3)) / (cell * cell)
    eps = 1e-5
    out = np.zeros((n_r - block + 1, n_c - block + 1, block, block, orientations))
    for r in range(n_r - block + 1):
        for c in range(n_c - block + 1):
            b = cells[r:r + block, c:c + block]
            b = b / np.sqrt((b * b).sum() + eps * eps)
            b = np.minimum(b, 0.2)
            out[r, c] = b / np.sqrt((b * b).sum() + eps * eps)
    return out.ravel()


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel() - np.mean(a)
    b = np.asarray(b, np.float64).ravel() - np.mean(b)
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def hog_cell(shape) -> int:
    return max(1, min(16, min(shape) // 3))


def hog_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the HOG features of two maps (min-max-scaled |map|)."""
    if min(np.shape(a)) < 3:
        return float("nan")  # no 3 x 3 block of cells fits
    cell = hog_cell(np.shape(a))
    return pearson(hog(scale01(np.abs(a)), cell=cell), hog(scale01(np.abs(b)), cell=cell))


def similarities(original: np.ndarray, other: np.ndarray) -> dict:
    """The randomisation figures of one pair of maps (H, W)."""
    return {
        "spearman_abs": spearman(np.abs(original), np.abs(other)),
        "spearman": spearman(original, other),
        "ssim": ssim(scale01(np.abs(original)), scale01(np.abs(other))),
        "hog": hog_similarity(original, other),
    }
