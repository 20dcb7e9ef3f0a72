"""One ONNX file from image to heatmap: the gradient graph plus the method's map equations as ONNX nodes.

    inputs   image  (the model's input: N x C x H x W or N x H x W x C, float, already preprocessed)
             class  int64 (N,) or (1,): the class explained per sample; -1 = top class. ONNX has no optional
                    inputs that every runtime honours (onnxruntime-node ignores feeds for initializer-backed
                    inputs), so it is a plain input; class_input=False leaves it out: the top class, always
    outputs  scores   (N, K)  the explained score (logits by default, as target_kind says)
             target   (N,)    int64, the class explained
             heatmap  (N, H, W) float32: the method's map, normalised as the CLI shows it (percentile of |map|,
                      100 for CAM maps, 99 for pixel maps; [0, 1], or [-1, 1] for signed maps), or raw
             overlay  (N, H, W, 3) uint8, with overlay=True: the map over the photo (the input mapped back through
                      the preprocessing) with the CLI's colormap and blend (postprocess.overlay), at the model's size

The seed of the backward pass is the one-hot of `target` (computed in the graph from `class` and the scores),
the same seed the Python API builds for a class or for the top class. The map equations are postprocess.py's,
the very functions the Python methods run with numpy, emitted here with postprocess.OnnxOps.
Only default-domain ONNX ops are used; the file runs in any ONNX runtime.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import postprocess as pp
from .errors import MethodError

IMAGE, CLASS, SCORES, TARGET, HEATMAP, OVERLAY = "image", "class", "scores", "target", "heatmap", "overlay"
CAM_FAMILY = ("cam", "grad_cam", "grad_cam_plus_plus", "xgrad_cam", "layer_cam", "hires_cam", "grad_cam_elementwise")
GRADIENT_FAMILY = ("saliency", "sensitivity", "gradient_x_input", "guided_backprop", "deconvnet")
DEEPLIFT_FAMILY = ("deeplift", "deeplift_reveal_cancel")
EXPORTABLE = CAM_FAMILY + GRADIENT_FAMILY + ("guided_grad_cam", "integrated_gradients", "lrp") + DEEPLIFT_FAMILY


def _seed_nodes(score: str, seed: str, class_input: bool, dtype: int = TensorProto.FLOAT,
                p: str = "export/seed") -> tuple[list, list]:
    """Nodes: target = class < 0 ? argmax_k score : class;  seed = one-hot(target) shaped like score (N, K)."""
    init = [
        numpy_helper.from_array(np.array(0, np.int64), f"{p}/zero"),
        numpy_helper.from_array(np.array(1, np.int64), f"{p}/one"),
        numpy_helper.from_array(np.array([1], np.int64), f"{p}/axis1"),
    ]
    if not class_input:  # always the top class
        init.append(numpy_helper.from_array(np.array([-1], np.int64), CLASS))
    nodes = [
        helper.make_node("ArgMax", [score], [f"{p}/top"], axis=1, keepdims=0, select_last_index=0),
        helper.make_node("Less", [CLASS, f"{p}/zero"], [f"{p}/use_top"]),
        helper.make_node("Where", [f"{p}/use_top", f"{p}/top", CLASS], [f"{p}/target"]),
        helper.make_node("Shape", [score], [f"{p}/shape"]),
        helper.make_node("Gather", [f"{p}/shape", f"{p}/one"], [f"{p}/k"], axis=0),
        helper.make_node("Range", [f"{p}/zero", f"{p}/k", f"{p}/one"], [f"{p}/classes"]),
        helper.make_node("Unsqueeze", [f"{p}/target", f"{p}/axis1"], [f"{p}/target_column"]),
        helper.make_node("Equal", [f"{p}/target_column", f"{p}/classes"], [f"{p}/hit"]),
        helper.make_node("Cast", [f"{p}/hit"], [seed], to=dtype),  # the score's type
    ]
    for i, node in enumerate(nodes):
        node.name = f"{p}/{i}"
    return nodes, init


def _gradient_part(ex, layers, ruleset, input_grad, prefix=None, input_from=None):
    """(model, score name, seed input name) of the gradient graph; with a prefix every name but the input is
    prefixed (a second backward pass in the same file); input_from: the tensor that pass reads instead of the input."""
    from .autodiff.augment import gradient_model

    from .autodiff.augment import reference_input

    model, score = gradient_model(ex.graph, list(layers), ruleset, ex.target_kind, input_grad=input_grad)
    inits = {i.name for i in model.graph.initializer}
    seed = [i.name for i in model.graph.input if i.name not in inits
            and i.name not in (ex.graph.input_name, reference_input(ex.graph))][0]
    if prefix:
        model = onnx.compose.add_prefix(model, prefix)
        # the prefixed model reads the shared input
        old = prefix + ex.graph.input_name
        for node in model.graph.node:
            node.input[:] = [(input_from or ex.graph.input_name) if i == old else i for i in node.input]
        score, seed = prefix + score, prefix + seed
    return model, score, seed


def _prune(graph: onnx.GraphProto, outputs: list[str]) -> None:
    """Keep only the nodes and initializers the outputs need."""
    needed = set(outputs)
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
            for attr in node.attribute:  # subgraphs (If/Loop) read outer names
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    for n in sub.node:
                        needed.update(n.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    names = {i.name for i in inits}
    vi = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(vi)
    inputs = [i for i in graph.input if i.name in needed or i.name in names]
    del graph.input[:]
    graph.input.extend(inputs)


def _to_nchw(ops, t, layout):
    return ops.transpose(t, (0, 3, 1, 2)) if layout == "NHWC" else t


def export_model(ex, method: str = "grad_cam", *, normalize: bool = True, class_input: bool = True,
                 overlay: bool = False, cmap: str | None = None, alpha: float = 0.6, with_preprocessing: bool = False,
                 **options) -> onnx.ModelProto:
    """The explanation model of Explainer `ex` for `method` (see the module docstring)."""
    from .methods import METHODS

    graph = ex.graph
    if method not in EXPORTABLE:
        raise MethodError(f"export --method takes one of {', '.join(EXPORTABLE)}; {method!r} is not exportable")
    if graph.class_axis != 1 or graph.score_shape is None or len(graph.score_shape) != 1:
        raise MethodError("export --method needs a classifier (scores N x K); export without --method writes the "
                          "gradient graph of any model")
    if len(graph.input_shape) != 4 or None in graph.spatial_shape:
        raise MethodError("export --method needs an image input with a fixed size (use --size)")
    impl = METHODS[method](ex, **options)
    layout = graph.layout
    prep = ex.preprocessing
    if with_preprocessing:
        _check_preprocessing(prep, graph)
    if overlay and (prep is None or prep.channels != 3):
        raise MethodError("--overlay draws on the photo, which the graph recovers through the model's preprocessing: "
                          "give an RGB preprocessing (a zoo model, or a .preprocess.json sidecar)")
    height, width = graph.spatial_shape
    x = graph.input_name

    second = None
    if method == "integrated_gradients":
        from .autodiff.augment import forward_model

        ig = _ig_settings(ex, impl)
        model, score = forward_model(graph, ex.target_kind)
        seed = None
        second, _, seed2 = _gradient_part(ex, [], "gradient", input_grad=True, prefix="ig/", input_from="export/ig/points")
    elif method == "guided_grad_cam" and impl.shares_forward():
        # no ReLU-like op after the layer: guided backprop's backward also gives Grad-CAM's layer gradient, so one
        # forward and backward serve both halves (methods/cam.py GuidedGradCAM.shares_forward)
        layer = ex.layer
        model, score, seed = _gradient_part(ex, [layer.tensor], "guided_backprop", input_grad=True)
        guided_grad = f"{x}_grad"
    elif method in CAM_FAMILY or method == "guided_grad_cam":
        layer = ex.layer
        model, score, seed = _gradient_part(ex, [layer.tensor], "gradient", input_grad=False)
        if method == "guided_grad_cam":
            second, _, seed2 = _gradient_part(ex, [], "guided_backprop", input_grad=True, prefix="guided/")
            guided_grad = f"guided/{x}_grad"
    elif method in DEEPLIFT_FAMILY:
        reference = _constant_baseline(ex, impl.options["baseline"], "DeepLIFT")
        model, score, seed = _gradient_part(ex, [], impl.ruleset, input_grad=True)
    else:
        model, score, seed = _gradient_part(ex, [], impl.ruleset, input_grad=True)
    g = model.graph
    if second is not None:
        _share_weights(g, second.graph, "ig/" if method == "integrated_gradients" else "guided/")
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    ops = pp.OnnxOps(opset, prefix="export/post")

    # the seed: from the `class` input and the scores
    from .graph.utils import tensor_types

    score_dtype = tensor_types(model)[0].get(score, TensorProto.FLOAT)
    seed_nodes, seed_init = _seed_nodes(score, "export/seed/onehot", class_input, score_dtype)
    rename = {seed: "export/seed/onehot"} if seed is not None else {}
    if method == "integrated_gradients":  # every path point of sample i carries sample i's seed
        rename[seed2] = "export/ig/seeds"
    elif second is not None:
        rename[seed2] = "export/seed/onehot"
    nodes = list(g.node) + (list(second.graph.node) if second is not None else [])
    for node in nodes:
        node.input[:] = [rename.get(i, i) for i in node.input]

    # the map equations (postprocess.py, ONNX back end)
    if method in CAM_FAMILY or method == "guided_grad_cam":
        a = _to_nchw(ops, layer.tensor, layer.layout or "NCHW")
        grad = _to_nchw(ops, f"{layer.tensor}_grad", layer.layout or "NCHW")
        cam_impl = impl if method != "guided_grad_cam" else METHODS["grad_cam"](ex)
        small = cam_impl.cam_map(a, grad, "export/seed/onehot", ops)
        h, w = layer.spatial
        heat = pp.upsample(ops, small, (h, w), (height, width))
        if method == "guided_grad_cam":
            guided = _to_nchw(ops, guided_grad, layout)
            product = pp.guided_product(ops, guided, heat)
            heat = pp.reduce_channels(ops, product, impl.options["reduce"], 1)
    elif method == "integrated_gradients":
        alphas, weights, baseline = ig
        shape = tuple(graph.input_shape[1:])
        points = pp.path_points(ops, x, baseline, alphas, shape)
        ops.nodes.append(helper.make_node("Identity", [points], ["export/ig/points"], name="export/ig/points"))
        tile = ops.const([len(alphas), 1], np.int64)
        ops.nodes.append(helper.make_node("Tile", ["export/seed/onehot", tile], ["export/ig/seeds"], name="export/ig/seeds"))
        mean_grads = pp.path_integral(ops, f"ig/{x}_grad", weights, shape)
        attributions = ops.mul(mean_grads, ops.sub(x, baseline))  # eq. 1: (x - x') * the integral
        heat = pp.reduce_channels(ops, attributions, impl.options["reduce"], 3 if layout == "NHWC" else 1)
    elif method in DEEPLIFT_FAMILY:
        from .autodiff.augment import reference_input

        # the reference pass reads one sample, x_ref = Expand(baseline, (1, C, H, W)), which broadcasts against the
        # batch; with a static input size every input of that pass is a constant, so the runtime folds it when it
        # loads the graph and each run costs one forward pass less. A graph that folds the batch into another axis
        # cannot broadcast it (Engine.reference_broadcasts): there x_ref = Expand(baseline, Shape(x)).
        if ex.engine.reference_broadcasts(impl.ruleset, ex.target_kind):
            static = all(isinstance(d, int) for d in graph.input_shape[1:])
            one = ops.const((1, *graph.input_shape[1:]), np.int64) if static else ops.node(
                "Concat", [ops.const([1], np.int64), ops.node("Slice", [ops.node("Shape", [x]), ops.const([1], np.int64),
                                                                      ops.const([len(graph.input_shape)], np.int64)])],
                axis=0)
        else:
            one = ops.node("Shape", [x])
        ops.nodes.append(helper.make_node("Expand", [ops.const(reference), one], [reference_input(graph)],
                                          name="export/deeplift/reference"))
        attributions = ops.mul(ops.sub(x, reference), f"{x}_grad")  # (x - x') * multipliers
        heat = pp.reduce_channels(ops, attributions, impl.options["reduce"], 3 if layout == "NHWC" else 1)
    else:
        attributions = impl.finish(x, f"{x}_grad", ops)
        heat = pp.reduce_channels(ops, attributions, impl.options["reduce"], 3 if layout == "NHWC" else 1)
    raw_heat = heat
    signed = bool(impl.signed)
    if normalize or overlay:
        heat = pp.normalize(ops, heat, height * width, pp.display_percentile(method), signed)
    picture = None
    if overlay:
        from . import viz
        from .workflow import SMOOTH_MAPS

        smooth = method in SMOOTH_MAPS
        photo = pp.photo_from_input(ops, x, layout, prep.scale, prep.mean, prep.std, prep.bgr)
        lut = viz.colormap(cmap or viz.default_cmap(signed, smooth))
        picture = pp.overlay(ops, photo, heat, signed, smooth, lut, min(alpha, 0.5) if smooth else alpha)
    if not normalize:
        heat = raw_heat
    _reuse_model_constants(ops, g)  # e.g. CAM's class weights are the classifier's own matrix
    if with_preprocessing:  # image: uint8 (N, H0, W0, 3) -> the model's input tensor x
        _preprocessing_nodes(ops, prep, layout, x)

    out = onnx.ModelProto()
    out.CopyFrom(model)
    og = out.graph
    del og.node[:]
    # order: forward + backward of the first pass must follow the seed, which follows the score: a topological sort
    all_nodes = nodes + seed_nodes + ops.nodes + [
        helper.make_node("Identity", [score], [SCORES], name="export/scores"),
        helper.make_node("Identity", ["export/seed/target"], [TARGET], name="export/target"),
        helper.make_node("Identity", [heat], [HEATMAP], name="export/heatmap"),
    ] + ([helper.make_node("Identity", [picture], [OVERLAY], name="export/overlay")] if overlay else [])
    og.node.extend(_toposort(all_nodes, {IMAGE if with_preprocessing else x, CLASS} | {i.name for i in g.initializer}
                             | ({i.name for i in second.graph.initializer} if second is not None else set())
                             | {i.name for i in seed_init} | {i.name for i in ops.initializers}))
    if second is not None:
        og.initializer.extend(second.graph.initializer)
    og.initializer.extend(seed_init + ops.initializers)
    # interface: image, class -> scores, target, heatmap
    image_info = next(i for i in g.input if i.name == x)
    del og.input[:]
    if with_preprocessing:
        og.input.append(helper.make_tensor_value_info(IMAGE, TensorProto.UINT8, ["N", "height", "width", 3]))
    else:
        og.input.append(copy.deepcopy(image_info))
    if class_input:
        og.input.append(helper.make_tensor_value_info(CLASS, TensorProto.INT64, ["C"]))
    del og.output[:]
    og.output.extend([
        helper.make_tensor_value_info(SCORES, score_dtype, ["N", graph.score_shape[0]]),
        helper.make_tensor_value_info(TARGET, TensorProto.INT64, ["N"]),
        helper.make_tensor_value_info(HEATMAP, TensorProto.FLOAT, ["N", height, width]),
    ])
    if overlay:
        og.output.append(helper.make_tensor_value_info(OVERLAY, TensorProto.UINT8, ["N", height, width, 3]))
    del og.value_info[:]
    _prune(og, [o.name for o in og.output])
    if not with_preprocessing:
        _rename_input(og, x, IMAGE)
    og.name = f"{og.name or 'model'} + {method} heatmap (onnxsal)"
    out.doc_string = (f"onnxsal explanation model: {method}; inputs image{', class (int64, -1 = top)' if class_input else ''}; outputs scores, "
                      f"target, heatmap ({'normalised' if normalize else 'raw'})")
    onnx.checker.check_model(out)
    return out


def _share_weights(first: onnx.GraphProto, second: onnx.GraphProto, prefix: str) -> None:
    """The second (prefixed) pass reads the first pass's copy of every initializer they both hold: one copy of the weights."""
    def key(t):
        clone = onnx.TensorProto()
        clone.CopyFrom(t)
        clone.name = ""
        return clone.SerializeToString()

    mine = {t.name: t for t in first.initializer}
    shared = {}
    for t in second.initializer:
        original = t.name[len(prefix):] if t.name.startswith(prefix) else None
        if original in mine and key(mine[original]) == key(t):
            shared[t.name] = original
    if not shared:
        return
    for node in second.node:
        node.input[:] = [shared.get(i, i) for i in node.input]
    kept = [t for t in second.initializer if t.name not in shared]
    del second.initializer[:]
    second.initializer.extend(kept)


