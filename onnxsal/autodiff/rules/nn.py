"""Backward rules of network layers (input gradients only; weights are constants).

Conv       y[o] = sum_k x[o*s - p + k*d] w[k]  ->  dx = ConvTranspose(dy, w) with the same s, d, group;
           for stride 1, the same map as Conv(dy, rot180(w^T)) with pads (k-1)d - p, which runs faster
ConvTranspose                                  ->  dx = Conv(dy, w)
MaxPool    dx = scatter-add of dy through the forward node's Indices output
AveragePool dx = ConvTranspose(dy / divisor, ones), depthwise
Gemm/MatMul dA = dY B^T, dB = A^T dY
Softmax    dx = y * (dy - sum(dy * y));  LogSoftmax  dx = dy - exp(y) * sum(dy)
LayerNormalization dx = inv * (g - mean(g) - xhat * mean(g * xhat)), g = dy * scale
Resize     dx = M_a^T applied along each resized axis a, M_a the op's own interpolation matrix
Einsum     dx_i = einsum(o, s_j (j != i) -> s_i)(dy, x_j ..), expanded over letters only s_i has
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...errors import UnsupportedOpError
from ...graph.utils import node_label
from ..registry import rule


def _spatial_geometry(ctx, x_spatial, kernel):
    """(strides, dilations, pads_begin, pads_end) with auto_pad resolved on static sizes."""
    n = len(kernel)
    strides = list(ctx.attr("strides", None) or [1] * n)
    dilations = list(ctx.attr("dilations", None) or [1] * n)
    pads = list(ctx.attr("pads", None) or [0] * (2 * n))
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    begin, end = pads[:n], pads[n:]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(x_spatial, kernel, strides, dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small = total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
    elif auto_pad == "VALID":
        begin, end = [0] * n, [0] * n
    return strides, dilations, begin, end


def _transpose_geometry(x_spatial, y_spatial, kernel, strides, dilations, begin):
    """(pads, output_padding, crop) of a ConvTranspose mapping y back onto x (the adjoint of a strided window op).

    With pads (q, q) and output_padding op the output is s (Ho - 1) + op + (k - 1) d + 1 - 2q long, and its index j
    is input position j + q - pb; so dx is that output from index pb - q, H long. Pads stay symmetric
    (onnxruntime's CUDA ConvTranspose takes no others): q = pb when some op < max(s, d) then covers all of x,
    else q = 0. `crop` holds (start, H) per axis where a Slice must cut the output, or None.
    """
    pads, out_pad, crop = [], [], []
    for size, out, k, s, d, pb in zip(x_spatial, y_spatial, kernel, strides, dilations, begin):
        most = max(s, d) - 1
        for q in (pb, 0):
            length = s * (out - 1) + (k - 1) * d + 1 - 2 * q
            op = min(max(pb - q + size - length, 0), most)
            if length + op >= pb - q + size:
                break
        else:
            raise UnsupportedOpError("a strided window op leaves more uncovered input than output_padding restores")
        pads.append(q)
        out_pad.append(op)
        crop.append(None if (q == pb and length + op == size) else (pb - q, size))
    return pads * 2, out_pad, crop


def _crop(ctx, t: str, crop) -> str:
    """t cut to [start, start + size) on the spatial axes that need it."""
    axes = [2 + i for i, c in enumerate(crop) if c is not None]
    if not axes:
        return t
    starts = [crop[a - 2][0] for a in axes]
    ends = [crop[a - 2][0] + crop[a - 2][1] for a in axes]
    return ctx.op("Slice", t, ctx.ints(starts), ctx.ints(ends), ctx.ints(axes))


def _weights_are_constant(ctx):
    if any(ctx.needs(i) for i in range(1, len(ctx.node.input))):
        raise UnsupportedOpError(
            f"{node_label(ctx.node)}: its weights depend on the input; onnxsal differentiates data inputs only"
        )


def flipped_transposed(w: np.ndarray, group: int) -> np.ndarray:
    """Weights of the Conv that is the adjoint of a stride-1 Conv: in/out channels swapped within each
    group and the kernel rotated by 180 degrees. (M, C/g, k...) -> (C, M/g, k...)."""
    m, cg = w.shape[:2]
    kernel = w.shape[2:]
    grouped = w.reshape((group, m // group, cg) + kernel).swapaxes(1, 2)
    flipped = grouped[(slice(None),) * 3 + (slice(None, None, -1),) * len(kernel)]
    return np.ascontiguousarray(flipped.reshape((group * cg, m // group) + kernel))


def flip_transpose_nodes(ctx, w: str, shape: tuple, group: int) -> str:
    """flipped_transposed(w) as nodes on the model's own weight tensor (Reshape, Transpose, Slice with step -1),
    so the graph carries no second copy of the weights: onnxruntime folds these constant nodes once, when it
    builds the session (issue 19: the stored copy made the file 62-71 % larger, at the same speed)."""
    m, cg = shape[:2]
    kernel = [int(k) for k in shape[2:]]
    n = len(kernel)
    t = w
    if m // group > 1 or cg > 1:
        if group == 1:
            t = ctx.op("Transpose", t, perm=[1, 0] + list(range(2, 2 + n)))
        else:
            t = ctx.op("Reshape", t, ctx.ints([group, m // group, cg] + kernel))
            t = ctx.op("Transpose", t, perm=[0, 2, 1] + list(range(3, 3 + n)))
            t = ctx.op("Reshape", t, ctx.ints([group * cg, m // group] + kernel))
    axes = [2 + i for i, k in enumerate(kernel) if k > 1]
    if axes:
        t = ctx.op("Slice", t, ctx.ints([-1] * len(axes)), ctx.ints([-(2 ** 62)] * len(axes)), ctx.ints(axes),
                   ctx.ints([-1] * len(axes)))
    return t


def _weight(ctx, w) -> tuple[str, np.ndarray | None]:
    """(tensor name, value or None) of a weight given as a tensor name or as an array (emitted as a constant)."""
    if isinstance(w, str):
        return w, ctx.const(w)
    value = np.asarray(w)
    return ctx.constant(value, like=ctx.x(1)), value


def conv_vjp(ctx, dy: str, w) -> str:
    """dx of the node's Conv for the incoming dy, with weights `w` (a tensor name, or an array such as the
    positive part of the node's weights: LRP re-uses this with modified weights)."""
    x, y = ctx.x(0), ctx.y()
    w, weights = _weight(ctx, w)
    xs, ys = ctx.static_shape(x, skip_batch=True), ctx.static_shape(y, skip_batch=True)
    kernel = list(ctx.attr("kernel_shape", None) or ctx.static_shape(w)[2:])
    strides, dilations, begin, end = _spatial_geometry(ctx, xs[2:], kernel)
    group = ctx.attr("group", 1)
    reach = [(k - 1) * d for k, d in zip(kernel, dilations)]
    if weights is not None and all(s == 1 for s in strides) and all(r >= p for r, p in zip(reach * 2, begin + end)):
        # stride 1: dx = Conv(dy, rot180(W^T)) with pads (k-1)d - p, onnxruntime's fast convolution path
        pads = [r - p for r, p in zip(reach, begin)] + [r - p for r, p in zip(reach, end)]
        return ctx.op("Conv", dy, flip_transpose_nodes(ctx, w, weights.shape, group),
                      pads=pads, dilations=dilations, group=group)
    pads, out_pad, crop = _transpose_geometry(xs[2:], ys[2:], kernel, strides, dilations, begin)
    dx = ctx.op("ConvTranspose", dy, w, strides=strides, dilations=dilations, pads=pads,
                output_padding=out_pad if any(out_pad) else None, group=group)
    return _crop(ctx, dx, crop)


_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides", "output_padding", "output_shape")


def layer_forward(ctx, x: str, w=None, b=None) -> str:
    """The node's own op (Conv, ConvTranspose, Gemm, MatMul, a pooling op) on other operands: input x, weights
    w and bias b (tensor names or arrays; None: no bias), with the node's attributes. LRP's modified outputs."""
    op = ctx.node.op_type
    inputs = [x]
    if w is not None:
        inputs.append(_weight(ctx, w)[0])
    if b is not None:
        inputs.append(b if isinstance(b, str) else ctx.constant(np.asarray(b), like=ctx.x(0)))
    attrs = {a.name: ctx.attr(a.name) for a in ctx.node.attribute}
    if op == "Gemm" and b is None:
        attrs.pop("beta", None)
    return ctx.op(op, *inputs, **attrs)


def conv_transpose_vjp(ctx, dy: str, w) -> str:
    """dx of the node's ConvTranspose for dy, with weights `w` (tensor name or array)."""
    x, y = ctx.x(0), ctx.y()
    w, _ = _weight(ctx, w)
    xs, ys = ctx.static_shape(x, skip_batch=True), ctx.static_shape(y, skip_batch=True)
    n = len(xs) - 2
    kernel = list(ctx.attr("kernel_shape", None) or ctx.static_shape(w)[2:])
    strides = list(ctx.attr("strides", None) or [1] * n)
    dilations = list(ctx.attr("dilations", None) or [1] * n)
    out_pad = list(ctx.attr("output_padding", None) or [0] * n)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if ctx.attr("output_shape", None) is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # total padding from the sizes; split as onnxruntime does (head gets the smaller half for SAME_UPPER)
        begin = []
        for size, out, k, s, d, op in zip(xs[2:], ys[2:], kernel, strides, dilations, out_pad):
            total = s * (size - 1) + op + (k - 1) * d + 1 - out
            begin.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
    elif auto_pad == "VALID":
        begin = [0] * n
    else:
        begin = list(ctx.attr("pads", None) or [0] * (2 * n))[:n]
    # dx[i] = sum_k dy[i*s - pb + k*d] w[k]: a Conv with begin pads pb; end pads make its length H_in
    ends, crop = [], {}
    for axis, (size, out, k, s, d, pb) in enumerate(zip(xs[2:], ys[2:], kernel, strides, dilations, begin)):
        pe = (size - 1) * s + (k - 1) * d + 1 - pb - out
        if pe < 0:
            crop[axis + 2] = out + pe
            pe = 0
        ends.append(pe)
    if crop:
        axes = sorted(crop)
        dy = ctx.op("Slice", dy, ctx.ints([0] * len(axes)), ctx.ints([crop[a] for a in axes]), ctx.ints(axes))
    return ctx.op("Conv", dy, w, strides=strides, dilations=dilations, pads=begin + ends, group=ctx.attr("group", 1))


@rule("Conv")
def conv(ctx):
    _weights_are_constant(ctx)
    return ctx.data_grad(conv_vjp(ctx, ctx.dy(), ctx.x(1)))


@rule("ConvTranspose")
def conv_transpose(ctx):
    _weights_are_constant(ctx)
    return ctx.data_grad(conv_transpose_vjp(ctx, ctx.dy(), ctx.x(1)))


@rule("MaxPool")
def max_pool(ctx):
    if ctx.attr("storage_order", 0) != 0:
        raise UnsupportedOpError(f"{node_label(ctx.node)}: storage_order=1 is not supported")
    # Indices are offsets into the flattened x (batch and channel included); several outputs may share one
    indices = ctx.forward_output(1)
    x = ctx.x()
    flat = ctx.ints([-1])
    zeros = ctx.op("Reshape", ctx.zeros_like(x), flat)
    dx = ctx.op("ScatterElements", zeros, ctx.op("Reshape", indices, flat), ctx.op("Reshape", ctx.dy(), flat),
                axis=0, reduction="add")
    return ctx.data_grad(ctx.op("Reshape", dx, ctx.shape_of(x)))


def _pool_divisor(size, out, k, s, d, pb, pe, include_pad):
    """Per output position of one axis: how many inputs the average divides by."""
    counts = []
    for o in range(out):
        positions = o * s - pb + np.arange(k) * d
        lo, hi = (-pb, size + pe) if include_pad else (0, size)
        counts.append(int(((positions >= lo) & (positions < hi)).sum()))
    return np.asarray(counts, dtype=np.float64)


def average_pool_vjp(ctx, dy: str) -> str:
    """dx of the node's AveragePool for dy: ConvTranspose(dy / divisor, ones), depthwise."""
    x, y = ctx.x(), ctx.y()
    xs, ys = ctx.static_shape(x, skip_batch=True), ctx.static_shape(y, skip_batch=True)
    kernel = list(ctx.attr("kernel_shape"))
    strides, dilations, begin, end = _spatial_geometry(ctx, xs[2:], kernel)
    include_pad = bool(ctx.attr("count_include_pad", 0))
    divisor = np.ones((), dtype=np.float64)
    for axis, (size, out, k, s, d, pb, pe) in enumerate(zip(xs[2:], ys[2:], kernel, strides, dilations, begin, end)):
        per_axis = _pool_divisor(size, out, k, s, d, pb, pe, include_pad)
        divisor = np.multiply.outer(divisor, per_axis)
    channels = xs[1]
    scaled = ctx.mul(dy, ctx.constant((1.0 / divisor)[None, None], like=x))
    ones = ctx.constant(np.ones([channels, 1] + kernel), like=x)
    pads, out_pad, crop = _transpose_geometry(xs[2:], ys[2:], kernel, strides, dilations, begin)
    dx = ctx.op("ConvTranspose", scaled, ones, strides=strides, dilations=dilations, pads=pads,
                output_padding=out_pad if any(out_pad) else None, group=channels)
    return _crop(ctx, dx, crop)


@rule("AveragePool")
def average_pool(ctx):
    return ctx.data_grad(average_pool_vjp(ctx, ctx.dy()))


def global_average_pool_vjp(ctx, dy: str) -> str:
    x = ctx.x()
    area = int(np.prod(ctx.dims(x, range(2, ctx.rank(x)))))
    return ctx.op("Expand", ctx.scale(dy, 1.0 / area), ctx.shape_of(x))


@rule("GlobalAveragePool")
def global_average_pool(ctx):
    return ctx.data_grad(global_average_pool_vjp(ctx, ctx.dy()))


@rule("GlobalMaxPool")
def global_max_pool(ctx):
    # the gradient goes to the maxima, shared equally between ties
    x, y = ctx.x(), ctx.y()
    mask = ctx.op("Cast", ctx.op("Equal", x, y), to=ctx.e.dtypes[x])
    axes = list(range(2, ctx.rank(x)))
    count = ctx.reduce_sum(mask, axes, keepdims=1)
    return ctx.data_grad(ctx.mul(mask, ctx.op("Div", ctx.dy(), count)))


@rule("BatchNormalization")
def batch_normalization(ctx):
    # inference: y = (x - mean) * scale / sqrt(var + eps) + B  ->  dx = dy * scale / sqrt(var + eps) (channel axis 1)
    if ctx.attr("training_mode", 0) or len([o for o in ctx.node.output if o]) > 1:
        raise UnsupportedOpError(f"{node_label(ctx.node)}: training-mode BatchNormalization cannot be explained; export in eval mode")
    x = ctx.x()
    bshape = [-1] + [1] * (ctx.rank(x) - 2)
    eps = ctx.attr("epsilon", 1e-5)
    scale, var = ctx.const(ctx.x(1)), ctx.const(ctx.x(4))
    if scale is not None and var is not None:
        factor = ctx.constant((scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)).reshape(bshape), like=x)
    else:
        std = ctx.op("Sqrt", ctx.op("Add", ctx.x(4), ctx.constant(eps, like=ctx.x(4))))
        factor = ctx.op("Reshape", ctx.op("Div", ctx.x(1), std), ctx.ints(bshape))
    return ctx.data_grad(ctx.mul(ctx.dy(), factor))


