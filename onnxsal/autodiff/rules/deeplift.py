"""The deeplift rule set: DeepLIFT's Rescale rule (Shrikumar, Greenside & Kundaje 2017, sec. 3.5.2).

The backward pass carries multipliers m = d(target)/d(input) in the sense of DeepLIFT: for every nonlinearity
y = f(x) the chain rule uses the secant Delta y / Delta x between the input and the reference input instead of
f'(x) (eq. "Rescale": m_{Delta x Delta y} = Delta y / Delta x), so that the multipliers times Delta x add up
to the change of the output ("summation-to-delta", eq. 1). Delta t = t - t_ref, where t_ref is the tensor in
a second forward pass at the reference input (builder.reference_pass; RuleContext.ref). Linear ops (Conv,
Gemm, MatMul, pooling by average, BatchNormalization, Add, reshapes, ...) keep their own backward, which is
already Delta y / Delta x. The method multiplies the multipliers at the input by (x - x_ref).

Rules, per op:
  piecewise-linear nonlinearities with slopes 0 and +-1 (Relu, ThresholdedRelu, Clip / ReLU6, Abs, and the steps
        Floor, Ceil, Round, Sign)  Rescale: dx = dy * Delta y / Delta x wherever Delta x != 0, however small: on a
        piece y - y_ref is exactly +-(x - x_ref) or 0, so the float32 quotient is exact, and across a kink it is the
        paper's secant. Where Delta x = 0 exactly the multiplier is 0 rather than the
        gradient: such a unit reads only inputs that did not change either (Delta = 0 through its whole
        receptive field, but for exact cancellations), whose contributions (x - x_ref) * m are 0 whatever m is,
        so the attributions are the same; it saves onnxruntime a slow Where per activation. (Captum takes the
        gradient where |Delta x| < 1e-10.)
  other elementwise nonlinearities of one input  Rescale: dx = dy * Delta y / Delta x, and the gradient
        dy * f'(x) where |Delta x| < EPS (the limit Delta x -> 0, as the paper and Captum do). Ops: LeakyRelu,
        PRelu, Elu, Selu, Celu, Sigmoid, Tanh, HardSigmoid, HardSwish, Softplus, Softsign, Gelu, Mish, Erf, Exp,
        Log, Sqrt, Reciprocal, Sin, Cos, Pow with a constant exponent.
  Mul of two tensors that both depend on the input (SiLU's x * Sigmoid(x), squeeze-excitation gates, Gelu
        exported as x * 0.5 * (1 + Erf(..))): da = dy * (b + b_ref) / 2, db = dy * (a + a_ref) / 2, the
        Shapley split of a product, Delta(ab) = (a + a')/2 Delta b + (b + b')/2 Delta a exactly. It keeps
        summation-to-delta, and where both factors are functions of one x (SiLU, Gelu) the multipliers
        add up to Delta y / Delta x of the whole activation, i.e. Rescale of the fused op. (Not in the paper,
        which has no product rule; Captum differentiates torch.mul plainly.) With a constant factor it is
        the plain gradient.
  MaxPool  Captum's choice (captum.attr._core.deep_lift.maxpool): with t = max(y, y_ref) per window,
        dx = [scatter_{argmax x}(dy (t - y_ref)) + scatter_{argmax x_ref}(dy (y - t))] / Delta x, and the
        plain gradient where |Delta x| < EPS. It splits Delta y of each window between the winner at x and the
        winner at the reference, and keeps summation-to-delta.
  Softmax  Captum's rule (captum ... deep_lift.softmax): the Rescale multiplier of each entry, as if the op were
        elementwise, then minus its mean over the softmax axis (the paper's sec. 3.6 normalisation for softmax
        outputs: contributions to z_i - mean_j z_j, to which softmax is invariant). Captum takes that mean over
        the whole tensor, batch included; here it is per sample and per softmax row (the same for one sample).
  everything else  the plain gradient (the "gradient" rule set): e.g. GlobalMaxPool, ReduceMax, Max/Min of two
        tensors, Div of two tensors, LayerNormalization. Summation-to-delta is then approximate.

Tanh and Sigmoid form the secant from tanh(a) - tanh(b) = tanh(a - b) (1 - tanh a tanh b), accurate to a few
float32 ulps in absolute terms (see _secant); the others divide the two differences.

EPS = 1e-5: below it the secant is float32 rounding noise (Delta y of a smooth f carries an absolute error of
about 6e-8 |y|, so the quotient's relative error is ~6e-8 |y| / |Delta y|), and the gradient is then within
|f''| EPS / 2 of the secant. Captum's default is 1e-10 (DeepLift(model, eps=...)).
"""

