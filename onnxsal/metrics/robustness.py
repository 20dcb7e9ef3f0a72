"""Infidelity and sensitivity-max (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations").

Infidelity (eq. 1), estimated over S draws of a perturbation I (here Gaussian noise, std `noise` in
model-input units, as in Captum's examples):
    INFD = mean_s ( I_s . Phi(x) - (f(x) - f(x - I_s)) )^2
Phi are attributions shaped like x (CAM maps repeated over channels). With `normalize` (default True, as
Captum's `normalize=True`), Phi is first scaled by the least-squares factor
beta = mean(I.Phi * diff) / mean((I.Phi)^2), making the figure independent of the map's scale (CAM maps have none).
f is the explained score (the explainer's target kind).

Sensitivity-max (eq. 3 / Def. 3.1 with Captum's relative norm): over S draws delta_s uniform in [-r, r]^d,
    SENS = max_s ||Phi(x + delta_s) - Phi(x)||_F / ||Phi(x)||_F        (r = `radius`, 0.02 by default)
where Phi is the method's map (N, H, W), recomputed for each draw for the same class. S = `samples` (10).
Where ||Phi(x)|| = 0 the plain norm of the change is reported (Captum's convention).
"""

from __future__ import annotations

import numpy as np

from .runner import pixel_attributions


def gaussian_perturbations(x: np.ndarray, samples: int, std: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, std, size=(samples, *x.shape)).astype(np.float32)


def uniform_perturbations(x: np.ndarray, samples: int, radius: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-radius, radius, size=(samples, *x.shape)).astype(np.float32)


def infidelity(runner, x, classes, attributions, perturbations: np.ndarray, normalize: bool = True) -> np.ndarray:
    """(N,) infidelity per sample; perturbations (S, N, ...) shaped like x."""
    n, s = len(x), len(perturbations)
    seeds = runner.seeds(classes, n)
    f_x = runner.score(x, seeds)
    jobs = [(i, k) for i in range(n) for k in range(s)]

    def build(sl):
        chunk = jobs[sl]
        batch = np.stack([x[i] - perturbations[k, i] for i, k in chunk])
        return batch, seeds[[i for i, _ in chunk]]

    f_pert = runner.stream(len(jobs), build).reshape(n, s)
    diff = f_x[:, None] - f_pert
    # (N, S): I_s . Phi(x) per sample
    dot = (perturbations.astype(np.float64).reshape(s, n, -1) * attributions.reshape(1, n, -1)).sum(axis=2).T
    if normalize:
        denom = (dot * dot).mean(axis=1)
        beta = np.where(denom > 0, (dot * diff).mean(axis=1) / np.where(denom > 0, denom, 1), 0.0)
        dot = dot * beta[:, None]
    return ((dot - diff) ** 2).mean(axis=1)


def sensitivity_max(runner, x, classes, maps, perturbations: np.ndarray) -> np.ndarray:
    """(N,) max relative change of the map over the draws (perturbations (S, N, ...))."""
    n, s = len(x), len(perturbations)
    base = maps.reshape(n, -1).astype(np.float64)
    norm = np.sqrt((base * base).sum(axis=1))
    worst = np.zeros(n)
    for k in range(s):
        other = runner.explain((x + perturbations[k]).astype(np.float32), classes).maps.reshape(n, -1).astype(np.float64)
        change = np.sqrt(((other - base) ** 2).sum(axis=1))
        worst = np.maximum(worst, change / np.where(norm > 0, norm, 1.0))  # a zero map: the plain change, as Captum
    return worst


__all__ = ["infidelity", "sensitivity_max", "gaussian_perturbations", "uniform_perturbations", "pixel_attributions"]
