"""Methods against Captum on torch models exported to ONNX (same weights, same inputs), and the CAM
variants against slow replicas written from the papers' equations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import torch_models as tm
from oracles import max_rel_err
from onnxsal import Explainer, methods
from onnxsal.errors import MethodError, TargetError

REL = 1e-4
R = np.random.default_rng(21)
X = R.standard_normal((2, 3, tm.SIZE, tm.SIZE)).astype(np.float32)
TARGETS = [3, 8]


@pytest.fixture(scope="module")
def resnet():
    model = tm.build("resnet")
    return model, Explainer(tm.export(model, "torchscript"))


def captum_attr(cls, model, *args, **kwargs):
    return cls(model, *args).attribute(torch.from_numpy(X), target=TARGETS, **kwargs).detach().numpy()


def close(ours, theirs, rel=REL):
    err = max_rel_err(ours, theirs)
    assert err <= rel, f"max relative error {err:.2e}"


# -- gradient methods ------------------------------------------------------------------------------------

def test_saliency(resnet):
    from captum.attr import Saliency

    model, ex = resnet
    res = ex.explain(X, "saliency", target=TARGETS)
    close(res.attributions, captum_attr(Saliency, model, abs=True))
    np.testing.assert_allclose(res.maps, np.abs(res.attributions).max(axis=1))
    assert list(res.targets) == TARGETS


def test_gradient_x_input(resnet):
    from captum.attr import InputXGradient

    model, ex = resnet
    res = ex.explain(X, "gradient_x_input", target=TARGETS)
    close(res.attributions, captum_attr(InputXGradient, model))
    assert res.signed


@pytest.mark.parametrize("method,captum_name", [("guided_backprop", "GuidedBackprop"), ("deconvnet", "Deconvolution")])
def test_modified_backprop(resnet, method, captum_name):
    import captum.attr

    model, ex = resnet
    close(ex.explain(X, method, target=TARGETS).attributions, captum_attr(getattr(captum.attr, captum_name), model))


def test_sensitivity_is_the_squared_gradient(resnet):
    _, ex = resnet
    grad = ex.explain(X, "saliency", target=TARGETS, abs=False).attributions
    res = ex.explain(X, "sensitivity", target=TARGETS)
    np.testing.assert_allclose(res.attributions, grad * grad, rtol=1e-6)
    np.testing.assert_allclose(res.maps, (grad * grad).sum(axis=1), rtol=1e-5)


# -- CAM family ----------------------------------------------------------------------------------------

def test_grad_cam(resnet):
    from captum.attr import LayerAttribution, LayerGradCam

    model, ex = resnet
    layer = LayerGradCam(model, model.feature).attribute(torch.from_numpy(X), target=TARGETS, relu_attributions=True)
    theirs = LayerAttribution.interpolate(layer, (tm.SIZE, tm.SIZE), interpolate_mode="bilinear")[:, 0].detach().numpy()
    res = ex.explain(X, "grad_cam", target=TARGETS)
    assert res.attributions is None and res.maps.shape == (2, tm.SIZE, tm.SIZE)
    close(res.maps, theirs)


def test_guided_grad_cam(resnet):
    from captum.attr import GuidedGradCam

    model, ex = resnet
    theirs = GuidedGradCam(model, model.feature).attribute(torch.from_numpy(X), target=TARGETS, interpolate_mode="bilinear")
    close(ex.explain(X, "guided_grad_cam", target=TARGETS).attributions, theirs.detach().numpy())


def test_guided_grad_cam_with_relus_after_the_layer(resnet):
    """The default layer (layer2) feeds only pooling and the linear head, so one guided-backprop run gives both halves
    (shares_forward); below a ReLU the guided layer gradient differs from Grad-CAM's, and two runs are needed. Both
    against Captum's GuidedGradCam on that layer."""
    from captum.attr import GuidedGradCam

    from onnxsal.methods.cam import GuidedGradCAM

    model, first = resnet
    assert GuidedGradCAM(first).shares_forward()
    ex = Explainer(tm.export(model, "torchscript"), layer="/layer1/relu/Relu_output_0")
    assert not GuidedGradCAM(ex).shares_forward()
    theirs = GuidedGradCam(model, model.layer1).attribute(torch.from_numpy(X), target=TARGETS, interpolate_mode="bilinear")
    close(ex.explain(X, "guided_grad_cam", target=TARGETS).attributions, theirs.detach().numpy())