def _reuse_model_constants(ops, graph: onnx.GraphProto) -> None:
    """Constants the equations emitted that the model already holds (same type, shape and values) read the model's copy."""
    def key(t):
        return (t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes())

    big = [t for t in ops.initializers if np.prod(t.dims, dtype=np.int64) >= 1024]
    if not big:
        return
    sizes = {key(t)[:2] for t in big}
    existing = {key(t): t.name for t in graph.initializer if (t.data_type, tuple(t.dims)) in sizes}
    same = {t.name: existing[key(t)] for t in big if key(t) in existing}
    if not same:
        return
    for node in ops.nodes:
        node.input[:] = [same.get(i, i) for i in node.input]
    ops.initializers[:] = [t for t in ops.initializers if t.name not in same]


def _ig_settings(ex, impl):
    """(alphas, weights, baseline (1, C, 1, 1) or (1, 1, 1, C) constant) of a fixed-step Integrated Gradients."""
    from .methods.integrated_gradients import quadrature

    opts = impl.options
    if opts["tolerance"] is not None:
        raise MethodError("exported Integrated Gradients use a fixed number of steps; leave out tolerance")
    alphas, weights = quadrature(opts["integration"], int(opts["steps"]))
    return alphas, weights, _constant_baseline(ex, opts["baseline"], "Integrated Gradients")


