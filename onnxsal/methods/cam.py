"""Class activation maps: one template, each variant overrides how the channel weights are computed.

With A the layer's activations (N, C, h, w) and G = dS/dA its gradient:
    M = relu( sum_c w_c * A_c )   (w per channel (N, C, 1, 1), or per element (N, C, h, w))
upsampled bilinearly to the input size (half-pixel centres, kernels/resize.py's convention, postprocess.upsample).
The weights and the sum are written against postprocess.py's array interface (`ops`): numpy here, ONNX
nodes when `export` writes the heatmap into the graph.

Options of every CAM (pytorch-grad-cam's smoothing options; Python only, not exported):
  eigen_smooth  M = relu(first principal component of the weighted activations w_c A_c) instead of their
                sum (cam_more.first_component_projection; its sign follows sum_c w_c A_c)
  aug_smooth    test-time augmentation: the mean of the maps of x and its horizontal flip, each multiplied
                by 0.9, 1 and 1.1 (6 runs; maps of flipped inputs flipped back). pytorch-grad-cam scales
                each augmented map to [0, 1] before the mean; we average the maps as they are.
"""

from __future__ import annotations

import numpy as np

from .base import REDUCTIONS, Attribution, Method, from_nchw, reduce_channels, register, to_nchw
from .. import postprocess as pp
from ..errors import MethodError
from ..graph.utils import FLOAT_TYPES, attribute


def _kernels():
    from .. import kernels

    return kernels


class CamMethod(Method):
    uses_layer = True
    needs_gradients = True
    in_graph_top = True
    defaults = {"relu": True, "eigen_smooth": False, "aug_smooth": False}
    streams_progress = False  # layer_maps reports progress itself (many model runs per sample)
    AUGMENTATIONS = [(flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1)]

    def runs_per_sample(self) -> int:
        return (len(self.AUGMENTATIONS) if self.options.get("aug_smooth") else 1) * self.runs_per_view()

    def runs_per_view(self) -> int:
        return 1

    def combine(self, weights: np.ndarray, a: np.ndarray) -> np.ndarray:
        """(N, h, w) = relu(sum_c w_c A_c), or relu of the first principal component of w_c A_c (eigen_smooth)."""
        if weights.ndim == 2:
            weights = weights[:, :, None, None]
        if not self.options.get("eigen_smooth"):
            return pp.weighted_sum(pp.NUMPY, weights, a, bool(self.options["relu"]))
        from .cam_more import first_component_projection

        w = weights[:, :, None, None] if weights.ndim == 2 else weights
        m = first_component_projection(w.astype(np.float64) * a)
        return np.maximum(m, 0) if self.options["relu"] else m

    def cam_weights(self, a, g, seeds, ops=pp.NUMPY):
        """Weights (N, C, 1, 1) per channel or (N, C, h, w) per element, in `ops` (postprocess.py)."""
        raise NotImplementedError

    def cam_map(self, a, g, seeds, ops=pp.NUMPY):
        """(N, h, w) = relu( sum_c w * A ) at the layer's resolution (the eigen_smooth variant in numpy)."""
        weights = self.cam_weights(a, g, seeds, ops) if ops is not pp.NUMPY else self.cam_weights(a, g, seeds)
        if ops is pp.NUMPY:
            return self.combine(np.asarray(weights, dtype=np.float32), a)
        return pp.weighted_sum(ops, weights, a, bool(self.options["relu"]))

    def layer_maps(self, x, seeds, progress=None) -> tuple[np.ndarray, np.ndarray]:
        """((N, h, w) maps at the layer's resolution, the scores)."""
        layer = self.ex.layer
        if self.needs_gradients:
            out = self.ex.gradients(x, seeds, layers=[layer.tensor], input_grad=False)
            a, g, scores = out.activations[layer.tensor], out.layer_grads[layer.tensor], out.scores
        else:
            scores, acts = self.ex.engine.forward(x, self.ex.target_kind, layers=[layer.tensor])
            a, g = acts[layer.tensor], None
        a = layer.as_nchw(a)  # token sequences fold to their patch grid; NHWC maps to NCHW
        g = None if g is None else layer.as_nchw(g)
        return self.cam_map(a, g, seeds), scores

    def attribute(self, x, seeds, progress=None):
        h, w = self.ex.graph.spatial_shape
        views = self.AUGMENTATIONS if self.options.get("aug_smooth") else [(False, 1.0)]
        width_axis = 2 if self.layout == "NHWC" else 3
        total, scores = None, None
        for flip, factor in views:
            view = np.flip(x, axis=width_axis) if flip else x
            view = np.ascontiguousarray(view * np.float32(factor) if factor != 1.0 else view, dtype=np.float32)
            small, view_scores = self.layer_maps(view, seeds, progress)
            maps = pp.upsample(pp.NUMPY, small, small.shape[1:], (h, w))
            maps = maps[:, :, ::-1] if flip else maps
            total = maps.astype(np.float64) if total is None else total + maps
            if not flip and factor == 1.0:
                scores = view_scores
            if progress and not self.streams_progress:
                progress(len(x))
        return Attribution(maps=(total / len(views)).astype(np.float32), scores=scores,
                           info={"evaluations": self.runs_per_sample()})


