"""Backward rules of data-movement ops: the transpose of a fixed linear map.

Reshape-like ops reshape the gradient back; Transpose applies the inverse permutation; Concat splits
and Split concatenates (sizes read at run time where shape inference has none); Slice and Pad send each
output element back to the input element it came from (scatter-add along an axis through a static index
map, or Pad/Slice when the map is a contiguous range). Gather, GatherElements and GatherND scatter-add
(ScatterElements / ScatterND with reduction="add", opset >= 16) into zeros shaped like the data: exact
for any indices, repeated or negative ones included, constant or computed at run time.
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from ...errors import UnsupportedOpError
from ...graph.utils import node_label
from ..registry import rule


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(ctx):
    return ctx.data_grad(ctx.reshape_like(ctx.dy(), ctx.x(0)))


@rule("Transpose")
def transpose(ctx):
    perm = ctx.attr("perm", None)
    if perm is None:
        perm = list(reversed(range(ctx.rank(ctx.x()))))
    return ctx.data_grad(ctx.op("Transpose", ctx.dy(), perm=[int(i) for i in np.argsort(perm)]))


def _dim(ctx, name: str, axis: int) -> int:
    return ctx.dims(name, [axis])[0]


def scatter_along_axis(ctx, grad: str, axis: int, index: np.ndarray, size: int, like: str) -> str:
    """dx with dx[.., index[j], ..] += grad[.., j, ..] along `axis`, and `size` there; `like` has dx's other dims."""
    rank = ctx.rank(like)
    shaped = [1] * rank
    shaped[axis] = len(index)
    idx = ctx.op("Expand", ctx.ints(np.asarray(index, dtype=np.int64).reshape(shaped)), ctx.op("Shape", grad))
    parts = []
    if axis > 0:
        parts.append(ctx.op("Shape", grad, end=axis))
    parts.append(ctx.ints([size]))
    if axis < rank - 1:
        parts.append(ctx.op("Shape", grad, start=axis + 1))
    target = parts[0] if len(parts) == 1 else ctx.op("Concat", *parts, axis=0)
    zeros = ctx.op("ConstantOfShape", target, value=numpy_helper.from_array(np.zeros(1, dtype=ctx.np_dtype(like))))
    return ctx.op("ScatterElements", zeros, idx, grad, axis=axis, reduction="add")


def _pad_axis_dynamic(ctx, grad: str, rank: int, axis: int, start: int, end: int, size: str) -> str:
    """Pad grad back to `size` (a run-time [1] tensor) along axis for y = x[start:end] (step 1):
    b = clamp(start, 0, size) (counted from the end when negative), e = max(clamp(end, 0, size), b);
    pads b before and size - e after."""

    def clamp(bound: int) -> str:
        if bound >= 0:
            return ctx.op("Min", ctx.ints([bound]), size)
        return ctx.op("Max", ctx.op("Add", ctx.ints([bound]), size), ctx.ints([0]))

    begin = clamp(start)
    after = ctx.op("Sub", size, ctx.op("Max", clamp(end), begin))
    zeros = lambda n: [ctx.ints([0] * n)] if n else []  # noqa: E731
    pads = ctx.op("Concat", *zeros(axis), begin, *zeros(rank - 1), after, *zeros(rank - 1 - axis), axis=0)
    return ctx.op("Pad", grad, pads)


def _pad_axis(ctx, grad: str, rank: int, axis: int, before: int, after: int) -> str:
    pads = [0] * (2 * rank)
    pads[axis], pads[rank + axis] = before, after
    return ctx.op("Pad", grad, ctx.ints(pads))


@rule("Slice")
def slice_(ctx):
    x = ctx.x(0)
    rank = ctx.rank(x)
    starts = ctx.require_const(ctx.x(1), "starts")
    ends = ctx.require_const(ctx.x(2), "ends")
    axes = ctx.const(ctx.x(3)) if ctx.x(3) else None
    steps = ctx.const(ctx.x(4)) if ctx.x(4) else None
    if (ctx.x(3) and axes is None) or (ctx.x(4) and steps is None):
        raise UnsupportedOpError(f"{node_label(ctx.node)}: its axes and steps must be constants to differentiate it")
    axes = [int(a) % rank for a in (axes if axes is not None else range(len(starts)))]
    steps = [int(s) for s in (steps if steps is not None else [1] * len(starts))]
    dx = ctx.dy()
    for axis, start, end, step in zip(axes, starts.tolist(), ends.tolist(), steps):
        shape = ctx.shape(x)
        if step == 1 and (shape is None or shape[axis] is None):  # size known only at run time
            dx = _pad_axis_dynamic(ctx, dx, rank, axis, int(start), int(end), axis_size(ctx, x, axis))
            continue
        size = _dim(ctx, x, axis)
        index = np.arange(size)[slice(int(start), int(end), step)]
        if len(index) == 0:
            return ctx.data_grad(ctx.zeros_like(x))
        if step == 1:
            dx = _pad_axis(ctx, dx, rank, axis, int(index[0]), size - 1 - int(index[-1]))
        else:
            dx = scatter_along_axis(ctx, dx, axis, index, size, x)
    return ctx.data_grad(dx)


