"""Canonicalizers and layer selection: each pass on a small model, checking the op list, the checker and
that onnxruntime computes the same outputs before and after; the loader's errors for bad models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from oracles import Case, fd_check, ortt_gradients, session, cosine, max_rel_err
from onnxsal.errors import LayerError, ModelError, UnsupportedOpError
from onnxsal.graph import canonicalize as canon
from onnxsal.graph import candidate_layers, load_model, select_layer
from onnxsal.runtime import Engine

N = helper.make_node
R = np.random.default_rng(3)


def model_of(nodes, inputs, outputs, inits=(), opset=17, ir=8):
    graph = helper.make_graph(nodes, "m", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in dict(inits).items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir
    return m


def f32(*shape):
    return R.standard_normal(shape).astype(np.float32)


def vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def run(model, x, name="x"):
    return session(model).run(None, {name: x})


def ops(model):
    return [n.op_type for n in model.graph.node]


def small_cnn(batch=1, softmax=True, act="Relu"):
    """Conv -> BatchNormalization -> act -> Dropout -> GlobalAveragePool -> Reshape[b,-1] -> Gemm (-> Softmax)."""
    nodes = [
        N("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        N("BatchNormalization", ["c", "s", "sh", "m", "v"], ["bn"]),
        N(act, ["bn"], ["r"]), N("Dropout", ["r"], ["d"]), N("Identity", ["d"], ["i"]),
        N("GlobalAveragePool", ["i"], ["g"]), N("Reshape", ["g", "shape"], ["f"]),
        N("Gemm", ["f", "fw", "fb"], ["logits"], transB=1),
    ]
    if softmax:
        nodes.append(N("Softmax", ["logits"], ["prob"], axis=1))
    inits = {"w": f32(6, 3, 3, 3), "b": f32(6), "s": f32(6), "sh": f32(6), "m": f32(6),
             "v": np.abs(f32(6)) + 0.5, "shape": np.array([batch, -1], np.int64), "fw": f32(5, 6), "fb": f32(5)}
    out = "prob" if softmax else "logits"
    return model_of(nodes, [vi("x", [batch, 3, 8, 8])], [vi(out, [batch, 5])], inits)


# -- passes ------------------------------------------------------------------------------------------

def test_fold_batchnorm_keeps_numerics():
    m = small_cnn()
    x = f32(1, 3, 8, 8)
    before = run(m, x)[0]
    folded = canon.fold_batchnorm(onnx.ModelProto.FromString(m.SerializeToString()))
    onnx.checker.check_model(folded)
    assert "BatchNormalization" not in ops(folded)
    np.testing.assert_allclose(run(folded, x)[0], before, rtol=1e-5, atol=1e-6)


def test_batchnorm_after_concat_is_kept_and_differentiated():
    nodes = [N("Concat", ["x", "x"], ["c"], axis=1), N("BatchNormalization", ["c", "s", "sh", "m", "v"], ["y"])]
    inits = {"s": f32(4), "sh": f32(4), "m": f32(4), "v": np.abs(f32(4)) + 0.5}
    m = canon.fold_batchnorm(model_of(nodes, [vi("x", [1, 2, 3, 3])], [vi("y", [1, 4, 3, 3])], inits))
    assert "BatchNormalization" in ops(m)
    fd_check(Case("bn-after-concat", nodes, {"x": R.standard_normal((1, 2, 3, 3))}, {k: v.astype(np.float64) for k, v in inits.items()}))


def test_fold_pad_into_conv():
    nodes = [N("Pad", ["x", "p"], ["xp"]), N("Conv", ["xp", "w"], ["c"], strides=[2, 2], pads=[0, 1, 0, 0]),
             N("Pad", ["c", "q", "v"], ["cp"]), N("Conv", ["cp", "w2"], ["y"])]
    inits = {"p": np.array([0, 0, 0, 1, 0, 0, 2, 1], np.int64), "w": f32(4, 3, 3, 3),
             "q": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "v": np.array(0.5, np.float32), "w2": f32(2, 4, 3, 3)}
    m = model_of(nodes, [vi("x", [1, 3, 9, 8])], [vi("y", [1, 2, 5, 5])], inits)
    x = f32(1, 3, 9, 8)
    folded = canon.fold_pad_into_conv(onnx.ModelProto.FromString(m.SerializeToString()))
    onnx.checker.check_model(folded)
    assert ops(folded) == ["Conv", "Pad", "Conv"]  # the second Pad fills 0.5: not a convolution's zero padding
    np.testing.assert_allclose(run(folded, x)[0], run(m, x)[0], rtol=1e-5, atol=1e-6)


def test_remove_identity_dropout():
    m = small_cnn()
    x = f32(1, 3, 8, 8)
    out = canon.remove_identity_dropout(onnx.ModelProto.FromString(m.SerializeToString()))
    onnx.checker.check_model(out)
    assert "Dropout" not in ops(out) and "Identity" not in ops(out)
    np.testing.assert_allclose(run(out, x)[0], run(m, x)[0], rtol=1e-6)


def test_upgrade_opset_11():
    nodes = [N("Unsqueeze", ["x"], ["u"], axes=[1]), N("Squeeze", ["u"], ["s"], axes=[1]),
             N("ReduceSum", ["s"], ["y"], axes=[2], keepdims=0)]
    m = model_of(nodes, [vi("x", [2, 3, 4])], [vi("y", [2, 3])], opset=11, ir=6)
    up = canon.upgrade_opset(onnx.ModelProto.FromString(m.SerializeToString()))
    onnx.checker.check_model(up)
    assert next(i.version for i in up.opset_import if i.domain == "") == 17
    x = f32(2, 3, 4)
    np.testing.assert_allclose(run(up, x)[0], run(m, x)[0], rtol=1e-6)


def test_batch_baked_reshape_becomes_dynamic():
    model = small_cnn(softmax=False)
    graph = load_model(model)
    shape_input = next(n for n in graph.graph.node if n.op_type == "Reshape").input[1]
    assert graph.constants()[shape_input].tolist() == [0, -1]
    assert graph.input_shape[0] is None
    engine = Engine(graph)
    assert graph.batchable
    x = f32(4, 3, 8, 8)
    together, _ = engine.forward(x)
    alone = np.concatenate([engine.forward(x[i:i + 1])[0] for i in range(4)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
    reference = run(model, x[:1])[0]
    np.testing.assert_allclose(together[:1], reference, rtol=1e-5, atol=1e-6)


def test_fold_constants_replaces_shape_arithmetic():
    # slice bounds computed at run time from Shape(x): channels // 2
    nodes = [N("Shape", ["x"], ["sh"]), N("Gather", ["sh", "one"], ["c"]), N("Div", ["c", "two"], ["half"]),
             N("Slice", ["x", "zero", "half", "one"], ["a"]), N("Slice", ["x", "half", "c", "one"], ["b"]),
             N("Mul", ["a", "b"], ["y"])]
    inits = {"one": np.array([1], np.int64), "two": np.array([2], np.int64), "zero": np.array([0], np.int64)}
    m = model_of(nodes, [vi("x", ["N", 4, 3])], [vi("y", ["N", 2, 3])], inits)
    folded = canon.fold_constants(onnx.ModelProto.FromString(m.SerializeToString()), "x")
    onnx.checker.check_model(folded)
    assert ops(folded) == ["Slice", "Slice", "Mul"]
    x = f32(5, 4, 3)
    np.testing.assert_allclose(run(folded, x)[0], run(m, x)[0])
    graph = load_model(m)
    assert graph.shapes["a"] == (None, 2, 3)


def test_batch_dependent_shape_values_stay_dynamic():
    nodes = [N("Shape", ["x"], ["sh"]), N("Slice", ["sh", "zero", "one"], ["n"]), N("Concat", ["n", "minus"], ["t"], axis=0),
             N("Reshape", ["x", "t"], ["y"])]
    inits = {"zero": np.array([0], np.int64), "one": np.array([1], np.int64), "minus": np.array([-1], np.int64)}
    m = model_of(nodes, [vi("x", ["N", 2, 3])], [vi("y", ["N", 6])], inits)
    folded = canon.fold_constants(onnx.ModelProto.FromString(m.SerializeToString()), "x")
    assert "Shape" in ops(folded)
    x = f32(3, 2, 3)
    np.testing.assert_allclose(run(folded, x)[0], x.reshape(3, 6))


def test_trailing_softmax_is_cut_and_target_kinds():
    graph = load_model(small_cnn(softmax=True))
    assert graph.final_activation == "Softmax" and graph.logits_name == "logits" and graph.output_name == "prob"
    engine = Engine(graph)
    x = f32(2, 3, 8, 8)
    logits, _ = engine.forward(x, "logit")
    prob, _ = engine.forward(x, "probability")
    logp, _ = engine.forward(x, "log_probability")
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(prob, e / e.sum(1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(logp, np.log(e / e.sum(1, keepdims=True)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["logit", "probability", "log_probability"])
def test_target_kind_gradients_match_finite_differences(kind):
    # a float64 classifier head (Gemm, Tanh, Softmax have float64 kernels): the difference quotient is exact
    d = TensorProto.DOUBLE
    nodes = [N("Flatten", ["x"], ["f"]), N("Gemm", ["f", "w1", "b1"], ["h"], transB=1), N("Tanh", ["h"], ["t"]),
             N("Gemm", ["t", "w2", "b2"], ["logits"], transB=1), N("Softmax", ["logits"], ["prob"])]
    inits = {"w1": R.standard_normal((8, 12)), "b1": R.standard_normal(8), "w2": R.standard_normal((5, 8)),
             "b2": R.standard_normal(5)}
    graph = load_model(model_of(nodes, [vi("x", ["N", 3, 2, 2], d)], [vi("prob", ["N", 5], d)], inits))
    engine = Engine(graph)
    x = R.standard_normal((2, 3, 2, 2))
    seed = np.zeros((2, 5))
    seed[0, 1], seed[1, 3] = 1.0, -0.5
    grad = engine.gradients(x, seed, target_kind=kind).input_grad
    v = R.standard_normal(x.shape)
    eps = 1e-6

    def f(t):
        return float((engine.forward(x + t * v, kind)[0] * seed).sum())

    fd = (f(eps) - f(-eps)) / (2 * eps)
    assert abs(fd - float((grad * v).sum())) <= 1e-6 * max(1.0, abs(fd))


# -- NHWC graphs (tf2onnx style: Transposes around every Conv) --------------------------------------

def nhwc_model():
    nodes = [
        N("Transpose", ["x"], ["t0"], perm=[0, 3, 1, 2]), N("Conv", ["t0", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        N("Relu", ["c1"], ["r1"]), N("Transpose", ["r1"], ["h1"], perm=[0, 2, 3, 1]),
        N("Transpose", ["h1"], ["t1"], perm=[0, 3, 1, 2]), N("Conv", ["t1", "w2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
        N("Clip", ["c2", "lo", "hi"], ["r2"]), N("Transpose", ["r2"], ["h2"], perm=[0, 2, 3, 1]),
        N("ReduceMean", ["h2"], ["p"], axes=[1, 2], keepdims=0), N("MatMul", ["p", "fw"], ["mm"]),
        N("Add", ["mm", "fb"], ["logits"]), N("Softmax", ["logits"], ["prob"]),
    ]
    inits = {"w1": f32(4, 3, 3, 3), "w2": f32(6, 4, 3, 3), "lo": np.array(0, np.float32), "hi": np.array(6, np.float32),
             "fw": f32(6, 5), "fb": f32(5)}
    return model_of(nodes, [vi("x", ["N", 8, 8, 3])], [vi("prob", ["N", 5])], inits)


def test_nhwc_layout_and_auto_layer():
    graph = load_model(nhwc_model())
    assert graph.layout == "NHWC" and graph.spatial_shape == (8, 8)
    layer = select_layer(graph, "auto")
    assert layer.tensor == "h2" and layer.layout == "NHWC" and layer.channel_axis == 3 and layer.spatial == (4, 4)


def test_nhwc_gradients_match_onnxruntime_training(ortt_python, tmp_path):
    model = nhwc_model()
    graph = load_model(model)
    x, seed = f32(1, 8, 8, 3), f32(1, 5)
    out = Engine(graph).gradients(x, seed, layers=["h2"])
    gx, (ga,) = ortt_gradients(model, "x", "logits", ["h2"], x, seed, tmp_path)
    for got, want in ((out.input_grad, gx), (out.layer_grads["h2"], ga)):
        assert cosine(got, want) >= 0.9999 and max_rel_err(got, want) <= 1e-3


# -- layers ---------------------------------------------------------------------------------------------

def test_layers_listing_and_selection_by_tensor_and_node_name():
    graph = load_model(small_cnn())
    layers = candidate_layers(graph)
    assert [layer.tensor for layer in layers][-2:] == ["r", "g"]  # g: the 1x1 pooled map
    assert select_layer(graph).tensor == "r"  # auto: the last one with spatial size > 1
    conv_node = next(n for n in graph.graph.node if n.op_type == "Conv")
    assert select_layer(graph, conv_node.output[0]).tensor == conv_node.output[0]
    named = onnx.ModelProto.FromString(small_cnn().SerializeToString())
    named.graph.node[2].name = "the_relu"
    assert select_layer(load_model(named), "the_relu").tensor == "r"


def test_unknown_layer_error_suggests_names():
    graph = load_model(small_cnn())
    with pytest.raises(LayerError, match=r'unknown layer "rr".*Did you mean'):
        select_layer(graph, "rr")
    with pytest.raises(LayerError, match="not a usable layer"):
        select_layer(graph, "f")  # rank 2


# -- errors --------------------------------------------------------------------------------------------

def test_missing_corrupt_and_directory_models(tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        load_model(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01 this is not protobuf \xff\xfe" * 10)
    with pytest.raises(ModelError, match="not an ONNX model"):
        load_model(bad)
    with pytest.raises(ModelError, match="directory"):
        load_model(tmp_path)
    with pytest.raises(ModelError, match="not an ONNX model"):
        load_model(b"garbage bytes")


def test_model_without_float_input():
    m = model_of([N("Cast", ["ids"], ["y"], to=TensorProto.FLOAT)], [vi("ids", [1, 4], TensorProto.INT64)], [vi("y", [1, 4])])
    with pytest.raises(ModelError, match="no float input"):
        load_model(m)


def test_model_failing_the_checker():
    m = model_of([N("Relu", ["x"], ["y"])], [vi("x", [1, 3])], [vi("y", [1, 3])])
    m.graph.node[0].input[0] = "missing_tensor"
    with pytest.raises(ModelError, match="ONNX checker"):
        load_model(m)


def test_dynamic_spatial_size_needs_an_input_shape():
    m = model_of([N("Relu", ["x"], ["y"])], [vi("x", ["N", 3, "H", "W"])], [vi("y", ["N", 3, "H", "W"])])
    with pytest.raises(ModelError, match="dynamic size"):
        load_model(m)
    graph = load_model(m, input_shape=(None, 3, 5, 6))
    assert graph.input_shape == (None, 3, 5, 6)


def test_unsupported_op_names_op_node_and_supported_ops():
    nodes = [N("InstanceNormalization", ["x", "s", "b"], ["n"], name="inorm"), N("ReduceMean", ["n"], ["y"], axes=[2, 3], keepdims=0)]
    m = model_of(nodes, [vi("x", [1, 3, 4, 4])], [vi("y", [1, 3])], {"s": f32(3), "b": f32(3)})
    engine = Engine(load_model(m))
    with pytest.raises(UnsupportedOpError, match=r'no backward rule for InstanceNormalization \(first at InstanceNormalization node "inorm"\); supported ops: .*Conv'):
        engine.gradients(f32(1, 3, 4, 4), f32(1, 3))
