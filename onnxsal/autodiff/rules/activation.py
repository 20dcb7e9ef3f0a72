"""Backward rules of pointwise activations: dx = dy * f'(x).

The ReLU-like ones (Relu, LeakyRelu, PRelu, ThresholdedRelu, Clip with lower bound 0) are written as
`<op>_backward(ctx, dy)` so that the guided_backprop and deconvnet rule sets can feed them a modified
incoming gradient. Zero branches multiply by the mask (ctx.masked) rather than select with Where, which
onnxruntime runs several times slower.
"""

from __future__ import annotations

import math

from ..registry import rule


def _where_positive(ctx, dy, otherwise, threshold: float = 0.0):
    x = ctx.x()
    return ctx.op("Where", ctx.op("Greater", x, ctx.constant(threshold, like=x)), dy, otherwise)


def _positive(ctx, threshold: float = 0.0, tensor: str | None = None):
    x = ctx.x()
    return ctx.op("Greater", tensor or x, ctx.constant(threshold, like=x))


def relu_backward(ctx, dy):
    # relu(x) > 0 exactly where x > 0: reading the output leaves the input to its producer alone, so
    # onnxruntime can fuse Conv + Relu in the forward pass
    return ctx.masked(dy, _positive(ctx, tensor=ctx.y()))


def leaky_relu_backward(ctx, dy):
    return _where_positive(ctx, dy, ctx.scale(dy, ctx.attr("alpha", 0.01)))


def prelu_backward(ctx, dy):
    return _where_positive(ctx, dy, ctx.mul(dy, ctx.x(1)))


def thresholded_relu_backward(ctx, dy):
    return ctx.masked(dy, _positive(ctx, ctx.attr("alpha", 1.0)))


def clip_backward(ctx, dy):
    # gradient where min < x < max (strict, as torch's hardtanh/relu6 backward); with y = clip(x),
    # min < y < max holds exactly there, and reading y lets onnxruntime fuse Conv + Clip
    x = ctx.y()
    inside = None
    if ctx.x(1):
        inside = ctx.op("Greater", x, ctx.x(1))
    if ctx.x(2):
        below = ctx.op("Less", x, ctx.x(2))
        inside = below if inside is None else ctx.op("And", inside, below)
    if inside is None:
        return dy
    return ctx.masked(dy, inside)


def clip_is_relu_like(ctx) -> bool:
    """Clip(x, 0, max): a ReLU (ReLU6 when max = 6)."""
    lower = ctx.const(ctx.x(1))
    return lower is not None and lower.size == 1 and float(lower) == 0.0


RELU_LIKE_BACKWARD = {
    "Relu": relu_backward,
    "LeakyRelu": leaky_relu_backward,
    "PRelu": prelu_backward,
    "ThresholdedRelu": thresholded_relu_backward,
    "Clip": clip_backward,
}


@rule(*RELU_LIKE_BACKWARD)
def relu_like(ctx):
    return ctx.data_grad(RELU_LIKE_BACKWARD[ctx.node.op_type](ctx, ctx.dy()))


@rule("Elu")
def elu(ctx):
    # x > 0: dy; else dy * (y + alpha)
    alpha = ctx.constant(ctx.attr("alpha", 1.0), like=ctx.x())
    return ctx.data_grad(_where_positive(ctx, ctx.dy(), ctx.mul(ctx.dy(), ctx.op("Add", ctx.y(), alpha))))


@rule("Selu")
def selu(ctx):
    # x > 0: gamma dy; else dy * (y + alpha gamma)
    alpha, gamma = ctx.attr("alpha", 1.67326319217681884765625), ctx.attr("gamma", 1.05070102214813232421875)
    dy = ctx.dy()
    neg = ctx.mul(dy, ctx.op("Add", ctx.y(), ctx.constant(alpha * gamma, like=ctx.x())))
    return ctx.data_grad(_where_positive(ctx, ctx.scale(dy, gamma), neg))


@rule("Celu")
def celu(ctx):
    # x > 0: dy; else dy * exp(x / alpha)
    alpha = ctx.attr("alpha", 1.0)
    return ctx.data_grad(_where_positive(ctx, ctx.dy(), ctx.mul(ctx.dy(), ctx.op("Exp", ctx.scale(ctx.x(), 1.0 / alpha)))))


@rule("Sigmoid")
def sigmoid(ctx):
    # dy * y * (1 - y)
    y = ctx.y()
    one_minus = ctx.op("Sub", ctx.constant(1.0, like=y), y)
    return ctx.data_grad(ctx.mul(ctx.dy(), ctx.mul(y, one_minus)))


