"""Oracles shared by the tests: directional finite differences, onnxruntime-training, comparisons.

fd_check: for random cotangent s and direction v,  <grad f(x), v> ~ (f(x + eps v) - f(x - eps v)) / 2 eps
with f(x) = sum(s * y(x)); run in float64 when onnxruntime has every kernel in float64, else float32.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnxsal.autodiff import build_gradient_model
from onnxsal.graph.utils import infer_shapes

OPSET = 17


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@dataclass
class Case:
    """A small graph to differentiate: nodes, active inputs (graph inputs) and constant initializers."""

    id: str
    nodes: list
    inputs: dict  # name -> np.ndarray (float64 values; cast to the test dtype)
    consts: dict = field(default_factory=dict)  # name -> np.ndarray (float arrays follow the test dtype)
    output: str = "y"
    opset: int = OPSET
    rtol32: float = 2e-3
    dtypes: tuple = (np.float64, np.float32)  # tried in order: the first whose kernels onnxruntime has

    @property
    def op_types(self) -> set[str]:
        return {n.op_type for n in self.nodes}


def _elem(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def make_model(case: Case, dtype) -> onnx.ModelProto:
    inits = []
    for name, value in case.consts.items():
        value = np.asarray(value)
        if value.dtype == np.float64:  # float64 constants follow the test dtype; float32 ones (Resize scales) stay
            value = value.astype(dtype)
        inits.append(numpy_helper.from_array(value, name))
    inputs = [helper.make_tensor_value_info(k, _elem(dtype), np.shape(v)) for k, v in case.inputs.items()]
    graph = helper.make_graph(case.nodes, case.id, inputs, [], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    out = next(vi for vi in model.graph.value_info if vi.name == case.output)
    model.graph.output.append(out)
    onnx.checker.check_model(model)
    return infer_shapes(model)


def gradients(model: onnx.ModelProto, output: str, wrt, feeds: dict, seed: np.ndarray, ruleset="gradient"):
    aug = build_gradient_model(model, output, list(wrt), ruleset=ruleset)
    onnx.checker.check_model(aug)
    sess = session(aug)
    return sess.run([f"{t}_grad" for t in wrt], {**feeds, "seed": seed}), aug


def fd_check(case: Case, directions: int = 3, seed: int = 0) -> dict:
    """Directional finite-difference check of every active input of `case`; returns figures, raises on mismatch."""
    last_error = None
    dtype = None
    for dtype in case.dtypes:
        model = make_model(case, dtype)
        try:
            fwd = session(model)
        except Exception:  # noqa: BLE001 - the op itself has no kernel in this dtype
            if dtype is np.float32:
                raise
            continue
        try:
            feeds = {k: np.asarray(v, dtype=dtype) for k, v in case.inputs.items()}
            y = fwd.run([case.output], feeds)[0]
            rng = np.random.default_rng(seed)
            cot = rng.standard_normal(y.shape).astype(dtype)
            grads, _ = gradients(model, case.output, list(case.inputs), feeds, cot)
        except Exception as exc:  # noqa: BLE001
            # fall back to float32 only when onnxruntime lacks a float64 kernel, never on a type error
            if dtype is np.float32 or "NOT_IMPLEMENTED" not in str(exc):
                raise
            last_error = exc
            continue
        break
    else:  # pragma: no cover
        raise AssertionError(f"{case.id}: no dtype ran") from last_error
    eps = 1e-6 if dtype is np.float64 else 1e-2
    rtol = 1e-6 if dtype is np.float64 else case.rtol32
    worst = 0.0
    for _ in range(directions):
        v = {k: rng.standard_normal(np.shape(x)) for k, x in case.inputs.items()}

        def f(t):
            moved = {k: np.asarray(case.inputs[k] + t * v[k], dtype=dtype) for k in case.inputs}
            return float(np.sum(cot.astype(np.float64) * fwd.run([case.output], moved)[0].astype(np.float64)))

        def central(h):
            return (f(h) - f(-h)) / (2 * h)

        # float64: plain central difference; float32: Richardson extrapolation, truncation O(eps^4)
        fd = central(eps) if dtype is np.float64 else (4 * central(eps / 2) - central(eps)) / 3
        analytic = sum(float(np.sum(g.astype(np.float64) * v[k])) for g, k in zip(grads, case.inputs))
        scale = sum(float(np.linalg.norm(g) * np.linalg.norm(v[k])) for g, k in zip(grads, case.inputs)) + 1e-12
        err = abs(fd - analytic) / max(abs(analytic), scale * 1e-2)
        worst = max(worst, err)
        assert abs(fd - analytic) <= rtol * max(abs(analytic), scale * 1e-2) + 1e-12, (
            f"{case.id} ({np.dtype(dtype).name}): directional derivative {analytic:.9g} vs finite difference {fd:.9g}"
        )
    return {"dtype": np.dtype(dtype).name, "rel_err": worst}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def max_rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|: relative to the reference's largest magnitude."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))


# -- onnxruntime-training's GradientGraphBuilder, in its own virtual environment ------------------------

ORTT_PYTHON_ENV = "ONNXSAL_ORTT_PYTHON"
ORTT_SCRIPT = Path(__file__).with_name("ortt_gradients.py")


def ortt_python() -> str | None:
    path = os.environ.get(ORTT_PYTHON_ENV)
    if path and Path(path).exists():
        return path
    candidate = Path(__file__).parents[1] / ".venv-ortt/bin/python"  # tests read nothing outside the checkout
    return str(candidate) if candidate.exists() else None


def ortt_compatible(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same function in ops onnxruntime-training 1.19 has gradient builders for.

    HardSwish(x) -> x * HardSigmoid(x; 1/6, 1/2); HardSigmoid -> clip(alpha x + beta, 0, 1); inference
    BatchNormalization -> x * a + b with a = scale / sqrt(var + eps), b = B - mean * a; LayerNormalization ->
    its definition in ReduceMean, Sub, Mul, Sqrt, Div, Add.
    """
    from onnxsal.graph.utils import attribute, constants

    m = onnx.shape_inference.infer_shapes(onnx.ModelProto.FromString(model.SerializeToString()))
    g = m.graph
    consts = constants(g)
    opset = next(i.version for i in m.opset_import if i.domain in ("", "ai.onnx"))
    nodes = []
    for k, node in enumerate(g.node):
        if node.op_type == "HardSwish":
            o = node.output[0]
            g.initializer.extend([numpy_helper.from_array(np.array(v, np.float32), f"{o}__{k}") for k, v in
                                  (("alpha", 1 / 6), ("beta", 0.5), ("lo", 0.0), ("hi", 1.0))])
            nodes += [helper.make_node("Mul", [node.input[0], f"{o}__alpha"], [f"{o}__ax"]),
                      helper.make_node("Add", [f"{o}__ax", f"{o}__beta"], [f"{o}__z"]),
                      helper.make_node("Clip", [f"{o}__z", f"{o}__lo", f"{o}__hi"], [f"{o}__gate"]),
                      helper.make_node("Mul", [node.input[0], f"{o}__gate"], [o])]
        elif node.op_type == "BatchNormalization" and all(n in consts for n in node.input[1:5]):
            scale, bias, mean, var = (consts[n].astype(np.float64) for n in node.input[1:5])
            a = scale / np.sqrt(var + attribute(node, "epsilon", 1e-5))
            b = bias - mean * a
            shape = (-1, 1, 1)
            an, bn = f"{node.output[0]}__a", f"{node.output[0]}__b"
            g.initializer.extend([numpy_helper.from_array(a.reshape(shape).astype(np.float32), an),
                                  numpy_helper.from_array(b.reshape(shape).astype(np.float32), bn)])
            nodes += [helper.make_node("Mul", [node.input[0], an], [f"{node.output[0]}__ax"]),
                      helper.make_node("Add", [f"{node.output[0]}__ax", bn], [node.output[0]])]
        elif node.op_type == "HardSigmoid":
            # clip(alpha x + beta, 0, 1)
            o = node.output[0]
            g.initializer.extend([numpy_helper.from_array(np.array(v, np.float32), f"{o}__{k}") for k, v in
                                  (("alpha", attribute(node, "alpha", 0.2)), ("beta", attribute(node, "beta", 0.5)),
                                   ("lo", 0.0), ("hi", 1.0))])
            nodes += [helper.make_node("Mul", [node.input[0], f"{o}__alpha"], [f"{o}__ax"]),
                      helper.make_node("Add", [f"{o}__ax", f"{o}__beta"], [f"{o}__z"]),
                      helper.make_node("Clip", [f"{o}__z", f"{o}__lo", f"{o}__hi"], [o])]
        elif node.op_type == "LayerNormalization":
            # (x - mean) / sqrt(var + eps) * scale + bias over axes [axis, rank)
            o, x = node.output[0], node.input[0]
            rank = len(next(vi for vi in list(g.value_info) + list(g.input) if vi.name == x).type.tensor_type.shape.dim) \
                if any(vi.name == x for vi in list(g.value_info) + list(g.input)) else 3
            axes = list(range(attribute(node, "axis", -1) % rank, rank))
            g.initializer.append(numpy_helper.from_array(np.array(attribute(node, "epsilon", 1e-5), np.float32), f"{o}__eps"))
            g.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), f"{o}__axes"))

            def mean(src, dst):
                return helper.make_node("ReduceMean", [src, f"{o}__axes"], [dst]) if opset >= 18 else \
                    helper.make_node("ReduceMean", [src], [dst], axes=axes)

            nodes += [mean(x, f"{o}__mu"), helper.make_node("Sub", [x, f"{o}__mu"], [f"{o}__c"]),
                      helper.make_node("Mul", [f"{o}__c", f"{o}__c"], [f"{o}__c2"]), mean(f"{o}__c2", f"{o}__var"),
                      helper.make_node("Add", [f"{o}__var", f"{o}__eps"], [f"{o}__ve"]),
                      helper.make_node("Sqrt", [f"{o}__ve"], [f"{o}__sd"]),
                      helper.make_node("Div", [f"{o}__c", f"{o}__sd"], [f"{o}__n"])]
            if len(node.input) > 2 and node.input[2]:
                nodes += [helper.make_node("Mul", [f"{o}__n", node.input[1]], [f"{o}__s"]),
                          helper.make_node("Add", [f"{o}__s", node.input[2]], [o])]
            else:
                nodes.append(helper.make_node("Mul", [f"{o}__n", node.input[1]], [o]))
        else:
            nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    return m


