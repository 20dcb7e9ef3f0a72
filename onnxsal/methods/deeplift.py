"""DeepLIFT and the SHAP-style methods built on it.

deeplift       Shrikumar, Greenside & Kundaje 2017, Learning Important Features Through Propagating Activation
               Differences, Rescale rule: C_i = (x_i - x'_i) * m_i, where m is the backward pass of the
               `deeplift` rule set (autodiff/rules/deeplift.py: every nonlinearity passes dy * Delta y / Delta x,
               from a reference forward pass inside the same ONNX graph). Summation-to-delta (eq. 1):
               sum_i C_i = F(x) - F(x'); delta = sum_i C_i - (F(x) - F(x')) is reported (0 up to rounding where every
               op on the path has a DeepLIFT rule; see the rule set for the ops that keep their gradient).
deeplift_reveal_cancel  the same with the RevealCancel rule (sec. 3.5.3) at every nonlinearity fed straight by a
               Conv / Gemm / MatMul: the positive and negative terms of Delta x get their own multipliers
               (autodiff/rules/deeplift.py); Rescale elsewhere. Summation-to-delta holds as for Rescale.
deeplift_shap  Lundberg & Lee 2017, A Unified Approach to Interpreting Model Predictions (Deep SHAP, sec. 4.2):
               DeepLIFT averaged over a distribution of references, phi_i = 1/B sum_b C_i(x, x'_b) (Captum's
               DeepLiftShap). delta = sum_i phi_i - (F(x) - 1/B sum_b F(x'_b)).
gradient_shap  Lundberg & Lee 2017 / Captum's GradientShap (expected gradients, Erion et al. 2021):
               phi_i = 1/n sum_k (x~_k - x'_k)_i * dF(x'_k + a_k (x~_k - x'_k)) / dx_i, with x'_k drawn uniformly
               from the references, a_k ~ U[0, 1) and x~_k = x + N(0, stdev^2) (stdev = 0: no noise, the default;
               or stdev = noise_level * (max(x) - min(x)) per image, as SmoothGrad).
               delta = sum_i phi_i - (F(x) - 1/B sum_b F(x'_b)), a Monte-Carlo gap.

Shapes: x (N, C, H, W) or (N, H, W, C) (any rank for the attributions), seeds shaped like the score tensor;
attributions shaped like x, maps (N, H, W) by the channel reduction `reduce` (default: sum, signed).

References: `baseline` takes the names of Integrated Gradients (black, zeros, gray, mean, blur, uniform), a number,
an array shaped like x or one sample, or a list of them (one reference per entry, for each image); `references`
takes an array (B, ...) of reference samples (e.g. images of a data set) shared by every image. deeplift defaults to
one reference (black, or zeros without preprocessing) and, given several, returns their average (= deeplift_shap);
deeplift_shap and gradient_shap default to [black (zeros without preprocessing), blur, uniform]. Pairs (image,
reference) and (image, sample) stream through ONNX Runtime in batches of `batch_size` with running sums, as
Integrated Gradients does.

Errors: MethodError for references of the wrong shape, for samples < 1, a negative stdev or noise_level, and for
replayed draws (noise, alphas, choices) of the wrong size or range.
"""

from __future__ import annotations

import numpy as np

from .base import REDUCTIONS, Attribution, Method, image_rngs, reduce_channels, register
from ..errors import MethodError

