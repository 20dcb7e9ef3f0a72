"""More class activation maps: Eigen-CAM, EigenGrad-CAM, Score-CAM, Ablation-CAM and FullGrad.

Notation as in cam.py: A the layer's activations (N, C, h, w), G = dS/dA, S = sum(seed * score).

Eigen-CAM (Muhammad & Yeasin 2020, sec. 3, eq. 4-5): per sample, the (h*w, C) matrix of A, centred over
    positions (pytorch-grad-cam's definition), projected on its first right singular vector v1:
    M = relu( (A - mean_ij A) v1 ).  EigenGrad-CAM (pytorch-grad-cam): the same on A * G.
    Sign: an SVD fixes v1 only up to sign. We choose the sign that makes the projection correlate
    positively with the channel sum sum_c A_c (of the factorised tensor), so that the map marks where the
    features are strong; pytorch-grad-cam keeps whatever sign LAPACK returns, so its maps can be our
    maps' negatives before the ReLU.
Score-CAM (Wang et al. 2020, Def. 2 and eq. 3, softmax of Algorithm 1): each channel, upsampled to the
    input and min-max scaled to [0, 1] (H_k = (up(A_k) - min) / (max - min + 1e-8)), masks the input:
    x_k = H_k * x + (1 - H_k) * fill (fill: zeros by default, i.e. x * H_k as in the paper);
    alpha = softmax_k S(x_k); M = relu(sum_k alpha_k A_k). The baseline score f(X_b) of the paper's CIC
    cancels in the softmax. Forward passes only, C per sample, in batches.
Ablation-CAM (Desai & Ramaswamy 2020, eq. 2-3): w_k = (S - S_k) / S with S_k the score when channel k
    of the layer is set to zero; M = relu(sum_k w_k A_k). The ablated activations are fed to a sub-model
    whose input is the layer's tensor (the layer -> score tail of the graph; the image is fed too when a
    path from the input reaches the score around the layer). C tail runs per sample, in batches.
FullGrad (Srinivas & Fleuret 2019, eq. 5-6): S_f = psi(|x * dS/dx|) + sum_l sum_c psi(|b_c * dS/dz_c|)
    over the Conv nodes z = Conv(., W, b) with a bias and a spatial output (after BatchNormalization is
    folded into them, so a Conv + BN pair counts once with the folded bias). psi: per sample and channel,
    scale to [0, 1] (t - min) / (max - min + 1e-7), then upsample bilinearly to the input (the order of
    pytorch-grad-cam's scale_cam_image); the input term keeps one map per input channel.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .base import Attribution, Method, register, to_nchw
from .cam import CamMethod, _kernels
from ..errors import MethodError


# -- Eigen-CAM ---------------------------------------------------------------------------------------------

def first_component_projection(t: np.ndarray) -> np.ndarray:
    """(N, h, w): each sample's (h*w, C) matrix, centred over positions, projected on its first principal axis."""
    n, c, h, w = t.shape
    out = np.zeros((n, h, w), np.float64)
    for s in range(n):
        m = t[s].reshape(c, h * w).T.astype(np.float64)  # (h*w, C)
        centred = m - m.mean(axis=0)
        if not np.any(centred):
            continue
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        p = centred @ vt[0]
        if p @ m.sum(axis=1) < 0:  # sign convention (module docstring)
            p = -p
        out[s] = p.reshape(h, w)
    return out.astype(np.float32)


class _EigenMethod(CamMethod):
    display = "smooth"
    defaults = {"relu": True, "aug_smooth": False}  # (eigen_smooth: these maps are the projection already)
    def factor(self, a, g):
        raise NotImplementedError

    def layer_maps(self, x, seeds, progress=None):
        layer = self.ex.layer
        layout = layer.layout or "NCHW"
        if self.needs_gradients:
            out = self.ex.gradients(x, seeds, layers=[layer.tensor], input_grad=False)
            a, g, scores = out.activations[layer.tensor], layer.as_nchw(out.layer_grads[layer.tensor]), out.scores
        else:
            scores, acts = self.ex.engine.forward(x, self.ex.target_kind, layers=[layer.tensor])
            a, g = acts[layer.tensor], None
        m = first_component_projection(self.factor(layer.as_nchw(a), g))
        return (np.maximum(m, 0) if self.options["relu"] else m), scores


@register
class EigenCAM(_EigenMethod):
    name = "eigen_cam"
    description = "Eigen-CAM: projection of the activations on their first principal component (no gradient, no target)"
    reference = "Muhammad & Yeasin 2020, Eigen-CAM, eq. 4-5"
    needs_gradients = False
    in_graph_top = False

    def factor(self, a, g):
        return a  # the map does not depend on the target (the paper's class-agnostic map)


@register
class EigenGradCAM(_EigenMethod):
    name = "eigen_grad_cam"
    description = "EigenGrad-CAM: first principal component of activations x gradients"
    reference = "pytorch-grad-cam's EigenGradCAM (Eigen-CAM, Muhammad & Yeasin 2020, on A * dS/dA)"

    def factor(self, a, g):
        return a * g