@rule("LayerNormalization")
def layer_normalization(ctx):
    x, dy = ctx.x(0), ctx.dy()
    rank = ctx.rank(x)
    axis = ctx.attr("axis", -1) % rank
    axes = list(range(axis, rank))
    n = int(np.prod(ctx.dims(x, axes)))
    mean = lambda t: ctx.scale(ctx.reduce_sum(t, axes, keepdims=1), 1.0 / n)  # noqa: E731
    centered = ctx.op("Sub", x, mean(x))
    var = mean(ctx.mul(centered, centered))
    inv = ctx.op("Reciprocal", ctx.op("Sqrt", ctx.op("Add", var, ctx.constant(ctx.attr("epsilon", 1e-5), like=x))))
    xhat = ctx.mul(centered, inv)
    g = ctx.mul(dy, ctx.x(1))
    inner = ctx.op("Sub", ctx.op("Sub", g, mean(g)), ctx.mul(xhat, mean(ctx.mul(g, xhat))))
    return ctx.data_grad(ctx.mul(inv, inner))


def gemm_vjp(ctx, dy: str, b) -> str:
    """dA of the node's Gemm for dY with B = `b` (tensor name or array): dA' = alpha dY B'^T."""
    b, _ = _weight(ctx, b)
    alpha = ctx.attr("alpha", 1.0)
    ta, tb = ctx.attr("transA", 0), ctx.attr("transB", 0)
    return (ctx.op("Gemm", b, dy, alpha=alpha, transA=tb, transB=1) if ta
            else ctx.op("Gemm", dy, b, alpha=alpha, transB=0 if tb else 1))