def axis_size(ctx, name: str, axis: int) -> str:
    """Size of `name` along `axis` as a 1-element int64 tensor: a constant when static, else Shape at run time."""
    shape = ctx.shape(name)
    if shape is not None and axis < len(shape) and shape[axis] is not None:
        return ctx.ints([int(shape[axis])])
    return ctx.op("Shape", name, start=axis, end=axis + 1)


@rule("Gather")
def gather(ctx):
    # y[p, j.., q] = x[p, i[j..], q] (p: axes before `axis`, q: after); indices may be computed at run time.
    # dx = zeros like x; dx[p, i_k, q] += dy[p, k, q] for every k of the flattened indices (repeats add up)
    data, idx, dy = ctx.x(0), ctx.x(1), ctx.dy()
    rank = ctx.rank(data)
    axis = ctx.attr("axis", 0) % rank
    q = ctx.rank(ctx.y()) - rank + 1  # rank of the indices
    size = axis_size(ctx, data, axis)
    flat = ctx.op("Mod", ctx.op("Reshape", idx, ctx.ints([-1])), size)  # negative indices count from the end
    if q != 1:  # dy: x[:axis] + i.shape + x[axis+1:] -> x[:axis] + (K,) + x[axis+1:]
        parts = ([ctx.op("Shape", dy, end=axis)] if axis else []) + [ctx.ints([-1])]
        if axis < rank - 1:
            parts.append(ctx.op("Shape", dy, start=axis + q))
        dy = ctx.op("Reshape", dy, parts[0] if len(parts) == 1 else ctx.op("Concat", *parts, axis=0))
    along = [1] * rank
    along[axis] = -1
    index = ctx.op("Expand", ctx.op("Reshape", flat, ctx.ints(along)), ctx.op("Shape", dy))
    return ctx.data_grad(ctx.op("ScatterElements", ctx.zeros_like(data), index, dy, axis=axis, reduction="add"))


@rule("GatherElements")
def gather_elements(ctx):
    # y[.., j, ..] = x[.., i[.., j, ..], ..] along axis: dx = ScatterElements(zeros like x, i, dy, add)
    return ctx.data_grad(ctx.op("ScatterElements", ctx.zeros_like(ctx.x(0)), ctx.x(1), ctx.dy(),
                                axis=ctx.attr("axis", 0), reduction="add"))


@rule("GatherND")
def gather_nd(ctx):
    # y[b.., j..] = x[b.., i[b.., j.., :]] with b the batch_dims leading axes shared by x and i.
    # dx = ScatterND(zeros like x, i, dy, add), exact for repeated rows of i; with batch_dims > 0 the b axes
    # are flattened to one of size B and each row of i gets its batch coordinate in front.
    data, idx, dy = ctx.x(0), ctx.x(1), ctx.dy()
    b = ctx.attr("batch_dims", 0)
    k = (ctx.shape(idx) or (None,))[-1]
    if k is None:
        raise UnsupportedOpError(f"{node_label(ctx.node)}: the last axis of its indices has no static size")
    k = int(k)
    index = ctx.op("Mod", idx, ctx.op("Shape", data, start=b, end=b + k))  # negative indices count from the end
    if b == 0:
        return ctx.data_grad(ctx.op("ScatterND", ctx.zeros_like(data), index, dy, reduction="add"))
    rank = ctx.rank(data)
    batch = ctx.op("ReduceProd", ctx.op("Shape", data, end=b), keepdims=1)  # [B]
    rest = [ctx.op("Shape", data, start=b + k)] if b + k < rank else []
    rows = ctx.op("Reshape", index, ctx.op("Concat", batch, ctx.ints([-1, k]), axis=0))  # (B, M, k)
    grid = ctx.op("Range", ctx.constant(0, dtype=np.int64), ctx.op("Squeeze", batch, ctx.ints([0])),
                  ctx.constant(1, dtype=np.int64))
    grid = ctx.op("Expand", ctx.op("Reshape", grid, ctx.ints([-1, 1, 1])),
                  ctx.op("Concat", ctx.op("Shape", rows, end=2), ctx.ints([1]), axis=0))  # (B, M, 1)
    full = ctx.op("Concat", grid, rows, axis=2)  # (B, M, 1 + k)
    flat_dy = ctx.op("Reshape", dy, ctx.op("Concat", batch, ctx.ints([-1]), *rest, axis=0))  # (B, M, x[b+k:]..)
    zeros = ctx.op("ConstantOfShape", ctx.op("Concat", batch, ctx.op("Shape", data, start=b), axis=0),
                   value=numpy_helper.from_array(np.zeros(1, dtype=ctx.np_dtype(data))))
    flat_dx = ctx.op("ScatterND", zeros, full, flat_dy, reduction="add")
    return ctx.data_grad(ctx.op("Reshape", flat_dx, ctx.shape_of(data)))