def _layer_tensors(ex):
    seeds = np.zeros((2, tm.CLASSES), np.float32)
    seeds[[0, 1], TARGETS] = 1
    out = ex.gradients(X, seeds, layers=[ex.layer.tensor], input_grad=False)
    return out.activations[ex.layer.tensor].astype(np.float64), out.layer_grads[ex.layer.tensor].astype(np.float64)


def replica(method, A, G):
    """Maps at the layer's resolution, one loop per index, from each paper's equations."""
    n, c, h, w = A.shape
    out = np.zeros((n, h, w))
    for s in range(n):
        if method == "grad_cam":  # Selvaraju 2017 eq. 1-2
            alpha = [sum(G[s, k, i, j] for i in range(h) for j in range(w)) / (h * w) for k in range(c)]
            terms = [[[alpha[k] * A[s, k, i, j] for j in range(w)] for i in range(h)] for k in range(c)]
        elif method == "grad_cam_plus_plus":  # Chattopadhyay 2018 eq. 19 and w_k = sum_ij alpha_kij relu(g_kij)
            alpha = []
            for k in range(c):
                total = sum(A[s, k, a, b] for a in range(h) for b in range(w))
                wk = 0.0
                for i in range(h):
                    for j in range(w):
                        g = G[s, k, i, j]
                        den = 2 * g ** 2 + total * g ** 3
                        wk += (g ** 2 / den if den != 0 else 0.0) * max(g, 0.0)
                alpha.append(wk)
            terms = [[[alpha[k] * A[s, k, i, j] for j in range(w)] for i in range(h)] for k in range(c)]
        elif method == "xgrad_cam":  # Fu 2020: w_k = sum_ij A_kij / sum_ab A_kab * g_kij
            alpha = []
            for k in range(c):
                total = sum(A[s, k, a, b] for a in range(h) for b in range(w))
                alpha.append(sum(A[s, k, i, j] / (total + 1e-7) * G[s, k, i, j] for i in range(h) for j in range(w)))
            terms = [[[alpha[k] * A[s, k, i, j] for j in range(w)] for i in range(h)] for k in range(c)]
        elif method == "layer_cam":  # Jiang 2021: M = relu(sum_k relu(g_kij) A_kij)
            terms = [[[max(G[s, k, i, j], 0.0) * A[s, k, i, j] for j in range(w)] for i in range(h)] for k in range(c)]
        elif method == "hires_cam":  # Draelos 2020: M = sum_k g_kij A_kij (then the template's ReLU)
            terms = [[[G[s, k, i, j] * A[s, k, i, j] for j in range(w)] for i in range(h)] for k in range(c)]
        elif method == "grad_cam_elementwise":  # M = sum_k relu(g_kij A_kij)
            terms = [[[max(G[s, k, i, j] * A[s, k, i, j], 0.0) for j in range(w)] for i in range(h)] for k in range(c)]
        for i in range(h):
            for j in range(w):
                out[s, i, j] = max(sum(terms[k][i][j] for k in range(c)), 0.0)
    return out


@pytest.mark.parametrize("method", ["grad_cam", "grad_cam_plus_plus", "xgrad_cam", "layer_cam", "hires_cam", "grad_cam_elementwise"])
@pytest.mark.parametrize("family", ["resnet", "vgg"])
def test_cam_variants_match_paper_replicas(method, family):
    # vgg's head (flatten + two linear layers) makes the layer gradient vary across positions,
    # which tells the variants apart; resnet's GAP head makes it constant per channel
    model = tm.build(family)
    ex = Explainer(tm.export(model, "torchscript"))
    A, G = _layer_tensors(ex)
    want = F.interpolate(torch.from_numpy(replica(method, A, G))[:, None], size=(tm.SIZE, tm.SIZE), mode="bilinear",
                         align_corners=False)[:, 0].numpy()
    close(ex.explain(X, method, target=TARGETS).maps, want, rel=1e-5)


def test_cam_equals_grad_cam_times_area_on_a_gap_head(resnet):
    # for A -> GAP -> linear: dS/dA_kij = w_k / Z, so Grad-CAM = CAM / Z (Selvaraju 2017, sec. 3)
    _, ex = resnet
    h, w = ex.layer.spatial
    cam = ex.explain(X, "cam", target=TARGETS).maps
    grad_cam = ex.explain(X, "grad_cam", target=TARGETS).maps
    np.testing.assert_allclose(cam, grad_cam * h * w, rtol=1e-4, atol=1e-5 * np.abs(cam).max())


