"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019) as a rule set over ONNX ops.

What flows backward is the relevance R itself. It starts as R = seed * score at the explained output (the
explained score is the total relevance, as in Captum's LRP), and the map is R at the input (no final
multiplication by x: the first layer's rule does it, or ignores x for flat / w^2).

A linear layer z = f(x; w, b) (Conv, ConvTranspose, Gemm, MatMul with constant weights) re-uses the
gradient's own backward helpers (nn.conv_vjp, gemm_vjp, ...) with modified parameters: zennit's trick,
"relevance = input * VJP_w'(R_out / stabilised z')". With x+ = max(x, 0), x- = min(x, 0), w+/w- likewise,
s(z) = z + eps * sign(z) (sign(0) = +1) and every product a layer f evaluated by the node's own op:

  epsilon (eps)    R_in = x * f^T_w( R / s(z) ),  z = f(x; w, b)                            Bach 2015 eq. 58
  zplus / alpha1beta0
                   p = f(x+; w+, b+) + f(x-; w-, 0)
                   R_in = x+ * f^T_{w+}(R / s(p)) + x- * f^T_{w-}(R / s(p))                Montavon 2017 (z+)
  alpha_beta (a, b), a - b = 1:  n = f(x+; w-, b-) + f(x-; w+, 0)
                   R_in = a [x+ f^T_{w+}(R/s(p)) + x- f^T_{w-}(R/s(p))] - b [x+ f^T_{w-}(R/s(n)) + x- f^T_{w+}(R/s(n))]
                                                                                           Bach 2015 eq. 60
  gamma (g)        Montavon 2019 eq. 6, w -> w + g w+ (and b -> b + g b+) where z > 0; for z < 0 the same with
                   the roles of the signs swapped (zennit's generalisation to negative inputs and outputs):
                   R_in = x+ f^T_{w+gw+}(G+) + x- f^T_{w+gw-}(G+) + x+ f^T_{w+gw-}(G-) + x- f^T_{w+gw+}(G-),
                   G+ = [z>0] R / s(f(x+; w+gw+, b+gb+) + f(x-; w+gw-, 0)),
                   G- = [z<0] R / s(f(x+; w+gw-, b+gb-) + f(x-; w+gw+, 0))
  flat             R_in = f^T_1( R / s(f(1; 1, 0)) )                       Lapuschkin et al. 2019 (flat)
  wsquare          R_in = f^T_{w^2}( R / s(f(1; w^2, 0)) )                  Montavon 2017 (w^2), no bias
  zbox (l, h)      z = f(x; w, 0) - f(l; w+, 0) - f(h; w-, 0)
                   R_in = x f^T_w(R/s(z)) - l f^T_{w+}(R/s(z)) - h f^T_{w-}(R/s(z))           Montavon 2017 (z^B)

Other ops (documented in docs/lrp.md):
  AveragePool, GlobalAveragePool, ReduceMean, ReduceSum, Add of activations, an unfolded BatchNormalization,
  Mul/Div by a constant:
      R_in = x * (the op's gradient of R / s(y))  (gradient x input proportion; zennit's Norm rule)
  Mul of an activation by a Sigmoid / HardSigmoid gate: all of R to the activation, none to the gate
      (Arras et al. 2017, signal-take-all); Mul of two other activations: the proportion above, to both
  pointwise activations (Relu, Clip, LeakyRelu, Sigmoid, Tanh, Gelu, HardSwish, ...): R passes unchanged (Pass)
  everything else (MaxPool winner-take-all, Reshape, Flatten, Transpose, Concat, Slice, Pad, Resize, ...): the
      op's gradient applied to R (exact for ops that move or select values)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from onnx import numpy_helper

from ...errors import UnsupportedOpError
from ...graph.utils import node_label
from .. import registry
from ..registry import NodePosition, RuleSet, family
from . import nn

LAYER_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
CONV_OPS = frozenset({"Conv", "ConvTranspose"})
DENSE_OPS = frozenset({"Gemm", "MatMul"})
NORM_OPS = frozenset({"AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum", "BatchNormalization", "Add", "Sum"})
PASS_OPS = frozenset({"Relu", "LeakyRelu", "PRelu", "ThresholdedRelu", "Clip", "Elu", "Selu", "Celu", "Sigmoid", "Tanh",
                      "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Gelu", "Mish", "Erf", "Identity", "Dropout"})
GATES = frozenset({"Sigmoid", "HardSigmoid"})
NONNEG_SOURCES = frozenset({"Relu", "Sigmoid", "HardSigmoid", "Softplus"})
NONNEG_CARRIERS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Reshape",
                             "Squeeze", "Unsqueeze", "Transpose", "Concat", "Identity", "Dropout", "Slice"})