def _constant_baseline(ex, spec, what: str) -> np.ndarray:
    """The baseline `spec` as a (1, C, 1, 1) or (1, 1, 1, C) constant (black, gray, zeros, mean or a number)."""
    if isinstance(spec, (list, tuple)) or (spec is not None and not isinstance(spec, (str, int, float))) \
            or spec in ("blur", "uniform"):
        raise MethodError(f"exported {what} takes one constant baseline: black, gray, zeros, mean or a number")
    channels = ex.graph.input_shape[3 if ex.graph.layout == "NHWC" else 1]
    probe = np.zeros((1, *ex.graph.input_shape[1:]), np.float32)
    reference = ex.baselines(probe, spec)[0]  # constant per channel for these baselines
    view = (1, 1, 1, channels) if ex.graph.layout == "NHWC" else (1, channels, 1, 1)
    per_channel = reference.reshape(-1, channels) if ex.graph.layout == "NHWC" else reference.reshape(channels, -1).T
    return np.ascontiguousarray(per_channel[0].reshape(view), np.float32)


INTERPOLATION = {"bilinear": "linear", "bicubic": "cubic", "nearest": "nearest"}


def _check_preprocessing(prep, graph) -> None:
    if prep is None:
        raise MethodError("--with-preprocessing needs the model's preprocessing (a zoo model, or a .preprocess.json sidecar)")
    if prep.channels != 3 or prep.height != prep.width or prep.interpolation not in INTERPOLATION:
        raise MethodError("--with-preprocessing covers RGB models with a square input and bilinear, bicubic or nearest "
                          f"resizing; this one has {prep.channels} channel(s), size {prep.size}, {prep.interpolation}")
    if tuple(graph.spatial_shape) != (prep.height, prep.width):
        raise MethodError(f"the preprocessing's size {prep.size} differs from the model's input {graph.spatial_shape}")