from __future__ import annotations

import numpy as np

from ..registry import REFERENCE_RULESETS, RULES, RULESET_DOCS, rule

EPS = 1e-5
RULESET = "deeplift"
# smallest normal number by ONNX element type (FLOAT, DOUBLE): the guard of _rescale_piecewise_linear
TINY = {1: float(np.finfo(np.float32).tiny), 11: float(np.finfo(np.float64).tiny)}

REFERENCE_RULESETS.add(RULESET)
RULESET_DOCS[RULESET] = ("Shrikumar et al. 2017 (DeepLIFT, Rescale rule): nonlinearities pass dy * (y - y_ref) / "
                         "(x - x_ref) from a reference forward pass; MaxPool and Softmax as Captum")

# pieces of slope 0 or +-1: the secant is exact in floating point wherever Delta x != 0
PIECEWISE_LINEAR = ("Relu", "ThresholdedRelu", "Clip", "Abs", "Floor", "Ceil", "Round", "Sign")
RESCALE_OPS = ("Relu", "LeakyRelu", "PRelu", "ThresholdedRelu", "Clip", "Elu", "Selu", "Celu", "Sigmoid", "Tanh",
               "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Gelu", "Mish", "Erf", "Exp", "Log", "Sqrt",
               "Reciprocal", "Abs", "Sin", "Cos", "Pow", "Floor", "Ceil", "Round", "Sign")


def _plain(ctx) -> list:
    return list(RULES["gradient"][ctx.node.op_type](ctx))


def _small(ctx, delta: str) -> str:
    """|Delta x| < EPS: where the secant gives way to the gradient."""
    return ctx.op("Less", ctx.op("Abs", delta), ctx.constant(EPS, like=delta))


def _delta(ctx, name: str) -> str:
    return ctx.op("Sub", name, ctx.ref(name))


def _secant(ctx, dx: str, x: str, y: str) -> str:
    """Delta y / Delta x. Tanh and Sigmoid by the identity tanh a - tanh b = tanh(a - b) (1 - tanh a tanh b), which
    leaves an absolute error of a few float32 ulps instead of ulp(y) / |Delta y| (the quotient of two rounded
    differences): Tanh  tanh(Dx) / Dx * (1 - y y_ref);  Sigmoid (sigma = (1 + tanh(x/2)) / 2)
    tanh(Dx / 2) / Dx * (1 - (2y - 1)(2y_ref - 1)) / 2."""
    op = ctx.node.op_type
    if op == "Tanh":
        return ctx.mul(ctx.op("Div", ctx.op("Tanh", dx), dx),
                       ctx.op("Sub", ctx.constant(1.0, like=y), ctx.mul(y, ctx.ref(y))))
    if op == "Sigmoid":
        one = ctx.constant(1.0, like=y)

        def centred(t):  # tanh(x / 2) = 2 sigma(x) - 1
            return ctx.op("Sub", ctx.scale(t, 2.0), one)

        ratio = ctx.op("Div", ctx.op("Tanh", ctx.scale(dx, 0.5)), dx)
        return ctx.mul(ratio, ctx.scale(ctx.op("Sub", one, ctx.mul(centred(y), centred(ctx.ref(y)))), 0.5))
    return ctx.op("Div", _delta(ctx, y), dx)


def _rescale(ctx, plain_dx: str, x: str, y: str) -> str:
    """where(|Delta x| < EPS, dy f'(x), dy Delta y / Delta x)."""
    dx = _delta(ctx, x)
    secant = ctx.mul(ctx.dy(), _secant(ctx, dx, x, y))
    return ctx.op("Where", _small(ctx, dx), plain_dx, secant)


def _rescale_piecewise_linear(ctx, x: str, y: str) -> str:
    """dy * Delta y / Delta x where Delta x != 0, else 0 (see the module docstring): on a linear piece y and y_ref
    are x and x_ref times the same slope, so the float32 quotient is exact however small Delta x is; no gradient
    is needed, and no Where (slow in onnxruntime).

    float32 / float64: Delta y / (Delta x + TINY), TINY the smallest normal number (2^-126, 2^-1022). Delta x = 0
    gives 0 / TINY = 0; where |Delta x| >= 2^25 TINY (2^-101 ~ 4e-31 in float32; at 2^24 TINY it is a tie, rounded
    to even) the sum rounds back to Delta x and the quotient is exact, 2 ops cheaper per activation than the guard
    below (Equal, Cast). A nonzero |Delta x| under 2^-101 needs pre-activations under ~1e-24 at both inputs; the
    method checks that its attributions are finite. Other types (float16: TINY would spoil |Delta x| < 0.1): Delta y / (Delta x + [Delta x = 0])."""
    dx = _delta(ctx, x)
    dtype = ctx.e.dtypes.get(dx, 1)
    tiny = TINY.get(dtype)
    if tiny is not None:
        guarded = ctx.op("Add", dx, ctx.constant(tiny, like=dx))
    else:
        guarded = ctx.op("Add", dx, ctx.op("Cast", ctx.op("Equal", dx, ctx.constant(0.0, like=dx)), to=dtype))
    return ctx.mul(ctx.dy(), ctx.op("Div", _delta(ctx, y), guarded))