# -- Score-CAM ---------------------------------------------------------------------------------------------

def _check_count(value, what):
    if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
        raise MethodError(f"{what} must be a positive integer, not {value!r}")


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@register
class ScoreCAM(CamMethod):
    display = "smooth"  # drawn like the other CAMs (workflow.picture)
    name = "score_cam"
    description = "Score-CAM: channels weighted by the score of the input masked by each upsampled channel"
    reference = "Wang et al. 2020, Score-CAM, Def. 2 and eq. 3 (softmax of Algorithm 1)"
    needs_gradients = False
    in_graph_top = False
    defaults = {**CamMethod.defaults, "fill": "zeros", "batch_size": None}
    streams_progress = True

    def __init__(self, explainer, **options):
        super().__init__(explainer, **options)
        _check_count(self.options["batch_size"], "batch_size")

    def runs_per_view(self) -> int:
        return int(self.ex.layer.channels)

    def layer_maps(self, x, seeds, progress=None):
        layer = self.ex.layer
        scores, acts = self.ex.engine.forward(x, self.ex.target_kind, layers=[layer.tensor])
        a = layer.as_nchw(acts[layer.tensor])
        n, c = a.shape[:2]
        h, w = self.ex.graph.spatial_shape
        fill = self.ex.baselines(x, self.options["fill"])[0]
        nhwc = self.layout == "NHWC"
        batch = int(self.options["batch_size"] or self.ex.engine.batch_size)
        cic = np.empty((n, c), np.float64)
        for i in range(n):
            for start in range(0, c, batch):
                ks = slice(start, min(c, start + batch))
                up = _kernels().bilinear_resize(np.ascontiguousarray(a[i, ks]), h, w)  # (b, H, W)
                lo = up.min(axis=(1, 2), keepdims=True)
                hi = up.max(axis=(1, 2), keepdims=True)
                masks = (up - lo) / (hi - lo + 1e-8)
                m = masks[:, :, :, None] if nhwc else masks[:, None]
                masked = (m * x[i] + (1 - m) * fill[i]).astype(np.float32)
                cic[i, ks] = self.ex.score(masked, np.repeat(seeds[i:i + 1], len(masked), axis=0))
                if progress:
                    progress(len(masked))
        weights = _softmax(cic).astype(np.float32)
        return self.combine(weights, a), scores


# -- Ablation-CAM ------------------------------------------------------------------------------------------