def test_cam_refuses_a_head_that_is_not_gap_linear():
    ex = Explainer(tm.export(tm.build("vgg"), "torchscript"))
    with pytest.raises(MethodError, match="global average pooling followed by one linear layer"):
        ex.explain(X, "cam")


# -- integrated gradients --------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme,captum_scheme", [("gausslegendre", "gausslegendre"), ("riemann_left", "riemann_left"),
                                                  ("riemann_right", "riemann_right"), ("riemann_middle", "riemann_middle"),
                                                  ("riemann_trapezoid", "riemann_trapezoid")])
def test_integrated_gradients(resnet, scheme, captum_scheme):
    from captum.attr import IntegratedGradients

    model, ex = resnet
    steps = 24
    baseline = R.standard_normal(X.shape).astype(np.float32) * 0.1
    theirs, their_delta = IntegratedGradients(model).attribute(
        torch.from_numpy(X), baselines=torch.from_numpy(baseline), target=TARGETS, n_steps=steps, method=captum_scheme,
        internal_batch_size=16, return_convergence_delta=True)
    theirs = theirs.detach().numpy()
    if scheme == "riemann_trapezoid":
        # Captum weights the trapezoid rule by 1/n instead of 1/(n-1): its weights sum to (n-1)/n
        theirs = theirs * steps / (steps - 1)
    res = ex.explain(X, "integrated_gradients", target=TARGETS, steps=steps, integration=scheme, baseline=baseline)
    close(res.attributions, theirs)
    if scheme != "riemann_trapezoid":
        np.testing.assert_allclose(res.delta, their_delta.detach().numpy(), atol=1e-3 * np.abs(res.scores).max())


def test_integrated_gradients_completeness_and_baselines(resnet):
    _, ex = resnet
    res = ex.explain(X, "integrated_gradients", target=TARGETS, steps=64, baseline=["zeros", "blur"])
    seeds = np.zeros((2, tm.CLASSES), np.float32)
    seeds[[0, 1], TARGETS] = 1
    gap = res.attributions.reshape(2, -1).sum(1) - (ex.score(X, seeds) - np.mean(
        [ex.score(b, seeds) for b in ex.baselines(X, ["zeros", "blur"])], axis=0))
    np.testing.assert_allclose(res.delta, gap, rtol=1e-4, atol=1e-5)
    with pytest.raises(MethodError, match="black baseline needs the model's preprocessing"):
        ex.explain(X, "integrated_gradients", baseline="black")


def test_integrated_gradients_tolerance_meets_the_completeness_gap(resnet):
    _, ex = resnet
    res = ex.explain(X, "integrated_gradients", target=TARGETS, steps=10, baseline="zeros", tolerance=1e-3, max_steps=400)
    seeds = np.zeros((2, tm.CLASSES), np.float32)
    seeds[[0, 1], TARGETS] = 1
    span = ex.score(X, seeds) - ex.score(np.zeros_like(X), seeds)
    assert (np.abs(res.delta) <= 1e-3 * np.abs(span) + 1e-6).all(), (res.delta, span, res.info)


# -- smoothgrad and friends --------------------------------------------------------------------------------

@pytest.mark.parametrize("method,nt_type", [("smoothgrad", "smoothgrad"), ("smoothgrad_sq", "smoothgrad_sq"), ("vargrad", "vargrad")])
def test_noise_tunnel_on_the_same_draws(resnet, method, nt_type, monkeypatch):
    from captum.attr import NoiseTunnel, Saliency

    model, ex = resnet
    drawn = []
    normal = torch.normal

    def recording_normal(*args, **kwargs):
        out = normal(*args, **kwargs)
        drawn.append(out.detach().numpy().copy())
        return out

    monkeypatch.setattr(torch, "normal", recording_normal)
    samples, stdev = 6, 0.3
    theirs = NoiseTunnel(Saliency(model)).attribute(torch.from_numpy(X), nt_type=nt_type, nt_samples=samples, stdevs=stdev,
                                                   target=TARGETS).detach().numpy()
    monkeypatch.setattr(torch, "normal", normal)
    noise = np.concatenate(drawn).astype(np.float32)
    res = ex.explain(X, method, target=TARGETS, samples=samples, noise=noise, batch_size=5)
    close(res.attributions, theirs, rel=2e-4 if method == "vargrad" else REL)


