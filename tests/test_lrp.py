"""LRP rule set (autodiff/rules/lrp.py) and the lrp method against independent oracles.

1. Dense-matrix replicas of one layer (Conv, Gemm, MatMul, ConvTranspose, AveragePool): the layer written
   as a matrix M (built here by loops from the weights, not by onnxruntime), each rule's equation from the
   papers (Bach et al. 2015; Montavon et al. 2017, 2019; zennit's generalisation of gamma to negative inputs).
2. Captum's LRP (EpsilonRule, GammaRule, Alpha1_Beta0_Rule) on small torch models exported to ONNX, where its
   arithmetic is ours: Captum leaves the bias alone under gamma / alpha1beta0 and applies w + g w+ whatever the
   signs, so those rules are compared on bias-free layers whose inputs are ReLU outputs; BatchNorm is folded in
   torch by hand (Captum would give the BatchNorm its own epsilon rule). Captum cannot follow a functional
   residual `+` (it passes the whole relevance to both branches), so the residual model is checked against a
   dense replica of the whole network instead.
3. Conservation: LRP-0 on a bias-free ReLU network is gradient x input (torch autograd); the epsilon rule's
   leak on a bias-free layer is sum_j R_j eps / (|z_j| + eps); alpha1beta0 (z+) relevance is non-negative.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

from oracles import gradients, max_rel_err
from onnxsal.graph import load_model
from onnxsal.graph.utils import infer_shapes
from onnxsal.runtime import Engine

R = np.random.default_rng(13)


# -- dense replicas of one layer -----------------------------------------------------------------------------

def conv_matrix(w, in_shape, stride=1, pad=0):
    """M with conv(x)[o] = sum_i M[o, i] x[i] (x, y flattened C,H,W), by the definition of a cross-correlation."""
    cout, cin, kh, kw = w.shape
    _, h, wd = in_shape
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    m = np.zeros((cout, ho, wo, cin, h, wd))
    for o in range(cout):
        for i in range(ho):
            for j in range(wo):
                for c in range(cin):
                    for a in range(kh):
                        for b in range(kw):
                            y, x = i * stride - pad + a, j * stride - pad + b
                            if 0 <= y < h and 0 <= x < wd:
                                m[o, i, j, c, y, x] += w[o, c, a, b]
    return m.reshape(cout * ho * wo, cin * h * wd), (cout, ho, wo)


def conv_transpose_matrix(w, in_shape, stride=1):
    """M of ConvTranspose (no padding): y[co, i*s + a] += x[ci, i] w[ci, co, a]."""
    cin, cout, kh, kw = w.shape
    _, h, wd = in_shape
    ho, wo = (h - 1) * stride + kh, (wd - 1) * stride + kw
    m = np.zeros((cout, ho, wo, cin, h, wd))
    for c in range(cin):
        for o in range(cout):
            for i in range(h):
                for j in range(wd):
                    for a in range(kh):
                        for b in range(kw):
                            m[o, i * stride + a, j * stride + b, c, i, j] += w[c, o, a, b]
    return m.reshape(cout * ho * wo, cin * h * wd), (cout, ho, wo)


def s(z, eps):
    """z + eps sign(z), sign(0) = +1."""
    return z + np.where(z < 0, -eps, eps)


def pos(t):
    return np.maximum(t, 0)


def neg(t):
    return np.minimum(t, 0)


def replica(rule, mat, x, b, r, eps=1e-6, stab=1e-6, gamma=0.25, low=None, high=None):
    """R_in for one layer y = M x + b (vectors), from the rules' equations. mat(w-modifier) -> M."""
    m = mat(lambda w: w)
    if rule == "epsilon":  # Bach et al. 2015, eq. 58
        return x * (m.T @ (r / s(m @ x + b, eps)))
    if rule in ("zplus", "alpha2beta1"):  # Bach et al. 2015 eq. 60; Montavon et al. 2017 z+
        mp, mn = mat(pos), mat(neg)
        p = mp @ pos(x) + pos(b) + mn @ neg(x)
        out = pos(x) * (mp.T @ (r / s(p, stab))) + neg(x) * (mn.T @ (r / s(p, stab)))
        if rule == "zplus":
            return out
        n = mn @ pos(x) + neg(b) + mp @ neg(x)
        return 2 * out - (pos(x) * (mn.T @ (r / s(n, stab))) + neg(x) * (mp.T @ (r / s(n, stab))))
    if rule == "gamma":  # Montavon et al. 2019 eq. 6, with the signs swapped where z < 0 (zennit's Gamma)
        up, down = mat(lambda w: w + gamma * pos(w)), mat(lambda w: w + gamma * neg(w))
        z = m @ x + b
        g_up = (z > 0) * r / s(up @ pos(x) + b + gamma * pos(b) + down @ neg(x), stab)
        g_down = (z < 0) * r / s(down @ pos(x) + b + gamma * neg(b) + up @ neg(x), stab)
        return pos(x) * (up.T @ g_up) + neg(x) * (down.T @ g_up) + pos(x) * (down.T @ g_down) + neg(x) * (up.T @ g_down)
    if rule == "flat":  # Lapuschkin et al. 2019
        ones = mat(lambda w: np.ones_like(w))
        return ones.T @ (r / s(ones @ np.ones_like(x), stab))
    if rule == "wsquare":  # Montavon et al. 2017, w^2 rule
        sq = mat(lambda w: w ** 2)
        return sq.T @ (r / s(sq @ np.ones_like(x), stab))
    if rule == "zbox":  # Montavon et al. 2017, z^B: l <= x <= h
        mp, mn = mat(pos), mat(neg)
        z = m @ x - mp @ low - mn @ high
        g = r / s(z, stab)
        return x * (m.T @ g) - low * (mp.T @ g) - high * (mn.T @ g)
    raise AssertionError(rule)


