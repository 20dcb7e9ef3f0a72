"""Issue 17's methods against independent oracles: torch loops over the same weights (Score-CAM, Ablation-CAM,
FullGrad), numpy replicas from the papers' equations (Eigen-CAM via an eigendecomposition of the covariance,
localisation boxes), Captum's Lime / KernelShap on the same perturbations, and a hand-solved weighted least
squares. pytorch-grad-cam needs torchvision and is not installed; its definitions are written out here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torch_models as tm
from oracles import max_rel_err
from onnxsal import Explainer, methods
from onnxsal.errors import MethodError

R = np.random.default_rng(17)
X = R.standard_normal((2, 3, tm.SIZE, tm.SIZE)).astype(np.float32)
TARGETS = [3, 8]


@pytest.fixture(scope="module")
def resnet():
    model = tm.build("resnet")
    return model, Explainer(tm.export(model, "torchscript"))


@pytest.fixture(scope="module")
def vgg():
    model = tm.build("vgg")
    return model, Explainer(tm.export(model, "torchscript"))


def close(ours, theirs, rel=1e-4):
    assert np.abs(theirs).max() > 0, "a degenerate comparison: the oracle's map is zero"
    err = max_rel_err(ours, theirs)
    assert err <= rel, f"max relative error {err:.2e}"


def up(t: torch.Tensor) -> torch.Tensor:
    return F.interpolate(t, size=(tm.SIZE, tm.SIZE), mode="bilinear", align_corners=False)


def captured(model, module, x, targets, grad=False):
    """(activations of `module`, their gradient or None, scores) from torch."""
    store = {}
    handle = module.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
    try:
        xt = torch.from_numpy(x)
        scores = model(xt)
        a = store["a"]
        g = None
        if grad:
            g = torch.autograd.grad(scores[torch.arange(len(x)), targets].sum(), a)[0]
    finally:
        handle.remove()
    return a.detach().double(), None if g is None else g.detach().double(), scores.detach().double()


# -- Eigen-CAM / EigenGrad-CAM ------------------------------------------------------------------------------

def eigen_replica(t: np.ndarray) -> np.ndarray:
    """Projection on the leading eigenvector of the C x C covariance over positions, by loops (Eigen-CAM eq. 4-5)."""
    n, c, h, w = t.shape
    out = np.zeros((n, h, w))
    for s in range(n):
        mean = [sum(t[s, k, i, j] for i in range(h) for j in range(w)) / (h * w) for k in range(c)]
        cov = np.zeros((c, c))
        for i in range(h):
            for j in range(w):
                d = np.array([t[s, k, i, j] - mean[k] for k in range(c)])
                cov += np.outer(d, d)
        vals, vecs = np.linalg.eigh(cov)
        v = vecs[:, np.argmax(vals)]
        p = np.array([[sum((t[s, k, i, j] - mean[k]) * v[k] for k in range(c)) for j in range(w)] for i in range(h)])
        channel_sum = np.array([[sum(t[s, k, i, j] for k in range(c)) for j in range(w)] for i in range(h)])
        if (p * channel_sum).sum() < 0:
            p = -p
        out[s] = np.maximum(p, 0)
    return out


@pytest.mark.parametrize("family", ["resnet", "vgg"])
def test_eigen_cams_match_a_covariance_replica(family, request):
    model, ex = request.getfixturevalue(family)
    a, g, _ = captured(model, model.feature, X, TARGETS, grad=True)
    want = up(torch.from_numpy(eigen_replica(a.numpy()))[:, None])[:, 0].numpy()
    close(ex.explain(X, "eigen_cam", target=TARGETS).maps, want, rel=1e-4)
    want = up(torch.from_numpy(eigen_replica((a * g).numpy()))[:, None])[:, 0].numpy()
    close(ex.explain(X, "eigen_grad_cam", target=TARGETS).maps, want, rel=1e-4)


def test_eigen_cam_ignores_the_target(resnet):
    _, ex = resnet
    np.testing.assert_array_equal(ex.explain(X, "eigen_cam", target=[0, 1]).maps, ex.explain(X, "eigen_cam", target=[5, 5]).maps)


# -- Score-CAM ----------------------------------------------------------------------------------------------

def score_cam_torch(model, module, x, targets):
    """Wang et al. 2020 written in torch: one masked forward per channel, softmax over channels."""
    a, _, _ = captured(model, module, x, targets)
    out = []
    with torch.no_grad():
        for s in range(len(x)):
            cic = []
            for k in range(a.shape[1]):
                m = up(a[s:s + 1, k:k + 1].float())[0, 0].double()
                m = (m - m.min()) / (m.max() - m.min() + 1e-8)
                masked = (torch.from_numpy(x[s]).double() * m).float()[None]
                cic.append(model(masked)[0, targets[s]].double())
            alpha = torch.softmax(torch.stack(cic), 0)
            out.append(torch.relu((alpha[:, None, None] * a[s]).sum(0)))
    return up(torch.stack(out)[:, None])[:, 0].numpy()


@pytest.mark.parametrize("family", ["resnet", "vgg"])
def test_score_cam_matches_torch(family, request):
    model, ex = request.getfixturevalue(family)
    got = []
    res = ex.explain(X, "score_cam", target=TARGETS, batch_size=5, progress=got.append)
    close(res.maps, score_cam_torch(model, model.feature, X, TARGETS))
    assert sum(got) == len(X) * ex.layer.channels


# -- Ablation-CAM -------------------------------------------------------------------------------------------

def ablation_cam_torch(model, module, x, targets):
    """Desai & Ramaswamy 2020 eq. 2-3 in torch: zero channel k of the module's output by a hook, per channel."""
    a, _, scores = captured(model, module, x, targets)
    out = []
    with torch.no_grad():
        for s in range(len(x)):
            full = scores[s, targets[s]]
            weights = []
            for k in range(a.shape[1]):
                def zero(_m, _i, o, k=k):
                    o = o.clone()
                    o[:, k] = 0
                    return o
                handle = module.register_forward_hook(zero)
                try:
                    ablated = model(torch.from_numpy(x[s:s + 1]))[0, targets[s]].double()
                finally:
                    handle.remove()
                weights.append((full - ablated) / full)
            out.append(torch.relu((torch.stack(weights)[:, None, None] * a[s]).sum(0)))
    return up(torch.stack(out)[:, None])[:, 0].numpy()