# -- small emitters -----------------------------------------------------------------------------------------

def stabilise(ctx, z: str, eps: float) -> str:
    """z + eps * sign(z), with sign(0) = +1 (zennit's and Captum's stabiliser)."""
    negative = ctx.op("Less", z, ctx.constant(0.0, like=z))
    return ctx.op("Add", z, ctx.op("Where", negative, ctx.constant(-eps, like=z), ctx.constant(eps, like=z)))


def _div(ctx, r: str, z: str, eps: float) -> str:
    return ctx.op("Div", r, stabilise(ctx, z, eps))


def _pos(ctx, t: str) -> str:
    return ctx.op("Relu", t)


def _neg(ctx, t: str) -> str:
    return ctx.op("Min", t, ctx.constant(0.0, like=t))


def _producers(ctx) -> dict:
    cached = getattr(ctx.e, "_lrp_producers", None)
    if cached is None:
        cached = {o: n for n in ctx.e.model.graph.node for o in n.output if o}
        ctx.e._lrp_producers = cached
    return cached


def non_negative(ctx, t: str, depth: int = 8) -> bool:
    """Whether tensor t is >= 0 by construction (a ReLU's output, pooled or reshaped): x- terms vanish there."""
    node = _producers(ctx).get(t)
    if node is None or depth == 0:
        return False
    if node.op_type in NONNEG_SOURCES:
        return True
    if node.op_type == "Clip":
        low = ctx.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        return low is not None and float(np.min(low)) >= 0
    if node.op_type in NONNEG_CARRIERS:
        data = node.input if node.op_type == "Concat" else node.input[:1]
        return all(non_negative(ctx, i, depth - 1) for i in data if i)
    return False


# -- one linear layer ---------------------------------------------------------------------------------------

@dataclass
class Layer:
    """The node as z = f(x; w, b): its data input, constant weights and bias, and the node's own forward and
    backward (the gradient's helpers in nn.py) with any weights."""

    ctx: object
    x: str
    w: np.ndarray
    b: np.ndarray | None

    def forward(self, x: str, w, b=None) -> str:
        return nn.layer_forward(self.ctx, x, w, b)

    def vjp(self, g: str, w) -> str:
        op = self.ctx.node.op_type
        if op == "Conv":
            return nn.conv_vjp(self.ctx, g, w)
        if op == "ConvTranspose":
            return nn.conv_transpose_vjp(self.ctx, g, w)
        if op == "Gemm":
            return nn.gemm_vjp(self.ctx, g, w)
        return nn.matmul_vjp(self.ctx, g, b=w, which=0)

    def ones(self, like: str) -> str:
        one = numpy_helper.from_array(np.ones(1, dtype=self.ctx.np_dtype(like)))
        return self.ctx.op("ConstantOfShape", self.ctx.shape_of(like), value=one)


def as_layer(ctx) -> Layer | None:
    """The node as a linear layer with constant weights acting on input 0, or None (then it keeps its gradient)."""
    op = ctx.node.op_type
    if op not in LAYER_OPS or not ctx.needs(0) or any(ctx.needs(i) for i in range(1, len(ctx.node.input))):
        return None
    w = ctx.const(ctx.x(1))
    if w is None:
        return None
    if op == "Gemm" and (ctx.attr("transA", 0) or ctx.attr("alpha", 1.0) <= 0 or ctx.attr("beta", 1.0) <= 0):
        return None
    b = ctx.const(ctx.x(2)) if len(ctx.node.input) > 2 and ctx.x(2) else None
    if len(ctx.node.input) > 2 and ctx.x(2) and b is None:
        return None
    return Layer(ctx, ctx.x(0), w, b)


def _bias(layer: Layer, params: "Params", fn) -> np.ndarray | None:
    if layer.b is None or params.zero_bias:
        return None
    return fn(layer.b)