def single(op, x_shape, inits: dict, y_shape, **attrs):
    names = ["x"] + list(inits)
    node = helper.make_node(op, names, ["y"], **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                          [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return infer_shapes(m)


RULES = ["epsilon", "zplus", "alpha2beta1", "gamma", "flat", "wsquare", "zbox"]
LOW, HIGH = -2.0, 2.5


def ours(model, x, seed, rule, **params):
    opts = ";".join(f"{k}={v}" for k, v in {"epsilon": 0.01, "gamma": 0.25, "stabilizer": 1e-6, "low": LOW, "high": HIGH,
                                           **params}.items())
    (r_in,), _ = gradients(model, "y", ["x"], {"x": x}, seed, ruleset=f"lrp:linear={rule};{opts}")
    return r_in


@pytest.mark.parametrize("rule", RULES)
def test_rules_on_one_conv_match_the_dense_replica(rule):
    w = R.standard_normal((4, 3, 3, 3)) * 0.5
    b = R.standard_normal(4) * 0.3
    x = R.uniform(LOW, HIGH, (1, 3, 6, 6))  # mixed signs: the x- terms of z+, alpha-beta and gamma count
    model = single("Conv", [1, 3, 6, 6], {"w": w, "b": b}, [1, 4, 3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    m, out_shape = conv_matrix(w, (3, 6, 6), stride=2, pad=1)
    seed = R.standard_normal((1,) + out_shape)
    mat = lambda f: conv_matrix(f(w), (3, 6, 6), 2, 1)[0]  # noqa: E731
    bias = np.repeat(b, 9)
    z = m @ x.ravel() + bias
    want = replica(rule, mat, x.ravel(), bias, seed.ravel() * z, eps=0.01,
                   low=np.full(x.size, LOW), high=np.full(x.size, HIGH))
    got = ours(model, x.astype(np.float32), seed.astype(np.float32), rule)
    assert max_rel_err(got.ravel(), want) < 1e-4


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
def test_rules_on_one_dense_layer_match_the_dense_replica(rule, op):
    w = R.standard_normal((5, 7)) * 0.5  # (out, in)
    b = R.standard_normal(5) * 0.3
    x = R.uniform(LOW, HIGH, (2, 7))
    if op == "Gemm":
        model = single("Gemm", [2, 7], {"w": w, "b": b}, [2, 5], transB=1)
    else:
        model, b = single("MatMul", [2, 7], {"w": w.T}, [2, 5]), np.zeros(5)
    seed = R.standard_normal((2, 5))
    for n in range(2):
        z = w @ x[n] + b
        want = replica(rule, lambda f: f(w), x[n], b, seed[n] * z, eps=0.01, low=np.full(7, LOW), high=np.full(7, HIGH))
        got = ours(model, x.astype(np.float32), seed.astype(np.float32), rule)[n]
        assert max_rel_err(got, want) < 1e-4


@pytest.mark.parametrize("rule", ["epsilon", "zplus", "gamma", "flat"])
def test_rules_on_one_conv_transpose_match_the_dense_replica(rule):
    w = R.standard_normal((3, 2, 2, 2)) * 0.5  # (C_in, C_out, k, k)
    x = R.uniform(LOW, HIGH, (1, 3, 3, 3))
    model = single("ConvTranspose", [1, 3, 3, 3], {"w": w}, [1, 2, 6, 6], strides=[2, 2])
    m, out_shape = conv_transpose_matrix(w, (3, 3, 3), stride=2)
    seed = R.standard_normal((1,) + out_shape)
    z = m @ x.ravel()
    want = replica(rule, lambda f: conv_transpose_matrix(f(w), (3, 3, 3), 2)[0], x.ravel(), np.zeros(len(z)),
                   seed.ravel() * z, eps=0.01)
    got = ours(model, x.astype(np.float32), seed.astype(np.float32), rule)
    assert max_rel_err(got.ravel(), want) < 1e-4


def test_average_pool_and_add_split_relevance_in_proportion():
    # AveragePool (zennit's Norm): R_in = x * P^T (R / s(P x)); Add: R_i = x_i R / s(x_1 + x_2)
    x = R.uniform(0.1, 2, (1, 2, 4, 4))
    nodes = [helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("AveragePool", ["r"], ["q"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Mul", ["q", "k"], ["qk"]),
             helper.make_node("Add", ["p", "qk"], ["y"])]
    k = np.float32(3.0)
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])],
                          [numpy_helper.from_array(np.array(k), "k")])
    model = infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    seed = R.standard_normal((1, 2, 2, 2))
    pm = np.zeros((8, 32))
    for c in range(2):
        for i in range(2):
            for j in range(2):
                for a in range(2):
                    for bb in range(2):
                        pm[c * 4 + i * 2 + j, c * 16 + (2 * i + a) * 4 + 2 * j + bb] = 0.25
    xv = x.ravel()
    p = q = pm @ xv  # Relu(x) = x here
    qk = 3.0 * q
    r = seed.ravel() * (p + qk)
    r_p, r_qk = p * r / s(p + qk, 1e-6), qk * r / s(p + qk, 1e-6)  # Add, in proportion
    r_q = q * (3.0 * r_qk / s(qk, 1e-6))  # Mul by a constant: x * d/dx(R / s(y)), i.e. R passes
    want = xv * (pm.T @ (r_p / s(p, 1e-6))) + xv * (pm.T @ (r_q / s(q, 1e-6)))  # AveragePool (Relu passes R)
    (got,), _ = gradients(model, "y", ["x"], {"x": x.astype(np.float32)}, seed.astype(np.float32), ruleset="lrp:epsilon")
    assert max_rel_err(got.ravel(), want) < 1e-4
    assert abs(got.sum() - r.sum()) < 1e-4 * abs(r).sum()  # nothing leaks: no bias


# -- Captum on small torch models ----------------------------------------------------------------------------

class Net(nn.Module):
    """Conv(bias) -> ReLU -> MaxPool -> Conv -> ReLU -> AvgPool -> Conv(stride 2) -> ReLU -> GAP -> Linear."""

    def __init__(self, bias_inside=False, bn=False):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8) if bn else None
        self.r1, self.p1 = nn.ReLU(), nn.MaxPool2d(2)
        self.c2, self.r2, self.p2 = nn.Conv2d(8, 16, 3, padding=1, bias=bias_inside), nn.ReLU(), nn.AvgPool2d(2)
        self.c3, self.r3 = nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=bias_inside), nn.ReLU()
        self.gap, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 10)

    def forward(self, x):
        h = self.c1(x)
        if self.bn is not None:
            h = self.bn(h)
        h = self.p1(self.r1(h))
        h = self.p2(self.r2(self.c2(h)))
        return self.fc(torch.flatten(self.gap(self.r3(self.c3(h))), 1))