def ortt_gradients(model: onnx.ModelProto, input_name: str, output: str, layers, x: np.ndarray, seed: np.ndarray, tmp: Path,
                   optimize: bool = True):
    """Gradients of sum(seed * output) w.r.t. the input and each layer tensor, by onnxruntime-training.

    Layer gradients: each layer tensor A is rewired as A + delta_A, delta_A a new zero-valued graph input,
    so d/d delta_A is the gradient at A.
    """
    python = ortt_python()
    if python is None:
        raise RuntimeError(f"onnxruntime-training venv not found: set {ORTT_PYTHON_ENV} (see .ci/run)")
    m = ortt_compatible(model)
    g = m.graph
    elem = next(i for i in g.input if i.name == input_name).type.tensor_type.elem_type
    deltas = {}
    for layer in layers:
        delta, moved = f"{layer}__delta", f"{layer}__moved"
        for node in g.node:
            for i, name in enumerate(node.input):
                if name == layer:
                    node.input[i] = moved
        g.node.append(helper.make_node("Add", [layer, delta], [moved]))
        g.input.append(helper.make_tensor_value_info(delta, elem, None))
        deltas[layer] = delta
    g.input.append(helper.make_tensor_value_info("ortt_seed", elem, None))
    g.node.extend([
        helper.make_node("Mul", [output, "ortt_seed"], ["ortt_weighted"]),
        helper.make_node("ReduceSum", ["ortt_weighted"], ["ortt_loss"], keepdims=0),
    ])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("ortt_loss", elem, []))
    for layer in layers:
        g.output.append(helper.make_tensor_value_info(layer, elem, None))
    # onnxruntime-training 1.19 reads IR <= 10 and opset <= 21
    m.ir_version = min(m.ir_version, 9)
    m = onnx.shape_inference.infer_shapes(m)
    model_path, feeds_path, out_path = tmp / "ortt_model.onnx", tmp / "ortt_feeds.npz", tmp / "ortt_out.npz"
    onnx.save(m, model_path)
    feeds = {input_name: x, "ortt_seed": seed}
    # the zero perturbations need the layer shapes: run the forward once in this process to get them
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    for layer in layers:
        probe.graph.output.append(helper.make_tensor_value_info(layer, elem, None))
    acts = session(probe).run(list(layers), {input_name: x}) if layers else []
    for layer, a in zip(layers, acts):
        feeds[deltas[layer]] = np.zeros_like(a)
    np.savez(feeds_path, **feeds)
    spec = {"model": str(model_path), "feeds": str(feeds_path), "out": str(out_path),
            "wrt": [input_name] + [deltas[layer] for layer in layers], "loss": "ortt_loss", "optimize": optimize}
    proc = subprocess.run([python, str(ORTT_SCRIPT), json.dumps(spec)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"onnxruntime-training failed:\n{proc.stderr[-3000:]}")
    out = np.load(out_path)
    return out[f"{input_name}_grad"], [out[f"{deltas[layer]}_grad"] for layer in layers]


def python_has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


__all__ = ["Case", "fd_check", "gradients", "session", "cosine", "max_rel_err", "ortt_gradients", "ortt_python", "sys"]
