"""Layer-wise relevance propagation: one backward pass under an LRP rule set (autodiff/rules/lrp.py).

lrp   Bach et al. 2015; Montavon et al. 2019. R starts as seed * score at the output; each linear layer
      redistributes it to its inputs by its rule (epsilon, gamma, z+, alpha-beta, flat, w^2, zB), chosen per
      node by a composite (zennit's names: epsilon_plus_flat, epsilon_gamma_box, epsilon_alpha2_beta1, ...)
      or by `rules` ('first=zbox,conv=gamma,dense=epsilon', 'name:<regex>=...'). The attribution is R at the
      input; the map sums it over channels (signed). zB's bounds default to the pixel range 0..255 mapped
      through the model's preprocessing, x = (pixel * scale - mean) / std, per channel.
"""

from __future__ import annotations

import numpy as np

from .base import Attribution, Method, reduce_channels, register
from ..errors import MethodError, OnnxsalError


def pixel_bounds(preprocessing) -> tuple[tuple, tuple] | None:
    """(low, high) per channel of the model input for pixels 0..255, or None without preprocessing."""
    if preprocessing is None:
        return None
    mean, std = np.asarray(preprocessing.mean, np.float64), np.asarray(preprocessing.std, np.float64)
    a, b = (0.0 - mean) / std, (255.0 * preprocessing.scale - mean) / std
    return tuple(np.minimum(a, b).tolist()), tuple(np.maximum(a, b).tolist())


@register
class LRP(Method):
    name = "lrp"
    description = "Layer-wise relevance propagation (rule per layer by composite: epsilon_plus_flat, epsilon_gamma_box, ...)"
    reference = "Bach et al. 2015, On Pixel-Wise Explanations by LRP; Montavon et al. 2019, LRP: An Overview"
    signed = True
    in_graph_top = True
    defaults = {"composite": "epsilon_plus_flat", "rules": None, "epsilon": 1e-6, "gamma": 0.25, "stabilizer": 1e-6,
                "low": None, "high": None, "zero_bias": False, "reduce": "sum"}

    def __init__(self, explainer, **options):
        super().__init__(explainer, **options)
        from ..autodiff import registry
        from ..autodiff.rules import lrp

        o = dict(self.options)
        for key in ("rules", "composite"):  # 'lrp:epsilon_gamma_box;...' as `export --rules` spells it
            if isinstance(o[key], str) and o[key].strip().startswith("lrp:"):
                o[key] = o[key].strip()[4:]
        if o["rules"] and ";" in o["rules"]:  # 'conv=gamma,dense=epsilon;gamma=0.5': parameters after the rules
            head, *params = o["rules"].split(";")
            try:
                _, parsed, _ = lrp.parse("lrp:epsilon;" + ";".join(params))
            except OnnxsalError as exc:
                raise MethodError(str(exc)) from None
            o["rules"] = head
            for option in params:
                key = option.partition("=")[0].strip()
                o[key] = getattr(parsed, key)
        if o["composite"] not in lrp.COMPOSITES:
            raise MethodError(f"unknown LRP composite {o['composite']!r}; choose one of {', '.join(lrp.COMPOSITES)}")
        low, high = o["low"], o["high"]
        bounds = pixel_bounds(getattr(explainer, "preprocessing", None))
        if (low is None or high is None) and bounds is not None:
            low = bounds[0] if low is None else low
            high = bounds[1] if high is None else high
        self.ruleset = lrp.spec_name(o["rules"] or o["composite"], epsilon=o["epsilon"], gamma=o["gamma"],
                                     stabilizer=o["stabilizer"], low=low, high=high, zero_bias=o["zero_bias"] or None)
        try:
            lrp.parse(self.ruleset)
            self.record = registry.get(self.ruleset)
        except OnnxsalError as exc:
            raise MethodError(str(exc)) from None

    def finish(self, x, grad, ops=None):
        """The attribution from the backward pass: the relevance at the input itself (export's ONNX back end too)."""
        return grad

    def warnings(self) -> list[str]:
        """What the model lacks for LRP (an unfolded BatchNormalization), one line each."""
        return self.record.check(self.ex.graph.model) if self.record.check else []

    def attribute(self, x, seeds, progress=None):
        out = self.ex.gradients(x, seeds, ruleset=self.ruleset)
        relevance = out.input_grad.astype(np.float32, copy=False)
        if progress:
            progress(len(x))
        info = {"rules": self.ruleset, "relevance": relevance.reshape(len(x), -1).sum(axis=1, dtype=np.float64)}
        warnings = self.warnings()
        if warnings:
            info["warnings"] = warnings
        return Attribution(maps=reduce_channels(relevance, self.layout, self.options["reduce"]), attributions=relevance,
                           scores=out.scores, info=info)