def export(model, size=16):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), f, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}})
    return f.getvalue()


def captum_lrp(model, x, targets, rules: dict, eps):
    """Captum's LRP in float64 with the given rule per module (EpsilonRule(eps) elsewhere)."""
    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import EpsilonRule

    model = model.double()
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            module.rule = rules.get(module, EpsilonRule(eps))
        elif isinstance(module, nn.MaxPool2d):
            module.rule = EpsilonRule(1e-30)  # winner-take-all, as ours (the gradient of MaxPool)
    out = LRP(model).attribute(torch.tensor(x, dtype=torch.float64), target=torch.tensor(targets))
    return out.detach().numpy()


def seeds_for(targets, classes=10):
    seed = np.zeros((len(targets), classes), np.float32)
    seed[np.arange(len(targets)), targets] = 1
    return seed


@pytest.mark.parametrize("eps", [1e-9, 1e-2])
@pytest.mark.parametrize("rule", ["epsilon", "gamma", "zplus"])
def test_captum_lrp_on_a_relu_maxpool_avgpool_net(rule, eps):
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule

    torch.manual_seed(0)
    net = Net().eval()
    graph = load_model(export(net))
    x = R.standard_normal((2, 3, 16, 16)).astype(np.float32)
    targets = [3, 5]
    # the inner convolutions are bias-free and read ReLU outputs: there Captum's gamma / alpha1beta0 are the papers'
    spec = {"epsilon": "linear=epsilon", "gamma": "first=epsilon,conv=gamma,dense=epsilon",
            "zplus": "first=epsilon,conv=zplus,dense=epsilon"}[rule]
    got = Engine(graph).gradients(x, seeds_for(targets), ruleset=f"lrp:{spec};epsilon={eps};stabilizer={eps}").input_grad
    inner = {"epsilon": lambda: EpsilonRule(eps), "gamma": lambda: GammaRule(0.25), "zplus": lambda: Alpha1_Beta0_Rule()}[rule]
    rules = {net.c2: inner(), net.c3: inner()}
    for r in rules.values():
        r.STABILITY_FACTOR = eps
    want = captum_lrp(net, x, targets, rules, eps)
    assert max_rel_err(got, want) < 1e-4