@pytest.mark.parametrize("family", ["resnet", "vgg"])
def test_ablation_cam_matches_torch(family, request):
    model, ex = request.getfixturevalue(family)
    got = []
    top = list(ex.predict(X).argmax(1))  # (vgg's maps for classes 3 and 8 are all below the ReLU)
    res = ex.explain(X, "ablation_cam", target=top, batch_size=3, progress=got.append)
    close(res.maps, ablation_cam_torch(model, model.feature, X, top), rel=1e-4)
    assert sum(got) == len(X) * ex.layer.channels


def test_ablation_cam_on_a_layer_inside_a_residual_block(resnet):
    # layer2.a's output: the score also depends on the image through layer2's shortcut, so the tail reads both
    from onnxsal.methods.cam_more import tail_model

    model, _ = resnet
    ex = Explainer(tm.export(model, "torchscript"), layer="/layer2/a/a.2/Relu_output_0")
    _, _, uses_image = tail_model(ex.graph, ex.layer.tensor, "logit")
    assert uses_image
    close(ex.explain(X, "ablation_cam", target=TARGETS).maps, ablation_cam_torch(model, model.layer2.a, X, TARGETS), rel=1e-4)
    _, _, uses_image = tail_model(ex.graph, "/layer2/relu/Relu_output_0", "logit")
    assert not uses_image


# -- FullGrad -----------------------------------------------------------------------------------------------

def psi(t: torch.Tensor) -> torch.Tensor:
    """abs is applied by the caller; per (sample, channel) scaling to [0, 1], then bilinear upsampling."""
    flat = t.flatten(2)
    lo = flat.min(dim=2, keepdim=True)[0]
    flat = flat - lo
    flat = flat / (flat.max(dim=2, keepdim=True)[0] + 1e-7)
    return up(flat.reshape(t.shape).float()).double()


def fullgrad_torch(model, x, targets):
    """Srinivas & Fleuret 2019 eq. 5-6 in torch: bias gradients at every Conv2d (with a bias) and BatchNorm2d."""
    biased = []
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            b = m.bias - m.running_mean * m.weight / torch.sqrt(m.running_var + m.eps)
            biased.append((m, b.detach()))
        elif isinstance(m, nn.Conv2d) and m.bias is not None:
            biased.append((m, m.bias.detach()))
    outs = {}
    hooks = [m.register_forward_hook(lambda mod, _i, o: outs.__setitem__(mod, o)) for m, _ in biased]
    try:
        xt = torch.from_numpy(x).requires_grad_(True)
        scores = model(xt)
        seed = scores[torch.arange(len(x)), targets].sum()
        grads = torch.autograd.grad(seed, [xt] + [outs[m] for m, _ in biased])
    finally:
        for h in hooks:
            h.remove()
    total = psi((xt * grads[0]).abs().detach().double()).sum(1)
    for (m, b), g in zip(biased, grads[1:]):
        total = total + psi((b[None, :, None, None] * g).abs().detach().double()).sum(1)
    return total.numpy()


@pytest.mark.parametrize("family", ["resnet", "vgg"])
def test_fullgrad_matches_torch(family, request):
    model, ex = request.getfixturevalue(family)
    close(ex.explain(X, "fullgrad", target=TARGETS).maps, fullgrad_torch(model, X, TARGETS), rel=1e-4)


# -- every new method through the API ------------------------------------------------------------------------

NEW = ["eigen_cam", "eigen_grad_cam", "score_cam", "ablation_cam", "fullgrad"]


def test_new_methods_are_listed():
    listed = methods()
    for name in NEW:
        assert listed[name]


@pytest.mark.parametrize("method", NEW)
def test_new_methods_take_any_target(resnet, method):
    _, ex = resnet
    top = ex.explain(X, method)
    explicit = ex.explain(X, method, target=list(ex.predict(X).argmax(1)))
    np.testing.assert_allclose(top.maps, explicit.maps, rtol=1e-5, atol=1e-6)
    weights = np.zeros((2, tm.CLASSES), np.float32)
    weights[[0, 1], TARGETS] = 1
    one_hot = ex.explain(X, method, target=weights)
    np.testing.assert_allclose(one_hot.maps, ex.explain(X, method, target=TARGETS).maps, rtol=1e-5, atol=1e-6)
    assert one_hot.maps.shape == (2, tm.SIZE, tm.SIZE) and np.isfinite(one_hot.maps).all()


def test_bad_options_are_refused(resnet):
    _, ex = resnet
    with pytest.raises(MethodError, match="batch_size"):
        ex.explain(X, "score_cam", batch_size=0)
    with pytest.raises(MethodError, match="unknown option"):
        ex.explain(X, "fullgrad", steps=3)
