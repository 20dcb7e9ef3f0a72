"""Map equations written once, for two back ends: numpy (the Python path) and ONNX nodes (export).

Each equation below is a function of an `ops` object and the arrays it hands back. `NUMPY` computes at
once (float32 numpy arrays); `OnnxOps` appends standard-domain ONNX nodes to a list and hands back
tensor names. The Python methods and `export` call the same functions, so the exported graph cannot
drift from the Python result.

Shapes: a, g (N, C, h, w) layer activations and their gradient; grad, x (N, C, H, W); maps (N, H, W).

    CAM family         M = relu( sum_c w * A )            w (N, C, 1, 1) or (N, C, h, w), per method (methods/cam.py)
    upsample           M' = R M C^T                       R (H, h), C (W, w): half-pixel bilinear weights
                                                          (kernels/resize.py's convention; two MatMuls)
    gradient finish    |g|, g^2, x g                      (methods/gradient.py)
    reduce_channels    max_c |a|, sum_c a, sum_c |a|, sqrt(sum_c a^2), sum_c a^2
    guided product     g * M'[:, None]                    (Guided Grad-CAM)
    normalize          clip(M / p, 0 or -1, 1), p the q-th percentile of |M| per map (linear interpolation
                       between order statistics, numpy's default); a map with p = 0 stays 0
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

REDUCTIONS = ("max_abs", "sum", "abs_sum", "l2", "sum_sq")


# -- back ends -------------------------------------------------------------------------------------------

class NumpyOps:
    """Arrays are numpy float32 (bool for comparisons)."""

    name = "numpy"

    def const(self, value, dtype=np.float32):
        return np.asarray(value, dtype=dtype)

    def add(self, a, b):
        return np.add(a, b, dtype=np.float32)

    def sub(self, a, b):
        return np.subtract(a, b, dtype=np.float32)

    def mul(self, a, b):
        return np.multiply(a, b, dtype=np.float32)

    def div(self, a, b):
        return np.divide(a, b, dtype=np.float32)

    def maximum(self, a, b):
        return np.maximum(a, np.float32(b) if np.isscalar(b) else b).astype(np.float32, copy=False)

    def minimum(self, a, b):
        return np.minimum(a, np.float32(b) if np.isscalar(b) else b).astype(np.float32, copy=False)

    def abs(self, a):
        return np.abs(a)

    def sqrt(self, a):
        return np.sqrt(a)

    def greater(self, a, b):
        return np.greater(a, b)

    def not_equal(self, a, b):
        return np.not_equal(a, b)

    def where(self, cond, a, b):
        return np.where(cond, np.float32(a) if np.isscalar(a) else a, np.float32(b) if np.isscalar(b) else b).astype(np.float32, copy=False)

    def sum(self, a, axes, keepdims=False):
        return np.sum(a, axis=tuple(axes), keepdims=keepdims, dtype=np.float32)

    def mean(self, a, axes, keepdims=False):
        return np.mean(a, axis=tuple(axes), keepdims=keepdims, dtype=np.float32)

    def max(self, a, axes, keepdims=False):
        return np.max(a, axis=tuple(axes), keepdims=keepdims)

    def matmul(self, a, b):
        return np.matmul(a, b, dtype=np.float32)

    def transpose(self, a, perm):
        return np.ascontiguousarray(np.transpose(a, perm))

    def reshape(self, a, shape):
        return np.reshape(a, shape)

    def unsqueeze(self, a, axes):
        return np.expand_dims(a, tuple(axes))

    def top_k(self, a, k):
        """The k largest values along the last axis, largest first."""
        n = a.shape[-1]
        part = np.partition(a, n - k, axis=-1)[..., n - k:] if k < n else a
        return -np.sort(-part, axis=-1)

    def take(self, a, index, axis):
        return np.take(a, np.asarray(index, np.int64), axis=axis)

    def lookup(self, table, index):
        """table (T, ...) constant, index an int64 array: table[index]."""
        return np.asarray(table)[index]

    def floor(self, a):
        return np.floor(a)

    def round(self, a):
        return np.round(a)  # half to even, as ONNX Round

    def cast(self, a, dtype):
        return a.astype(dtype)


NUMPY = NumpyOps()


class OnnxOps:
    """Appends nodes to `self.nodes` and constants to `self.initializers`; values are tensor names.

    opset: the model's default-domain opset (reductions take their axes as an input from 13 / 18)."""

    name = "onnx"

    def __init__(self, opset: int, prefix: str = "postprocess"):
        self.opset = opset
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _fresh(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}/{hint}_{self._count}"

    def node(self, op: str, inputs, n_outputs: int = 1, **attrs):
        outputs = [self._fresh(op) for _ in range(n_outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), outputs, name=outputs[0], **attrs))
        return outputs[0] if n_outputs == 1 else outputs

    def const(self, value, dtype=np.float32):
        name = self._fresh("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def _value(self, v):
        return v if isinstance(v, str) else self.const(v)

    def add(self, a, b):
        return self.node("Add", [self._value(a), self._value(b)])

    def sub(self, a, b):
        return self.node("Sub", [self._value(a), self._value(b)])

    def mul(self, a, b):
        return self.node("Mul", [self._value(a), self._value(b)])

    def div(self, a, b):
        return self.node("Div", [self._value(a), self._value(b)])

    def maximum(self, a, b):
        return self.node("Max", [self._value(a), self._value(b)])

    def minimum(self, a, b):
        return self.node("Min", [self._value(a), self._value(b)])

    def abs(self, a):
        return self.node("Abs", [a])

    def sqrt(self, a):
        return self.node("Sqrt", [a])

    def greater(self, a, b):
        return self.node("Greater", [self._value(a), self._value(b)])

    def not_equal(self, a, b):
        return self.node("Not", [self.node("Equal", [self._value(a), self._value(b)])])

    def where(self, cond, a, b):
        return self.node("Where", [cond, self._value(a), self._value(b)])

    def _reduce(self, op, a, axes, keepdims, axes_as_input_from):
        if self.opset >= axes_as_input_from:
            return self.node(op, [a, self.const(list(axes), np.int64)], keepdims=int(keepdims))
        return self.node(op, [a], axes=list(axes), keepdims=int(keepdims))

    def sum(self, a, axes, keepdims=False):
        return self._reduce("ReduceSum", a, axes, keepdims, 13)

    def mean(self, a, axes, keepdims=False):
        return self._reduce("ReduceMean", a, axes, keepdims, 18)

    def max(self, a, axes, keepdims=False):
        return self._reduce("ReduceMax", a, axes, keepdims, 18)

    def matmul(self, a, b):
        return self.node("MatMul", [self._value(a), self._value(b)])

    def transpose(self, a, perm):
        return self.node("Transpose", [a], perm=list(perm))

    def reshape(self, a, shape):
        return self.node("Reshape", [a, self.const(list(shape), np.int64)])

    def unsqueeze(self, a, axes):
        if self.opset >= 13:
            return self.node("Unsqueeze", [a, self.const(list(axes), np.int64)])
        return self.node("Unsqueeze", [a], axes=list(axes))

    def top_k(self, a, k):
        values, _ = self.node("TopK", [a, self.const([k], np.int64)], n_outputs=2, axis=-1, largest=1, sorted=1)
        return values

    def take(self, a, index, axis):
        return self.node("Gather", [a, self.const(index, np.int64)], axis=axis)

    def lookup(self, table, index):
        return self.node("Gather", [self.const(table, np.asarray(table).dtype), index], axis=0)

    def floor(self, a):
        return self.node("Floor", [a])

    def round(self, a):
        return self.node("Round", [a])

    def cast(self, a, dtype):
        return self.node("Cast", [a], to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


# -- equations -------------------------------------------------------------------------------------------

def relu(ops, m):
    return ops.maximum(m, 0.0)


def weighted_sum(ops, weights, a, apply_relu=True):
    """(N, h, w) = relu?( sum_c weights * a ); weights (N, C, 1, 1) per channel or (N, C, h, w) per element."""
    m = ops.sum(ops.mul(weights, a), axes=[1])
    return relu(ops, m) if apply_relu else m


def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) float32: row d holds the half-pixel bilinear weights of output index d."""
    d = np.arange(size_out, dtype=np.float64)
    s = np.clip((d + 0.5) * size_in / size_out - 0.5, 0.0, size_in - 1)
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, size_in - 1)
    t = s - i0
    matrix = np.zeros((size_out, size_in), np.float64)
    np.add.at(matrix, (np.arange(size_out), i0), 1 - t)
    np.add.at(matrix, (np.arange(size_out), i1), t)
    return matrix.astype(np.float32)


def upsample(ops, maps, size_in: tuple[int, int], size_out: tuple[int, int]):
    """(N, h, w) -> (N, H, W) half-pixel bilinear: R @ maps @ C^T (identity sizes pass through)."""
    (h, w), (height, width) = size_in, size_out
    if (h, w) == (height, width):
        return maps
    rows = ops.matmul(ops.const(bilinear_matrix(h, height)), maps)  # (N, H, w)
    return ops.matmul(rows, ops.const(bilinear_matrix(w, width).T))  # (N, H, W)


def finish_gradient(ops, how: str, grad, x):
    """The per-pixel attribution of a gradient method: 'identity' g, 'abs' |g|, 'square' g^2, 'times_input' x g."""
    if how == "identity":
        return grad
    if how == "abs":
        return ops.abs(grad)
    if how == "square":
        return ops.mul(grad, grad)
    if how == "times_input":
        return ops.mul(grad, x)
    raise ValueError(f"unknown gradient finish {how!r}")


def reduce_channels(ops, a, how: str, axis: int):
    """(N, H, W) from attributions with channels on `axis` (Simonyan 2013 max_abs; sum; abs_sum; l2; sum_sq)."""
    if how == "max_abs":
        return ops.max(ops.abs(a), axes=[axis])
    if how == "sum":
        return ops.sum(a, axes=[axis])
    if how == "abs_sum":
        return ops.sum(ops.abs(a), axes=[axis])
    if how == "l2":
        return ops.sqrt(ops.sum(ops.mul(a, a), axes=[axis]))
    if how == "sum_sq":
        return ops.sum(ops.mul(a, a), axes=[axis])
    raise ValueError(f"unknown channel reduction {how!r}; choose one of {', '.join(REDUCTIONS)}")


def guided_product(ops, guided, cam):
    """(N, C, H, W) guided gradient times the (N, H, W) upsampled CAM map."""
    return ops.mul(guided, ops.unsqueeze(cam, [1]))


def percentile(ops, maps, n_pixels: int, q: float):
    """(N, 1, 1): the q-th percentile of |map| over each map's n_pixels values (numpy's 'linear' method).

    With v the ascending order statistics and pos = (n - 1) q / 100: p = v[lo] + (v[hi] - v[lo]) (pos - lo),
    lo = floor(pos), hi = min(lo + 1, n - 1). Only the n - lo largest values are needed (TopK)."""
    n = n_pixels
    pos = (n - 1) * float(q) / 100.0
    lo = min(int(math.floor(pos)), n - 1)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    top = ops.top_k(ops.reshape(ops.abs(maps), [-1, n]), n - lo)  # (N, n - lo), largest first: v[n-1], ..., v[lo]
    v_lo = ops.take(top, [n - 1 - lo], axis=1)
    if frac == 0 or hi == lo:
        p = v_lo
    else:
        v_hi = ops.take(top, [n - 1 - hi], axis=1)
        p = ops.add(v_lo, ops.mul(ops.sub(v_hi, v_lo), np.float32(frac)))
    return ops.unsqueeze(p, [2])


def normalize(ops, maps, n_pixels: int, q: float = 99.0, signed: bool = False):
    """(N, H, W) -> clip(maps / p, 0 (or -1 when signed), 1); p from percentile(); zero where p = 0."""
    p = percentile(ops, maps, n_pixels, q)
    positive = ops.greater(p, 0.0)
    scaled = ops.where(positive, ops.div(maps, ops.where(positive, p, 1.0)), 0.0)
    return ops.minimum(ops.maximum(scaled, -1.0 if signed else 0.0), 1.0)


def overlay(ops, photo, values, signed: bool, smooth: bool, lut: np.ndarray, alpha: float = 0.6):
    """(N, H, W, 3) uint8: the normalised map `values` (N, H, W) drawn over `photo` (N, H, W, 3) floats in 0..255.

    colour = lut[floor(clip(v' 255 + 1/2, 0, 255))], v' = v (or (v + 1) / 2 when signed), lut a (256, 3) table;
    smooth (CAM) maps: out = (1 - alpha) photo + alpha colour;
    pixel maps: base = (photo / 2 + gray / 2)(1 - 3 alpha / 4) (gray: the channel mean), weight = sqrt(|v|)
    (|v| when signed) clipped to [0, 1]: out = (1 - weight) base + weight colour;
    out = floor(clip(out + 1/2, 0, 255)) as uint8.
    """
    shifted = ops.mul(ops.add(values, 1.0), 0.5) if signed else values
    index = ops.floor(ops.minimum(ops.maximum(ops.add(ops.mul(shifted, 255.0), 0.5), 0.0), 255.0))
    colors = ops.lookup(np.asarray(lut, np.float32), ops.cast(index, np.int64))  # (N, H, W, 3)
    if smooth:
        mixed = ops.add(ops.mul(photo, np.float32(1 - alpha)), ops.mul(colors, np.float32(alpha)))
    else:
        gray = ops.mean(photo, axes=[3], keepdims=True)
        base = ops.mul(ops.add(ops.mul(photo, 0.5), ops.mul(gray, 0.5)), np.float32(1 - alpha * 0.75))
        strength = ops.minimum(ops.abs(values), 1.0)
        weight = ops.unsqueeze(strength if signed else ops.sqrt(strength), [3])
        mixed = ops.add(ops.mul(ops.sub(1.0, weight), base), ops.mul(weight, colors))
    return ops.cast(ops.floor(ops.minimum(ops.maximum(ops.add(mixed, 0.5), 0.0), 255.0)), np.uint8)


def photo_from_input(ops, x, layout: str, scale: float, mean, std, bgr: bool = False):
    """(N, H, W, 3) pixels 0..255 back from the model input x = (pixel * scale - mean) / std (preprocess.py):
    pixel = round((x std + mean) / scale), clipped to 0..255, RGB, channels last."""
    if layout != "NHWC":
        x = ops.transpose(x, (0, 2, 3, 1))
    values = ops.add(ops.mul(x, np.asarray(std, np.float32)), np.asarray(mean, np.float32))  # mean, std: model order
    if bgr:
        values = ops.take(values, [2, 1, 0], axis=3)
    pixels = ops.round(ops.div(values, np.float32(scale)))
    return ops.minimum(ops.maximum(pixels, 0.0), 255.0)


def path_points(ops, x, baseline, alphas: np.ndarray, shape: tuple):
    """Integrated Gradients' points b + a_k (x - b), step-major: (m N, ...) rows k N + i; `shape` = x's shape
    without the batch axis, baseline broadcastable to x."""
    m = len(alphas)
    diff = ops.unsqueeze(ops.sub(x, baseline), [0])  # (1, N, ...)
    steps = np.asarray(alphas, np.float32).reshape((m,) + (1,) * (len(shape) + 1))
    points = ops.add(ops.mul(diff, steps), baseline)  # (m, N, ...)
    return ops.reshape(points, [-1, *shape])


def path_integral(ops, grads, weights: np.ndarray, shape: tuple):
    """sum_k w_k grads[k N + i]: (m N, ...) -> (N, ...), the quadrature of the path gradients."""
    m = len(weights)
    per_step = ops.reshape(grads, [m, -1, *shape])
    w = np.asarray(weights, np.float32).reshape((m,) + (1,) * (len(shape) + 1))
    return ops.sum(ops.mul(per_step, w), axes=[0])


def display_percentile(method: str) -> float:
    """The percentile the CLI scales a method's maps by: 100 (the maximum) for smooth CAM maps, else 99."""
    from .workflow import SMOOTH_MAPS

    return 100.0 if method in SMOOTH_MAPS else 99.0
