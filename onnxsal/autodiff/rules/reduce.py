"""Backward rules of reductions y = reduce(x, axes): dy is broadcast back over the reduced axes.

ReduceSum       dx = dy
ReduceMean      dx = dy / n
ReduceMax/Min   dx = dy * [x == y] / (number of ties)
ReduceL2        dx = dy * x / y
ReduceSumSquare dx = 2 x dy
ReduceLogSumExp dx = dy * exp(x - y)
"""

from __future__ import annotations

import numpy as np

from ...errors import UnsupportedOpError
from ...graph.utils import node_label
from ..registry import rule


def _axes(ctx) -> list[int] | None:
    """Reduced axes (non-negative), or None for 'no reduction' (empty axes with noop_with_empty_axes)."""
    rank = ctx.rank(ctx.x(0))
    if len(ctx.node.input) > 1 and ctx.x(1):
        axes = ctx.const(ctx.x(1))
        if axes is None:
            raise UnsupportedOpError(f"{node_label(ctx.node)}: its axes must be a constant to differentiate it")
        axes = axes.reshape(-1).tolist()
    else:
        axes = ctx.attr("axes", None)
    if not axes:
        return None if ctx.attr("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(int(a) % rank for a in axes)


def _kept(ctx, t: str, axes: list[int]) -> str:
    """t (shaped like y) with the reduced axes present as size 1."""
    return t if ctx.attr("keepdims", 1) else ctx.unsqueeze(t, axes)


def _broadcast_back(ctx, t: str) -> str:
    return ctx.op("Expand", t, ctx.shape_of(ctx.x(0)))


@rule("ReduceSum")
def reduce_sum(ctx):
    axes = _axes(ctx)
    if axes is None:
        return ctx.data_grad(ctx.dy())
    return ctx.data_grad(_broadcast_back(ctx, _kept(ctx, ctx.dy(), axes)))


@rule("ReduceMean")
def reduce_mean(ctx):
    axes = _axes(ctx)
    if axes is None:
        return ctx.data_grad(ctx.dy())
    count = int(np.prod(ctx.dims(ctx.x(0), axes)))
    return ctx.data_grad(_broadcast_back(ctx, _kept(ctx, ctx.scale(ctx.dy(), 1.0 / count), axes)))


@rule("ReduceMax", "ReduceMin")
def reduce_max_min(ctx):
    axes = _axes(ctx)
    if axes is None:
        return ctx.data_grad(ctx.dy())
    x = ctx.x(0)
    mask = ctx.op("Cast", ctx.op("Equal", x, _kept(ctx, ctx.y(), axes)), to=ctx.e.dtypes[x])
    ties = ctx.reduce_sum(mask, axes, keepdims=1)
    return ctx.data_grad(ctx.mul(mask, ctx.op("Div", _kept(ctx, ctx.dy(), axes), ties)))


@rule("ReduceL2")
def reduce_l2(ctx):
    axes = _axes(ctx)
    if axes is None:
        return ctx.data_grad(ctx.mul(ctx.dy(), ctx.op("Sign", ctx.x(0))))
    ratio = ctx.op("Div", _kept(ctx, ctx.dy(), axes), _kept(ctx, ctx.y(), axes))
    return ctx.data_grad(ctx.mul(ctx.x(0), ratio))


@rule("ReduceSumSquare")
def reduce_sum_square(ctx):
    axes = _axes(ctx)
    dy = ctx.dy() if axes is None else _kept(ctx, ctx.dy(), axes)
    return ctx.data_grad(ctx.mul(ctx.scale(ctx.x(0), 2.0), dy))


@rule("ReduceLogSumExp")
def reduce_log_sum_exp(ctx):
    axes = _axes(ctx)
    if axes is None:
        return ctx.data_grad(ctx.dy())
    x = ctx.x(0)
    weights = ctx.op("Exp", ctx.op("Sub", x, _kept(ctx, ctx.y(), axes)))
    return ctx.data_grad(ctx.mul(weights, _kept(ctx, ctx.dy(), axes)))
