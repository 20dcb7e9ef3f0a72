"""DeepLIFT (Rescale), DeepLIFT SHAP and GradientSHAP against Captum on the same weights, against numpy replicas of
the rules where Captum's arithmetic differs, and summation-to-delta (sum(attr) = F(x) - F(x')).

Agreement: max |ours - oracle| / max |oracle| over the whole attribution tensor. Captum runs with eps = 1e-5, the
threshold of our rule set (autodiff/rules/deeplift.py), so that both fall back to the gradient at the same units.
Captum hooks nn.ReLU but not nn.ReLU6; its twin of ReLU6 is ReLU(x) - ReLU(x - 6) with two hooked ReLUs, whose
Rescale multipliers add up to Rescale of Clip(x, 0, 6) (both see the same Delta x).
"""

from __future__ import annotations

import copy
import zlib
import io
import warnings

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")
nn = torch.nn

from onnxsal import Explainer  # noqa: E402
from onnxsal.autodiff.rules.deeplift import EPS  # noqa: E402
from onnxsal.errors import MethodError  # noqa: E402
import torch_models as tm  # noqa: E402


def to_onnx(model, shape, opset=17) -> bytes:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(shape),), f, dynamo=False, opset_version=opset, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}})
    return f.getvalue()


def rel(ours, oracle) -> float:
    return float(np.abs(np.asarray(ours, np.float64) - oracle).max() / np.abs(oracle).max())