@rule(*RESCALE_OPS, ruleset=RULESET)
def rescale(ctx):
    x, y = ctx.x(0), ctx.y(0)
    if ctx.node.op_type in PIECEWISE_LINEAR and ctx.ref(x) != x:
        return ctx.data_grad(_rescale_piecewise_linear(ctx, x, y))
    plain = _plain(ctx)
    if ctx.node.op_type == "Pow" and ctx.ref(ctx.x(1)) != ctx.x(1):
        return plain  # x ** y with y depending on the input: two varying inputs, no Rescale rule
    if plain[0] is None or ctx.ref(x) == x:
        return plain
    return [_rescale(ctx, plain[0], x, y)] + plain[1:]


@rule("Mul", ruleset=RULESET)
def product(ctx):
    a, b, dy = ctx.x(0), ctx.x(1), ctx.dy()

    def mean(t):  # (t + t_ref) / 2, or t itself when it does not depend on the input
        r = ctx.ref(t)
        return t if r == t else ctx.scale(ctx.op("Add", t, r), 0.5)

    return [ctx.mul(dy, mean(b)) if ctx.needs(0) else None,
            ctx.mul(dy, mean(a)) if ctx.needs(1) else None]


def _batched_indices(ctx, indices: str, x: str) -> str:
    """MaxPool Indices of the reference pass as offsets into x: the reference may be one sample broadcast to the
    batch (N_ref = 1), whose offsets index sample 0 only. With P = C*H*W of x per sample (row-major Indices, the only
    storage order supported), offset mod P + n * P for sample n = 0..N-1, shaped (N, C, h, w) like y."""
    shape = ctx.shape_of(x)
    rank = ctx.rank(x)
    per_sample = ctx.op("ReduceProd", ctx.op("Slice", shape, ctx.ints([1]), ctx.ints([rank])), keepdims=1)  # (1,)
    n = ctx.op("Gather", shape, ctx.constant(0, dtype=np.int64), axis=0)
    samples = ctx.op("Range", ctx.constant(0, dtype=np.int64), n, ctx.constant(1, dtype=np.int64))  # (N,)
    offsets = ctx.op("Reshape", ctx.mul(samples, per_sample), ctx.ints([-1] + [1] * (rank - 1)))
    return ctx.op("Add", ctx.op("Mod", indices, per_sample), offsets)


@rule("MaxPool", ruleset=RULESET)
def max_pool(ctx):
    plain = _plain(ctx)  # also checks the attributes and adds the Indices output
    x, y, dy = ctx.x(), ctx.y(), ctx.dy()
    y_ref = ctx.ref(y)
    indices, indices_ref = ctx.forward_output(1), _batched_indices(ctx, ctx.ref_output(1), x)
    top = ctx.op("Max", y, y_ref)
    flat = ctx.ints([-1])
    zeros = ctx.op("Reshape", ctx.zeros_like(x), flat)
    at_x = ctx.op("ScatterElements", zeros, ctx.op("Reshape", indices, flat),
                  ctx.op("Reshape", ctx.mul(dy, ctx.op("Sub", top, y_ref)), flat), axis=0, reduction="add")
    both = ctx.op("ScatterElements", at_x, ctx.op("Reshape", indices_ref, flat),
                  ctx.op("Reshape", ctx.mul(dy, ctx.op("Sub", y, top)), flat), axis=0, reduction="add")
    spread = ctx.op("Reshape", both, ctx.shape_of(x))
    delta = _delta(ctx, x)
    return [ctx.op("Where", _small(ctx, delta), plain[0], ctx.op("Div", spread, delta))] + plain[1:]