@rule("Concat")
def concat(ctx):
    y = ctx.y()
    axis = ctx.attr("axis") % ctx.rank(y)
    # dy splits back into the inputs' sizes along axis (read at run time where shape inference has none)
    sizes = [axis_size(ctx, x, axis) for x in ctx.node.input]
    sizes = sizes[0] if len(sizes) == 1 else ctx.op("Concat", *sizes, axis=0)
    parts = ctx.op("Split", ctx.dy(), sizes, outputs=len(ctx.node.input), axis=axis)
    parts = [parts] if isinstance(parts, str) else parts
    return [p if ctx.needs(i) else None for i, p in enumerate(parts)]


@rule("Split")
def split(ctx):
    axis = ctx.attr("axis", 0) % ctx.rank(ctx.x())
    pieces = [ctx.dy(i) if ctx.dy(i) is not None else ctx.zeros_like(out) for i, out in enumerate(ctx.node.output)]
    return ctx.data_grad(ctx.op("Concat", *pieces, axis=axis) if len(pieces) > 1 else pieces[0])


@rule("Pad")
def pad(ctx):
    x = ctx.x(0)
    rank = ctx.rank(x)
    pads = ctx.require_const(ctx.x(1), "pads").astype(np.int64)
    axes = ctx.const(ctx.x(3)) if len(ctx.node.input) > 3 and ctx.x(3) else None
    axes = [int(a) % rank for a in (axes if axes is not None else range(rank))]
    mode = ctx.attr("mode", "constant")
    begins, ends = pads[: len(axes)], pads[len(axes):]
    dx = ctx.dy()
    for axis, b, e in zip(axes, begins.tolist(), ends.tolist()):
        if b == 0 and e == 0:
            continue
        size = _dim(ctx, x, axis)
        if mode == "constant":
            # y = [max(b,0) fill] + x[max(-b,0) : size - max(-e,0)] + [max(e,0) fill]
            kept = size - max(-b, 0) - max(-e, 0)
            start = max(b, 0)
            dx = ctx.op("Slice", dx, ctx.ints([start]), ctx.ints([start + kept]), ctx.ints([axis]))
            if b < 0 or e < 0:
                dx = _pad_axis(ctx, dx, rank, axis, max(-b, 0), max(-e, 0))
        else:
            if b < 0 or e < 0:
                raise UnsupportedOpError(f"{node_label(ctx.node)}: negative pads with mode {mode} are not supported")
            index = np.pad(np.arange(size), (b, e), mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])
            dx = scatter_along_axis(ctx, dx, axis, index, size, x)
    return ctx.data_grad(dx)


@rule("Tile")
def tile(ctx):
    # y = tile(x, r): view dy as (r0, s0, r1, s1, ...) and sum over the r axes
    x = ctx.x(0)
    repeats = ctx.require_const(ctx.x(1), "repeats").astype(np.int64).tolist()
    shape = ctx.shape(x)
    view, summed = [], []
    for r, s in zip(repeats, shape):
        if r > 1:
            if s is None:
                raise UnsupportedOpError(f"{node_label(ctx.node)}: tiles the batch axis, which has no static size")
            summed.append(len(view))
            view += [r, s]
        else:
            view.append(-1 if s is None else s)
    if not summed:
        return ctx.data_grad(ctx.dy())
    grouped = ctx.op("Reshape", ctx.dy(), ctx.ints(view))
    return ctx.data_grad(ctx.reduce_sum(grouped, summed, keepdims=0))


@rule("DepthToSpace")
def depth_to_space(ctx):
    if ctx.attr("mode", "DCR") != "DCR":
        raise UnsupportedOpError(f"{node_label(ctx.node)}: DepthToSpace mode CRD is not supported")
    return ctx.data_grad(ctx.op("SpaceToDepth", ctx.dy(), blocksize=ctx.attr("blocksize")))


@rule("SpaceToDepth")
def space_to_depth(ctx):
    return ctx.data_grad(ctx.op("DepthToSpace", ctx.dy(), blocksize=ctx.attr("blocksize"), mode="DCR"))