def test_captum_lrp_on_a_batchnorm_net_folded_by_hand():
    torch.manual_seed(1)
    net = Net(bias_inside=True, bn=True).eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.3, 0.3)
    graph = load_model(export(net))
    assert "BatchNormalization" not in {n.op_type for n in graph.model.graph.node}  # folded by onnxsal
    folded = Net(bias_inside=True).eval()
    folded.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("bn.")})
    with torch.no_grad():  # W' = W s, b' = (b - mean) s + beta, s = gamma / sqrt(var + eps)
        scale = net.bn.weight / torch.sqrt(net.bn.running_var + net.bn.eps)
        folded.c1.weight.copy_(net.c1.weight * scale[:, None, None, None])
        folded.c1.bias.copy_((net.c1.bias - net.bn.running_mean) * scale + net.bn.bias)
    x = R.standard_normal((2, 3, 16, 16)).astype(np.float32)
    got = Engine(graph).gradients(x, seeds_for([1, 2]), ruleset="lrp:epsilon;epsilon=1e-3;stabilizer=1e-3").input_grad
    assert max_rel_err(got, captum_lrp(folded, x, [1, 2], {}, 1e-3)) < 1e-4


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = torch.relu(self.c2(h) + h)
        return self.fc(h.mean((2, 3)))