@rule("Gemm")
def gemm(ctx):
    # Y = alpha A' B' + beta C, A' = A^T if transA, B' = B^T if transB
    a, b, dy = ctx.x(0), ctx.x(1), ctx.dy()
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    ta, tb = ctx.attr("transA", 0), ctx.attr("transB", 0)
    grads = [None] * len(ctx.node.input)
    if ctx.needs(0):
        grads[0] = gemm_vjp(ctx, dy, b)
    if ctx.needs(1):
        # dB' = alpha A'^T dY
        grads[1] = (ctx.op("Gemm", dy, a, alpha=alpha, transA=1, transB=ta) if tb
                    else ctx.op("Gemm", a, dy, alpha=alpha, transA=0 if ta else 1))
    if ctx.needs(2):
        grads[2] = ctx.scale(dy, beta)  # the driver sums it back to C's shape
    return grads


def _swap_last(ctx, t, rank):
    perm = list(range(rank))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    return ctx.op("Transpose", t, perm=perm)


def matmul_vjp(ctx, dy: str, b=None, a=None, which: int = 0) -> str:
    """dA (which=0) or dB (which=1) of the node's batched MatMul Y = A B for dY, with the other operand given
    (tensor name or array; default: the node's own), each summed over broadcast batch dims."""
    a = ctx.x(0) if a is None else _weight(ctx, a)[0]
    b = ctx.x(1) if b is None else _weight(ctx, b)[0]
    sa, sb, sy = ctx.shape(ctx.x(0)), ctx.shape(ctx.x(1)), ctx.shape(ctx.y())
    if sa is None or sb is None or sy is None:
        raise UnsupportedOpError(f"{node_label(ctx.node)}: operand ranks unknown (shape inference failed)")
    sy = tuple(sy)
    if len(sa) == 1:  # (k,) -> (1, k); y loses the n axis
        a, sa, dy, sy = ctx.unsqueeze(a, [0]), (1,) + tuple(sa), ctx.unsqueeze(dy, [-2]), sy[:-1] + (1,) + sy[-1:]
    if len(sb) == 1:  # (k,) -> (k, 1); y loses the m axis
        b, sb, dy, sy = ctx.unsqueeze(b, [-1]), tuple(sb) + (1,), ctx.unsqueeze(dy, [-1]), sy + (1,)
    if which == 0:
        da = ctx.op("MatMul", dy, _swap_last(ctx, b, len(sb)))
        da = ctx.sum_to(da, sy[:-2] + tuple(sa[-2:]), tuple(sa), ctx.x(0))
        return ctx.reshape_like(da, ctx.x(0)) if len(ctx.shape(ctx.x(0))) == 1 else da
    db = ctx.op("MatMul", _swap_last(ctx, a, len(sa)), dy)
    db = ctx.sum_to(db, sy[:-2] + tuple(sb[-2:]), tuple(sb), ctx.x(1))
    return ctx.reshape_like(db, ctx.x(1)) if len(ctx.shape(ctx.x(1))) == 1 else db


