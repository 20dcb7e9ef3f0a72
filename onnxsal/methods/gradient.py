"""Methods read straight off one backward pass (the per-pixel equations live in postprocess.py).

saliency          Simonyan et al. 2013, sec. 3.1: M_ij = max_c |dS/dx_cij|
sensitivity       Baehrens et al. 2010 / squared-gradient sensitivity: M_ij = sum_c (dS/dx_cij)^2
gradient_x_input  Shrikumar et al. 2016: a = x * dS/dx, M = sum_c a
guided_backprop   Springenberg et al. 2015: the gradient under the guided_backprop rule set
deconvnet         Zeiler & Fergus 2014: the gradient under the deconvnet rule set
"""

from __future__ import annotations

import numpy as np

from .base import REDUCTIONS, Attribution, Method, reduce_channels, register
from .. import postprocess as pp
from ..errors import MethodError


class GradientMethod(Method):
    ruleset = "gradient"
    in_graph_top = True
    defaults = {"reduce": "max_abs", "abs": False}

    def __init__(self, explainer, **options):
        super().__init__(explainer, **options)
        if self.options["reduce"] not in REDUCTIONS:
            raise MethodError(f"unknown reduce {self.options['reduce']!r}; choose one of {', '.join(REDUCTIONS)}")

    def finish_kind(self) -> str:
        """How the gradient becomes the attribution (postprocess.finish_gradient)."""
        return "abs" if self.options["abs"] else "identity"

    def finish(self, x, grad, ops=pp.NUMPY):
        return pp.finish_gradient(ops, self.finish_kind(), grad, x)

    def attribute(self, x, seeds, progress=None):
        out = self.ex.gradients(x, seeds, ruleset=self.ruleset)
        attributions = self.finish(x, out.input_grad).astype(np.float32, copy=False)
        if progress:
            progress(len(x))
        return Attribution(maps=reduce_channels(attributions, self.layout, self.options["reduce"]), attributions=attributions,
                           scores=out.scores)

    @property
    def signed(self):
        return self.options["reduce"] == "sum"


@register
class Saliency(GradientMethod):
    name = "saliency"
    description = "Vanilla Gradient: |d score / d pixel|, max over channels"
    reference = "Simonyan, Vedaldi & Zisserman 2013, Deep Inside Convolutional Networks"
    defaults = {"reduce": "max_abs", "abs": True}


@register
class Sensitivity(GradientMethod):
    name = "sensitivity"
    description = "Squared-gradient sensitivity: sum over channels of (d score / d pixel)^2"
    reference = "Baehrens et al. 2010, How to Explain Individual Classification Decisions"
    defaults = {"reduce": "abs_sum", "abs": False}

    def finish_kind(self):
        return "square"


@register
class GradientXInput(GradientMethod):
    name = "gradient_x_input"
    description = "Gradient times input: x * d score / dx, summed over channels (signed)"
    reference = "Shrikumar et al. 2016, Not Just a Black Box (Gradient*Input)"
    defaults = {"reduce": "sum", "abs": False}

    def finish_kind(self):
        return "times_input"


@register
class GuidedBackprop(GradientMethod):
    name = "guided_backprop"
    description = "Guided Backpropagation: only positive gradients through positive activations"
    reference = "Springenberg et al. 2015, Striving for Simplicity: The All Convolutional Net"
    ruleset = "guided_backprop"


@register
class DeconvNet(GradientMethod):
    name = "deconvnet"
    description = "DeconvNet: ReLUs pass positive gradient regardless of the forward pass"
    reference = "Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks"
    ruleset = "deconvnet"