@rule("Softmax", ruleset=RULESET)
def softmax(ctx):
    x, y = ctx.x(), ctx.y()
    plain = _plain(ctx)
    unnormalised = _rescale(ctx, plain[0], x, y)
    axis = ctx.attr("axis", -1 if ctx.opset >= 13 else 1)
    rank = ctx.rank(x)
    axes = [axis % rank] if ctx.opset >= 13 else list(range(axis % rank, rank))  # opset < 13: a flattened 2-D softmax
    mean = ctx.op("ReduceMean", unnormalised, ctx.ints(axes), keepdims=1) if ctx.opset >= 18 else \
        ctx.op("ReduceMean", unnormalised, axes=axes, keepdims=1)
    return [ctx.op("Sub", unnormalised, mean)] + plain[1:]



# -- RevealCancel ------------------------------------------------------------------------------------------------
#
# deeplift_reveal_cancel (Shrikumar et al. 2017, sec. 3.5.3): the rules above, except that a nonlinearity y = f(x)
# whose input comes straight from a linear op with constant weights (Conv, Gemm, MatMul; BatchNormalization is
# folded into the Conv first) and feeds nothing else splits Delta x into the positive and negative terms of that
# op's sum (sec. 3.5.1, by the sign of w_i Delta h_i, bias excluded):
#     Delta x+ = W+ relu(Delta h) + W- min(Delta h, 0),   Delta x- = W- relu(Delta h) + W+ min(Delta h, 0)
# and gives each part its own multiplier, the average impact of adding it before and after the other:
#     Delta y+ = 1/2 (f(x' + Dx+) - f(x')) + 1/2 (f(x) - f(x' + Dx-))      m+ = Delta y+ / Delta x+
#     Delta y- = 1/2 (f(x' + Dx-) - f(x')) + 1/2 (f(x) - f(x' + Dx+))      m- = Delta y- / Delta x-
# (the gradient at x where |Delta x+-| < EPS). The linear op then sends m+ back through the weights of the terms
# it counted as positive and m- through the others (sec. 3.5.1; the deeplift package's SepPosAndNeg mode):
#     m_h = [Dh > 0] (W+^T m+ + W-^T m-) + [Dh < 0] (W-^T m+ + W+^T m-) + [Dh = 0] W^T (m+ + m-) / 2
# so that sum_h m_h Delta h = sum (m+ Delta x+ + m- Delta x-) = Delta y: summation-to-delta holds. Anywhere else
# (a nonlinearity after an Add of two branches, a pooling, another nonlinearity) the rule is Rescale.

REVEAL_CANCEL = "deeplift_reveal_cancel"
REFERENCE_RULESETS.add(REVEAL_CANCEL)
RULESET_DOCS[REVEAL_CANCEL] = ("Shrikumar et al. 2017 (DeepLIFT, RevealCancel rule): nonlinearities fed by Conv/Gemm/"
                               "MatMul give the positive and negative parts of Delta x their own multipliers; "
                               "otherwise as deeplift")
LINEAR_PRODUCERS = ("Conv", "Gemm", "MatMul")

for _op, _fn in (("Mul", product), ("MaxPool", max_pool), ("Softmax", softmax)):
    rule(_op, ruleset=REVEAL_CANCEL)(_fn)


def _index(e):
    """(producer by tensor, consumer count by tensor, graph outputs) of the model being differentiated (cached)."""
    cached = getattr(e, "_reveal_cancel_index", None)
    if cached is None:
        producers, consumers = {}, {}
        for node in e.model.graph.node:
            for o in node.output:
                producers[o] = node
            for i in node.input:
                consumers[i] = consumers.get(i, 0) + 1
        cached = (producers, consumers, {o.name for o in e.model.graph.output})
        e._reveal_cancel_index = cached
    return cached


def _splits(e) -> dict:
    """linear node output -> (m+, m-): the two multiplier streams its consumer left for it."""
    if not hasattr(e, "_reveal_cancel_splits"):
        e._reveal_cancel_splits = {}
    return e._reveal_cancel_splits


def _linear_producer(ctx, x: str):
    """The Conv / Gemm / MatMul node computing x from one input that depends on the input and constant weights,
    when x feeds only this nonlinearity; else None."""
    producers, consumers, outputs = _index(ctx.e)
    node = producers.get(x)
    if node is None or node.op_type not in LINEAR_PRODUCERS or consumers.get(x, 0) != 1 or x in outputs:
        return None
    if node.domain not in ("", "ai.onnx") or ctx.ref(node.input[0]) == node.input[0]:
        return None
    if ctx.const(node.input[1]) is None or any(ctx.ref(i) != i for i in node.input[1:] if i):
        return None
    if node.op_type == "Gemm" and node.attribute and any(a.name == "transA" and a.i for a in node.attribute):
        return None
    return node