class _ReferenceMethod(Method):
    signed = True
    ruleset = "deeplift"
    defaults = {"baseline": None, "references": None, "batch_size": None, "reduce": "sum", "seed": 0,
                "blur_sigma": 10.0}
    default_baselines: object = None  # what baseline=None means (None: the Explainer's default, black or zeros)

    def __init__(self, explainer, **options):
        super().__init__(explainer, **options)
        if self.options["reduce"] not in REDUCTIONS:
            raise MethodError(f"unknown reduce {self.options['reduce']!r}; choose one of {', '.join(REDUCTIONS)}")

    def _default_spec(self):
        if self.default_baselines is None:
            return None
        first = "black" if self.ex.preprocessing is not None else "zeros"
        return [first, *self.default_baselines]

    def references(self, x: np.ndarray) -> np.ndarray:
        """(N, B, ...) references per image."""
        given = self.options["references"]
        if given is not None:
            r = np.asarray(given, np.float32)
            if r.ndim == x.ndim - 1:
                r = r[None]
            if r.ndim != x.ndim or r.shape[1:] != x.shape[1:] or len(r) == 0:
                raise MethodError(f"references must be an array (B, {', '.join(map(str, x.shape[1:]))}) of reference "
                                  f"samples, not shaped {r.shape}")
            return np.broadcast_to(r[None], (len(x),) + r.shape)
        spec = self.options["baseline"]
        if spec is None:
            spec = self._default_spec()
        refs = self.ex.baselines(x, spec, seed=self.options["seed"], blur_sigma=self.options["blur_sigma"])
        return np.stack(refs, axis=1)

    def _batch(self) -> int:
        return int(self.options["batch_size"] or self.ex.engine.batch_size)

    def _seeds(self, out, seeds):
        """The seeds of a run whose top class was chosen in the graph (seeds=None)."""
        return seeds if seeds is not None else self.goal.seeds(out.scores, self.ex.graph.class_axis)

    def _finish(self, x, attributions, delta, info):
        maps = reduce_channels(attributions, self.layout, self.options["reduce"]) if attributions.ndim == 4 else \
            attributions.reshape(len(x), -1).sum(axis=1)[:, None, None].astype(np.float32)
        return Attribution(maps=maps, attributions=attributions.astype(np.float32, copy=False),
                           delta=np.asarray(delta, np.float32), info=info)


def _check_finite(attributions: np.ndarray, x: np.ndarray, ref: np.ndarray, method: str = "DeepLIFT") -> None:
    """MethodError when multipliers came out infinite or NaN: a non-finite input or reference, or (float32) a unit whose
    input differs from the reference by less than 2^-101 (see rules/deeplift._rescale_piecewise_linear)."""
    if np.isfinite(attributions).all():
        return
    what = "the input or the reference has non-finite values" if not (np.isfinite(x).all() and np.isfinite(ref).all()) \
        else ("an infinite or NaN weight or activation, or a unit whose input at the image and at the reference "
              "differ by less than 1e-30")
    raise MethodError(f"{method} gave non-finite attributions ({what}); check the model's outputs, or try another "
                      "baseline (--baseline zeros, gray, blur)")


def _add_by_image(acc: np.ndarray, image: np.ndarray, rows: np.ndarray) -> None:
    """acc[image[i]] += rows[i], summed in float64, for ascending image indices (runs of one image's samples): one
    reduceat instead of np.add.at, which adds row by row (5 ms per 224x224x3 row set here)."""
    starts = np.flatnonzero(np.r_[True, image[1:] != image[:-1]])
    acc[image[starts]] += np.add.reduceat(rows, starts, axis=0, dtype=np.float64)