def test_residual_add_against_a_dense_replica_of_the_network():
    torch.manual_seed(2)
    net = Residual().eval()
    graph = load_model(export(net, size=5))
    x = R.standard_normal((1, 3, 5, 5))
    eps = 1e-6
    w1, b1 = net.c1.weight.detach().double().numpy(), net.c1.bias.detach().double().numpy()
    w2, b2 = net.c2.weight.detach().double().numpy(), net.c2.bias.detach().double().numpy()
    wf, bf = net.fc.weight.detach().double().numpy(), net.fc.bias.detach().double().numpy()
    m1, m2 = conv_matrix(w1, (3, 5, 5), 1, 1)[0], conv_matrix(w2, (3, 5, 5), 1, 1)[0]
    gap = np.kron(np.eye(3), np.full((1, 25), 1 / 25))
    xv = x.ravel()
    z1 = m1 @ xv + np.repeat(b1, 25)
    h1 = pos(z1)
    z2 = m2 @ h1 + np.repeat(b2, 25)
    h2 = pos(z2 + h1)
    g = gap @ h2
    logits = wf @ g + bf
    target = int(np.argmax(logits))
    r = np.zeros(4)
    r[target] = logits[target]
    r_g = g * (wf.T @ (r / s(logits, eps)))  # epsilon on the Linear
    r_h2 = h2 * (gap.T @ (r_g / s(g, eps)))  # GlobalAveragePool / ReduceMean: Norm
    total = z2 + h1
    r_z2, r_h1 = z2 * r_h2 / s(total, eps), h1 * r_h2 / s(total, eps)  # the residual Add, in proportion
    r_h1 = r_h1 + h1 * (m2.T @ (r_z2 / s(z2, eps)))
    want = xv * (m1.T @ (r_h1 / s(z1, eps)))
    seed = np.zeros((1, 4), np.float32)
    seed[0, target] = 1
    got = Engine(graph).gradients(x.astype(np.float32), seed, ruleset=f"lrp:epsilon;epsilon={eps};stabilizer={eps}").input_grad
    ops = {n.op_type for n in graph.model.graph.node}
    assert "Add" in ops
    assert max_rel_err(got.ravel(), want) < 1e-4


# -- conservation ------------------------------------------------------------------------------------------

def bias_free_relu_net():
    torch.manual_seed(3)
    net = Net().eval()
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            m.bias = None
    return net


def test_lrp_zero_on_a_bias_free_relu_net_is_gradient_times_input():
    net = bias_free_relu_net()
    graph = load_model(export(net))
    x = R.standard_normal((2, 3, 16, 16)).astype(np.float32)
    seed = seeds_for([0, 7])
    got = Engine(graph).gradients(x, seed, ruleset="lrp:linear=zero;stabilizer=1e-30").input_grad
    xt = torch.tensor(x, requires_grad=True)
    (net(xt) * torch.tensor(seed)).sum().backward()
    assert max_rel_err(got, (xt.grad * xt).detach().numpy()) < 1e-4


def test_epsilon_leak_on_a_bias_free_layer_is_the_documented_one():
    # sum_i R_i = sum_j R_j z_j / (z_j + eps sign z_j): relevance lost is sum_j R_j eps / (|z_j| + eps)
    w = R.standard_normal((5, 7))
    x = R.standard_normal((1, 7))
    model = single("Gemm", [1, 7], {"w": w}, [1, 5], transB=1)
    seed = np.ones((1, 5), np.float32)
    for eps in (0.01, 0.5, 2.0):
        got = ours(model, x.astype(np.float32), seed, "epsilon", epsilon=eps)
        z = w @ x[0]
        assert abs(got.sum() - (z * z / s(z, eps)).sum()) < 1e-5 * np.abs(z).sum()


def test_epsilon_conservation_on_a_bias_free_net_shrinks_with_epsilon():
    graph = load_model(export(bias_free_relu_net()))
    x = R.standard_normal((1, 3, 16, 16)).astype(np.float32)
    engine = Engine(graph)
    scores = engine.forward(x)[0][0]
    target = int(np.argmax(scores))
    ratios = [engine.gradients(x, seeds_for([target]), ruleset=f"lrp:epsilon;epsilon={e};stabilizer={e}").input_grad.sum()
              / scores[target] for e in (1e-9, 1e-3, 1e-1)]
    assert abs(ratios[0] - 1) < 1e-4
    assert 1 >= ratios[1] >= ratios[2] > 0


def test_alpha1_beta0_relevance_is_non_negative():
    torch.manual_seed(4)
    net = Net(bias_inside=True).eval()
    graph = load_model(export(net))
    engine = Engine(graph)
    x = R.standard_normal((2, 3, 16, 16)).astype(np.float32)
    targets = np.argmax(engine.forward(x)[0], axis=1)  # positive top logits start non-negative relevance
    for name in ("linear=zplus", "linear=alpha1beta0"):
        r = engine.gradients(x, seeds_for(targets), ruleset=f"lrp:{name}").input_grad
        assert r.min() >= -1e-7 * np.abs(r).max() and r.max() > 0


# -- the method, the rule set record, the CLI ------------------------------------------------------------

