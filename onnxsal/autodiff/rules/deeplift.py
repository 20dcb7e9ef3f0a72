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

from ..registry import REFERENCE_RULESETS, RULES, RULESET_DOCS, rule

EPS = 1e-5
RULESET = "deeplift"

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
    is needed, and no Where (slow in onnxruntime): Delta y / (Delta x + [Delta x = 0])."""
    dx = _delta(ctx, x)
    zero = ctx.op("Cast", ctx.op("Equal", dx, ctx.constant(0.0, like=dx)), to=ctx.e.dtypes.get(dx, 1))
    return ctx.mul(ctx.dy(), ctx.op("Div", _delta(ctx, y), ctx.op("Add", dx, zero)))


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


@rule("MaxPool", ruleset=RULESET)
def max_pool(ctx):
    plain = _plain(ctx)  # also checks the attributes and adds the Indices output
    x, y, dy = ctx.x(), ctx.y(), ctx.dy()
    y_ref = ctx.ref(y)
    indices, indices_ref = ctx.forward_output(1), ctx.ref_output(1)
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

