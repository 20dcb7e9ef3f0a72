"""Every backward rule against directional finite differences (oracle 1 of DESIGN.md).

Inputs are kept away from kinks (ReLU at 0, HardSwish at +-3, ...) so that the finite difference is a
derivative. The coverage test fails when a registered op has no case here.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from oracles import Case, fd_check
from onnxsal.autodiff import supported_ops

N = helper.make_node
R = np.random.default_rng(1234)


def rnd(*shape, scale=1.0):
    return R.standard_normal(shape) * scale


def away(*shape, kinks=(0.0,), margin=0.15, spread=2.0):
    """Values at least `margin` away from every kink."""
    x = R.uniform(-spread, spread, size=shape)
    for _ in range(50):
        near = np.zeros(shape, dtype=bool)
        for k in kinks:
            near |= np.abs(x - k) < margin
        if not near.any():
            return x
        x[near] = R.uniform(-spread, spread, size=int(near.sum()))
    raise AssertionError("could not place values away from kinks")


def positive(*shape, low=0.3, high=2.0):
    return R.uniform(low, high, size=shape)


def distinct(*shape):
    """Values with gaps of at least 0.06 between any two: no ties for max ops, and no finite-difference
    step (at most ~0.04 in float32) can change which one is largest."""
    n = int(np.prod(shape))
    return ((R.permutation(n) * 0.1 + R.uniform(0, 0.04, n)).reshape(shape) - n * 0.05) / max(1.0, n / 50)


def unary(op, x=None, opset=17, **attrs):
    return Case(op if not attrs else f"{op}-{attrs}", [N(op, ["x"], ["y"], **attrs)],
                {"x": away(2, 3, 4, 5) if x is None else x}, opset=opset)


X4 = (2, 3, 6, 7)

CASES = [
    # -- elementwise
    unary("Neg"), unary("Abs"), unary("Exp"), unary("Sin"), unary("Cos"), unary("Erf"),
    unary("Log", positive(2, 3, 4)), unary("Sqrt", positive(2, 3, 4)), unary("Reciprocal", away(2, 3, 4, margin=0.3)),
    Case("Add-broadcast", [N("Add", ["a", "b"], ["y"])], {"a": rnd(2, 3, 4, 5), "b": rnd(3, 1, 1)}),
    Case("Add-scalar", [N("Add", ["a", "b"], ["y"])], {"a": rnd(2, 3), "b": rnd()}),
    Case("Sub", [N("Sub", ["a", "b"], ["y"])], {"a": rnd(2, 1, 4), "b": rnd(3, 1)}),
    Case("Mul", [N("Mul", ["a", "b"], ["y"])], {"a": rnd(2, 3, 4, 5), "b": rnd(1, 3, 1, 5)}),
    Case("Div", [N("Div", ["a", "b"], ["y"])], {"a": rnd(2, 3, 4), "b": away(3, 1, margin=0.5)}),
    Case("Pow-const", [N("Pow", ["a", "e"], ["y"])], {"a": positive(2, 3, 4)}, {"e": np.array(2.5)}),
    Case("Pow-square", [N("Pow", ["a", "e"], ["y"])], {"a": rnd(2, 3, 4)}, {"e": np.array(2.0)}),
    Case("Pow-both", [N("Pow", ["a", "b"], ["y"])], {"a": positive(2, 3), "b": rnd(3)}),
    Case("Max", [N("Max", ["a", "b", "c"], ["y"])], {"a": distinct(2, 3, 4), "b": distinct(3, 4) + 0.003, "c": distinct(4) + 0.006}),
    Case("Min", [N("Min", ["a", "b"], ["y"])], {"a": distinct(2, 3, 4), "b": distinct(2, 1, 4) + 0.003}),
    Case("Sum", [N("Sum", ["a", "b", "c"], ["y"])], {"a": rnd(2, 3, 4), "b": rnd(3, 4), "c": rnd(1, 1, 4)}),
    Case("Mean", [N("Mean", ["a", "b"], ["y"])], {"a": rnd(2, 3, 4), "b": rnd(3, 1)}),
    Case("Where", [N("Where", ["c", "a", "b"], ["y"])], {"a": rnd(2, 3, 4), "b": rnd(3, 1)},
         {"c": R.uniform(size=(2, 3, 4)) > 0.5}),
    Case("Cast", [N("Cast", ["x"], ["xd"], to=TensorProto.DOUBLE), N("Cast", ["xd"], ["y"], to=TensorProto.FLOAT)],
         {"x": rnd(2, 3)}, dtypes=(np.float32,)),
    Case("CastLike", [N("Cast", ["x"], ["xd"], to=TensorProto.DOUBLE), N("CastLike", ["xd", "x"], ["y"])], {"x": rnd(2, 3)},
         dtypes=(np.float32,)),
    Case("Expand", [N("Expand", ["x", "s"], ["y"])], {"x": rnd(3, 1)}, {"s": np.array([2, 3, 4], dtype=np.int64)}),
    Case("Identity-Dropout", [N("Identity", ["x"], ["t"]), N("Dropout", ["t"], ["y"])], {"x": rnd(2, 3)}),
    Case("Floor-Ceil-Round-Sign", [N("Floor", ["x"], ["f"]), N("Ceil", ["x"], ["c"]), N("Round", ["x"], ["r"]),
                                   N("Sign", ["x"], ["s"]), N("Mul", ["x", "x"], ["q"]), N("Sum", ["f", "c", "r", "s", "q"], ["y"])],
         {"x": away(2, 3, kinks=(-2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2), margin=0.05)}),
    # -- activations
    unary("Relu"), unary("LeakyRelu", alpha=0.1), unary("Elu", alpha=0.7), unary("Selu"), unary("Celu", alpha=1.3),
    unary("Sigmoid"), unary("Tanh"), unary("Softplus"), unary("Softsign"),
    unary("ThresholdedRelu", away(2, 3, 4, kinks=(0.5,)), alpha=0.5),
    unary("HardSigmoid", away(2, 3, 4, kinks=(-2.5, 2.5), spread=4), alpha=0.2, beta=0.5),
    unary("HardSwish", away(2, 3, 4, 5, kinks=(-3, 3), spread=5)),
    unary("Gelu", opset=20), unary("Gelu", opset=20, approximate="tanh"), unary("Mish", opset=18),
    Case("PRelu", [N("PRelu", ["x", "slope"], ["y"])], {"x": away(2, 3, 4, 5)}, {"slope": R.uniform(0.05, 0.3, (3, 1, 1))}),
    Case("Clip-relu6", [N("Clip", ["x", "lo", "hi"], ["y"])], {"x": away(2, 3, 4, kinks=(0, 1), spread=3)},
         {"lo": np.array(0.0), "hi": np.array(1.0)}),
    Case("Clip-max-only", [N("Clip", ["x", "", "hi"], ["y"])], {"x": away(2, 3, 4, kinks=(0.5,))}, {"hi": np.array(0.5)}),
    # -- convolution and pooling
    Case("Conv-3x3", [N("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])], {"x": rnd(*X4)}, {"w": rnd(4, 3, 3, 3), "b": rnd(4)}),
    Case("Conv-stride-dilation-asym", [N("Conv", ["x", "w"], ["y"], strides=[2, 3], dilations=[2, 1], pads=[1, 0, 2, 1])],
         {"x": rnd(2, 3, 11, 10)}, {"w": rnd(5, 3, 3, 2)}),
    Case("Conv-group", [N("Conv", ["x", "w"], ["y"], group=2, pads=[1, 1, 1, 1], strides=[2, 2])], {"x": rnd(2, 4, 7, 7)},
         {"w": rnd(6, 2, 3, 3)}),
    Case("Conv-depthwise-7x7", [N("Conv", ["x", "w"], ["y"], group=4, pads=[3, 3, 3, 3])], {"x": rnd(1, 4, 9, 9)},
         {"w": rnd(4, 1, 7, 7)}),
    Case("Conv-same-upper", [N("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2])], {"x": rnd(2, 3, 7, 8)},
         {"w": rnd(4, 3, 3, 3)}),
    Case("Conv-same-lower", [N("Conv", ["x", "w"], ["y"], auto_pad="SAME_LOWER", strides=[2, 2])], {"x": rnd(2, 3, 8, 7)},
         {"w": rnd(4, 3, 4, 4)}),
    Case("Conv-valid-floor", [N("Conv", ["x", "w"], ["y"], auto_pad="VALID", strides=[3, 3])], {"x": rnd(1, 2, 11, 10)},
         {"w": rnd(3, 2, 2, 2)}),
    Case("Conv-1d", [N("Conv", ["x", "w"], ["y"], pads=[2, 1], strides=[2])], {"x": rnd(2, 3, 13)}, {"w": rnd(4, 3, 5)}),
    Case("Conv-stride1-group-dilated-asym", [N("Conv", ["x", "w"], ["y"], group=2, dilations=[2, 1], pads=[2, 1, 0, 2])],
         {"x": rnd(2, 4, 9, 8)}, {"w": rnd(6, 2, 3, 4)}),
    Case("Conv-stride1-pad-beyond-kernel", [N("Conv", ["x", "w"], ["y"], pads=[3, 0, 1, 2])], {"x": rnd(1, 2, 6, 5)},
         {"w": rnd(3, 2, 2, 3)}),
    Case("ConvTranspose", [N("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 0])],
         {"x": rnd(2, 4, 5, 6)}, {"w": rnd(4, 3, 3, 3), "b": rnd(3)}),
    Case("ConvTranspose-group-outpad", [N("ConvTranspose", ["x", "w"], ["y"], strides=[3, 2], output_padding=[2, 1], group=2)],
         {"x": rnd(1, 4, 4, 5)}, {"w": rnd(4, 2, 2, 3)}),
    Case("MaxPool-3x3-s2-p1", [N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
         {"x": distinct(2, 3, 9, 8)}),
    Case("MaxPool-2x2-ceil-dilated", [N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, dilations=[1, 2])],
         {"x": distinct(2, 2, 7, 9)}),
    Case("AveragePool-exclude-pad", [N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
         {"x": rnd(2, 3, 9, 8)}),
    Case("AveragePool-include-pad-ceil", [N("AveragePool", ["x"], ["y"], kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1],
                                            count_include_pad=1, ceil_mode=1)], {"x": rnd(2, 3, 8, 7)}),
    Case("AveragePool-2x2", [N("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])], {"x": rnd(2, 3, 7, 6)}),
    Case("GlobalAveragePool", [N("GlobalAveragePool", ["x"], ["y"])], {"x": rnd(*X4)}),
    Case("GlobalMaxPool", [N("GlobalMaxPool", ["x"], ["y"])], {"x": distinct(*X4)}),
    # -- normalisation, dense layers, softmax
    Case("BatchNormalization", [N("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)], {"x": rnd(*X4)},
         {"s": rnd(3), "b": rnd(3), "m": rnd(3), "v": positive(3)}),
    Case("LayerNormalization", [N("LayerNormalization", ["x", "s", "b"], ["y"], epsilon=1e-5)], {"x": rnd(2, 5, 8)},
         {"s": rnd(8), "b": rnd(8)}),
    Case("LayerNormalization-axis1", [N("LayerNormalization", ["x", "s"], ["y"], axis=1)], {"x": rnd(2, 4, 3, 3)},
         {"s": rnd(4, 3, 3)}),
    Case("Gemm-transB-bias", [N("Gemm", ["a", "w", "c"], ["y"], transB=1, alpha=0.7, beta=1.3)], {"a": rnd(3, 5)},
         {"w": rnd(4, 5), "c": rnd(4)}),
    Case("Gemm-transA-active", [N("Gemm", ["a", "b", "c"], ["y"], transA=1)], {"a": rnd(5, 3), "b": rnd(5, 4), "c": rnd(1, 4)}),
    Case("Gemm-transAB", [N("Gemm", ["a", "b"], ["y"], transA=1, transB=1, alpha=2.0)], {"a": rnd(5, 3), "b": rnd(4, 5)}),
    Case("MatMul-weight", [N("MatMul", ["a", "w"], ["y"])], {"a": rnd(2, 3, 4, 5)}, {"w": rnd(5, 6)}),
    Case("MatMul-batched-broadcast", [N("MatMul", ["a", "b"], ["y"])], {"a": rnd(2, 1, 4, 5), "b": rnd(3, 5, 6)}),
    Case("MatMul-vector", [N("MatMul", ["a", "b"], ["y"])], {"a": rnd(5), "b": rnd(2, 5, 3)}),
    Case("MatMul-matvec", [N("MatMul", ["a", "b"], ["y"])], {"a": rnd(2, 4, 5), "b": rnd(5)}),
    Case("Einsum-attention", [N("Einsum", ["q", "k"], ["y"], equation="bhid,bhjd->bhij")], {"q": rnd(2, 2, 3, 4), "k": rnd(2, 2, 5, 4)}),
    Case("Einsum-weights", [N("Einsum", ["a", "v"], ["y"], equation="bgij, bgjd -> bgid")], {"a": rnd(2, 3, 4, 5)},
         {"v": rnd(2, 3, 5, 2)}),
    Case("Einsum-implicit", [N("Einsum", ["a", "b"], ["y"], equation="ij,jk")], {"a": rnd(3, 4), "b": rnd(4, 2)}),
    Case("Einsum-summed-letter", [N("Einsum", ["a", "b"], ["y"], equation="ijk,k->i")], {"a": rnd(3, 4, 2), "b": rnd(2)}),
    Case("Einsum-ellipsis-broadcast", [N("Einsum", ["a", "b"], ["y"], equation="...ij,...jk->...ik")],
         {"a": rnd(2, 3, 4, 5), "b": rnd(1, 3, 5, 2)}),
    Case("Einsum-ellipsis-summed-letter", [N("Einsum", ["a"], ["y"], equation="i...j->...j")], {"a": rnd(3, 2, 4, 5)}),
    Case("Softmax", [N("Softmax", ["x"], ["y"])], {"x": rnd(2, 3, 5)}),
    Case("Softmax-axis1", [N("Softmax", ["x"], ["y"], axis=1)], {"x": rnd(2, 4, 3)}),
    Case("LogSoftmax", [N("LogSoftmax", ["x"], ["y"], axis=-1)], {"x": rnd(3, 6)}),
    # -- resize (the backward is the op's own interpolation matrix, transposed)
    Case("Resize-linear-half-pixel", [N("Resize", ["x", "", "sc"], ["y"], mode="linear")], {"x": rnd(2, 3, 4, 5)},
         {"sc": np.array([1, 1, 2, 1.5], dtype=np.float32)}),
    Case("Resize-nearest-sizes", [N("Resize", ["x", "", "", "sz"], ["y"], mode="nearest", coordinate_transformation_mode="asymmetric")],
         {"x": rnd(2, 3, 4, 5)}, {"sz": np.array([2, 3, 7, 9], dtype=np.int64)}),
    Case("Resize-cubic-align-corners", [N("Resize", ["x", "", "sc"], ["y"], mode="cubic", coordinate_transformation_mode="align_corners")],
         {"x": rnd(1, 2, 5, 4)}, {"sc": np.array([1, 1, 1.6, 2], dtype=np.float32)}),
    Case("Resize-antialias-down", [N("Resize", ["x", "", "", "sz"], ["y"], mode="linear", antialias=1)], {"x": rnd(1, 2, 9, 8)},
         {"sz": np.array([1, 2, 4, 3], dtype=np.int64)}, opset=18),
    Case("Resize-nhwc-axes", [N("Resize", ["x", "", "sc"], ["y"], mode="linear", axes=[1, 2])], {"x": rnd(2, 4, 3, 2)},
         {"sc": np.array([2, 1.5], dtype=np.float32)}, opset=18),
    # -- data movement
    Case("Reshape", [N("Reshape", ["x", "s"], ["y"])], {"x": rnd(2, 3, 4)}, {"s": np.array([0, -1], dtype=np.int64)}),
    Case("Flatten", [N("Flatten", ["x"], ["y"], axis=2)], {"x": rnd(2, 3, 4, 2)}),
    Case("Squeeze-Unsqueeze", [N("Squeeze", ["x", "a"], ["t"]), N("Unsqueeze", ["t", "b"], ["y"])], {"x": rnd(2, 1, 4)},
         {"a": np.array([1], dtype=np.int64), "b": np.array([0, 3], dtype=np.int64)}),
    Case("Transpose", [N("Transpose", ["x"], ["y"], perm=[0, 2, 3, 1])], {"x": rnd(2, 3, 4, 5)}),
    Case("Transpose-default", [N("Transpose", ["x"], ["y"])], {"x": rnd(2, 3, 4)}),
    Case("Concat", [N("Concat", ["a", "k", "b"], ["y"], axis=1)], {"a": rnd(2, 3, 4), "b": rnd(2, 1, 4)}, {"k": rnd(2, 2, 4)}),
    Case("Split", [N("Split", ["x", "s"], ["p", "q", "r"], axis=2), N("Mul", ["p", "r"], ["y"])], {"x": rnd(2, 3, 6)},
         {"s": np.array([2, 2, 2], dtype=np.int64)}),
    Case("Split-num-outputs", [N("Split", ["x"], ["p", "q"], axis=1, num_outputs=2), N("Sub", ["p", "q"], ["y"])],
         {"x": rnd(2, 4, 3)}, opset=18),
    Case("Slice-steps", [N("Slice", ["x", "st", "en", "ax", "sp"], ["y"])], {"x": rnd(2, 7, 8)},
         {"st": np.array([1, -1], dtype=np.int64), "en": np.array([7, -9], dtype=np.int64),
          "ax": np.array([1, 2], dtype=np.int64), "sp": np.array([2, -3], dtype=np.int64)}),
    Case("Slice-contiguous", [N("Slice", ["x", "st", "en"], ["y"])], {"x": rnd(5, 6)},
         {"st": np.array([1, 2], dtype=np.int64), "en": np.array([4, 100], dtype=np.int64)}),
    Case("Gather-scalar-token", [N("Gather", ["x", "i"], ["y"], axis=1)], {"x": rnd(2, 5, 3)}, {"i": np.array(0, dtype=np.int64)}),
    Case("Gather-repeats", [N("Gather", ["x", "i"], ["y"], axis=2)], {"x": rnd(2, 3, 5)},
         {"i": np.array([[4, 0], [4, -1]], dtype=np.int64)}),
    # indices computed at run time (torch dynamo's as_strided pattern): i = Range(0, N) * 60 + c, c with repeats
    Case("Gather-runtime-indices", [N("Reshape", ["x", "flat"], ["f"]), N("Shape", ["x"], ["s"], end=1),
                                    N("Squeeze", ["s"], ["n"]), N("Range", ["zero", "n", "one"], ["r"]),
                                    N("Unsqueeze", ["r", "ax1"], ["r1"]), N("Mul", ["r1", "stride"], ["base"]),
                                    N("Add", ["base", "c"], ["i"]), N("Gather", ["f", "i"], ["y"], axis=0)],
         {"x": rnd(2, 3, 4, 5)},
         {"flat": np.array([-1], dtype=np.int64), "zero": np.array(0, dtype=np.int64), "one": np.array(1, dtype=np.int64),
          "ax1": np.array([1], dtype=np.int64), "stride": np.array(60, dtype=np.int64),
          "c": np.array([[0, 5, 5, 17, 59, 3, 3]], dtype=np.int64)}),
    Case("Gather-axis0-of-qkv", [N("Gather", ["x", "i"], ["y"], axis=0)], {"x": rnd(3, 4, 2, 6)}, {"i": np.array(-2, dtype=np.int64)}),
    Case("GatherElements", [N("GatherElements", ["x", "i"], ["y"], axis=1)], {"x": rnd(3, 4)},
         {"i": np.array([[0, 3, 3, -1, 2, 0], [1, 1, 1, 1, -4, 2], [3, 2, 1, 0, 0, -3]], dtype=np.int64)}),
    Case("GatherND", [N("GatherND", ["x", "i"], ["y"])], {"x": rnd(2, 3, 4)},
         {"i": np.array([[0, 1], [1, 2], [0, 1], [-1, 0], [1, -1]], dtype=np.int64)}),
    Case("GatherND-full-index", [N("GatherND", ["x", "i"], ["y"])], {"x": rnd(2, 3)},
         {"i": np.array([[[0, 1], [1, 2]], [[0, 1], [1, 0]]], dtype=np.int64)}),
    Case("GatherND-batch-dims-1", [N("GatherND", ["x", "i"], ["y"], batch_dims=1)], {"x": rnd(2, 3, 4, 5)},
         {"i": np.array([[[0, 1], [2, 3], [0, 1], [-1, 0]], [[1, 1], [1, 1], [2, -4], [0, 2]]], dtype=np.int64)}),
    Case("GatherND-batch-dims-2", [N("GatherND", ["x", "i"], ["y"], batch_dims=2)], {"x": rnd(2, 3, 4)},
         {"i": np.array([[[0], [3], [1]], [[2], [2], [-1]]], dtype=np.int64)}),
    Case("Pad-constant", [N("Pad", ["x", "p", "v"], ["y"])], {"x": rnd(2, 3, 5, 4)},
         {"p": np.array([0, 0, 2, -1, 0, 1, -1, 3], dtype=np.int64), "v": np.array(0.5)}),
    Case("Pad-reflect", [N("Pad", ["x", "p"], ["y"], mode="reflect")], {"x": rnd(2, 3, 5, 4)},
         {"p": np.array([0, 0, 2, 1, 0, 0, 3, 2], dtype=np.int64)}),
    Case("Pad-edge-axes", [N("Pad", ["x", "p", "", "a"], ["y"], mode="edge")], {"x": rnd(2, 3, 5)},
         {"p": np.array([3, 1, 2, 2], dtype=np.int64), "a": np.array([1, 2], dtype=np.int64)}, opset=18),
    Case("Tile", [N("Tile", ["x", "r"], ["y"])], {"x": rnd(2, 3, 4)}, {"r": np.array([1, 2, 3], dtype=np.int64)}),
    Case("DepthToSpace", [N("DepthToSpace", ["x"], ["y"], blocksize=2)], {"x": rnd(2, 8, 3, 4)}),
    Case("SpaceToDepth", [N("SpaceToDepth", ["x"], ["y"], blocksize=2)], {"x": rnd(2, 2, 4, 6)}),
    # -- reductions
    Case("ReduceSum", [N("ReduceSum", ["x", "a"], ["y"], keepdims=0)], {"x": rnd(2, 3, 4)}, {"a": np.array([1], dtype=np.int64)}),
    Case("ReduceMean-attr", [N("ReduceMean", ["x"], ["y"], axes=[2, 3])], {"x": rnd(*X4)}),
    Case("ReduceMean-input", [N("ReduceMean", ["x", "a"], ["y"], keepdims=0)], {"x": rnd(2, 4, 5, 3)},
         {"a": np.array([1, 2], dtype=np.int64)}, opset=18),
    Case("ReduceMax", [N("ReduceMax", ["x"], ["y"], axes=[-1], keepdims=0)], {"x": distinct(2, 3, 4)}),
    Case("ReduceMin", [N("ReduceMin", ["x"], ["y"], axes=[0, 2])], {"x": distinct(2, 3, 4)}),
    Case("ReduceL2", [N("ReduceL2", ["x"], ["y"], axes=[1])], {"x": rnd(2, 3, 4)}),
    Case("ReduceSumSquare", [N("ReduceSumSquare", ["x"], ["y"], axes=[1, 2], keepdims=0)], {"x": rnd(2, 3, 4)}),
    Case("ReduceLogSumExp", [N("ReduceLogSumExp", ["x"], ["y"])], {"x": rnd(2, 3, 4)}),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule_matches_finite_differences(case):
    fd_check(case)


def test_every_registered_op_has_a_finite_difference_case():
    covered = set().union(*(c.op_types for c in CASES))
    missing = sorted(set(supported_ops()) - covered)
    assert not missing, f"registered ops without a finite-difference case: {missing}"