class ReLU6Twin(nn.Module):
    """ReLU6 as Captum can hook it: ReLU(x) - ReLU(x - 6). Each ReLU gets a tensor of its own (x * 1, x - 6): Captum
    rewrites the gradient of a hooked module's input tensor, all of it, so a tensor read by both branches would
    have the branch through x - 6 rescaled by the first ReLU's multiplier too (summation-to-delta then fails)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        return self.a(x * 1.0) - self.b(x - 6.0)


class Residual(nn.Module):
    def __init__(self, c, act):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), act()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)) + x)




def small_net(kind: str):
    """(torch model for ONNX, its Captum twin) on 3 x 12 x 12 inputs, 4 classes."""
    torch.manual_seed(zlib.crc32(kind.encode()) % 1000)  # hash() of a str changes per process (PYTHONHASHSEED)
    flat = nn.Flatten()
    if kind == "relu":
        layers = [nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, stride=2, padding=1), nn.ReLU(), flat,
                  nn.Linear(6 * 36, 16), nn.ReLU(), nn.Linear(16, 4)]
    elif kind == "relu6":
        layers = [nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU6(), nn.Conv2d(6, 6, 3, stride=2, padding=1),
                  nn.ReLU6(), flat, nn.Linear(6 * 36, 4)]
    elif kind == "sigmoid":
        layers = [nn.Conv2d(3, 6, 3, padding=1), nn.Sigmoid(), nn.AvgPool2d(2), nn.Conv2d(6, 6, 3, padding=1),
                  nn.Sigmoid(), flat, nn.Linear(6 * 36, 4)]
    elif kind == "tanh":
        layers = [nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Tanh(), nn.AvgPool2d(2), flat,
                  nn.Linear(6 * 36, 8), nn.Tanh(), nn.Linear(8, 4)]
    elif kind == "maxpool":
        # MaxPool after a linear op (see test_relu_then_maxpool for ReLU -> MaxPool), windows that do not overlap:
        # Captum un-pools with max_unpool2d, which writes rather than adds where windows overlap (a unit that wins
        # two windows keeps one share; summation-to-delta fails), while our rule adds (ResNet's 3x3 stride-2 pool is
        # covered by test_summation_to_delta), and no nonlinear module right after another (Captum hooks the input
        # tensor of each: two in a row see each other's rescaled gradients)
        layers = [nn.Conv2d(3, 6, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                  nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.MaxPool2d(2), flat, nn.Linear(6 * 9, 4)]
    elif kind == "residual":
        layers = [nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), Residual(6, nn.ReLU),
                  Residual(6, nn.Tanh), nn.AvgPool2d(2), flat, nn.Linear(6 * 36, 4)]
    elif kind == "elu_leaky":
        layers = [nn.Conv2d(3, 6, 3, padding=1), nn.ELU(), nn.Conv2d(6, 6, 3, padding=1), nn.LeakyReLU(0.1), flat,
                  nn.Linear(6 * 144, 4)]
    else:
        raise KeyError(kind)
    if kind == "relu6":  # activations beyond 6, so that the upper kink matters
        with torch.no_grad():
            layers[0].weight.mul_(8.0)
    model = tm.randomize_batchnorm(nn.Sequential(*layers))
    twin = tm.randomize_batchnorm(nn.Sequential(*[ReLU6Twin() if isinstance(l, nn.ReLU6) else l for l in layers]))
    return model, twin


def inputs(n=2, seed=0, shape=(3, 12, 12)):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)).astype(np.float32), (0.3 * rng.standard_normal((n, *shape))).astype(np.float32)


def captum_deeplift(model, x, ref, target):
    """Captum's DeepLift in float64 (a double copy of the model): both float32 secants carry the rounding of y and
    y_ref (onnxruntime's and torch's Sigmoid differ in the last bit), amplified where Delta y is small; in double
    Captum is the exact value of the same rule."""
    dl = captum_attr.DeepLift(copy.deepcopy(model).double(), eps=EPS)
    a, d = dl.attribute(torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(ref, dtype=torch.float64), target=target,
                        return_convergence_delta=True)
    return a.detach().numpy(), d.detach().numpy()


# -- DeepLIFT Rescale against Captum -------------------------------------------------------------------------

PIECEWISE_LINEAR = ("relu", "relu6", "maxpool")


@pytest.mark.parametrize("kind", ["relu", "relu6", "sigmoid", "tanh", "maxpool", "residual", "elu_leaky"])
def test_deeplift_matches_captum(kind):
    model, twin = small_net(kind)
    x, ref = inputs()
    ex = Explainer(to_onnx(model, (1, 3, 12, 12)))
    ours = ex.explain(x, "deeplift", target=1, baseline=ref)
    theirs, captum_delta = captum_deeplift(twin, x, ref, 1)
    assert np.abs(captum_delta).max() < 1e-8  # Captum itself keeps summation-to-delta on these nets
    assert rel(ours.attributions, theirs) <= 1e-4
    # summation-to-delta, from the two scores the graph computed
    with torch.no_grad():
        fx, fr = model(torch.as_tensor(x))[:, 1].numpy(), model(torch.as_tensor(ref))[:, 1].numpy()
    gap = fx - fr
    # 1e-4 of the gap, plus the rounding of the two float32 scores it is the difference of (the sigmoid net's gap
    # is 1e-3 of its scores, where a few ulps of |F| are 1e-7: the bound without them failed now and then)
    slack = 1e-4 * np.abs(gap).max() + 8 * np.finfo(np.float32).eps * max(np.abs(fx).max(), np.abs(fr).max())
    assert np.abs(ours.attributions.reshape(2, -1).sum(1) - gap).max() <= slack
    assert np.abs(ours.delta).max() <= slack


def test_deeplift_top_class_in_graph_and_batches():
    """The in-graph top class gives Captum's attributions of each sample's own top class; batch size 1 changes nothing."""
    model, twin = small_net("residual")
    x, ref = inputs(3, seed=4)
    ex = Explainer(to_onnx(model, (1, 3, 12, 12)), batch_size=1)
    ours = ex.explain(x, "deeplift", baseline=ref)
    with torch.no_grad():
        top = model(torch.as_tensor(x)).argmax(1)
    theirs, _ = captum_deeplift(twin, x, ref, top)
    assert list(ours.targets) == top.tolist()
    assert rel(ours.attributions, theirs) <= 1e-4


def test_relu_then_maxpool_paper_and_replica():
    """ReLU directly before MaxPool: Captum's own summation-to-delta gap is large there (its hooks on two consecutive
    nonlinear modules), so the oracle is a numpy replica of Captum's MaxPool rule and of Rescale, on one layer."""
    torch.manual_seed(3)
    conv, lin = nn.Conv2d(2, 3, 3, padding=1), nn.Linear(3 * 4 * 4, 2)
    model = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), lin).eval()
    x, ref = inputs(2, seed=5, shape=(2, 8, 8))
    ours = Explainer(to_onnx(model, (1, 2, 8, 8))).explain(x, "deeplift", target=0, baseline=ref)

    w, b = conv.weight.detach().numpy().astype(np.float64), conv.bias.detach().numpy().astype(np.float64)
    wl = lin.weight.detach().numpy().astype(np.float64)

    def conv_np(t):  # (N, 2, 8, 8) -> (N, 3, 8, 8), zero padding 1
        p = np.pad(t.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
        out = np.zeros((len(t), 3, 8, 8))
        for i in range(3):
            for j in range(3):
                out += np.einsum("oc,ncyx->noyx", w[:, :, i, j], p[:, :, i:i + 8, j:j + 8])
        return out + b[None, :, None, None]

    z, zr = conv_np(x), conv_np(ref)
    a, ar = np.maximum(z, 0), np.maximum(zr, 0)

    def pool(t):  # values and flat argmax (first maximum) of 2x2 windows
        windows = t.reshape(len(t), 3, 4, 2, 4, 2).transpose(0, 1, 2, 4, 3, 5).reshape(len(t), 3, 4, 4, 4)
        k = windows.argmax(-1)
        return windows.max(-1), k

    y, k = pool(a)
    yr, kr = pool(ar)
    dy = np.broadcast_to(wl[0].reshape(3, 4, 4), y.shape)  # multiplier of the pooled map for target 0
    top = np.maximum(y, yr)
    spread = np.zeros_like(a)
    for n in range(2):
        for c in range(3):
            for i in range(4):
                for j in range(4):
                    for kk, value in ((k[n, c, i, j], dy[n, c, i, j] * (top[n, c, i, j] - yr[n, c, i, j])),
                                      (kr[n, c, i, j], dy[n, c, i, j] * (y[n, c, i, j] - top[n, c, i, j]))):
                        spread[n, c, 2 * i + kk // 2, 2 * j + kk % 2] += value
    da = a - ar
    m_a = np.where(np.abs(da) < EPS, 0.0, spread / np.where(da == 0, 1, da))  # plain gradient is 0 off the argmax
    dz = z - zr
    m_z = m_a * np.where(np.abs(dz) < EPS, z > 0, (a - ar) / np.where(dz == 0, 1, dz))
    # back through the conv: the transpose, i.e. the gradient of sum(m_z * conv(t)) in t
    t = torch.zeros(x.shape, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.conv2d(t, torch.as_tensor(w), padding=1).mul(torch.as_tensor(m_z)).sum().backward()
    replica = (x - ref) * t.grad.numpy()
    assert rel(ours.attributions, replica) <= 1e-4
    gap = (model(torch.as_tensor(x)) - model(torch.as_tensor(ref)))[:, 0].detach().numpy()
    assert np.abs(ours.attributions.reshape(2, -1).sum(1) - gap).max() <= 1e-4 * np.abs(gap).max()


def test_softmax_rule_replica_and_captum():
    """Softmax on the path (target_kind='probability'): Captum's rule, normalised per row. Captum takes the mean over
    the whole tensor, so it agrees for one sample; two samples are checked against a numpy replica of the rule."""
    torch.manual_seed(7)
    lin = nn.Linear(5, 4)
    model = nn.Sequential(lin, nn.Softmax(dim=1)).eval()
    rng = np.random.default_rng(8)
    x, ref = rng.standard_normal((2, 5)).astype(np.float32), rng.standard_normal((2, 5)).astype(np.float32)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 5),), f, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}})
    ex = Explainer(f.getvalue(), target_kind="probability")
    ours = ex.explain(x, "deeplift", target=2, baseline=ref)
    w, b = lin.weight.detach().numpy().astype(np.float64), lin.bias.detach().numpy().astype(np.float64)
    z, zr = x @ w.T + b, ref @ w.T + b
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    pr = np.exp(zr) / np.exp(zr).sum(1, keepdims=True)
    seed = np.eye(4)[[2, 2]]
    g = seed * (p - pr) / (z - zr)
    g = g - g.mean(axis=1, keepdims=True)
    replica = (x - ref) * (g @ w)
    assert rel(ours.attributions, replica) <= 1e-4
    theirs, _ = captum_deeplift(model, x[:1], ref[:1], 2)
    assert rel(ours.attributions[:1], theirs) <= 1e-4