def _signed_terms(ctx, layer: Layer, terms) -> str:
    """sum of x_i * f^T_{w_i}(g_i) over (x_i, w_i, g_i); a term whose input is None is left out."""
    parts = [ctx.mul(x, layer.vjp(g, w)) for x, w, g in terms if x is not None]
    return parts[0] if len(parts) == 1 else ctx.op("Sum", *parts)


def _split_input(ctx, layer: Layer):
    """(x+, x- or None when x >= 0 by construction)."""
    if non_negative(ctx, layer.x):
        return layer.x, None
    return _pos(ctx, layer.x), _neg(ctx, layer.x)


def _two_sided(ctx, layer: Layer, xp, xn, wa, wb, ba) -> str:
    """f(x+; wa, ba) + f(x-; wb, 0)."""
    z = layer.forward(xp, wa, ba)
    if xn is not None:
        z = ctx.op("Add", z, layer.forward(xn, wb))
    return z


# -- the rules: (ctx, layer, R, params) -> R_in -------------------------------------------------------------

def r_epsilon(ctx, layer: Layer, r: str, p: "Params") -> str:
    z = layer.forward(layer.x, ctx.x(1)) if p.zero_bias and layer.b is not None else ctx.y()
    return ctx.mul(layer.x, layer.vjp(_div(ctx, r, z, p.epsilon), ctx.x(1)))


def r_alpha_beta(ctx, layer: Layer, r: str, p: "Params", alpha: float = 1.0, beta: float = 0.0) -> str:
    w = layer.w
    wp, wn = np.maximum(w, 0), np.minimum(w, 0)
    xp, xn = _split_input(ctx, layer)
    z_pos = _two_sided(ctx, layer, xp, xn, wp, wn, _bias(layer, p, lambda b: np.maximum(b, 0)))
    g = _div(ctx, r, z_pos, p.stabilizer)
    out = _signed_terms(ctx, layer, [(xp, wp, g), (xn, wn, g)])
    if alpha != 1.0:
        out = ctx.scale(out, alpha)
    if beta:
        z_neg = _two_sided(ctx, layer, xp, xn, wn, wp, _bias(layer, p, lambda b: np.minimum(b, 0)))
        gn = _div(ctx, r, z_neg, p.stabilizer)
        out = ctx.op("Sub", out, ctx.scale(_signed_terms(ctx, layer, [(xp, wn, gn), (xn, wp, gn)]), beta))
    return out


def r_zplus(ctx, layer, r, p):
    return r_alpha_beta(ctx, layer, r, p, 1.0, 0.0)


def r_alpha2_beta1(ctx, layer, r, p):
    return r_alpha_beta(ctx, layer, r, p, 2.0, 1.0)


def r_gamma(ctx, layer: Layer, r: str, p: "Params") -> str:
    w, gamma = layer.w, p.gamma
    w_up, w_down = w + gamma * np.maximum(w, 0), w + gamma * np.minimum(w, 0)
    xp, xn = _split_input(ctx, layer)
    z = layer.forward(layer.x, ctx.x(1)) if p.zero_bias and layer.b is not None else ctx.y()
    zero = ctx.constant(0.0, like=z)
    up = _two_sided(ctx, layer, xp, xn, w_up, w_down, _bias(layer, p, lambda b: b + gamma * np.maximum(b, 0)))
    g_up = ctx.masked(_div(ctx, r, up, p.stabilizer), ctx.op("Greater", z, zero))
    down = _two_sided(ctx, layer, xp, xn, w_down, w_up, _bias(layer, p, lambda b: b + gamma * np.minimum(b, 0)))
    g_down = ctx.masked(_div(ctx, r, down, p.stabilizer), ctx.op("Less", z, zero))
    return _signed_terms(ctx, layer, [(xp, w_up, g_up), (xn, w_down, g_up), (xp, w_down, g_down), (xn, w_up, g_down)])


def r_flat(ctx, layer: Layer, r: str, p: "Params") -> str:
    ones_w = np.ones_like(layer.w)
    z = layer.forward(layer.ones(layer.x), ones_w)
    return layer.vjp(_div(ctx, r, z, p.stabilizer), ones_w)


def r_wsquare(ctx, layer: Layer, r: str, p: "Params") -> str:
    w2 = layer.w.astype(np.float64) ** 2
    z = layer.forward(layer.ones(layer.x), w2)
    return layer.vjp(_div(ctx, r, z, p.stabilizer), w2)