def tail_model(graph, layer_tensor: str, target_kind: str) -> tuple[onnx.ModelProto, str, bool]:
    """(model computing the score from the layer's tensor, score name, whether it also reads the image input).

    The nodes on which the score depends, walking back from it and stopping at the layer's tensor, which
    becomes a graph input; everything else is dropped (onnx.utils.Extractor's idea, with the image input
    kept when a path around the layer needs it)."""
    from ..autodiff.augment import forward_model
    from ..graph.utils import tensor_types

    model, score = forward_model(graph, target_kind)
    g = model.graph
    producer = {out: node for node in g.node for out in node.output}
    needed, stack, keep = set(), [score], set()
    while stack:
        t = stack.pop()
        if t in needed or t == layer_tensor:
            continue
        needed.add(t)
        node = producer.get(t)
        if node is not None and id(node) not in keep:
            keep.add(id(node))
            stack.extend(i for i in node.input if i)
            for attr in node.attribute:  # outer-scope names read by subgraphs (If / Loop bodies)
                for sub in [attr.g, *attr.graphs]:
                    stack.extend(i for n in sub.node for i in n.input if i)
    if layer_tensor not in {i for node in g.node if id(node) in keep for i in node.input}:
        raise MethodError(f"the score does not depend on layer {layer_tensor}")
    nodes = [node for node in g.node if id(node) in keep]
    uses_image = graph.input_name in needed
    dtypes, shapes = tensor_types(model)
    shape = shapes.get(layer_tensor)
    dims = None if shape is None else ["N" if d is None else d for d in shape]
    inputs = [helper.make_tensor_value_info(layer_tensor, dtypes.get(layer_tensor, onnx.TensorProto.FLOAT), dims)]
    if uses_image:
        inputs.insert(0, next(i for i in g.input if i.name == graph.input_name))
    used = needed | {i for node in nodes for i in node.input}
    tail = helper.make_graph(
        nodes, "ablation_tail", inputs, [o for o in g.output if o.name == score],
        initializer=[t for t in g.initializer if t.name in used],
        value_info=[v for v in g.value_info if v.name in used and v.name != layer_tensor],
    )
    out = helper.make_model(tail, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    out.functions.extend(model.functions)
    return out, score, uses_image


@register
class AblationCAM(CamMethod):
    display = "smooth"  # drawn like the other CAMs (workflow.picture)
    name = "ablation_cam"
    description = "Ablation-CAM: channels weighted by the relative score drop when each is set to zero"
    reference = "Desai & Ramaswamy 2020, Ablation-CAM, eq. 2-3"
    needs_gradients = False
    in_graph_top = False
    defaults = {**CamMethod.defaults, "batch_size": None}
    streams_progress = True

    def __init__(self, explainer, **options):
        super().__init__(explainer, **options)
        _check_count(self.options["batch_size"], "batch_size")

    def runs_per_view(self) -> int:
        return int(self.ex.layer.channels)

    def _tail(self):
        from ..runtime import make_session

        layer = self.ex.layer
        tails = self.ex.__dict__.setdefault("_ablation_tails", {})
        key = (layer.tensor, self.ex.target_kind)
        if key not in tails:
            model, score, uses_image = tail_model(self.ex.graph, layer.tensor, self.ex.target_kind)
            tails[key] = (make_session(model.SerializeToString(), self.ex.engine.providers), score, uses_image)
        return tails[key]

    def layer_maps(self, x, seeds, progress=None):
        layer = self.ex.layer
        session, score_name, uses_image = self._tail()
        scores, acts = self.ex.engine.forward(x, self.ex.target_kind, layers=[layer.tensor])
        raw = acts[layer.tensor]  # the layer's own layout
        axis = layer.channel_axis
        n, c = len(x), raw.shape[axis]
        full = (scores.astype(np.float64) * seeds).reshape(n, -1).sum(axis=1)  # S
        batch = 1 if not self.ex.graph.batchable else int(self.options["batch_size"] or self.ex.engine.batch_size)
        ablated_scores = np.empty((n, c), np.float64)
        for i in range(n):
            for start in range(0, c, batch):
                ks = np.arange(start, min(c, start + batch))
                copies = np.repeat(raw[i:i + 1], len(ks), axis=0)
                index = [np.arange(len(ks))] + [slice(None)] * (raw.ndim - 1)
                index[axis] = ks
                copies[tuple(index)] = 0  # (eq. 2) channel k of copy k set to zero
                feeds = {layer.tensor: copies}
                if uses_image:
                    feeds[self.ex.graph.input_name] = np.repeat(x[i:i + 1], len(ks), axis=0)
                out = session.run([score_name], feeds)[0]
                ablated_scores[i, ks] = (out.astype(np.float64) * seeds[i:i + 1]).reshape(len(ks), -1).sum(axis=1)
                if progress:
                    progress(len(ks))
        safe = np.where(full != 0, full, 1.0)[:, None]
        weights = ((full[:, None] - ablated_scores) / safe).astype(np.float32)  # eq. 3
        a = layer.as_nchw(raw)
        return self.combine(weights, a), scores


# -- FullGrad ----------------------------------------------------------------------------------------------

def biased_convs(graph) -> list[tuple[str, np.ndarray]]:
    """(output tensor, bias (C,)) of every Conv with a constant bias and a static rank-4 output."""
    consts = graph.constants()
    found = []
    for node in graph.graph.node:
        if node.op_type != "Conv" or len(node.input) < 3 or node.input[2] not in consts:
            continue
        shape = graph.shapes.get(node.output[0])
        if shape is None or len(shape) != 4 or any(d is None for d in shape[1:]):
            continue
        found.append((node.output[0], np.asarray(consts[node.input[2]], np.float32).reshape(-1)))
    return found


def scale_and_upsample(t: np.ndarray, height: int, width: int) -> np.ndarray:
    """psi of FullGrad without the abs: (N, C, h, w) -> (N, C, H, W), each (n, c) map scaled to [0, 1] then upsampled."""
    n, c, h, w = t.shape
    flat = t.reshape(n * c, h, w).astype(np.float32)
    lo = flat.min(axis=(1, 2), keepdims=True)
    flat = flat - lo
    flat = flat / (flat.max(axis=(1, 2), keepdims=True) + 1e-7)
    if (h, w) != (height, width):
        flat = _kernels().bilinear_resize(np.ascontiguousarray(flat, np.float32), height, width)
    return flat.reshape(n, c, height, width)


@register
class FullGrad(Method):
    name = "fullgrad"
    description = "FullGrad: |input x gradient| plus every conv layer's |bias x gradient|, each scaled and upsampled"
    reference = "Srinivas & Fleuret 2019, Full-Gradient Representation for Neural Network Visualization, eq. 5-6"
    in_graph_top = True
    defaults = {}
    display = "smooth_from_min"  # a sum of [0, 1]-scaled maps: drawn from its minimum (workflow.picture)

    def attribute(self, x, seeds, progress=None):
        convs = biased_convs(self.ex.graph)
        out = self.ex.gradients(x, seeds, layers=[t for t, _ in convs])
        h, w = self.ex.graph.spatial_shape
        xg = to_nchw(np.abs(x * out.input_grad), self.layout)
        total = scale_and_upsample(xg, h, w).sum(axis=1, dtype=np.float64)  # psi(|x * grad|), per input channel
        for tensor, bias in convs:
            bias_grad = np.abs(bias[None, :, None, None] * out.layer_grads[tensor])  # |b_c * dS/dz_c|, (N, C, h, w)
            total += scale_and_upsample(bias_grad, h, w).sum(axis=1, dtype=np.float64)
        if progress:
            progress(len(x))
        return Attribution(maps=total.astype(np.float32), scores=out.scores, info={"bias_layers": len(convs)})