@rule("MatMul")
def matmul(ctx):
    # batched Y = A B (numpy matmul): dA = dY B^T, dB = A^T dY, each summed over broadcast batch dims
    return [matmul_vjp(ctx, ctx.dy(), which=i) if ctx.needs(i) else None for i in range(2)]


@rule("Softmax")
def softmax(ctx):
    y, dy = ctx.y(), ctx.dy()
    axis = ctx.attr("axis", -1)
    inner = ctx.reduce_sum(ctx.mul(dy, y), [axis], keepdims=1)
    return ctx.data_grad(ctx.mul(y, ctx.op("Sub", dy, inner)))


@rule("LogSoftmax")
def log_softmax(ctx):
    y, dy = ctx.y(), ctx.dy()
    axis = ctx.attr("axis", -1)
    total = ctx.reduce_sum(dy, [axis], keepdims=1)
    return ctx.data_grad(ctx.op("Sub", dy, ctx.mul(ctx.op("Exp", y), total)))


_RESIZE_PROBE_ATTRS = ("mode", "coordinate_transformation_mode", "cubic_coeff_a", "exclude_outside",
                       "extrapolation_value", "nearest_mode", "antialias")


def resize_matrix(node: onnx.NodeProto, opset: int, size_in: int, size_out: int, scale: float | None) -> np.ndarray:
    """(size_out, size_in) matrix M with y = M x along one axis, read off onnxruntime's own Resize on a basis."""
    import onnxruntime as ort

    attrs = [a for a in node.attribute if a.name in _RESIZE_PROBE_ATTRS]
    basis = np.eye(size_in, dtype=np.float32).reshape(size_in, 1, 1, size_in)  # axis 0: which basis vector; axis 3 resized
    inputs = ["x", ""]
    inits = []
    if scale is not None:
        inputs.append("scales")
        inits.append(numpy_helper.from_array(np.array([1.0, 1.0, 1.0, scale], dtype=np.float32), "scales"))
    else:
        inputs += ["", "sizes"]
        inits.append(numpy_helper.from_array(np.array([size_in, 1, 1, size_out], dtype=np.int64), "sizes"))
    resize = helper.make_node("Resize", inputs, ["y"])
    resize.attribute.extend(attrs)
    graph = helper.make_graph([resize], "probe", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, basis.shape)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(opset, 13))])
    probe.ir_version = 8
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"x": basis})[0]  # (size_in, 1, 1, size_out): out[i, 0, 0, o] = M[o, i]
    return out.reshape(size_in, size_out).T.astype(np.float64)