def _preprocessing_nodes(ops, prep, layout: str, out: str) -> None:
    """`image` uint8 (N, H0, W0, 3) RGB -> `out`, the model input, as preprocess.py computes it (Resize, Slice, Sub, Div,
    Transpose). resize_crop: resize so that the short side is round(size / crop), then the centre size x size;
    crop_resize: the centre square of round(crop * short side), resized to size x size. Sizes are computed in float64
    with round-half-even, as Python's round(). ONNX Resize (opset < 18) has no antialiasing: a photo shrunk by more
    than a little gives a sharper input than PIL's resize."""
    size = prep.height
    mode = INTERPOLATION[prep.interpolation]
    resize_attrs = {"mode": mode, "coordinate_transformation_mode": "half_pixel"}
    if mode == "cubic":
        resize_attrs["cubic_coeff_a"] = -0.5  # PIL's bicubic
    if mode == "nearest":
        resize_attrs["nearest_mode"] = "floor"
    image = ops.transpose(ops.cast(IMAGE, np.float32), (0, 3, 1, 2))  # (N, 3, H0, W0)
    shape = ops.node("Shape", [image])
    lead = ops.node("Slice", [shape, ops.const([0], np.int64), ops.const([2], np.int64)])  # [N, 3]
    hw = ops.node("Slice", [shape, ops.const([2], np.int64), ops.const([4], np.int64)])  # [H0, W0]
    hw_f = ops.cast(hw, np.float64)
    short = ops._reduce("ReduceMin", hw_f, [0], True, 18)
    axes = ops.const([2, 3], np.int64)
    if prep.order == "resize_crop":
        target = int(round(size / prep.crop))
        scale = ops.div(ops.const(float(target), np.float64), short)
        new = ops.cast(ops.round(ops.mul(hw_f, scale)), np.int64)  # round(w * scale), round(h * scale)
        resized = ops.node("Resize", [image, "", "", ops.node("Concat", [lead, new], axis=0)], **resize_attrs)
        starts = ops.div(ops.sub(new, ops.const(size, np.int64)), ops.const(2, np.int64))  # (new - size) // 2
        x = ops.node("Slice", [resized, starts, ops.add(starts, ops.const(size, np.int64)), axes])
    else:
        side = ops.cast(ops.round(ops.mul(short, ops.const(float(prep.crop), np.float64))), np.int64)
        side = ops.maximum(side, ops.const([1], np.int64))
        starts = ops.div(ops.sub(hw, side), ops.const(2, np.int64))
        cropped = ops.node("Slice", [image, starts, ops.add(starts, side), axes])
        x = ops.node("Resize", [cropped, "", "", ops.node("Concat", [lead, ops.const([size, size], np.int64)], axis=0)],
                     **resize_attrs)
    if mode != "nearest":  # PIL rounds and clips resized pixels to 0..255
        x = ops.minimum(ops.maximum(ops.round(x), 0.0), 255.0)
    if prep.bgr:
        x = ops.take(x, [2, 1, 0], axis=1)
    view = (1, 3, 1, 1)
    x = ops.div(ops.sub(ops.mul(x, np.float32(prep.scale)), np.asarray(prep.mean, np.float32).reshape(view)),
                np.asarray(prep.std, np.float32).reshape(view))
    if layout == "NHWC":
        x = ops.transpose(x, (0, 2, 3, 1))
    ops.nodes.append(helper.make_node("Identity", [x], [out], name="export/preprocessed"))


def _rename_input(graph: onnx.GraphProto, old: str, new: str) -> None:
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                for n in sub.node:
                    n.input[:] = [new if i == old else i for i in n.input]
    for i in graph.input:
        if i.name == old:
            i.name = new


def _toposort(nodes: list, available: set) -> list:
    """Nodes in an order where every input is produced before it is read (Kahn's algorithm, stable)."""
    producers = {}
    for k, node in enumerate(nodes):
        for o in node.output:
            producers[o] = k
    deps = []
    for node in nodes:
        d = set()
        for i in node.input:
            if i and i not in available and i in producers:
                d.add(producers[i])
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                for n in sub.node:
                    d.update(producers[i] for i in n.input if i in producers and i not in available)
        deps.append(d)
    users: dict[int, list[int]] = {}
    for k, d in enumerate(deps):
        for j in d:
            users.setdefault(j, []).append(k)
    remaining = [len(d) for d in deps]
    import heapq

    ready = [k for k, r in enumerate(remaining) if r == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(nodes[k])
        for u in users.get(k, []):
            remaining[u] -= 1
            if remaining[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise MethodError("internal error: the explanation graph has a cycle")
    return order