def r_zbox(ctx, layer: Layer, r: str, p: "Params") -> str:
    if p.low is None or p.high is None:
        raise UnsupportedOpError("the zbox rule needs the input's bounds (low and high): give them, or a model whose "
                                 "preprocessing says the pixel range")
    shape = ctx.static_shape(layer.x, skip_batch=True)
    full = (1,) + tuple(shape[1:])
    try:
        low = np.broadcast_to(_bound(p.low, len(full), ctx), full)
        high = np.broadcast_to(_bound(p.high, len(full), ctx), full)
    except ValueError:
        raise UnsupportedOpError(f"zbox bounds of {len(np.atleast_1d(p.low))} values do not fit the input {list(full)}") from None
    lo, hi = ctx.constant(low, like=layer.x), ctx.constant(high, like=layer.x)
    w = layer.w
    wp, wn = np.maximum(w, 0), np.minimum(w, 0)
    z = ctx.op("Sub", ctx.op("Sub", layer.forward(layer.x, ctx.x(1)), layer.forward(lo, wp)), layer.forward(hi, wn))
    g = _div(ctx, r, z, p.stabilizer)
    out = ctx.op("Sub", ctx.mul(layer.x, layer.vjp(g, ctx.x(1))), ctx.mul(lo, layer.vjp(g, wp)))
    return ctx.op("Sub", out, ctx.mul(hi, layer.vjp(g, wn)))


def _bound(value, rank: int, ctx) -> np.ndarray:
    """A bound as an array broadcastable to (1, C, H, W): a number, or one value per channel (axis 1, or the last
    axis for a channels-last input)."""
    v = np.asarray(value, dtype=np.float64)
    if v.ndim == 0 or v.size == 1:
        return v.reshape(())
    shape = ctx.static_shape(ctx.x(0), skip_batch=True)
    if rank >= 3 and shape[1] == v.size:
        return v.reshape((1, -1) + (1,) * (rank - 2))
    return v.reshape((1,) * (rank - 1) + (-1,))


LAYER_RULES = {
    "epsilon": r_epsilon,
    "zplus": r_zplus,
    "alpha1beta0": r_zplus,
    "alpha2beta1": r_alpha2_beta1,
    "gamma": r_gamma,
    "flat": r_flat,
    "wsquare": r_wsquare,
    "zbox": r_zbox,
}
ALIASES = {"z+": "zplus", "zb": "zbox", "w2": "wsquare", "w^2": "wsquare", "eps": "epsilon", "alpha1_beta0": "alpha1beta0",
           "alpha2_beta1": "alpha2beta1", "0": "zero", "lrp0": "zero"}


# -- the non-layer ops ----------------------------------------------------------------------------------------

def proportion(ctx, r: str, eps: float) -> list:
    """R_i = x_i * (the op's gradient of R / s(y)) for every input i that needs one (zennit's Norm)."""
    g = _div(ctx, r, ctx.y(), eps)
    plain = registry.RULES["gradient"][ctx.node.op_type]
    from ..builder import RuleContext

    grads = plain(RuleContext(ctx.e, ctx.node, [g], ctx._needs))
    return [ctx.mul(ctx.x(i), d) if (d is not None and ctx.needs(i)) else None for i, d in enumerate(grads)]


def pass_through(ctx):
    return ctx.data_grad(ctx.dy())


# -- composites ----------------------------------------------------------------------------------------------