# -- summation-to-delta -----------------------------------------------------------------------------------------

class SiLUNet(nn.Module):
    """Products of two activations (x * sigmoid(x), a squeeze-excitation gate), Gelu (Erf) and HardSwish."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.se = nn.Linear(6, 6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        h = self.c1(x)
        h = h * torch.sigmoid(h)
        h = nn.functional.gelu(self.c2(h))
        gate = torch.sigmoid(self.se(h.mean((2, 3))))
        h = nn.functional.hardswish(h * gate[:, :, None, None])
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("family", ["resnet", "mobilenet_v2", "vgg", "squeezenet", "densenet", "efficientnet", "silu"])
def test_summation_to_delta(family):
    import torch_models

    model = SiLUNet().eval() if family == "silu" else torch_models.build(family)
    shape = (3, 12, 12) if family == "silu" else (3, torch_models.SIZE, torch_models.SIZE)
    torch.manual_seed(1)
    x, ref = inputs(2, seed=9, shape=shape)
    ex = Explainer(to_onnx(model, (1, *shape), opset=17))
    e = ex.explain(x, "deeplift", target=3, baseline=ref)
    with torch.no_grad():
        gap = (model(torch.as_tensor(x)) - model(torch.as_tensor(ref)))[:, 3].numpy()
    assert np.abs(e.attributions.reshape(2, -1).sum(1) - gap).max() <= 1e-4 * max(1.0, np.abs(gap).max())
    # the plain gradient in place of the multipliers (gradient x (x - x')) does not add up on these nets
    g = ex.gradients(x, np.eye(torch_models.CLASSES if family != "silu" else 4)[[3, 3]].astype(np.float32)).input_grad
    assert np.abs(((x - ref) * g).reshape(2, -1).sum(1) - gap).max() > 1e-3 * np.abs(gap).max()


# -- DeepLIFT SHAP and GradientSHAP against Captum -------------------------------------------------------------

def test_deeplift_shap_matches_captum():
    model, twin = small_net("residual")
    x, _ = inputs(2, seed=11)
    refs = (0.5 * np.random.default_rng(12).standard_normal((3, 3, 12, 12))).astype(np.float32)
    ex = Explainer(to_onnx(model, (1, 3, 12, 12)), batch_size=4)  # 6 pairs in batches of 4
    ours = ex.explain(x, "deeplift_shap", target=2, references=refs)
    dls = captum_attr.DeepLiftShap(twin)
    dls.eps = EPS
    theirs = dls.attribute(torch.as_tensor(x), torch.as_tensor(refs), target=2).detach().numpy()
    assert rel(ours.attributions, theirs) <= 1e-4
    with torch.no_grad():
        gap = (model(torch.as_tensor(x))[:, 2] - model(torch.as_tensor(refs))[:, 2].mean()).numpy()
    assert np.abs(ours.attributions.reshape(2, -1).sum(1) - gap).max() <= 1e-4 * np.abs(gap).max()
    assert np.abs(ours.delta).max() <= 1e-4 * np.abs(gap).max()


def test_gradient_shap_matches_captum_replayed_draws():
    model, _ = small_net("sigmoid")
    x, _ = inputs(2, seed=13)
    refs = (0.5 * np.random.default_rng(14).standard_normal((3, 3, 12, 12))).astype(np.float32)
    gs = captum_attr.GradientShap(model)
    np.random.seed(5)
    torch.manual_seed(6)
    theirs = gs.attribute(torch.as_tensor(x), torch.as_tensor(refs), n_samples=4, stdevs=0.2, target=1).detach().numpy()
    # the same draws, in Captum's order: noise (torch.normal), reference indices, then the path coefficients
    torch.manual_seed(6)
    noise = torch.normal(0, torch.tensor(0.2).repeat((8, 3, 12, 12))).numpy()
    np.random.seed(5)
    choices = np.random.choice(3, 8)
    alphas = np.random.uniform(0.0, 1.0, 8)
    ex = Explainer(to_onnx(model, (1, 3, 12, 12)), batch_size=3)
    ours = ex.explain(x, "gradient_shap", target=1, references=refs, samples=4, noise=noise, choices=choices,
                      alphas=alphas)
    assert rel(ours.attributions, theirs) <= 1e-4
    # our own draws: a different estimate of the same expectation, same shape, finite
    own = ex.explain(x, "gradient_shap", target=1, references=refs, samples=4, stdev=0.2)
    assert own.attributions.shape == x.shape and np.isfinite(own.attributions).all()
    assert rel(own.attributions, theirs) > 1e-3


# -- MobileNetV2 of the zoo and its torch twin ------------------------------------------------------------------

class OnnxTwin(nn.Module):
    """A torch module that runs a Conv / Clip / Add / GlobalAveragePool / Flatten / Gemm ONNX graph with one nn module
    per node (Clip(0, 6) as ReLU6Twin): the zoo MobileNetV2's weights, for Captum."""

    def __init__(self, model: onnx.ModelProto):
        super().__init__()
        consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant":
                consts[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
        self.plan, self.mods = [], nn.ModuleList()
        self.input = model.graph.input[0].name
        self.output = model.graph.output[0].name
        for node in model.graph.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Constant":
                continue
            if node.op_type == "Conv":
                w = consts[node.input[1]]
                pads = list(attrs.get("pads", [0, 0, 0, 0]))
                assert pads[:2] == pads[2:]
                mod = nn.Conv2d(w.shape[1] * attrs.get("group", 1), w.shape[0], w.shape[2:], tuple(attrs.get("strides", [1, 1])),
                                tuple(pads[:2]), tuple(attrs.get("dilations", [1, 1])), attrs.get("group", 1),
                                bias=len(node.input) > 2)
                mod.weight.data = torch.as_tensor(w.copy())
                if len(node.input) > 2:
                    mod.bias.data = torch.as_tensor(consts[node.input[2]].copy())
            elif node.op_type == "Clip":
                assert float(consts[node.input[1]]) == 0.0 and float(consts[node.input[2]]) == 6.0
                mod = ReLU6Twin()
            elif node.op_type == "GlobalAveragePool":
                mod = nn.AdaptiveAvgPool2d(1)
            elif node.op_type == "Flatten":
                mod = nn.Flatten(attrs.get("axis", 1))
            elif node.op_type == "Gemm":
                w = consts[node.input[1]]
                assert attrs.get("transB", 0) == 1
                mod = nn.Linear(w.shape[1], w.shape[0])
                mod.weight.data, mod.bias.data = torch.as_tensor(w.copy()), torch.as_tensor(consts[node.input[2]].copy())
            elif node.op_type == "Add":
                mod = None
            else:
                raise NotImplementedError(node.op_type)
            if mod is not None:
                self.mods.append(mod)
            self.plan.append((node.op_type, list(node.input), node.output[0], len(self.mods) - 1))

    def forward(self, x):
        env = {self.input: x}
        for op, ins, out, k in self.plan:
            env[out] = env[ins[0]] + env[ins[1]] if op == "Add" else self.mods[k](env[ins[0]])
        return env[self.output]


def test_zoo_mobilenet_v2_matches_captum():
    from onnxsal import zoo
    from onnxsal.preprocess import Preprocessing, load_image

    path = zoo.resolve("mobilenet_v2")[0]
    twin = OnnxTwin(onnx.load(str(path))).eval()
    ex = Explainer("mobilenet_v2")
    prep = Preprocessing.from_dict(zoo.entry("mobilenet_v2")["preprocessing"])
    x = prep.batch([load_image(zoo.example_image(zoo.EXAMPLES[0]))])
    with torch.no_grad():
        logits = twin(torch.as_tensor(x)).numpy()
    assert rel(ex.predict(x), logits) < 1e-4  # the twin is the same network
    target = int(logits[0].argmax())
    ours = ex.explain(x, "deeplift", target=target, baseline="black")
    black = ex.baselines(x, "black")[0]
    theirs, captum_delta = captum_deeplift(twin, x, black, target)
    assert rel(ours.attributions, theirs) <= 1e-4
    gap = float((ex.score(x, np.eye(1000)[[target]]) - ex.score(black, np.eye(1000)[[target]]))[0])
    assert abs(float(ours.attributions.sum()) - gap) <= 1e-4 * abs(gap)


# -- interface --------------------------------------------------------------------------------------------------

def test_errors_and_listing():
    from onnxsal.autodiff import rulesets
    from onnxsal.methods import METHODS

    model, _ = small_net("relu")
    ex = Explainer(to_onnx(model, (1, 3, 12, 12)))
    x, ref = inputs()
    several = ex.explain(x, "deeplift", baseline=["zeros", "blur"])  # several references: their average
    assert rel(several.attributions, ex.explain(x, "deeplift_shap", baseline=["zeros", "blur"]).attributions) < 1e-6
    with pytest.raises(MethodError, match="cannot be negative"):
        ex.explain(x, "gradient_shap", noise_level=-1.0)
    with pytest.raises(MethodError, match="references must be an array"):
        ex.explain(x, "deeplift_shap", references=np.zeros((2, 3, 5, 5), np.float32))
    with pytest.raises(MethodError, match="alphas must hold 10 values"):
        ex.explain(x, "gradient_shap", samples=5, alphas=[0.5])
    assert "deeplift" in rulesets() and "Shrikumar" in rulesets()["deeplift"]
    for name in ("deeplift", "deeplift_shap", "gradient_shap"):
        assert METHODS[name].reference and METHODS[name].signed
    # defaults run: one reference for deeplift (zeros without preprocessing), three for the SHAP methods
    assert ex.explain(x, "deeplift").maps.shape == (2, 12, 12)
    assert ex.explain(x, "deeplift_shap").info["references"] == 3


def test_export_rules_deeplift(tmp_path):
    """The exported gradient graph takes the reference as an input and gives DeepLIFT's multipliers."""
    import onnxruntime as ort
    from click.testing import CliRunner

    from onnxsal.cli import main

    model, twin = small_net("maxpool")
    src = tmp_path / "m.onnx"
    src.write_bytes(to_onnx(model, (1, 3, 12, 12)))
    out = tmp_path / "g.onnx"
    result = CliRunner().invoke(main, ["export", str(src), "-o", str(out), "--rules", "deeplift"])
    assert result.exit_code == 0, result.output
    g = onnx.load(str(out))
    onnx.checker.check_model(g)
    names = [i.name for i in g.graph.input]
    assert "x_reference" in names
    x, ref = inputs()
    sess = ort.InferenceSession(str(out))
    feeds = {"x": x, "x_reference": ref}
    seed_name = [n for n in names if n not in feeds][0]
    feeds[seed_name] = np.eye(4, dtype=np.float32)[[0, 0]]
    grad = sess.run(["x_grad"], feeds)[0]
    theirs, _ = captum_deeplift(twin, x, ref, 0)
    assert rel((x - ref) * grad, theirs) <= 1e-4


# -- RevealCancel (Captum has none): hand values and a numpy replica of the paper's equations ----------------------

def test_reveal_cancel_hand_values():
    """y = ReLU(x1 - x2) at x = (3, 1), reference 0 (Shrikumar et al. 2017, sec. 3.5.3): Delta x+ = 3, Delta x- = -1,
    Delta y+ = 1/2 (ReLU(3) - 0) + 1/2 (ReLU(2) - ReLU(-1)) = 2.5, Delta y- = 1/2 (ReLU(-1) - 0) + 1/2 (ReLU(2) - ReLU(3))
    = -0.5: RevealCancel gives (2.5, -0.5); Rescale gives (3, -1) (multiplier 2 / 2)."""
    l1, l2 = nn.Linear(2, 1, bias=False), nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        l1.weight[:] = torch.tensor([[1.0, -1.0]])
        l2.weight[:] = torch.tensor([[1.0], [0.0]])
    ex = Explainer(to_onnx(nn.Sequential(l1, nn.ReLU(), l2).eval(), (1, 2)))
    x, ref = np.array([[3.0, 1.0]], np.float32), np.zeros((1, 2), np.float32)
    np.testing.assert_allclose(ex.explain(x, "deeplift_reveal_cancel", target=0, baseline=ref).attributions, [[2.5, -0.5]],
                               atol=1e-6)
    np.testing.assert_allclose(ex.explain(x, "deeplift", target=0, baseline=ref).attributions, [[3.0, -1.0]], atol=1e-6)


def _reveal_cancel_replica(weights, biases, acts, x, ref, target):
    """Numpy float64 RevealCancel on an MLP (Linear, f, Linear, f, ..., Linear), straight from sec. 3.5.1 / 3.5.3;
    acts are (f, f'), the gradient at x standing in where |Delta z+-| < EPS (as the rule set documents)."""
    def split(w, dh):  # Delta z+ and Delta z-: the positive / negative terms w_ji Dh_i of each unit's sum
        terms = w[None] * dh[:, None, :]  # (N, out, in)
        return (terms * (terms > 0)).sum(-1), (terms * (terms < 0)).sum(-1), terms

    h, hr = x.astype(np.float64), ref.astype(np.float64)
    layers = []
    for w, b, (f, slope) in zip(weights[:-1], biases[:-1], acts):
        z, zr = h @ w.T + b, hr @ w.T + b
        pos, neg, _ = split(w, h - hr)
        y, yr = f(z), f(zr)
        up, down = f(zr + pos), f(zr + neg)
        dy_pos, dy_neg = 0.5 * (up - yr) + 0.5 * (y - down), 0.5 * (down - yr) + 0.5 * (y - up)
        ratio = [np.where(np.abs(d) < EPS, slope(z), part / np.where(d == 0, 1, d)) for part, d in ((dy_pos, pos), (dy_neg, neg))]
        layers.append((w, h - hr, *ratio))
        h, hr = y, yr
    m = np.broadcast_to(weights[-1][target], h.shape)  # multipliers of the last hidden layer
    for w, dh, r_pos, r_neg in reversed(layers):
        m_pos, m_neg = m * r_pos, m * r_neg
        sign = np.sign(w[None] * dh[:, None, :])  # (N, out, in)
        m = (np.einsum("noi,no->ni", w[None] * (sign > 0), m_pos) + np.einsum("noi,no->ni", w[None] * (sign < 0), m_neg)
             + np.einsum("noi,no->ni", w[None] * ((dh == 0)[:, None, :]), 0.5 * (m_pos + m_neg)))
    return (x - ref) * m


def test_reveal_cancel_matches_numpy_replica():
    torch.manual_seed(21)
    lins = [nn.Linear(6, 8), nn.Linear(8, 5), nn.Linear(5, 3)]
    model = nn.Sequential(lins[0], nn.ReLU(), lins[1], nn.Sigmoid(), lins[2]).eval()
    rng = np.random.default_rng(22)
    x, ref = rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal((4, 6)).astype(np.float32)
    ours = Explainer(to_onnx(model, (1, 6))).explain(x, "deeplift_reveal_cancel", target=2, baseline=ref)
    weights = [l.weight.detach().numpy().astype(np.float64) for l in lins]
    biases = [l.bias.detach().numpy().astype(np.float64) for l in lins]
    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    acts = [(lambda z: np.maximum(z, 0), lambda z: (z > 0).astype(float)), (sigmoid, lambda z: sigmoid(z) * (1 - sigmoid(z)))]
    replica = _reveal_cancel_replica(weights, biases, acts, x, ref, 2)
    assert rel(ours.attributions, replica) <= 1e-4
    # it is not Rescale on this net
    assert rel(Explainer(to_onnx(model, (1, 6))).explain(x, "deeplift", target=2, baseline=ref).attributions, replica) > 1e-2


@pytest.mark.parametrize("family", ["resnet", "mobilenet_v2", "vgg"])
def test_reveal_cancel_summation_to_delta(family):
    """Conv -> ReLU / ReLU6 pairs take RevealCancel (the others Rescale); the contributions still add up."""
    import torch_models

    model = torch_models.build(family)
    shape = (3, torch_models.SIZE, torch_models.SIZE)
    x, ref = inputs(2, seed=23, shape=shape)
    ex = Explainer(to_onnx(model, (1, *shape)))
    e = ex.explain(x, "deeplift_reveal_cancel", target=5, baseline=ref)
    with torch.no_grad():
        gap = (model(torch.as_tensor(x)) - model(torch.as_tensor(ref)))[:, 5].numpy()
    assert np.abs(e.attributions.reshape(2, -1).sum(1) - gap).max() <= 1e-4 * max(1.0, np.abs(gap).max())
    assert rel(e.attributions, ex.explain(x, "deeplift", target=5, baseline=ref).attributions) > 1e-3


@pytest.mark.parametrize("method", ["deeplift", "deeplift_reveal_cancel"])
def test_export_method_deeplift(method):
    """export --method deeplift: image and class in, the map out, with the constant baseline baked in; the same
    numbers as the Python method."""
    import onnxruntime as ort

    model, _ = small_net("maxpool")
    ex = Explainer(to_onnx(model, (1, 3, 12, 12)))
    exported = ex.export(method=method, normalize=False, baseline=0.25)
    x, _ = inputs(3, seed=30)
    sess = ort.InferenceSession(exported.SerializeToString())
    heat = sess.run(["heatmap"], {"image": x, "class": np.array([1, 2, 0], np.int64)})[0]
    want = np.concatenate([ex.explain(x[i:i + 1], method, target=t, baseline=0.25).maps for i, t in enumerate([1, 2, 0])])
    assert rel(heat, want) <= 1e-5
    with pytest.raises(MethodError, match="one constant baseline"):
        ex.export(method=method, baseline="blur")


def test_cli_explain_compare_listings(tmp_path):
    from click.testing import CliRunner

    from onnxsal import zoo
    from onnxsal.cli import main

    runner = CliRunner()
    photo = str(zoo.example_image("chelsea"))
    result = runner.invoke(main, ["explain", photo, "--method", "deeplift,deeplift_reveal_cancel", "--baseline", "black",
                                  "--out", str(tmp_path), "--format", "both"])
    assert result.exit_code == 0, result.output
    assert result.output.count("0.000 (0.0% of F(x) - F(x'))") == 2, result.output  # summation-to-delta
    assert (tmp_path / "chelsea_deeplift.npy").exists() and (tmp_path / "chelsea_deeplift_reveal_cancel.png").exists()
    shap = runner.invoke(main, ["explain", photo, "--method", "gradient_shap", "--samples", "2", "--noise-level", "0.1",
                                "--baseline", "black+blur", "--out", str(tmp_path)])
    assert shap.exit_code == 0 and "raise --samples" in shap.output, shap.output
    grid = tmp_path / "grid.png"
    compare = runner.invoke(main, ["compare", photo, "--methods", "deeplift,deeplift_shap,gradient_shap", "-o", str(grid)])
    assert compare.exit_code == 0 and grid.exists(), compare.output
    bad = runner.invoke(main, ["explain", photo, "--method", "deeplift", "--baseline", "nothing", "--out", str(tmp_path)])
    # refused before any model runs: a usage error (exit 2), as README's exit codes say
    assert bad.exit_code == 2 and "unknown baseline 'nothing'" in bad.output.strip().splitlines()[-1]
    listed = runner.invoke(main, ["methods"]).output
    for name, paper in (("deeplift", "Shrikumar"), ("deeplift_reveal_cancel", "RevealCancel"), ("deeplift_shap", "Lundberg"),
                        ("gradient_shap", "GradientShap")):
        assert name in listed and paper in listed
    rules = runner.invoke(main, ["rules"]).output
    assert "deeplift " in rules and "deeplift_reveal_cancel" in rules


# -- one reference for the whole batch, and the reference pass folded into constants ---------------------------

@pytest.mark.parametrize("kind", ["maxpool", "residual", "relu6", "sigmoid", "resnet", "silu"])
def test_one_reference_serves_the_batch(kind):
    """A baseline of one sample runs the reference pass at batch 1 and broadcasts it (MaxPool's reference Indices
    re-offset per sample, SiLU's product rule, the reference score expanded to the batch); the oracle is Captum with
    that reference repeated for each image. The second call with the same reference runs a session whose reference
    pass onnxruntime folded into constants: same attributions."""
    import torch_models

    from onnxsal import cache

    if kind == "resnet":  # overlapping 3x3 stride-2 MaxPool windows: Captum's unpooling differs (test above)
        model, twin, shape = torch_models.build("resnet"), None, (3, torch_models.SIZE, torch_models.SIZE)
    elif kind == "silu":
        model, twin, shape = SiLUNet().eval(), None, (3, 12, 12)
    else:
        (model, twin), shape = small_net(kind), (3, 12, 12)
    x, ref = inputs(3, seed=5, shape=shape)
    one = ref[:1]
    ex = Explainer(to_onnx(model, (1, *shape)), batch_size=2)  # chunks of 2 and 1: the shared feed reaches both
    first = ex.explain(x, "deeplift", target=1, baseline=one[0])
    assert list(ex.engine._reference_uses.values()) == [1]  # the batch-1 path was taken
    if twin is not None:
        theirs, _ = captum_deeplift(twin, x, np.repeat(one, 3, axis=0), 1)
        assert rel(first.attributions, theirs) <= 1e-4
    else:  # summation-to-delta against torch's scores
        with torch.no_grad():
            gap = (model(torch.as_tensor(x)) - model(torch.as_tensor(one)))[:, 1].numpy()
        assert np.abs(first.attributions.reshape(3, -1).sum(1) - gap).max() <= 1e-4 * max(1.0, np.abs(gap).max())
    assert first.delta.shape == (3,) and np.abs(first.delta).max() <= 1e-4 * max(1.0, np.abs(first.scores).max())
    before = {k for k in cache.MEMORY._items if k[0] == "folded-session"}
    second = ex.explain(x, "deeplift", target=1, baseline=one[0])
    assert {k for k in cache.MEMORY._items if k[0] == "folded-session"} - before  # the folded session ran
    assert rel(second.attributions, first.attributions) <= 1e-5
    np.testing.assert_allclose(second.delta, first.delta, atol=1e-4 * max(1.0, np.abs(first.scores).max()))


def _relu_of_difference():
    """y0 = ReLU(x1 - x2), y1 = 0: DeepLIFT's attributions are (x - x') * m * (1, -1), m = Delta y0 / Delta(x1 - x2)."""
    l1, l2 = nn.Linear(2, 1, bias=False), nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        l1.weight[:] = torch.tensor([[1.0, -1.0]])
        l2.weight[:] = torch.tensor([[1.0], [0.0]])
    return Explainer(to_onnx(nn.Sequential(l1, nn.ReLU(), l2).eval(), (1, 2)))


def test_piecewise_linear_guard_tiny_and_zero_differences():
    """The ReLU multiplier Delta y / (Delta x + 2^-126): exact at Delta x = 1e-30 (m = 1), 0 where Delta x = 0 exactly
    though the inputs differ (x = (2, 1), x' = (1, 0): no NaN), and a refusal, not an infinite map, where Delta x
    = -2^-126 cancels the guard."""
    ex = _relu_of_difference()
    x, ref = np.array([[1e-30, 0.0]], np.float32), np.zeros((1, 2), np.float32)
    np.testing.assert_allclose(ex.explain(x, "deeplift", target=0, baseline=ref).attributions, [[1e-30, 0.0]], rtol=1e-6,
                               atol=0)
    x, ref = np.array([[2.0, 1.0]], np.float32), np.array([[1.0, 0.0]], np.float32)
    assert np.array_equal(ex.explain(x, "deeplift", target=0, baseline=ref).attributions, np.zeros((1, 2), np.float32))
    tiny = np.finfo(np.float32).tiny
    x, ref = np.zeros((1, 2), np.float32), np.array([[tiny, 0.0]], np.float32)
    with pytest.raises(MethodError, match="non-finite attributions"):
        ex.explain(x, "deeplift", target=0, baseline=ref)


class _BatchIntoRows(nn.Module):
    """A graph that folds the batch into another axis before a nonlinearity: (N, 4, 8, 8) -> (N*4, 64) -> ReLU, or
    -> (N*4, 1, 8, 8) -> MaxPool; a reference pass at batch 1 has 4 rows there, which do not broadcast against 4N."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(256 if kind == "relu" else 64, 3)

    def forward(self, x):
        h, n = self.conv(x), x.shape[0]
        if self.kind == "relu":
            return self.fc(torch.relu(h.reshape(-1, 64)).reshape(n, -1))
        return self.fc(nn.functional.max_pool2d(h.reshape(-1, 1, 8, 8), 2).reshape(n, -1))


@pytest.mark.parametrize("kind", ["relu", "maxpool"])
def test_batch_folded_into_another_axis_falls_back_to_one_reference_per_image(kind):
    """Found in review: with one shared baseline such graphs failed in onnxruntime. The engine now gives each image its
    copy of the reference (once it has seen the broadcast fail), and export keeps Expand(baseline, Shape(x)) there;
    the oracle is summation-to-delta against torch and the per-image result."""
    torch.manual_seed(0)
    model = _BatchIntoRows(kind).eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    one = (0.3 * rng.standard_normal((3, 8, 8))).astype(np.float32)
    ex = Explainer(to_onnx(model, (1, 3, 8, 8)), batch_size=4)
    shared = ex.explain(x, "deeplift", target=1, baseline=one)
    assert ex.engine.shared_reference is False
    per_image = Explainer(to_onnx(model, (1, 3, 8, 8)), batch_size=4).explain(x, "deeplift", target=1,
                                                                              baseline=np.repeat(one[None], 3, axis=0))
    assert rel(shared.attributions, per_image.attributions) <= 1e-6
    with torch.no_grad():
        gap = (model(torch.as_tensor(x)) - model(torch.as_tensor(one[None])))[:, 1].numpy()
    assert np.abs(shared.attributions.reshape(3, -1).sum(1) - gap).max() <= 1e-4 * max(1.0, np.abs(gap).max())
    assert ex.engine.reference_broadcasts("deeplift") is False
    import onnxruntime as ort

    from onnxsal.export import export_model

    fresh = Explainer(to_onnx(model, (1, 3, 8, 8)), batch_size=4)
    exported = export_model(fresh, "deeplift", normalize=False, class_input=False, baseline=0.0)
    session = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    heat = session.run(None, {session.get_inputs()[0].name: x})[2]
    np.testing.assert_allclose(heat, fresh.explain(x, "deeplift", target="top", baseline=0.0).maps, rtol=1e-4,
                               atol=1e-6 * np.abs(heat).max())


@pytest.mark.parametrize("n", [1, 3])
def test_deeplift_shap_is_the_mean_of_deeplift_over_its_references(n):
    """DeepLIFT SHAP with references of each image's own (blur) and shared ones (zeros), streamed reference by
    reference (n = 3) or as (image, reference) pairs (n = 1): the mean of deeplift with each (Captum-checked above)."""
    model, _ = small_net("residual")
    x, _ = inputs(n, seed=21)
    ex = Explainer(to_onnx(model, (1, 3, 12, 12)), batch_size=2)
    shap = ex.explain(x, "deeplift_shap", target=1, baseline=["zeros", "blur"])
    each = [ex.explain(x, "deeplift", target=1, baseline=b).attributions for b in ("zeros", "blur")]
    assert rel(shap.attributions, np.mean(each, axis=0)) <= 1e-5
