"""ROAD: RemOve And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci 2022, "A Consistent and Efficient
Evaluation Strategy for Attribution Methods", ICML; sec. 4, noisy linear imputation).

Removing pixels with a constant fill leaks the removed shape to the model (the "class information leakage"
of sec. 3); ROAD instead imputes every removed pixel from its neighbours. For the set R of removed pixels,
the imputed values v solve, per channel, the sparse linear system (sec. 4.2)

    v_p = sum_{n in N(p)} w_n u_n / sum_{n in N(p)} w_n            for every p in R,

where N(p) are p's 8 neighbours inside the image, w_n = 1/6 for the 4 direct and 1/12 for the 4 diagonal
neighbours, and u_n = v_n when n is removed, x_n when it is kept. Multiplied out, (D - W_RR) v = W_RK x_K
with D the diagonal of neighbour-weight sums: a symmetric, weakly diagonally dominant system, positive
definite whenever some pixel is kept (every connected removed region touches a kept pixel). We solve it
with conjugate gradients on the pixel grid (no sparse matrix is formed; scipy is not a dependency; the
Numba kernel and its numpy twin are in kernels/imputation.py), started from each channel's mean kept value,
to a relative residual of `tolerance` (1e-6). Then Gaussian noise of std `noise` (model-input units; 0.01 as
in the authors' NoisyLinearImputer) is added to the imputed pixels.

Curves: pixels are ranked by the map (N, H, W) as in faithfulness.py (most relevant first for MoRF, least
for LeRF; stable ties); at each fraction q of `percentages` the first floor(q * H * W) pixels are removed and
imputed, and the explained class's score (probability by default, as the paper's accuracy is of the
predicted class) is recorded. Figures: the MoRF and LeRF curves, their means over the percentages
("morf": low is faithful, "lerf": high is faithful) and gap = lerf - morf (higher is better).
"""

from __future__ import annotations

import numpy as np

from ..errors import MethodError

# (dy, dx) -> weight (sec. 4.2): direct neighbours 1/6, diagonal neighbours 1/12 (they sum to 1)
NEIGHBOURS = tuple(((dy, dx), (1 / 6 if dy == 0 or dx == 0 else 1 / 12))
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))
PERCENTAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _shifted(padded: np.ndarray, dy: int, dx: int, h: int, w: int) -> np.ndarray:
    """Value of the neighbour at (y + dy, x + dx) for every pixel; `padded` has a 1-pixel zero border."""
    return padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def neighbour_weight_sum(h: int, w: int) -> np.ndarray:
    """(H, W) sum of the weights of each pixel's neighbours that lie inside the image (1 inside, less at borders)."""
    inside = np.pad(np.ones((h, w)), 1)
    return sum(wt * _shifted(inside, dy, dx, h, w) for (dy, dx), wt in NEIGHBOURS)


def _neighbour_sum(v: np.ndarray) -> np.ndarray:
    """sum_n w_n v_n over the neighbours inside the image, for every pixel of v (C, H, W)."""
    from ..kernels.imputation import _neighbour_sum_numpy

    return _neighbour_sum_numpy(v)


def impute(x: np.ndarray, removed: np.ndarray, *, noise: float = 0.0, rng: np.random.Generator | None = None,
           tolerance: float = 1e-6, max_iterations: int = 5000) -> np.ndarray:
    """x (C, H, W) with the pixels where `removed` (H, W) is True replaced by the noisy linear imputation."""
    x = np.asarray(x, np.float64)
    removed = np.asarray(removed, bool)
    out = x.copy()
    if not removed.any():
        return out
    if removed.all():
        raise MethodError("noisy linear imputation needs at least one kept pixel")
    h, w = removed.shape
    keep = ~removed
    diag = neighbour_weight_sum(h, w)
    rmask = removed.astype(np.float64)
    from ..kernels.imputation import neighbour_cg

    b = _neighbour_sum(x * keep) * rmask  # W_RK x_K
    v = (x * keep).sum(axis=(1, 2), keepdims=True) / keep.sum() * rmask  # start: each channel's kept mean
    v = neighbour_cg(v, b, removed, diag, tolerance, max_iterations)
    values = v[:, removed]
    if noise:
        values = values + (rng or np.random.default_rng(0)).normal(0.0, float(noise), size=values.shape)
    out[:, removed] = values
    return out


def curves(runner, x: np.ndarray, classes: np.ndarray, maps: np.ndarray, *, percentages=PERCENTAGES,
           noise: float = 0.01, score: str = "probability", seed: int = 0, progress=None) -> dict:
    """{"morf": (N, Q), "lerf": (N, Q)} scores of the imputed inputs, streamed `runner.batch_size` at a time."""
    from .faithfulness import ranking

    qs = [float(q) for q in percentages]
    if not qs or any(not (0 <= q < 1) for q in qs):
        raise MethodError(f"ROAD percentages must lie in [0, 1), not {list(percentages)}")
    nhwc = runner.layout == "NHWC"
    n = len(x)
    h, w = maps.shape[1:]
    if (x.shape[1:3] if nhwc else x.shape[2:4]) != (h, w):
        raise MethodError(f"maps {maps.shape} do not match the input {x.shape}")
    seeds = runner.seeds(classes, n)
    out = {}
    for order, most_first in (("morf", True), ("lerf", False)):
        rank = ranking(maps, most_first).reshape(n, h, w)
        jobs = [(i, k) for i in range(n) for k in range(len(qs))]

        def build(sl, rank=rank, order=order):
            batch = []
            for i, k in jobs[sl]:
                removed = rank[i] < int(np.floor(qs[k] * h * w))
                xi = x[i].transpose(2, 0, 1) if nhwc else x[i]
                rng = np.random.default_rng([int(seed), i, k, 0 if order == "morf" else 1])
                filled = impute(xi, removed, noise=noise, rng=rng)
                batch.append(filled.transpose(1, 2, 0) if nhwc else filled)
                if progress:
                    progress(1)
            return np.stack(batch).astype(np.float32), seeds[[i for i, _ in jobs[sl]]]

        out[order] = runner.stream(len(jobs), build, score).reshape(n, len(qs))
    return out


def figures(morf: np.ndarray, lerf: np.ndarray) -> dict:
    a, b = float(np.mean(morf)), float(np.mean(lerf))
    return {"morf": a, "lerf": b, "gap": b - a}