COMPOSITES = {
    # zennit's names (zennit.composites); `first` is the first linear layer after the input
    "epsilon": [("linear", "epsilon")],
    "epsilon_plus": [("conv", "zplus"), ("dense", "epsilon")],
    "epsilon_plus_flat": [("first", "flat"), ("conv", "zplus"), ("dense", "epsilon")],
    "epsilon_plus_box": [("first", "zbox"), ("conv", "zplus"), ("dense", "epsilon")],
    "epsilon_gamma_box": [("first", "zbox"), ("conv", "gamma"), ("dense", "epsilon")],
    "epsilon_alpha2_beta1": [("conv", "alpha2beta1"), ("dense", "epsilon")],
    "epsilon_alpha2_beta1_flat": [("first", "flat"), ("conv", "alpha2beta1"), ("dense", "epsilon")],
}
COMPOSITE_DOCS = {
    "epsilon": "LRP-epsilon on every linear layer (Bach et al. 2015)",
    "epsilon_plus": "z+ on Conv, epsilon on dense layers (zennit EpsilonPlus)",
    "epsilon_plus_flat": "flat on the first layer, z+ on Conv, epsilon on dense layers (zennit EpsilonPlusFlat)",
    "epsilon_plus_box": "zB on the first layer, z+ on Conv, epsilon on dense layers",
    "epsilon_gamma_box": "zB on the first layer, gamma on Conv, epsilon on dense layers (zennit EpsilonGammaBox; "
                         "Montavon et al. 2019)",
    "epsilon_alpha2_beta1": "alpha2-beta1 on Conv, epsilon on dense layers (zennit EpsilonAlpha2Beta1)",
    "epsilon_alpha2_beta1_flat": "flat on the first layer, alpha2-beta1 on Conv, epsilon on dense layers",
}
SELECTORS = ("first", "last", "conv", "dense", "linear")
DEFAULT_COMPOSITE = "epsilon_plus_flat"


@dataclass(frozen=True)
class Params:
    epsilon: float = 1e-6
    gamma: float = 0.25
    stabilizer: float = 1e-6
    low: tuple | None = None
    high: tuple | None = None
    zero_bias: bool = False


def _matches(selector: str, node, position: NodePosition | None) -> bool:
    if selector.startswith("name:"):
        return re.search(selector[5:], node.name or "") is not None
    if selector.startswith("op:"):
        return node.op_type == selector[3:]
    if position is None:
        return False
    return {"first": position.first, "last": position.last, "conv": node.op_type in CONV_OPS,
            "dense": node.op_type in DENSE_OPS, "linear": True}[selector]


def _rule_name(text: str) -> str:
    name = ALIASES.get(text.strip().lower(), text.strip().lower())
    if name not in LAYER_RULES and name not in ("zero", "gradient"):
        raise UnsupportedOpError(f"unknown LRP rule {text!r}; choose one of {', '.join(list(LAYER_RULES) + ['zero', 'gradient'])}")
    return name


def parse_rules(text: str) -> list[tuple[str, str]]:
    """A composite name, one rule for every layer ('epsilon'), or 'selector=rule,...' with selectors first, last,
    conv, dense, linear, op:<OpType>, name:<regex of node names>; the first entry that matches a node wins."""
    text = text.strip()
    if text in COMPOSITES:
        return COMPOSITES[text]
    if "=" not in text:
        return [("linear", _rule_name(text))]
    out = []
    for part in text.split(","):
        selector, _, name = part.rpartition("=")
        selector = selector.strip()
        if not selector or not (selector in SELECTORS or selector.startswith(("name:", "op:"))):
            raise UnsupportedOpError(f"LRP rules: {part!r} is not selector=rule (selectors: {', '.join(SELECTORS)}, "
                                     "op:<OpType>, name:<regex>)")
        if selector.startswith("name:"):
            try:
                re.compile(selector[5:])
            except re.error as exc:
                raise UnsupportedOpError(f"LRP rules: bad name pattern {selector[5:]!r} ({exc})") from None
        out.append((selector, _rule_name(name)))
    return out


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v)


def parse(name: str) -> tuple[list[tuple[str, str]], Params, str]:
    """'lrp[:rules][;key=value...]' -> (rules, params, composite label)."""
    _, _, rest = name.partition(":")
    head, *options = rest.split(";") if rest else [""]
    spec = head.strip() or DEFAULT_COMPOSITE
    rules = parse_rules(spec)
    values: dict = {}
    for option in options:
        key, eq, value = option.partition("=")
        key = key.strip()
        if not eq or key not in Params.__dataclass_fields__:
            raise UnsupportedOpError(f"LRP option {option!r}: use key=value with key one of {', '.join(Params.__dataclass_fields__)}")
        try:
            if key in ("low", "high"):
                values[key] = _floats(value)
            elif key == "zero_bias":
                values[key] = value.strip().lower() in ("1", "true", "yes")
            else:
                values[key] = float(value)
        except ValueError:
            raise UnsupportedOpError(f"LRP option {key} takes numbers, not {value!r}") from None
    params = Params(**values)
    for key in ("epsilon", "stabilizer"):
        if not getattr(params, key) >= 0:
            raise UnsupportedOpError(f"LRP option {key} must be >= 0")
    if not params.gamma >= 0:
        raise UnsupportedOpError("LRP option gamma must be >= 0")
    return rules, params, spec