def _attrs(node) -> dict:
    from onnx import helper

    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def _signed_weights(ctx, node):
    w = ctx.const(node.input[1])
    return ctx.constant(w * (w > 0), like=node.input[1]), ctx.constant(w * (w < 0), like=node.input[1])


def _linear(ctx, node, inp: str, weight: str) -> str:
    """The linear op of `node` on `inp` with `weight`, bias left out."""
    attrs = _attrs(node)
    if node.op_type == "Gemm":
        attrs.pop("beta", None)
    return ctx.op(node.op_type, inp, weight, **attrs)


def _linear_backward(ctx, node, dy: str, weight: str) -> str:
    """The plain backward of `node` to its input 0, with `weight` in place of its own."""
    from onnx import helper

    from ..builder import RuleContext

    twin = helper.make_node(node.op_type, [node.input[0], weight], list(node.output), name=node.name)
    twin.attribute.extend(node.attribute)
    sub = RuleContext(ctx.e, twin, [dy], [True, False])
    return RULES["gradient"][node.op_type](sub)[0]


@rule(*RESCALE_OPS, ruleset=REVEAL_CANCEL)
def reveal_cancel(ctx):
    x, y = ctx.x(0), ctx.y(0)
    node = _linear_producer(ctx, x) if ctx.ref(x) != x else None
    if node is None or (ctx.node.op_type == "Pow" and ctx.ref(ctx.x(1)) != ctx.x(1)):
        return rescale(ctx)
    h = node.input[0]
    dh = _delta(ctx, h)
    zero = ctx.constant(0.0, like=dh)
    up, down = ctx.op("Max", dh, zero), ctx.op("Min", dh, zero)
    w_pos, w_neg = _signed_weights(ctx, node)
    dx_pos = ctx.op("Add", _linear(ctx, node, up, w_pos), _linear(ctx, node, down, w_neg))
    dx_neg = ctx.op("Add", _linear(ctx, node, up, w_neg), _linear(ctx, node, down, w_pos))
    x_ref, y_ref = ctx.ref(x), ctx.ref(y)
    attrs = _attrs(ctx.node)

    def f(t):  # this nonlinearity at another input
        return ctx.op(ctx.node.op_type, t, *ctx.node.input[1:], **attrs)

    after_pos, after_neg = f(ctx.op("Add", x_ref, dx_pos)), f(ctx.op("Add", x_ref, dx_neg))
    half = 0.5
    dy_pos = ctx.scale(ctx.op("Add", ctx.op("Sub", after_pos, y_ref), ctx.op("Sub", y, after_neg)), half)
    dy_neg = ctx.scale(ctx.op("Add", ctx.op("Sub", after_neg, y_ref), ctx.op("Sub", y, after_pos)), half)
    plain = _plain(ctx)[0]
    streams = [ctx.op("Where", _small(ctx, d), plain, ctx.mul(ctx.dy(), ctx.op("Div", part, d)))
               for part, d in ((dy_pos, dx_pos), (dy_neg, dx_neg))]
    _splits(ctx.e)[x] = (streams[0], streams[1], dh, w_pos, w_neg)
    # what reaches x itself is never read: the linear node below takes the two streams from _splits
    return [streams[0]] + [None] * (len(ctx.node.input) - 1)


@rule(*LINEAR_PRODUCERS, ruleset=REVEAL_CANCEL)
def linear_split(ctx):
    split = _splits(ctx.e).get(ctx.y())
    if split is None:
        return list(RULES["gradient"][ctx.node.op_type](ctx))
    m_pos, m_neg, dh, w_pos, w_neg = split
    node, w = ctx.node, ctx.x(1)

    def back(dy, weight):
        return _linear_backward(ctx, node, dy, weight)

    dtype = ctx.e.dtypes.get(dh, 1)
    zero = ctx.constant(0.0, like=dh)
    positive = ctx.op("Cast", ctx.op("Greater", dh, zero), to=dtype)
    negative = ctx.op("Cast", ctx.op("Less", dh, zero), to=dtype)
    unchanged = ctx.op("Cast", ctx.op("Equal", dh, zero), to=dtype)
    grad = ctx.op("Sum",
                  ctx.mul(positive, ctx.op("Add", back(m_pos, w_pos), back(m_neg, w_neg))),
                  ctx.mul(negative, ctx.op("Add", back(m_pos, w_neg), back(m_neg, w_pos))),
                  ctx.mul(unchanged, back(ctx.scale(ctx.op("Add", m_pos, m_neg), 0.5), w)))
    return [grad] + [None] * (len(node.input) - 1)
