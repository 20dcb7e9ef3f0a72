"""Integrated Gradients (Sundararajan et al. 2017).

eq. 1:  IG_i(x) = (x_i - x'_i) * int_0^1 dF(x' + a (x - x')) / dx_i da
        ~ (x_i - x'_i) * sum_k w_k dF(x' + a_k (x - x')) / dx_i          (a_k, w_k: a quadrature rule)
Completeness (Prop. 1): sum_i IG_i(x) = F(x) - F(x'); delta = sum_i IG_i - (F(x) - F(x')) measures the
quadrature error. With several baselines the attributions (and deltas) are averaged, as in expected
gradients (Erion et al. 2021) with a fixed set of references.

Quadrature on [0, 1] with m points:
  gausslegendre      Gauss-Legendre nodes t_k, weights v_k:  a_k = (t_k + 1) / 2, w_k = v_k / 2 (default)
  riemann_left       a_k = k/m,           w_k = 1/m   (k = 0..m-1)
  riemann_right      a_k = (k+1)/m,       w_k = 1/m
  riemann_middle     a_k = (k+1/2)/m,     w_k = 1/m
  riemann_trapezoid  a_k = k/(m-1),       w_k = 1/(m-1), halved at both ends
Points stream through the model in batches; a running weighted sum per (image, baseline) is all that
is kept (kernels/moments.py), never the gradients of every step.

Error control (tolerance=t): on ReLU networks the integrand f(a) = grad F(x' + a (x - x')) . (x - x')
jumps wherever a unit switches, and no fixed rule of a few dozen points reaches a small completeness
gap everywhere. With a tolerance, [0, 1] is cut into panels of 5-point Gauss-Legendre rules (steps / 5
of them); while |delta| > t |F(x) - F(x')| and the budget max_steps allows, the panels over which f
varies most ((b - a) * (max f - min f) on their nodes) are halved and re-evaluated. Each panel keeps its
own weighted gradient sum (one input-sized array), for one image at a time.
"""

from __future__ import annotations

import numpy as np

from .base import Attribution, Method, REDUCTIONS, reduce_channels, register
from ..errors import MethodError

SCHEMES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
MAX_GAUSS_LEGENDRE = 1024


