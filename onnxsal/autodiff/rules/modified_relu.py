"""Rule sets that override the ReLU-like rules; every other op keeps its plain gradient.

guided_backprop (Springenberg et al. 2015, eq. in fig. 1): R_l = (f_l > 0) * (R_{l+1} > 0) * R_{l+1},
    i.e. the op's own backward applied to relu(dy).
deconvnet (Zeiler & Fergus 2014, sec. 2.1 'Rectification'): R_l = (R_{l+1} > 0) * R_{l+1} = relu(dy),
    ignoring the forward input.

ReLU-like ops: Relu, LeakyRelu, PRelu, ThresholdedRelu and Clip with a constant lower bound of 0 (ReLU6
and the like). A Clip with another lower bound keeps its plain gradient.
"""

from __future__ import annotations

from ..registry import rule
from .activation import RELU_LIKE_BACKWARD, clip_is_relu_like


def _relu_like(ctx) -> bool:
    return ctx.node.op_type != "Clip" or clip_is_relu_like(ctx)


@rule(*RELU_LIKE_BACKWARD, ruleset="guided_backprop")
def guided(ctx):
    backward = RELU_LIKE_BACKWARD[ctx.node.op_type]
    dy = ctx.dy()
    if not _relu_like(ctx):
        return ctx.data_grad(backward(ctx, dy))
    return ctx.data_grad(backward(ctx, ctx.op("Relu", dy)))


@rule(*RELU_LIKE_BACKWARD, ruleset="deconvnet")
def deconv(ctx):
    if not _relu_like(ctx):
        return ctx.data_grad(RELU_LIKE_BACKWARD[ctx.node.op_type](ctx, ctx.dy()))
    return ctx.data_grad(ctx.op("Relu", ctx.dy()))