def test_composites_pick_rules_by_position():
    from onnxsal.autodiff import registry
    from onnxsal.autodiff.builder import _needed_nodes, _rules_on_path

    graph = load_model(export(Net()))
    record = registry.get("lrp:epsilon_gamma_box;low=-3;high=3")
    nodes = list(graph.model.graph.node)
    path, _ = _needed_nodes(nodes, graph.logits_name, {graph.input_name} | {o for n in nodes for o in n.output})
    chosen = _rules_on_path(record, path, [graph.input_name])
    by_op = [(n.op_type, getattr(chosen[id(n)], "lrp_rule", None)) for n in reversed(path) if n.op_type in ("Conv", "Gemm")]
    assert by_op == [("Conv", "zbox"), ("Conv", "gamma"), ("Conv", "gamma"), ("Gemm", "epsilon")]
    named = registry.get(r"lrp:name:c3=flat,conv=zplus,dense=epsilon")
    chosen = _rules_on_path(named, path, [graph.input_name])
    assert [getattr(chosen[id(n)], "lrp_rule", None) for n in reversed(path) if n.op_type == "Conv"] == ["zplus", "zplus", "flat"]


def test_lrp_method_sums_channels_and_takes_box_bounds_from_the_preprocessing():
    from onnxsal import Explainer
    from onnxsal.methods.lrp import pixel_bounds
    from onnxsal.preprocess import Preprocessing

    prep = Preprocessing(size=16, crop=1.0)
    ex = Explainer(export(Net().eval()), preprocessing=prep)
    x = R.standard_normal((2, 3, 16, 16)).astype(np.float32)
    e = ex.explain(x, "lrp", composite="epsilon_gamma_box")
    low, high = pixel_bounds(prep)
    assert np.allclose(low, (0 - np.array(prep.mean)) / np.array(prep.std))
    assert np.allclose(high, (1 - np.array(prep.mean)) / np.array(prep.std))
    assert e.signed and e.maps.shape == (2, 16, 16)
    np.testing.assert_allclose(e.maps, e.attributions.sum(axis=1), rtol=1e-5, atol=1e-7)
    assert "low=" in e.info["rules"] and np.allclose(e.info["relevance"], e.attributions.reshape(2, -1).sum(1), rtol=1e-4)


def test_zbox_without_bounds_is_one_line():
    from onnxsal import Explainer
    from onnxsal.errors import OnnxsalError

    ex = Explainer(export(Net().eval()))
    with pytest.raises(OnnxsalError, match="zbox rule needs the input's bounds") as info:
        ex.explain(R.standard_normal((1, 3, 16, 16)).astype(np.float32), "lrp", composite="epsilon_gamma_box")
    assert "\n" not in str(info.value)


def test_an_unfolded_batchnorm_is_named_in_a_warning():
    torch.manual_seed(5)
    net = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3)).eval()
    from onnxsal import Explainer

    ex = Explainer(export(net, size=8))
    e = ex.explain(R.standard_normal((1, 3, 8, 8)).astype(np.float32), "lrp", composite="epsilon")
    assert any("BatchNormalization" in w and "not folded" in w for w in e.info["warnings"])


def test_exported_lrp_heatmap_matches_the_api(tmp_path):
    import onnxruntime as ort

    from onnxsal import Explainer
    from onnxsal.preprocess import Preprocessing

    ex = Explainer(export(Net().eval()), preprocessing=Preprocessing(size=16, crop=1.0))
    x = R.standard_normal((2, 3, 16, 16)).astype(np.float32)
    model = ex.export(None, "lrp", normalize=False, rules="epsilon_gamma_box;gamma=0.5")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    heat = sess.run(["heatmap"], {"image": x, "class": np.array([2, 4], np.int64)})[0]
    want = ex.explain(x, "lrp", target=[2, 4], rules="epsilon_gamma_box;gamma=0.5").maps
    assert max_rel_err(heat, want) < 1e-5


def test_plain_rule_sets_are_records_and_the_rule_decorator_still_registers():
    from onnxsal.autodiff import registry

    assert {"gradient", "guided_backprop", "deconvnet", "lrp", "lrp:epsilon_plus_flat"} <= set(registry.rulesets())
    record = registry.get("guided_backprop")
    assert record.rules and record.rule_for(helper.make_node("Relu", ["a"], ["b"])) is registry.RULES["guided_backprop"]["Relu"]
    assert record.rule_for(helper.make_node("Conv", ["a", "w"], ["b"])) is registry.RULES["gradient"]["Conv"]