@rule("Resize")
def resize(ctx):
    x, y = ctx.x(0), ctx.y()
    if ctx.attr("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
        raise UnsupportedOpError(f"{node_label(ctx.node)}: tf_crop_and_resize is not supported")
    xs, ys = ctx.static_shape(x, skip_batch=True), ctx.static_shape(y, skip_batch=True)
    rank = len(xs)
    axes = [a % rank for a in (ctx.attr("axes", None) or range(rank))]
    scales = ctx.const(ctx.x(2)) if ctx.x(2) else None
    scales = scales if scales is not None and scales.size else None
    scale_of = {a: float(scales[i]) for i, a in enumerate(axes)} if scales is not None else {}
    dx = ctx.dy()
    for axis in range(rank):
        if xs[axis] == ys[axis] and scale_of.get(axis, 1.0) == 1.0:
            continue
        if axis == 0:
            raise UnsupportedOpError(f"{node_label(ctx.node)}: resizing the batch axis is not supported")
        m = resize_matrix(ctx.node, ctx.opset, xs[axis], ys[axis], scale_of.get(axis))
        if axis == rank - 1:
            dx = ctx.op("MatMul", dx, ctx.constant(m, like=x))  # (..., out) @ (out, in)
        elif axis == rank - 2:
            dx = ctx.op("MatMul", ctx.constant(m.T, like=x), dx)  # (in, out) @ (..., out, W)
        else:
            perm = list(range(rank))
            perm[axis], perm[-1] = perm[-1], perm[axis]
            moved = ctx.op("MatMul", ctx.op("Transpose", dx, perm=perm), ctx.constant(m, like=x))
            dx = ctx.op("Transpose", moved, perm=perm)
    return ctx.data_grad(dx)


def _einsum_terms(equation: str) -> tuple[list[str], str]:
    """(input terms, output term) of an einsum equation; without '->' the output is every letter used once,
    in alphabetical order, after the ellipsis (numpy's implicit mode)."""
    equation = equation.replace(" ", "")
    lhs, arrow, out = equation.partition("->")
    if not arrow:
        letters = [c for c in lhs if c.isalpha()]
        out = ("..." if "..." in lhs else "") + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return lhs.split(","), out


@rule("Einsum")
def einsum(ctx):
    # y = einsum(s_1, .., s_n -> o): dx_i = einsum(o, s_j (j != i) -> s_i)(dy, x_j ..). Letters of s_i found
    # nowhere else were summed in the forward: dx_i is dy's result without them, expanded back over them.
    terms, out = _einsum_terms(ctx.attr("equation"))
    grads = []
    for i, term in enumerate(terms):
        if not ctx.needs(i):
            grads.append(None)
            continue
        own = term.replace("...", "")
        others = [t for j, t in enumerate(terms) if j != i]
        if len(set(own)) != len(own):
            raise UnsupportedOpError(f"{node_label(ctx.node)}: a repeated subscript in {term!r} (a diagonal) has no backward rule")
        elsewhere = out + "".join(others)
        if "..." in term and "..." not in elsewhere:
            raise UnsupportedOpError(f"{node_label(ctx.node)}: an ellipsis summed away in {term!r} has no backward rule")
        lonely = [c for c in own if c not in elsewhere]
        target = "".join(c for c in term if c not in lonely)
        operands = [ctx.x(j) for j in range(len(terms)) if j != i]
        dx = ctx.op("Einsum", ctx.dy(), *operands, equation=",".join([out] + others) + "->" + target)
        if lonely:
            lead = term.index("...") if "..." in term else len(term)
            spread = ctx.rank(ctx.x(i)) - len(own)  # axes the ellipsis stands for
            axes = [p if p < lead else p + spread - 3 for p, c in enumerate(term) if c in lonely]
            dx = ctx.op("Expand", ctx.unsqueeze(dx, axes), ctx.shape_of(ctx.x(i)))
        if "..." in term:  # ellipsis axes may have been broadcast against the other operands
            dx = ctx.sum_to(dx, None, None, ctx.x(i))
        grads.append(dx)
    return grads