@register
class GradCAM(CamMethod):
    name = "grad_cam"
    description = "Grad-CAM: layer activations weighted by their average gradient"
    reference = "Selvaraju et al. 2017, Grad-CAM, eq. 1-2"

    def cam_weights(self, a, g, seeds, ops=pp.NUMPY):
        # eq. 1: alpha_c = 1/Z sum_ij dS/dA_cij
        return ops.mean(g, axes=[2, 3], keepdims=True)


@register
class GradCAMPlusPlus(CamMethod):
    name = "grad_cam_plus_plus"
    description = "Grad-CAM++: positive gradients weighted per pixel by higher-order terms"
    reference = "Chattopadhyay et al. 2018, Grad-CAM++, eq. 19 (closed form under an exponential score)"

    def cam_weights(self, a, g, seeds, ops=pp.NUMPY):
        # alpha_cij = g^2 / (2 g^2 + sum_ab A_cab g^3);  w_c = sum_ij alpha_cij relu(g_cij)
        g2 = ops.mul(g, g)
        g3 = ops.mul(g2, g)
        denominator = ops.add(ops.mul(g2, 2.0), ops.mul(ops.sum(a, axes=[2, 3], keepdims=True), g3))
        alpha = ops.div(g2, ops.where(ops.not_equal(denominator, 0.0), denominator, 1.0))
        return ops.sum(ops.mul(alpha, pp.relu(ops, g)), axes=[2, 3], keepdims=True)


@register
class XGradCAM(CamMethod):
    name = "xgrad_cam"
    description = "XGrad-CAM: gradients averaged with weights proportional to the activations"
    reference = "Fu et al. 2020, Axiom-based Grad-CAM (XGrad-CAM)"

    def cam_weights(self, a, g, seeds, ops=pp.NUMPY):
        # w_c = sum_ij (A_cij / sum_ab A_cab) g_cij
        total = ops.sum(a, axes=[2, 3], keepdims=True)
        return ops.sum(ops.mul(ops.div(a, ops.add(total, 1e-7)), g), axes=[2, 3], keepdims=True)


@register
class LayerCAM(CamMethod):
    name = "layer_cam"
    description = "LayerCAM: each activation weighted by its own positive gradient"
    reference = "Jiang et al. 2021, LayerCAM"

    def cam_weights(self, a, g, seeds, ops=pp.NUMPY):
        # w_cij = relu(g_cij)
        return pp.relu(ops, g)


@register
class HiResCAM(CamMethod):
    name = "hires_cam"
    description = "HiResCAM: element-wise gradient times activation, summed over channels"
    reference = "Draelos & Carin 2020, Use HiResCAM instead of Grad-CAM"

    def cam_weights(self, a, g, seeds, ops=pp.NUMPY):
        # w_cij = g_cij  (M = relu(sum_c g * A))
        return g


