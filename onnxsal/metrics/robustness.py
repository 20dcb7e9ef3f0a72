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

The map's change under perturbations that keep the prediction (Ghorbani, Abid & Zou 2019, "Interpretation of
Neural Networks is Fragile", AAAI; sec. 3-4):
  - adversarial: projected gradient steps (Madry et al. 2018) on the input that LOWER the explained class's
    logit, x_{t+1} = clip_{[x - eps, x + eps]}(x_t - a sign(grad_x s_c(x_t))), a = 2.5 eps / steps, using
    onnxsal's own input gradient. A step that would change the model's top class is halved (up to 8 times:
    a / 256) until it keeps the class, as in Ghorbani et al.'s attacks, which only accept label-keeping steps;
    when no halving keeps it the attack stops. (ImageNet models flip under one full step of eps = 0.1.) This
    is the label-keeping adversarial direction of the score, not Ghorbani et al.'s map-targeted attack (that
    one differentiates the map itself: second order).
  - random_perturbation: Ghorbani et al.'s random sign perturbation, x + eps * sign(N(0, 1)), `samples` draws,
    figures averaged over the draws (a draw that changes the top class is counted in class_kept).
Figures: top-k intersection (Ghorbani et al.'s measure: the fraction of the k highest-valued map pixels of the
original map that are also among the k highest of the perturbed map; k = `topk` times the number of pixels,
0.02 by default, ~1000 of 224 x 224 as in the paper), Spearman correlation of the maps, the L-inf size of
the perturbation and the drop of the explained class's logit. eps is in model-input units (0.1 by default,
about 6/255 of the pixel range for ImageNet's std).
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


HALVINGS = 8  # a PGD step that changes the top class is halved up to this many times


def topk_intersection(a: np.ndarray, b: np.ndarray, fraction: float = 0.02) -> float:
    """Share of the k = max(1, round(fraction * pixels)) highest pixels of `a` that are also among those of `b`;
    ties broken in raster order."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    k = max(1, min(len(a), int(round(float(fraction) * len(a)))))
    top_a = np.argsort(-a, kind="stable")[:k]
    top_b = np.argsort(-b, kind="stable")[:k]
    return float(len(np.intersect1d(top_a, top_b)) / k)


def _top_classes(runner, x: np.ndarray) -> np.ndarray:
    from ..errors import MethodError

    scores = runner.ex.engine.forward(np.ascontiguousarray(x, np.float32), "logit", batch_size=runner.batch_size)[0]
    if scores.ndim != 2:
        raise MethodError(f"the perturbation metrics keep the top class of a classifier's (N, classes) output; this "
                          f"model's output is {scores.shape}")
    return scores.argmax(axis=1)


def pgd_keep_class(runner, x: np.ndarray, classes: np.ndarray, epsilon: float, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(x_adv, steps taken per sample): signed-gradient steps lowering each sample's class logit inside the
    L-inf ball of radius epsilon, never leaving the model's top class at x."""
    x = np.asarray(x, np.float32)
    n = len(x)
    seeds = runner.seeds(classes, n)
    top = _top_classes(runner, x)
    current = x.copy()
    taken = np.zeros(n, np.int64)
    active = np.ones(n, bool)
    step = 2.5 * float(epsilon) / max(1, int(steps))
    for _ in range(int(steps)):
        if not active.any():
            break
        idx = np.flatnonzero(active)
        direction = np.sign(runner.ex.engine.gradients(current[idx], seeds[idx], target_kind="logit").input_grad)
        waiting = np.ones(len(idx), bool)  # no label-keeping proposal found yet
        for halving in range(HALVINGS + 1):
            k = np.flatnonzero(waiting)
            size = step / 2 ** halving
            proposal = np.clip(current[idx[k]] - size * direction[k], x[idx[k]] - epsilon,
                               x[idx[k]] + epsilon).astype(np.float32)
            keeps = _top_classes(runner, proposal) == top[idx[k]]
            current[idx[k[keeps]]] = proposal[keeps]
            taken[idx[k[keeps]]] += 1
            waiting[k[keeps]] = False
            if not waiting.any():
                break
        active[idx[waiting]] = False
    return current, taken


def compare_maps(original: np.ndarray, other: np.ndarray, fraction: float) -> dict:
    from .similarity import spearman

    return {"topk_intersection": topk_intersection(original, other, fraction), "spearman": spearman(original, other)}


def adversarial(runner, x, classes, maps, *, epsilon: float = 0.1, steps: int = 5, topk: float = 0.02) -> list[dict]:
    """Per sample: the map's change under the class-keeping PGD perturbation (figures above)."""
    seeds = runner.seeds(classes, len(x))
    x_adv, taken = pgd_keep_class(runner, x, classes, epsilon, steps)
    other = runner.explain(x_adv, classes).maps.astype(np.float64)
    drop = runner.score(x, seeds, "logit") - runner.score(x_adv, seeds, "logit")
    size = np.abs(x_adv.astype(np.float64) - x).reshape(len(x), -1).max(axis=1)
    return [{**compare_maps(maps[i], other[i], topk), "linf": float(size[i]), "logit_drop": float(drop[i]),
             "steps_taken": int(taken[i])} for i in range(len(x))]


def random_sign_perturbations(x: np.ndarray, samples: int, epsilon: float, seed: int) -> np.ndarray:
    """(S, N, ...) eps * sign(N(0, 1)) draws (Ghorbani et al.'s random sign perturbation)."""
    z = np.random.default_rng(seed).standard_normal((samples, *x.shape))
    return (float(epsilon) * np.where(z >= 0, 1.0, -1.0)).astype(np.float32)


def random_perturbation(runner, x, classes, maps, perturbations: np.ndarray, topk: float = 0.02) -> list[dict]:
    """Per sample: figures of the map's change averaged over the draws; class_kept: the share of draws keeping the top class."""
    n = len(x)
    top = _top_classes(runner, x)
    rows = [[] for _ in range(n)]
    kept = np.zeros(n)
    for delta in perturbations:
        moved = (x + delta).astype(np.float32)
        kept += _top_classes(runner, moved) == top
        other = runner.explain(moved, classes).maps.astype(np.float64)
        for i in range(n):
            rows[i].append(compare_maps(maps[i], other[i], topk))
    return [{"topk_intersection": float(np.mean([r["topk_intersection"] for r in rows[i]])),
             "spearman": float(np.mean([r["spearman"] for r in rows[i]])),
             "class_kept": float(kept[i] / len(perturbations))} for i in range(n)]


__all__ = ["topk_intersection", "pgd_keep_class", "adversarial", "random_perturbation", "random_sign_perturbations",
           "infidelity", "sensitivity_max", "gaussian_perturbations", "uniform_perturbations", "pixel_attributions"]