def test_smoothgrad_is_reproducible_and_wraps_any_method(resnet):
    _, ex = resnet
    a = ex.explain(X, "smoothgrad", target=TARGETS, samples=4, seed=3).attributions
    b = ex.explain(X, "smoothgrad", target=TARGETS, samples=4, seed=3).attributions
    c = ex.explain(X, "smoothgrad", target=TARGETS, samples=4, seed=4).attributions
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    cam = ex.explain(X, "smoothgrad", base="grad_cam", target=TARGETS, samples=3)
    assert cam.attributions is None and cam.maps.shape == (2, tm.SIZE, tm.SIZE)
    one = ex.explain(X, "smoothgrad", base="grad_cam", target=TARGETS, samples=1, noise_level=0.0)
    np.testing.assert_allclose(one.maps, ex.explain(X, "grad_cam", target=TARGETS).maps, rtol=1e-5, atol=1e-7)


# -- occlusion ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("window,stride", [(8, 4), (6, 5)])
def test_occlusion(resnet, window, stride):
    from captum.attr import Occlusion

    model, ex = resnet
    theirs = Occlusion(model).attribute(torch.from_numpy(X), sliding_window_shapes=(3, window, window),
                                        strides=(3, stride, stride), baselines=0.0, target=TARGETS).detach().numpy()
    res = ex.explain(X, "occlusion", target=TARGETS, window=window, stride=stride, fill="zeros", batch_size=7)
    close(res.attributions, theirs)


# -- targets and options ------------------------------------------------------------------------------------

def test_targets_top_weights_and_errors(resnet):
    _, ex = resnet
    scores = ex.predict(X)
    top = ex.explain(X, "saliency")
    np.testing.assert_array_equal(top.targets, scores.argmax(1))
    np.testing.assert_allclose(top.scores, scores.max(1), rtol=1e-6)
    weights = np.zeros(tm.CLASSES, np.float32)
    weights[[2, 5]] = [0.5, -1.0]
    weighted = ex.explain(X, "gradient_x_input", target=weights)
    a = ex.explain(X, "gradient_x_input", target=2).attributions
    b = ex.explain(X, "gradient_x_input", target=5).attributions
    np.testing.assert_allclose(weighted.attributions, 0.5 * a - b, rtol=1e-4, atol=1e-6)
    assert list(weighted.targets) == [-1, -1]
    with pytest.raises(TargetError, match="out of range: the model has 10 classes"):
        ex.explain(X, "saliency", target=10)
    with pytest.raises(TargetError, match="3 class indices for a batch of 2"):
        ex.explain(X, "saliency", target=[1, 2, 3])
    with pytest.raises(MethodError, match="unknown method 'nope'"):
        ex.explain(X, "nope")
    with pytest.raises(MethodError, match="unknown option.*steps"):
        ex.explain(X, "saliency", steps=3)


def test_methods_listing():
    listed = methods()
    for name in ["saliency", "sensitivity", "gradient_x_input", "guided_backprop", "deconvnet", "cam", "grad_cam",
                 "grad_cam_plus_plus", "xgrad_cam", "layer_cam", "hires_cam", "grad_cam_elementwise", "guided_grad_cam",
                 "smoothgrad", "smoothgrad_sq", "vargrad", "integrated_gradients", "occlusion"]:
        assert listed[name]


@pytest.mark.parametrize("method", ["saliency", "grad_cam", "guided_grad_cam"])
def test_top_target_is_chosen_inside_the_gradient_graph(resnet, method, monkeypatch):
    _, ex = resnet
    explicit = ex.explain(X, method, target=list(ex.predict(X).argmax(1)))
    calls = []
    forward = ex.engine.forward
    monkeypatch.setattr(ex.engine, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    top = ex.explain(X, method)
    assert calls == []  # one gradient run gave the prediction and its explanation
    np.testing.assert_array_equal(top.targets, explicit.targets)
    np.testing.assert_allclose(top.scores, explicit.scores, rtol=1e-6)
    np.testing.assert_allclose(top.maps, explicit.maps, rtol=1e-5, atol=1e-7)