def test_cli_explain_lrp_and_bad_composite(tmp_path):
    from click.testing import CliRunner

    from onnxsal.cli import main

    path = tmp_path / "net.onnx"
    path.write_bytes(export(Net().eval()))
    from PIL import Image

    Image.fromarray((R.uniform(0, 255, (20, 20, 3))).astype(np.uint8)).save(tmp_path / "a.png")
    runner = CliRunner()
    ok = runner.invoke(main, ["explain", str(tmp_path / "a.png"), "--model", str(path), "--method", "lrp", "--composite",
                              "epsilon_gamma_box", "--size", "16", "--out", str(tmp_path / "out"), "--format", "npy"])
    assert ok.exit_code == 0, ok.output
    assert np.isfinite(np.load(next((tmp_path / "out").glob("*_lrp.npy")))).all()
    bad = runner.invoke(main, ["explain", str(tmp_path / "a.png"), "--model", str(path), "--method", "lrp", "--composite",
                               "nope", "--size", "16", "--out", str(tmp_path / "out")])
    assert bad.exit_code == 1 and bad.output.strip().splitlines()[-1].startswith("error: unknown LRP composite 'nope'")
    bad = runner.invoke(main, ["explain", str(tmp_path / "a.png"), "--model", str(path), "--method", "lrp", "--rules",
                               "firts=flat", "--size", "16", "--out", str(tmp_path / "out")])
    assert bad.exit_code == 1 and "is not selector=rule" in bad.output
    listed = runner.invoke(main, ["rules"])
    assert "lrp:epsilon_gamma_box" in listed.output and "Montavon et al. 2019" in listed.output


@pytest.mark.parametrize("rule", ["zplus", "gamma", "alpha2beta1"])
def test_a_layer_reading_a_signed_tensor_keeps_its_negative_input_terms(rule):
    # Gemm -> Gemm (no activation between): the second layer's input has both signs, its x- terms count
    w1, b1 = R.standard_normal((6, 4)), R.standard_normal(6) * 0.3
    w2, b2 = R.standard_normal((3, 6)), R.standard_normal(3) * 0.3
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1), helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                          [numpy_helper.from_array(v.astype(np.float32), k) for k, v in
                           {"w1": w1, "b1": b1, "w2": w2, "b2": b2}.items()])
    model = infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    x = R.standard_normal((1, 4))
    seed = R.standard_normal((1, 3))
    h = w1 @ x[0] + b1
    assert (h < 0).any() and (h > 0).any()
    y = w2 @ h + b2
    r_h = replica(rule, lambda f: f(w2), h, b2, seed[0] * y)
    want = replica("epsilon", lambda f: f(w1), x[0], b1, r_h, eps=0.01)
    (got,), _ = gradients(model, "y", ["x"], {"x": x.astype(np.float32)}, seed.astype(np.float32),
                          ruleset=f"lrp:first=epsilon,dense={rule};epsilon=0.01")
    assert max_rel_err(got[0], want) < 1e-4


# -- zennit (optional oracle: zennit imports torchvision, which this project does not install) ----------------

def _zennit():
    """zennit's composites, or skip; a stand-in torchvision module satisfies zennit.torchvision's import (its
    ResNet canonizers, unused here)."""
    import importlib.util
    import sys
    import types

    if importlib.util.find_spec("zennit") is None:
        pytest.skip("zennit is not installed (pip install --no-deps zennit==0.5.1)")
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        tv, models, resnet = (types.ModuleType(n) for n in ("torchvision", "torchvision.models", "torchvision.models.resnet"))
        resnet.Bottleneck, resnet.BasicBlock = type("Bottleneck", (), {}), type("BasicBlock", (), {})
        tv.models, models.resnet = models, resnet
        sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.models.resnet": resnet})
    import zennit.composites as zc
    from zennit.attribution import Gradient

    return zc, Gradient


class Net6(Net):
    """Net with ReLU6 (exported as Clip) and biases everywhere."""

    def __init__(self):
        super().__init__(bias_inside=True)
        self.r1, self.r2, self.r3 = nn.ReLU6(), nn.ReLU6(), nn.ReLU6()


