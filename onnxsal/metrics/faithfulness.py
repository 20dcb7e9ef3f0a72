"""Faithfulness by perturbation curves: deletion, insertion (Petsiuk et al. 2018) and pixel flipping (MoRF / LeRF).

Pixels are ranked by the map (N, H, W), highest first ("most relevant first"), ties in raster order; LeRF
ranks lowest first. With P = H*W pixels and `steps` steps, step k (k = 0..steps) perturbs the first
n_k = floor(k * P / steps) pixels of the ranking, in all channels at once:

    deletion / MoRF / LeRF:  x_k = x with the ranked pixels replaced by the fill (deletion: the curve falls)
    insertion:               x_k = the fill with the ranked pixels taken from x  (insertion: the curve rises)

y_k = the explained class's score of x_k (Petsiuk et al. use the softmax probability; `score` chooses), and
AUC = trapezoid of y over the perturbed fraction k / steps in [0, 1] = sum_k (y_k + y_{k+1}) / (2 * steps).
A faithful map gives a LOW deletion AUC and a HIGH insertion AUC.

Fills (`fill`): `zeros` (the dataset mean pixel after mean/std normalisation; Petsiuk et al.'s deletion),
`black`, `gray`, a number (model-input units), or `blur` (Gaussian blur of x, sigma `blur_sigma` pixels,
default 5 as Petsiuk et al.'s insertion, truncated at 3 sigma instead of their 11-pixel kernel).
Defaults: deletion fill `zeros`, insertion fill `blur`, pixel flipping fill `zeros`, steps 50, score
`probability`. Pixel flipping (Bach et al. 2015; Samek et al. 2017) reports the MoRF and LeRF AUCs and
their difference ABPC = LeRF - MoRF (Schulz et al. 2020): higher is more faithful.
"""

from __future__ import annotations

import numpy as np

from ..errors import MethodError


def ranking(maps: np.ndarray, most_first: bool = True) -> np.ndarray:
    """(N, P) position of each pixel in the perturbation order (0 = perturbed first); stable ties."""
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    order = np.argsort(-flat if most_first else flat, axis=1, kind="stable")
    rank = np.empty_like(order)
    rows = np.arange(len(flat))[:, None]
    rank[rows, order] = np.arange(flat.shape[1])[None, :]
    return rank


def step_counts(pixels: int, steps: int) -> np.ndarray:
    return (np.arange(steps + 1, dtype=np.int64) * pixels) // steps


def auc(curve: np.ndarray) -> float:
    """Trapezoid over [0, 1] with len(curve) - 1 equal steps."""
    y = np.asarray(curve, np.float64)
    return float((y[:-1] + y[1:]).sum() / (2 * (len(y) - 1)))


def fill_for(runner, x: np.ndarray, fill, blur_sigma: float) -> np.ndarray:
    if isinstance(fill, str) and fill == "blur":
        return runner.ex.baselines(x, "blur", blur_sigma=float(blur_sigma))[0]
    return runner.ex.baselines(x, fill)[0]


def curves(runner, x: np.ndarray, classes: np.ndarray, maps: np.ndarray, *, mode: str = "delete",
           most_first: bool = True, fill="zeros", steps: int = 50, score: str = "probability",
           blur_sigma: float = 5.0) -> np.ndarray:
    """(N, steps + 1) scores of the perturbed inputs, streamed `runner.batch_size` inputs at a time."""
    if mode not in ("delete", "insert"):
        raise MethodError(f"mode is delete or insert, not {mode!r}")
    if int(steps) < 1:
        raise MethodError(f"steps must be at least 1, not {steps}")
    steps = int(steps)
    nhwc = runner.layout == "NHWC"
    n = len(x)
    h, w = maps.shape[1:]
    if (x.shape[1:3] if nhwc else x.shape[2:4]) != (h, w):
        raise MethodError(f"maps {maps.shape} do not match the input {x.shape}")
    rank = ranking(maps, most_first).reshape(n, *((h, w, 1) if nhwc else (1, h, w)))
    counts = step_counts(h * w, steps)
    substitute = fill_for(runner, x, fill, blur_sigma)
    seeds = runner.seeds(classes, n)
    jobs = [(i, k) for i in range(n) for k in range(steps + 1)]

    def build(sl):
        chunk = jobs[sl]
        idx = np.array([i for i, _ in chunk])
        count = counts[[k for _, k in chunk]].reshape(-1, 1, 1, 1)
        perturbed = rank[idx] < count  # (B, 1, H, W) or (B, H, W, 1)
        if mode == "delete":
            batch = np.where(perturbed, substitute[idx], x[idx])
        else:
            batch = np.where(perturbed, x[idx], substitute[idx])
        return batch.astype(np.float32), seeds[idx]

    return runner.stream(len(jobs), build, score).reshape(n, steps + 1)