def quadrature(scheme: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) of a rule on [0, 1]."""
    if steps < 1 or (scheme == "riemann_trapezoid" and steps < 2):
        raise MethodError(f"steps must be at least {2 if scheme == 'riemann_trapezoid' else 1}, got {steps}")
    k = np.arange(steps, dtype=np.float64)
    if scheme == "gausslegendre" and steps > MAX_GAUSS_LEGENDRE:
        # the nodes come from the eigenvalues of a steps x steps matrix: steps^2 memory, steps^3 time
        raise MethodError(f"Gauss-Legendre integration takes at most {MAX_GAUSS_LEGENDRE} steps, not {steps}; for a finer "
                          "integral set a tolerance (--tolerance 0.01) or a riemann_* integration")
    if scheme == "gausslegendre":
        t, v = np.polynomial.legendre.leggauss(steps)
        return (t + 1) / 2, v / 2
    if scheme == "riemann_left":
        return k / steps, np.full(steps, 1.0 / steps)
    if scheme == "riemann_right":
        return (k + 1) / steps, np.full(steps, 1.0 / steps)
    if scheme == "riemann_middle":
        return (k + 0.5) / steps, np.full(steps, 1.0 / steps)
    if scheme == "riemann_trapezoid":
        w = np.full(steps, 1.0 / (steps - 1))
        w[[0, -1]] /= 2
        return k / (steps - 1), w
    raise MethodError(f"unknown integration {scheme!r}; choose one of {', '.join(SCHEMES)}")


@register
class IntegratedGradients(Method):
    name = "integrated_gradients"
    description = "Integrated Gradients: gradients integrated along a path from a baseline, times (x - baseline)"
    reference = "Sundararajan, Taly & Yan 2017, Axiomatic Attribution for Deep Networks"
    signed = True
    defaults = {"steps": 50, "integration": "gausslegendre", "baseline": None, "batch_size": None, "reduce": "sum",
                "seed": 0, "blur_sigma": 10.0, "tolerance": None, "max_steps": None}
    panel_nodes = 5

    def __init__(self, explainer, **options):
        super().__init__(explainer, **options)
        self.alphas, self.weights = quadrature(self.options["integration"], int(self.options["steps"]))
        if self.options["reduce"] not in REDUCTIONS:
            raise MethodError(f"unknown reduce {self.options['reduce']!r}; choose one of {', '.join(REDUCTIONS)}")

    def runs_per_sample(self) -> int:
        count = len(self.options["baseline"]) if isinstance(self.options["baseline"], (list, tuple)) else 1
        return int(self.options["steps"]) * count

    def attribute(self, x, seeds, progress=None):
        references = self.ex.baselines(x, self.options["baseline"], seed=self.options["seed"],
                                       blur_sigma=self.options["blur_sigma"])
        if self.options["tolerance"] is not None:
            return self._adaptive(x, seeds, references, progress)
        return self._fixed(x, seeds, references, progress)

    def _fixed(self, x, seeds, references, progress):
        from .. import kernels

        n, nb, m = len(x), len(references), len(self.alphas)
        stacked = np.stack(references, axis=1)  # (N, B, ...)
        acc = np.zeros((n * nb, int(np.prod(x.shape[1:]))))
        batch = int(self.options["batch_size"] or self.ex.engine.batch_size)
        total = n * nb * m
        for start in range(0, total, batch):
            index = np.arange(start, min(total, start + batch))
            image, ref, step = index // (nb * m), (index // m) % nb, index % m
            base = stacked[image, ref]
            points = base + self.alphas[step].astype(np.float32).reshape((-1,) + (1,) * (x.ndim - 1)) * (x[image] - base)
            grads = self.ex.gradients(points.astype(np.float32), seeds[image]).input_grad
            kernels.accumulate(acc, np.ascontiguousarray(grads.reshape(len(index), -1), np.float32),
                               image * nb + ref, self.weights[step])
            if progress:
                progress(len(index))
        mean_grads = acc.astype(np.float32).reshape((n * nb,) + x.shape[1:])
        per_ref = kernels.scale_by_difference(mean_grads, np.repeat(x, nb, axis=0), stacked.reshape((n * nb,) + x.shape[1:]))
        attributions = per_ref.reshape((n, nb) + x.shape[1:]).mean(axis=1)
        return self._finish(x, seeds, references, attributions, {"evaluations": total // n})

    def _finish(self, x, seeds, references, attributions, info):
        n = len(x)
        f_x = self.ex.score(x, seeds)
        f_ref = np.mean([self.ex.score(r, seeds) for r in references], axis=0)
        delta = attributions.reshape(n, -1).sum(axis=1, dtype=np.float64) - (f_x - f_ref)
        maps = reduce_channels(attributions, self.layout, self.options["reduce"])
        return Attribution(maps=maps, attributions=attributions.astype(np.float32), delta=delta.astype(np.float32), info=info)

    def _adaptive(self, x, seeds, references, progress):
        tolerance = float(self.options["tolerance"])
        if tolerance <= 0:
            raise MethodError("tolerance is a relative completeness gap and must be positive")
        p = self.panel_nodes
        budget = int(self.options["max_steps"] or 10 * int(self.options["steps"]))
        t, v = np.polynomial.legendre.leggauss(p)
        batch = int(self.options["batch_size"] or self.ex.engine.batch_size)
        attributions = np.zeros(x.shape, np.float64)
        used = []
        for i in range(len(x)):
            for ref in references:
                xi, bi, seed = x[i:i + 1], ref[i:i + 1], seeds[i:i + 1]
                diff = (xi - bi)[0]
                target = float(self.ex.score(xi, seed)[0] - self.ex.score(bi, seed)[0])
                panels: dict = {}  # (a, b) -> (integral, weighted gradient sum, spread of f on the nodes)

                def evaluate(intervals):
                    alphas = np.concatenate([a + (b - a) * (t + 1) / 2 for a, b in intervals])
                    weights = np.concatenate([(b - a) * v / 2 for a, b in intervals])
                    grads = np.empty((len(alphas),) + x.shape[1:], np.float32)
                    for s in range(0, len(alphas), batch):
                        pts = (bi + alphas[s:s + batch, None, None, None].astype(np.float32) * (xi - bi)).astype(np.float32)
                        grads[s:s + batch] = self.ex.gradients(pts, np.repeat(seed, len(pts), axis=0)).input_grad
                        if progress:
                            progress(len(pts) / (budget / int(self.options["steps"])))
                    f = (grads.reshape(len(alphas), -1).astype(np.float64) @ diff.reshape(-1).astype(np.float64))
                    for k, (a, b) in enumerate(intervals):
                        part = slice(k * p, (k + 1) * p)
                        g = np.tensordot(weights[part], grads[part].astype(np.float64), axes=1).astype(np.float32)
                        panels[(a, b)] = (float(weights[part] @ f[part]), g, (b - a) * float(np.ptp(f[part])))
                    return len(alphas)

                count = max(1, int(self.options["steps"]) // p)
                evaluations = evaluate([(k / count, (k + 1) / count) for k in range(count)])
                while True:
                    gap = sum(value[0] for value in panels.values()) - target
                    if abs(gap) <= tolerance * abs(target) or evaluations + 2 * p > budget:
                        break
                    rounds = max(1, min(batch // (2 * p), (budget - evaluations) // (2 * p)))
                    worst = sorted(panels, key=lambda key: -panels[key][2])[:rounds]
                    for key in worst:
                        del panels[key]
                    evaluations += evaluate([half for a, b in worst for half in ((a, (a + b) / 2), ((a + b) / 2, b))])
                total = sum(value[1].astype(np.float64) for value in panels.values())
                attributions[i] += total * diff / len(references)
                used.append(evaluations)
        return self._finish(x, seeds, references, attributions.astype(np.float32),
                            {"evaluations": int(max(used)), "panels": len(panels)})