@pytest.mark.parametrize("family", ["relu", "relu6"])
@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1", "epsilon_plus"])
def test_zennit_composites(composite, family):
    zc, Gradient = _zennit()
    torch.manual_seed(6)
    net = (Net(bias_inside=True) if family == "relu" else Net6()).eval()
    graph = load_model(export(net))
    x = R.uniform(-2, 2.5, (2, 3, 16, 16)).astype(np.float32)
    low, high = np.array([-2.0, -2.1, -1.9]), np.array([2.5, 2.4, 2.6])
    got = Engine(graph).gradients(x, None, ruleset=f"lrp:{composite};low=-2.0,-2.1,-1.9;high=2.5,2.4,2.6").input_grad
    kwargs = {}
    if composite == "epsilon_gamma_box":
        kwargs = {"low": torch.tensor(low, dtype=torch.float64).view(1, 3, 1, 1).expand(2, 3, 16, 16),
                  "high": torch.tensor(high, dtype=torch.float64).view(1, 3, 1, 1).expand(2, 3, 16, 16)}
    name = {"epsilon_plus_flat": "EpsilonPlusFlat", "epsilon_gamma_box": "EpsilonGammaBox",
            "epsilon_alpha2_beta1": "EpsilonAlpha2Beta1", "epsilon_plus": "EpsilonPlus"}[composite]
    model = net.double()
    xt = torch.tensor(x, dtype=torch.float64)
    with Gradient(model=model, composite=getattr(zc, name)(**kwargs)) as attributor:
        out = model(xt)
        top = out.argmax(1)
        onehot = torch.zeros_like(out)
        onehot[torch.arange(2), top] = 1
        # zennit's relevance starts from attr_output; onnxsal's from seed * score (the explained score)
        _, want = attributor(xt, lambda y: y * onehot)
    assert max_rel_err(got, want.detach().numpy()) < 1e-4



def test_rules_accept_the_lrp_prefix_that_export_uses():
    # README's export spelling 'lrp:epsilon_gamma_box;gamma=0.5' works for explain too (it was refused)
    from onnxsal import Explainer
    from onnxsal.preprocess import Preprocessing

    ex = Explainer(export(Net().eval()), preprocessing=Preprocessing(size=16, crop=1.0))
    x = R.standard_normal((1, 3, 16, 16)).astype(np.float32)
    want = ex.explain(x, "lrp", target=[2], rules="epsilon_gamma_box;gamma=0.5").maps
    np.testing.assert_array_equal(ex.explain(x, "lrp", target=[2], rules="lrp:epsilon_gamma_box;gamma=0.5").maps, want)
    np.testing.assert_array_equal(ex.explain(x, "lrp", target=[2], composite="lrp:epsilon_gamma_box").maps,
                                  ex.explain(x, "lrp", target=[2], composite="epsilon_gamma_box").maps)


def test_cli_export_of_an_lrp_gradient_graph_takes_box_bounds_from_the_preprocessing(tmp_path):
    # `export --rules lrp:epsilon_gamma_box` refused a model whose preprocessing gives the pixel range (explain
    # and export --method found it); the bounds now come from the sidecar, equal to typing them in
    import json

    import onnxruntime as ort
    from click.testing import CliRunner

    from onnxsal.cli import main
    from onnxsal.methods.lrp import pixel_bounds
    from onnxsal.preprocess import Preprocessing

    path = tmp_path / "net.onnx"
    path.write_bytes(export(Net().eval()))
    prep = Preprocessing(size=16, crop=1.0)
    (tmp_path / "net.preprocess.json").write_text(json.dumps(prep.to_dict()))
    low, high = (",".join(repr(float(v)) for v in b) for b in pixel_bounds(prep))
    runner = CliRunner()
    auto = runner.invoke(main, ["export", str(path), "--rules", "lrp:epsilon_gamma_box", "-o", str(tmp_path / "a.onnx")])
    assert auto.exit_code == 0, auto.output
    typed = runner.invoke(main, ["export", str(path), "--rules", f"lrp:epsilon_gamma_box;low={low};high={high}",
                                 "-o", str(tmp_path / "b.onnx")])
    assert typed.exit_code == 0, typed.output
    feeds = {"image": R.standard_normal((1, 3, 16, 16)).astype(np.float32), "seed": np.eye(10, dtype=np.float32)[[3]]}
    run = lambda f: ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(["image_grad"], feeds)[0]
    np.testing.assert_array_equal(run(tmp_path / "a.onnx"), run(tmp_path / "b.onnx"))