def spec_name(rules: str | None = None, **params) -> str:
    """The rule set name for a composite or rule spec and parameters (None values left out)."""
    parts = [f"lrp:{rules or DEFAULT_COMPOSITE}"]
    for key, value in params.items():
        if value is None:
            continue
        if key in ("low", "high"):
            value = ",".join(repr(float(v)) for v in np.atleast_1d(np.asarray(value, dtype=np.float64)))
        elif key == "zero_bias":
            value = int(bool(value))
        parts.append(f"{key}={value}")
    return ";".join(parts)


def _layer_rule(rule_name: str, params: Params):
    if rule_name == "gradient":
        return None
    fn = LAYER_RULES["epsilon"] if rule_name == "zero" else LAYER_RULES[rule_name]
    use = params if rule_name != "zero" else Params(epsilon=0.0, stabilizer=params.stabilizer, zero_bias=params.zero_bias)

    def apply(ctx):
        layer = as_layer(ctx)
        if layer is None:  # weights computed from the input, or a layout the rules do not cover: gradient
            return registry.RULES["gradient"][ctx.node.op_type](ctx)
        try:
            relevance = fn(ctx, layer, ctx.dy(), use)
        except UnsupportedOpError as exc:
            raise UnsupportedOpError(f"{node_label(ctx.node)}: {exc}") from None
        return ctx.data_grad(relevance)

    apply.lrp_rule = rule_name
    return apply


def _gated(ctx, r: str):
    """Mul of an activation by a Sigmoid/HardSigmoid gate: all relevance to the activation (Arras et al. 2017)."""
    producers = _producers(ctx)
    kinds = [producers[i].op_type if i in producers else None for i in ctx.node.input[:2]]
    if ctx.needs(0) and ctx.needs(1) and (kinds[0] in GATES) != (kinds[1] in GATES):
        signal = 1 if kinds[0] in GATES else 0
        return [r if i == signal else None for i in range(2)]
    return None


def make_lrp(name: str) -> RuleSet:
    rules, params, spec = parse(name)
    chosen = [(sel, _layer_rule(rule_name, params)) for sel, rule_name in rules]
    eps = params.stabilizer

    def norm(ctx):
        return proportion(ctx, ctx.dy(), eps)

    def mul(ctx):
        active = [ctx.needs(i) for i in range(2)]
        if active[0] and active[1]:
            gated = _gated(ctx, ctx.dy())
            return gated if gated is not None else proportion(ctx, ctx.dy(), eps)
        return proportion(ctx, ctx.dy(), eps)

    def select(node, position):
        if node.op_type in LAYER_OPS:
            for selector, fn in chosen:
                if _matches(selector, node, position):
                    return fn or registry.RULES["gradient"].get(node.op_type)
            return None
        return None

    description = COMPOSITE_DOCS.get(spec, f"LRP with rules {spec}")

    def start(emitter, seed, output):
        return emitter.op("Mul", seed, output)  # R = seed * score: the explained score is the total relevance

    def check(model, path=None):
        bns = [n for n in (path or model.graph.node) if n.op_type == "BatchNormalization"]
        return [f"{node_label(n)} is not folded into a Conv (LRP assumes BatchNormalization folded); it gets the "
                "epsilon rule as a layer of its own, and relevance leaks into its shift" for n in bns]

    own = {op: norm for op in NORM_OPS}
    own.update({op: pass_through for op in PASS_OPS})
    own.update({"Mul": mul, "Div": norm})
    return RuleSet(name=name, description=description,
                   citation="Bach et al. 2015, On Pixel-Wise Explanations by Layer-Wise Relevance Propagation; "
                            "Montavon et al. 2019, Layer-Wise Relevance Propagation: An Overview",
                   rules=own, select=select, layer_ops=LAYER_OPS, start=start, check=check,
                   canonicalisers=("fold_batchnorm", "remove_identity_dropout"))


@family("lrp", "layer-wise relevance propagation, lrp:<composite or rules>[;epsilon=..;gamma=..;low=..;high=..]",
        citation="Bach et al. 2015; Montavon et al. 2019",
        listed=tuple(f"lrp:{c}" for c in COMPOSITES))
def _lrp_family(name: str) -> RuleSet:
    return make_lrp(name)