@rule("Tanh")
def tanh(ctx):
    # dy * (1 - y^2)
    y = ctx.y()
    return ctx.data_grad(ctx.mul(ctx.dy(), ctx.op("Sub", ctx.constant(1.0, like=y), ctx.mul(y, y))))


@rule("HardSigmoid")
def hard_sigmoid(ctx):
    # y = clip(alpha x + beta, 0, 1): dy * alpha where 0 < alpha x + beta < 1
    alpha, beta = ctx.attr("alpha", 0.2), ctx.attr("beta", 0.5)
    x = ctx.x()
    z = ctx.op("Add", ctx.scale(x, alpha), ctx.constant(beta, like=x))
    inside = ctx.op("And", ctx.op("Greater", z, ctx.constant(0.0, like=x)), ctx.op("Less", z, ctx.constant(1.0, like=x)))
    return ctx.data_grad(ctx.masked(ctx.scale(ctx.dy(), alpha), inside))


@rule("HardSwish")
def hard_swish(ctx):
    # y = x * clip(x/6 + 1/2, 0, 1): f'(x) = 0 (x < -3), (2x + 3) / 6 (|x| <= 3), 1 (x > 3)
    x = ctx.x()
    middle = ctx.op("Add", ctx.scale(x, 1.0 / 3.0), ctx.constant(0.5, like=x))
    slope = ctx.op("Where", ctx.op("Greater", x, ctx.constant(3.0, like=x)), ctx.constant(1.0, like=x),
                   ctx.op("Where", ctx.op("Less", x, ctx.constant(-3.0, like=x)), ctx.constant(0.0, like=x), middle))
    return ctx.data_grad(ctx.mul(ctx.dy(), slope))


@rule("Softplus")
def softplus(ctx):
    return ctx.data_grad(ctx.mul(ctx.dy(), ctx.op("Sigmoid", ctx.x())))


@rule("Softsign")
def softsign(ctx):
    # dy / (1 + |x|)^2
    d = ctx.op("Add", ctx.constant(1.0, like=ctx.x()), ctx.op("Abs", ctx.x()))
    return ctx.data_grad(ctx.op("Div", ctx.dy(), ctx.mul(d, d)))


@rule("Gelu")
def gelu(ctx):
    x = ctx.x()
    if ctx.attr("approximate", "none") == "tanh":
        # y = x/2 (1 + t), t = tanh(u), u = c (x + k x^3):  f' = (1 + t)/2 + x/2 (1 - t^2) c (1 + 3k x^2)
        c, k = math.sqrt(2.0 / math.pi), 0.044715
        x2 = ctx.mul(x, x)
        u = ctx.scale(ctx.op("Add", x, ctx.scale(ctx.mul(x2, x), k)), c)
        t = ctx.op("Tanh", u)
        one = ctx.constant(1.0, like=x)
        du = ctx.scale(ctx.op("Add", one, ctx.scale(x2, 3 * k)), c)
        sech2 = ctx.op("Sub", one, ctx.mul(t, t))
        slope = ctx.op("Add", ctx.scale(ctx.op("Add", one, t), 0.5), ctx.scale(ctx.mul(x, ctx.mul(sech2, du)), 0.5))
    else:
        # y = x Phi(x): f' = Phi(x) + x phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2, phi(x) = exp(-x^2/2) / sqrt(2 pi)
        cdf = ctx.scale(ctx.op("Add", ctx.constant(1.0, like=x), ctx.op("Erf", ctx.scale(x, 1.0 / math.sqrt(2.0)))), 0.5)
        pdf = ctx.scale(ctx.op("Exp", ctx.scale(ctx.mul(x, x), -0.5)), 1.0 / math.sqrt(2.0 * math.pi))
        slope = ctx.op("Add", cdf, ctx.mul(x, pdf))
    return ctx.data_grad(ctx.mul(ctx.dy(), slope))


@rule("Mish")
def mish(ctx):
    # y = x tanh(sp), sp = softplus(x): f' = tanh(sp) + x (1 - tanh(sp)^2) sigmoid(x)
    x = ctx.x()
    t = ctx.op("Tanh", ctx.op("Softplus", x))
    sech2 = ctx.op("Sub", ctx.constant(1.0, like=x), ctx.mul(t, t))
    slope = ctx.op("Add", t, ctx.mul(x, ctx.mul(sech2, ctx.op("Sigmoid", x))))
    return ctx.data_grad(ctx.mul(ctx.dy(), slope))