@register
class GradCAMElementwise(CamMethod):
    name = "grad_cam_elementwise"
    description = "Element-wise Grad-CAM: relu of each gradient x activation product, summed"
    reference = "pytorch-grad-cam's GradCAMElementWise (HiResCAM with the ReLU inside the sum)"

    def cam_weights(self, a, g, seeds, ops=pp.NUMPY):
        # sum_c relu(g * A) = sum_c w * A with w = g where g * A > 0, else 0
        return ops.where(ops.greater(ops.mul(g, a), 0.0), g, 0.0)


def linear_head(graph, layer) -> np.ndarray:
    """W (K, C) of a head  layer -> global average pool -> [Flatten|Reshape|Squeeze|Cast] -> Gemm|MatMul [+ bias] -> score.

    The pool is GlobalAveragePool, ReduceMean over the spatial axes, or an AveragePool whose kernel covers
    the whole map without padding (tf2onnx). float -> float Casts around the linear layer are no-ops. A
    pool that already gives the scores (SqueezeNet: the layer is a class-score map) has W = identity.
    """
    consts, users = graph.constants(), graph.consumers()
    spatial_axes = {1, 2} if layer.layout == "NHWC" else {2, 3}
    not_gap = MethodError(
        "cam needs a model whose head is global average pooling followed by one linear layer; this one differs "
        "after the layer: use grad_cam, which needs no particular head (on GAP + linear heads it equals CAM up to a scale)"
    )
    scores = graph.head.pre_activation if graph.head is not None else graph.logits_name

    def only_user(t):
        nodes = users.get(t, [])
        if len(nodes) != 1:
            raise not_gap
        return nodes[0]

    def skip(node, ops):
        while node.op_type in ops and node.output[0] != scores:
            if node.op_type == "Cast" and attribute(node, "to", None) not in FLOAT_TYPES:
                raise not_gap
            node = only_user(node.output[0])
        return node

    node = only_user(layer.tensor)
    if node.op_type == "GlobalAveragePool":
        pass
    elif node.op_type == "ReduceMean":
        axes = attribute(node, "axes", None)
        if axes is None and len(node.input) > 1:
            axes = consts.get(node.input[1])
        rank = len(layer.shape)
        if axes is None or {int(a) % rank for a in np.asarray(axes).ravel()} != spatial_axes:
            raise not_gap
    elif node.op_type == "AveragePool" and layer.layout != "NHWC":
        kernel = tuple(attribute(node, "kernel_shape", ()) or ())
        pads = list(attribute(node, "pads", []) or [])
        if kernel != tuple(layer.spatial) or any(pads) or attribute(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            raise not_gap
    else:
        raise not_gap
    if node.output[0] == scores:
        node_out = node.output[0]
    else:
        node = skip(only_user(node.output[0]), ("Flatten", "Reshape", "Squeeze", "Cast"))
        node_out = node.output[0] if node.output[0] == scores and node.op_type not in ("Gemm", "MatMul", "Conv") else None
    if node_out is not None:  # the pooled map is the score: each channel is its class
        c = layer.channels
        if graph.num_classes not in (None, c):
            raise not_gap
        return np.eye(c, dtype=np.float32)
    if node.op_type == "Conv":  # a 1x1 convolution on the pooled (N, C, 1, 1) map
        w = consts.get(node.input[1])
        if w is None or w.ndim != 4 or w.shape[2:] != (1, 1) or attribute(node, "group", 1) != 1:
            raise not_gap
        w = w[:, :, 0, 0]
    elif node.op_type == "Gemm":
        w = consts.get(node.input[1])
        if w is None or attribute(node, "transA", 0):
            raise not_gap
        w = w if attribute(node, "transB", 0) else w.T
        w = w * attribute(node, "alpha", 1.0)
    elif node.op_type == "MatMul":
        w = consts.get(node.input[1])
        if w is None or w.ndim != 2:
            raise not_gap
        w = w.T
    else:
        raise not_gap
    t, biased = node.output[0], False
    while t != scores:  # then only float Casts and one constant bias Add
        after = only_user(t)
        if after.op_type == "Cast" and attribute(after, "to", None) in FLOAT_TYPES or after.op_type in ("Flatten", "Reshape", "Squeeze"):
            pass
        elif after.op_type == "Add" and not biased and any(i in consts for i in after.input if i != t):
            biased = True
        else:
            raise not_gap
        t = after.output[0]
    return np.asarray(w, dtype=np.float32)


@register
class CAM(CamMethod):
    name = "cam"
    description = "CAM: feature maps weighted by the classifier's weights (GAP + linear heads only)"
    reference = "Zhou et al. 2016, Learning Deep Features for Discriminative Localization, sec. 2"
    needs_gradients = False
    in_graph_top = False

    def __init__(self, explainer, **options):
        super().__init__(explainer, **options)
        if explainer.target_kind != "logit":
            raise MethodError("cam explains the pre-softmax scores (target_kind='logit'); use grad_cam for other kinds")
        self.weights = linear_head(explainer.graph, explainer.layer)

    def cam_weights(self, a, g, seeds, ops=pp.NUMPY):
        # M_c(x, y) = sum_k w_k^c f_k(x, y): the class's row of the linear layer (a weighting of classes for weight targets)
        flat = seeds.reshape(len(seeds), -1) if ops is pp.NUMPY else seeds  # exported graphs seed (N, K) scores
        return ops.unsqueeze(ops.matmul(flat, self.weights), [2, 3])


@register
class GuidedGradCAM(Method):
    name = "guided_grad_cam"
    description = "Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM map"
    reference = "Selvaraju et al. 2017, Grad-CAM, sec. 3.1 (Guided Grad-CAM)"
    uses_layer = True
    in_graph_top = True
    defaults = {"reduce": "max_abs"}

    def attribute(self, x, seeds, progress=None):
        if self.options["reduce"] not in REDUCTIONS:
            raise MethodError(f"unknown reduce {self.options['reduce']!r}; choose one of {', '.join(REDUCTIONS)}")
        layer = self.ex.layer
        if self.shares_forward():
            # one run: guided backprop's input gradient and, from the same backward, the layer's gradient, which
            # equals the plain one because no ReLU-like op lies between the layer and the score
            out = self.ex.gradients(x, seeds, layers=[layer.tensor], ruleset="guided_backprop")
            a, g = layer.as_nchw(out.activations[layer.tensor]), layer.as_nchw(out.layer_grads[layer.tensor])
            small = GradCAM(self.ex).cam_map(a, g, seeds)
            cam = pp.upsample(pp.NUMPY, small, small.shape[1:], self.ex.graph.spatial_shape)
            guided, scores = out.input_grad, out.scores
        else:  # Grad-CAM's plain layer gradient and guided backprop's input gradient: two runs
            grad_cam = GradCAM(self.ex).attribute(x, seeds)
            cam, scores = grad_cam.maps, grad_cam.scores
            guided = self.ex.gradients(x, seeds, ruleset="guided_backprop").input_grad
        product = pp.guided_product(pp.NUMPY, to_nchw(guided, self.layout), cam)
        attributions = from_nchw(product, self.layout)
        if progress:
            progress(len(x))
        return Attribution(maps=reduce_channels(attributions, self.layout, self.options["reduce"]), attributions=attributions,
                           scores=scores)

    def shares_forward(self) -> bool:
        """True when no op that guided backprop changes (ReLU-like: RELU_LIKE_BACKWARD) is downstream of the layer,
        so that its gradient under guided backprop is Grad-CAM's (usually: the last conv block, then pooling and a
        linear head); one forward and backward then serve both halves."""
        from ..autodiff.rules.activation import RELU_LIKE_BACKWARD

        cached = getattr(self.ex.graph, "_guided_shares_forward", {})
        tensor = self.ex.layer.tensor
        if tensor not in cached:
            consumers: dict[str, list] = {}
            for node in self.ex.graph.model.graph.node:
                for i in node.input:
                    consumers.setdefault(i, []).append(node)
            seen, todo, plain = set(), [tensor], True
            while todo and plain:
                for node in consumers.get(todo.pop(), []):
                    if id(node) in seen:
                        continue
                    seen.add(id(node))
                    plain = node.op_type not in RELU_LIKE_BACKWARD
                    todo.extend(node.output)
                    if not plain:
                        break
            cached[tensor] = plain
            self.ex.graph._guided_shares_forward = cached
        return cached[tensor]
