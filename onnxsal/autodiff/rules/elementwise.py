"""Backward rules of elementwise arithmetic (with numpy broadcasting): y = f(a, b, ...), dy -> da, db.

Rules return gradients shaped like the output; the driver sums them back over the axes an input was
broadcast along (builder._reduce_broadcast).
"""

from __future__ import annotations

import math

from ..registry import rule


@rule("Identity", "Dropout")
def identity(ctx):
    return ctx.data_grad(ctx.dy())


@rule("Add")
def add(ctx):
    dy = ctx.dy()
    return [dy if ctx.needs(0) else None,
            dy if ctx.needs(1) else None]


@rule("Sub")
def sub(ctx):
    dy = ctx.dy()
    return [dy if ctx.needs(0) else None,
            ctx.op("Neg", dy) if ctx.needs(1) else None]


@rule("Mul")
def mul(ctx):
    # y = a * b: da = dy * b, db = dy * a
    a, b, dy = ctx.x(0), ctx.x(1), ctx.dy()
    return [ctx.mul(dy, b) if ctx.needs(0) else None,
            ctx.mul(dy, a) if ctx.needs(1) else None]


@rule("Div")
def div(ctx):
    # y = a / b: da = dy / b, db = -dy * a / b^2 = -(dy / b) * y
    a, b = ctx.x(0), ctx.x(1)
    t = ctx.op("Div", ctx.dy(), b)
    return [t if ctx.needs(0) else None,
            ctx.op("Neg", ctx.mul(t, ctx.y())) if ctx.needs(1) else None]


@rule("Pow")
def pow_(ctx):
    # y = a^b: da = dy * b * a^(b-1), db = dy * y * log(a)
    a, b, dy = ctx.x(0), ctx.x(1), ctx.dy()
    grads = [None, None]
    if ctx.needs(0):
        exponent = ctx.const(b)
        if exponent is not None:
            e = exponent.astype(ctx.np_dtype(a))
            da = ctx.mul(dy, ctx.mul(ctx.constant(e, like=a), ctx.op("Pow", a, ctx.constant(e - 1, like=a))))
        else:
            e = b if ctx.e.dtypes.get(b) == ctx.e.dtypes.get(a) else ctx.op("Cast", b, to=ctx.e.dtypes[a])
            em1 = ctx.op("Sub", e, ctx.constant(1.0, like=a))
            da = ctx.mul(dy, ctx.mul(e, ctx.op("Pow", a, em1)))
        grads[0] = da
    if ctx.needs(1):
        grads[1] = ctx.mul(ctx.mul(dy, ctx.y()), ctx.op("Log", a))
    return grads


@rule("Neg")
def neg(ctx):
    return ctx.data_grad(ctx.op("Neg", ctx.dy()))


@rule("Abs")
def abs_(ctx):
    return ctx.data_grad(ctx.mul(ctx.dy(), ctx.op("Sign", ctx.x())))


@rule("Sqrt")
def sqrt(ctx):
    # dy / (2 y)
    return ctx.data_grad(ctx.op("Div", ctx.scale(ctx.dy(), 0.5), ctx.y()))


@rule("Reciprocal")
def reciprocal(ctx):
    # -dy * y^2
    y = ctx.y()
    return ctx.data_grad(ctx.op("Neg", ctx.mul(ctx.dy(), ctx.mul(y, y))))


@rule("Exp")
def exp(ctx):
    return ctx.data_grad(ctx.mul(ctx.dy(), ctx.y()))


@rule("Log")
def log(ctx):
    return ctx.data_grad(ctx.op("Div", ctx.dy(), ctx.x()))


@rule("Sin")
def sin(ctx):
    return ctx.data_grad(ctx.mul(ctx.dy(), ctx.op("Cos", ctx.x())))


@rule("Cos")
def cos(ctx):
    return ctx.data_grad(ctx.op("Neg", ctx.mul(ctx.dy(), ctx.op("Sin", ctx.x()))))


@rule("Erf")
def erf(ctx):
    # d erf(x) = 2 / sqrt(pi) * exp(-x^2)
    x = ctx.x()
    g = ctx.op("Exp", ctx.op("Neg", ctx.mul(x, x)))
    return ctx.data_grad(ctx.mul(ctx.dy(), ctx.scale(g, 2.0 / math.sqrt(math.pi))))


@rule("Sum")
def sum_(ctx):
    return [ctx.dy() if ctx.needs(i) else None for i, x in enumerate(ctx.node.input)]


@rule("Mean")
def mean(ctx):
    g = ctx.scale(ctx.dy(), 1.0 / len(ctx.node.input))
    return [g if ctx.needs(i) else None for i, x in enumerate(ctx.node.input)]


@rule("Max", "Min")
def max_min(ctx):
    # the gradient goes to the inputs equal to y, shared equally between ties
    y, dy = ctx.y(), ctx.dy()
    masks = [ctx.op("Cast", ctx.op("Equal", x, y), to=ctx.e.dtypes[y]) for x in ctx.node.input]
    count = masks[0] if len(masks) == 1 else ctx.op("Sum", *masks)
    share = ctx.op("Div", dy, count)
    return [ctx.mul(share, m) if ctx.needs(i) else None
            for i, (x, m) in enumerate(zip(ctx.node.input, masks))]


@rule("Where")
def where(ctx):
    cond, dy = ctx.x(0), ctx.dy()
    zero = ctx.constant(0.0, like=ctx.y())
    return [None,
            ctx.op("Where", cond, dy, zero) if ctx.needs(1) else None,
            ctx.op("Where", cond, zero, dy) if ctx.needs(2) else None]


@rule("Cast", "CastLike")
def cast(ctx):
    source = ctx.e.dtypes.get(ctx.x())
    return ctx.data_grad(ctx.op("Cast", ctx.dy(), to=source))


@rule("Expand")
def expand(ctx):
    return ctx.data_grad(ctx.dy())


@rule("Floor", "Ceil", "Round", "Sign")
def piecewise_constant(ctx):
    # derivative zero almost everywhere
    return ctx.data_grad(None)