def _explained(scores: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """sum(seed * score) per sample, float64."""
    return (scores.astype(np.float64) * seeds).reshape(len(scores), -1).sum(axis=1)


@register
class DeepLiftShap(_ReferenceMethod):
    name = "deeplift_shap"
    description = "DeepLIFT SHAP: DeepLIFT averaged over a distribution of references"
    reference = "Lundberg & Lee 2017, A Unified Approach to Interpreting Model Predictions (Deep SHAP)"
    default_baselines = ("blur", "uniform")

    def runs_per_sample(self) -> int:
        spec = self.options["baseline"]
        if self.options["references"] is not None:
            return len(np.asarray(self.options["references"]).reshape((-1,) + self.ex.graph.input_shape[1:]))
        if spec is None:
            return 1 + len(self.default_baselines or ())
        return len(spec) if isinstance(spec, (list, tuple)) else 1

    def attribute(self, x, seeds, progress=None):
        refs = self.references(x)
        n, nb = len(x), refs.shape[1]
        total = n * nb
        acc = np.zeros((n, int(np.prod(x.shape[1:]))), np.float64)
        gap = np.zeros(n, np.float64)
        if n > 1 or nb == 1 or self.options["references"] is not None:
            # reference by reference over chunks of images: a reference shared by every image (`references`, black,
            # a number) runs its pass at batch 1 and, from its second use, folded into the session (as deeplift)
            for b in range(nb):
                shared = len(refs) == 1 or bool(np.all(refs[:, b] == refs[:1, b]))
                for start in range(0, n, self._batch()):
                    image = np.arange(start, min(n, start + self._batch()))
                    xs = x[image]
                    rs = np.ascontiguousarray(refs[image[:1] if shared else image, b], np.float32)
                    out = self.ex.gradients(xs, seeds[image], ruleset=self.ruleset, reference=rs)
                    acc[image] += ((xs - rs) * out.input_grad).reshape(len(image), -1)
                    gap[image] += _explained(out.scores, seeds[image]) - _explained(out.reference_scores, seeds[image])
                    if progress:
                        progress(len(image))
        else:  # one image, several references of its own (blur, uniform): (image, reference) pairs in one batch
            for start in range(0, total, self._batch()):
                pair = np.arange(start, min(total, start + self._batch()))
                image, ref = pair // nb, pair % nb
                xs, rs = x[image], np.ascontiguousarray(refs[image, ref], np.float32)
                out = self.ex.gradients(xs, seeds[image], ruleset=self.ruleset, reference=rs)
                contributions = ((xs - rs) * out.input_grad).reshape(len(pair), -1)
                _add_by_image(acc, image, contributions)
                np.add.at(gap, image, _explained(out.scores, seeds[image]) - _explained(out.reference_scores, seeds[image]))
                if progress:
                    progress(len(pair))
        attributions = (acc / nb).reshape(x.shape)
        _check_finite(attributions, x, refs, "DeepLIFT SHAP")
        delta = attributions.reshape(n, -1).sum(axis=1) - gap / nb
        return self._finish(x, attributions, delta, {"evaluations": nb, "references": nb})


@register
class DeepLift(DeepLiftShap):
    name = "deeplift"
    description = "DeepLIFT (Rescale): (x - x') times multipliers Delta y / Delta x through every nonlinearity"
    reference = "Shrikumar, Greenside & Kundaje 2017, Learning Important Features Through Propagating Activation Differences"
    in_graph_top = True
    default_baselines = None

    def attribute(self, x, seeds, progress=None):
        refs = self.references(x)
        if refs.shape[1] != 1:  # several references: their average, i.e. DeepLIFT SHAP (Lundberg & Lee 2017)
            if seeds is None:
                seeds = self.goal.seeds(self.ex.engine.forward(x, self.ex.target_kind)[0], self.ex.graph.class_axis)
            return super().attribute(x, seeds, progress)
        ref = np.ascontiguousarray(refs[:, 0], np.float32)
        # one reference for every image (black, zeros, gray, mean, a number, one array): its forward pass runs at
        # batch 1 and broadcasts against the batch, instead of once per image
        shared = ref[:1] if len(ref) > 1 and (ref == ref[:1]).all() else ref
        out = self.ex.gradients(x, seeds, ruleset=self.ruleset, reference=shared)
        seeds = self._seeds(out, seeds)
        attributions = (x - ref) * out.input_grad
        _check_finite(attributions, x, ref)
        f_x, f_ref = _explained(out.scores, seeds), _explained(out.reference_scores, seeds)
        delta = attributions.reshape(len(x), -1).sum(axis=1, dtype=np.float64) - (f_x - f_ref)
        if progress:
            progress(len(x))
        result = self._finish(x, attributions, delta, {"evaluations": 1})
        result.scores = out.scores
        return result


@register
class GradientShap(_ReferenceMethod):
    name = "gradient_shap"
    description = "GradientSHAP: (x~ - x') * gradient at a random point between a random reference and the noisy input"
    reference = "Lundberg & Lee 2017 (SHAP); Erion et al. 2021 (expected gradients); Captum's GradientShap"
    defaults = {**_ReferenceMethod.defaults, "samples": 5, "stdev": 0.0, "noise_level": None, "noise": None, "alphas": None,
                "choices": None}
    default_baselines = ("blur", "uniform")

    def __init__(self, explainer, **options):
        super().__init__(explainer, **options)
        if int(self.options["samples"]) < 1:
            raise MethodError("samples must be at least 1")
        if float(self.options["stdev"]) < 0 or float(self.options["noise_level"] or 0) < 0:
            raise MethodError("stdev and noise_level set a standard deviation and cannot be negative")

    def _sigma(self, x: np.ndarray) -> np.ndarray:
        """Per image: stdev, or noise_level * (max(x) - min(x)) (SmoothGrad's convention) when noise_level is set."""
        if self.options["noise_level"] is None:
            return np.full(len(x), float(self.options["stdev"]), np.float32)
        flat = x.reshape(len(x), -1)
        return (float(self.options["noise_level"]) * (flat.max(axis=1) - flat.min(axis=1))).astype(np.float32)

    def runs_per_sample(self) -> int:
        return int(self.options["samples"])

    def _draws(self, x, nb):
        """(reference index (N*n,), alpha (N*n,), noise (N*n, ...) or None): given ones replayed, else drawn."""
        n, k = len(x), int(self.options["samples"])
        rngs = image_rngs(self.options["seed"], x)  # per image: its draws do not depend on the other images

        def given(key, shape, dtype):
            value = self.options[key]
            if value is None:
                return None
            value = np.asarray(value, dtype)
            if value.size != int(np.prod(shape)):
                raise MethodError(f"{key} must hold {int(np.prod(shape))} values (images x samples), not {value.size}")
            return value.reshape(shape)

        choices = given("choices", (n * k,), np.int64)
        if choices is None:
            choices = np.concatenate([r.integers(0, nb, k) for r in rngs]) if n else np.zeros(0, np.int64)
        elif choices.min() < 0 or choices.max() >= nb:
            raise MethodError(f"choices index the {nb} references: 0..{nb - 1}")
        alphas = given("alphas", (n * k,), np.float64)
        if alphas is None:
            alphas = np.concatenate([r.uniform(0.0, 1.0, k) for r in rngs]) if n else np.zeros(0)
        noise = given("noise", (n * k,) + x.shape[1:], np.float32)  # else drawn per batch (bounded memory)
        return choices, alphas, noise, rngs

    def attribute(self, x, seeds, progress=None):
        refs = self.references(x)
        n, nb, k = len(x), refs.shape[1], int(self.options["samples"])
        choices, alphas, noise, rngs = self._draws(x, nb)
        sigma = self._sigma(x)
        total = n * k
        acc = np.zeros((n, int(np.prod(x.shape[1:]))), np.float64)
        view = (-1,) + (1,) * (x.ndim - 1)
        for start in range(0, total, self._batch()):
            sample = np.arange(start, min(total, start + self._batch()))
            image = sample // k  # sample s of image i sits at i * k + s (Captum's repeat_interleave)
            noisy = x[image]
            if noise is not None:
                noisy = noisy + noise[sample]
            elif sigma.any():
                draws = np.concatenate([rngs[j].standard_normal((int(np.count_nonzero(image == j)),) + x.shape[1:],
                                                                dtype=np.float32) for j in np.unique(image)])
                noisy = noisy + draws * sigma[image].reshape(view)
            base = refs[image, choices[sample]]
            diff = noisy - base
            points = (base + alphas[sample].astype(np.float32).reshape(view) * diff).astype(np.float32)
            grads = self.ex.gradients(points, seeds[image]).input_grad
            _add_by_image(acc, image, (diff * grads).reshape(len(sample), -1))
            if progress:
                progress(len(sample))
        attributions = (acc / k).reshape(x.shape)
        _check_finite(attributions, x, refs, "GradientSHAP")
        # the scores of the images and of their references, batched: chunks of images with their B references
        f_x, f_ref = np.empty(n), np.empty(n)
        step = max(1, self._batch() // (1 + nb))
        for a in range(0, n, step):
            sl = slice(a, min(n, a + step))
            both = np.concatenate([x[sl, None], refs[sl]], axis=1).reshape((-1,) + x.shape[1:])
            scores = self.ex.score(np.ascontiguousarray(both, np.float32),
                                   np.repeat(seeds[sl], 1 + nb, axis=0)).reshape(-1, 1 + nb)
            f_x[sl], f_ref[sl] = scores[:, 0], scores[:, 1:].mean(axis=1)
        delta = attributions.reshape(n, -1).sum(axis=1) - (f_x - f_ref)
        return self._finish(x, attributions, delta, {"evaluations": k, "references": nb})


@register
class DeepLiftRevealCancel(DeepLift):
    name = "deeplift_reveal_cancel"
    description = "DeepLIFT (RevealCancel): positive and negative parts of each unit's input get their own multipliers"
    reference = ("Shrikumar, Greenside & Kundaje 2017, Learning Important Features Through Propagating Activation "
                 "Differences (RevealCancel, sec. 3.5.3)")
    ruleset = "deeplift_reveal_cancel"
