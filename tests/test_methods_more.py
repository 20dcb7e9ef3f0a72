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

NEW = ["eigen_cam", "eigen_grad_cam", "score_cam", "ablation_cam", "fullgrad", "lime", "kernel_shap", "blur_ig", "guided_ig", "xrai"]


def test_new_methods_are_listed():
    listed = methods()
    for name in NEW:
        assert listed[name]


@pytest.mark.parametrize("method", NEW)
def test_new_methods_take_any_target(resnet, method):
    if method == "xrai":
        pytest.importorskip("skimage")  # its default Felzenszwalb segments
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


# -- LIME / KernelSHAP --------------------------------------------------------------------------------------

def _replay(rows):
    """A Captum perturb_func that hands out our binary draws in order (one (1, F) row per call)."""
    queue = [torch.from_numpy(r[None]).long() for r in rows]
    return lambda *_a, **_k: queue.pop(0)


def test_lime_matches_captum_on_the_same_draws(resnet):
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import Lime

    from onnxsal.methods.surrogate import grid_segments, lime_samples

    model, ex = resnet
    n, width = 120, 0.25
    res = ex.explain(X, "lime", target=TARGETS, samples=n, cells=4, batch_size=7, seed=5)
    labels = grid_segments(tm.SIZE, tm.SIZE, 4)
    rng = np.random.default_rng(5)  # the same stream the method used: one draw per sample, in order

    def paper_kernel(_orig, _pert, z, **_k):  # Ribeiro et al. eq. 2 with D the cosine distance to the all-ones vector
        z = z.double().reshape(-1)
        d = 1 - z.sum() / (z.norm() * np.sqrt(len(z))) if z.sum() > 0 else torch.tensor(1.0, dtype=torch.float64)
        return float(torch.exp(-d * d / width ** 2))

    for s in range(len(X)):
        rows = lime_samples(n, 16, rng)
        lime = Lime(model, interpretable_model=SkLearnRidge(alpha=1.0), similarity_func=paper_kernel, perturb_func=_replay(rows))
        theirs = lime.attribute(torch.from_numpy(X[s:s + 1]), target=TARGETS[s], baselines=0.0, n_samples=n,
                                feature_mask=torch.from_numpy(labels)[None, None]).detach().numpy()[0]
        close(res.attributions[s], theirs, rel=1e-4)
        np.testing.assert_array_equal(res.maps[s], res.attributions[s, 0])


def test_kernel_shap_matches_captum_on_the_same_draws(resnet, monkeypatch):
    from captum.attr import KernelShap

    from onnxsal.methods.surrogate import grid_segments, kernel_shap_samples

    model, ex = resnet
    n = 150
    res = ex.explain(X, "kernel_shap", target=TARGETS, samples=n, cells=(2, 4), batch_size=16, seed=9)
    labels = grid_segments(tm.SIZE, tm.SIZE, (2, 4))
    rng = np.random.default_rng(9)
    for s in range(len(X)):
        rows = kernel_shap_samples(n, 8, rng)
        queue = [torch.from_numpy(r[None]).long() for r in rows]

        def generator(self, _inp, **_k):
            yield from queue

        monkeypatch.setattr(KernelShap, "kernel_shap_perturb_generator", generator)
        theirs = KernelShap(model).attribute(torch.from_numpy(X[s:s + 1]), target=TARGETS[s], baselines=0.0, n_samples=n,
                                             feature_mask=torch.from_numpy(labels)[None, None]).detach().numpy()[0]
        close(res.attributions[s], theirs, rel=1e-4)
        # efficiency (soft constraint): the coefficients sum to f(x) - f(fill)
        f = model(torch.from_numpy(X[s:s + 1]))[0, TARGETS[s]].item() - model(torch.zeros(1, 3, tm.SIZE, tm.SIZE))[0, TARGETS[s]].item()
        assert abs(theirs[0].reshape(-1)[np.unique(labels, return_index=True)[1]].sum() - f) < 1e-3 * (abs(f) + 1)


def test_kernel_shap_draws_follow_the_shapley_kernel():
    from math import comb

    from onnxsal.methods.surrogate import kernel_shap_samples

    m = 6
    z = kernel_shap_samples(20002, m, np.random.default_rng(0))
    assert z[0].all() and not z[1].any()
    sizes = z[2:].sum(axis=1).astype(int)
    # P(a given subset of size k) must be proportional to the Shapley kernel (M-1) / (C(M,k) k (M-k))
    kernel = np.array([(m - 1) / (comb(m, k) * k * (m - k)) for k in range(1, m)])
    want = kernel * np.array([comb(m, k) for k in range(1, m)])
    got = np.bincount(sizes, minlength=m)[1:m] / len(sizes)
    np.testing.assert_allclose(got, want / want.sum(), atol=0.01)
    assert set(sizes) <= set(range(1, m))


class Product(nn.Module):
    """Score 0 = (mean of the top half) * (mean of the bottom half) of a 1x2x2 image; score 1 its negative."""

    def forward(self, x):
        p = x[:, 0, 0, :].mean(1) * x[:, 0, 1, :].mean(1)
        return torch.stack([p, -p], 1)


def test_kernel_shap_solves_a_hand_solved_case():
    # two superpixels (the rows) of a 2x2 image; with fill 0, f(z) = 6 z1 z2 (rows 2 and 3): Shapley values 3 and 3
    from onnxsal.methods.surrogate import kernel_shap_samples

    ex = Explainer(_export_product())
    x = np.array([[[[2.0, 2.0], [3.0, 3.0]]]], np.float32)
    res = ex.explain(x, "kernel_shap", target=0, segments=np.array([[0, 0], [1, 1]]), samples=40)
    # rows: z = (1, 1) and (0, 0) with weight W = 1e6, then n1 draws of (1, 0) and n2 of (0, 1) with weight 1, all
    # f = 0 but the first (6). Setting the derivatives of sum_i w_i (f_i - b1 z1 - b2 z2 - c)^2 to zero:
    #   (W + n1) b1 + W b2 + (W + n1) c = 6 W
    #   W b1 + (W + n2) b2 + (W + n2) c = 6 W
    #   (W + n1) b1 + (W + n2) b2 + (2 W + n1 + n2) c = 6 W
    drawn = kernel_shap_samples(40, 2, np.random.default_rng(0))  # the method's draws (seed 0): only n1, n2 matter
    big, n1, n2 = 1e6, float(drawn[2:, 0].sum()), float(drawn[2:, 1].sum())
    a = np.array([[big + n1, big, big + n1], [big, big + n2, big + n2], [big + n1, big + n2, 2 * big + n1 + n2]])
    b1, b2, c = np.linalg.solve(a, np.full(3, 6 * big))
    np.testing.assert_allclose(res.maps[0], [[b1, b1], [b2, b2]], rtol=1e-6)
    assert abs(b1 + b2 - 6) < 1e-4 and abs(b1 - 3) < 0.5 and abs(c) < 1e-4


def _export_product():
    import io

    buf = io.BytesIO()
    torch.onnx.export(Product(), torch.zeros(1, 1, 2, 2), buf, dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return buf.getvalue()


# -- Blur IG / Guided IG against PAIR's saliency package ------------------------------------------------------

def torch_grad_hwc(model, target):
    """PAIR's call_model_function on HWC inputs, gradients from torch (independent of our engine)."""
    def call(batch, call_model_args=None, expected_keys=None):
        xt = torch.from_numpy(np.asarray(batch, np.float32).transpose(0, 3, 1, 2)).requires_grad_(True)
        model(xt)[:, target].sum().backward()
        return {"INPUT_OUTPUT_GRADIENTS": xt.grad.numpy().transpose(0, 2, 3, 1).astype(np.float64)}
    return call


@pytest.mark.parametrize("sqrt,pair_batch", [(False, 4), (True, 1)])
def test_blur_ig_matches_pair(resnet, sqrt, pair_batch):
    saliency = pytest.importorskip("saliency.core")
    pytest.importorskip("scipy")
    model, ex = resnet
    res = ex.explain(X, "blur_ig", target=TARGETS, steps=20, max_sigma=6.0, sqrt=sqrt, batch_size=7)
    for s in range(len(X)):
        # (PAIR applies the first step's width to a whole batch: exact only for evenly spaced sigmas or batch 1)
        theirs = saliency.BlurIG().GetMask(X[s].transpose(1, 2, 0).astype(np.float64), torch_grad_hwc(model, TARGETS[s]),
                                           max_sigma=6.0, steps=20, sqrt=sqrt, batch_size=pair_batch)
        close(res.attributions[s], theirs.transpose(2, 0, 1), rel=1e-4)
    assert res.delta is not None and res.delta.shape == (2,)


def test_blur_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    from onnxsal.methods.path_more import spatial_blur

    for sigma in (0.3, 1.0, 4.5, 20.0):
        want = np.stack([ndimage.gaussian_filter(X[s], sigma=[0, sigma, sigma], mode="constant") for s in range(2)])
        np.testing.assert_allclose(spatial_blur(X, sigma, False), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(spatial_blur(X.transpose(0, 2, 3, 1), sigma, True), want.transpose(0, 2, 3, 1),
                                   rtol=1e-5, atol=1e-6)


def test_guided_ig_matches_pair(resnet, monkeypatch):
    # the path is chosen from the gradients' ranking, so PAIR gets our engine's gradients (checked against torch in
    # test_methods.py): this compares the path algorithm itself, step for step
    saliency = pytest.importorskip("saliency.core")
    quantile = np.quantile  # PAIR 0.2.1 passes numpy < 2's `interpolation=`; numpy 2 calls it `method=`
    monkeypatch.setattr(np, "quantile", lambda *a, interpolation=None, **k: quantile(*a, **({"method": interpolation} if interpolation else {}), **k))
    _, ex = resnet
    res = ex.explain(X, "guided_ig", target=TARGETS, steps=30, fraction=0.3, max_dist=0.1, baseline="zeros")
    for s in range(len(X)):
        seed = np.zeros((1, tm.CLASSES), np.float32)
        seed[0, TARGETS[s]] = 1

        def call(batch, call_model_args=None, expected_keys=None):
            return {"INPUT_OUTPUT_GRADIENTS": ex.gradients(np.asarray(batch, np.float32), seed).input_grad.astype(np.float64)}

        theirs = saliency.GuidedIG().GetMask(X[s].astype(np.float64), call, x_steps=30, fraction=0.3, max_dist=0.1)
        close(res.attributions[s], theirs, rel=1e-4)
    # completeness holds approximately on the guided path as well
    f = ex.predict(X)[[0, 1], TARGETS] - ex.predict(np.zeros_like(X))[[0, 1], TARGETS]
    np.testing.assert_allclose(res.attributions.reshape(2, -1).sum(1) - f, res.delta, rtol=1e-3, atol=1e-4)


def test_lime_on_slic_superpixels(resnet):
    segmentation = pytest.importorskip("skimage.segmentation")
    _, ex = resnet
    blocks = np.kron(R.standard_normal((3, 4, 4)), np.ones((8, 8))).astype(np.float32)  # 16 flat patches: SLIC finds them
    res = ex.explain(blocks[None], "lime", target=3, segments="slic", n_segments=12, samples=60)
    image = blocks.transpose(1, 2, 0)
    labels = segmentation.slic((image - image.min()) / (image.max() - image.min()), n_segments=12, channel_axis=-1,
                               start_label=0)
    for label in np.unique(labels):  # one coefficient per SLIC superpixel
        assert np.ptp(res.maps[0][labels == label]) == 0
    assert len(np.unique(res.maps[0])) > 1


# -- weakly supervised localisation -------------------------------------------------------------------------

def test_localize_a_hand_drawn_map():
    from onnxsal.localization import localize

    m = np.zeros((10, 12))
    m[2:5, 1:4] = 1.0  # 9 pixels
    m[6:9, 6:11] = 0.5  # 15 pixels, the largest region above 20% of the max
    m[0, 11] = 0.1  # below the threshold
    assert localize(m) == (6, 6, 11, 9)
    assert localize(m, threshold=0.6) == (1, 2, 4, 5)
    m[5, 4:6] = 0.3  # joins both diagonally: one 8-connected region
    assert localize(m) == (1, 2, 11, 9)
    assert localize(m, connectivity=4) == (6, 6, 11, 9)
    assert localize(np.zeros((4, 4))) is None


@pytest.mark.parametrize("connectivity", [4, 8])
def test_localize_matches_scipy_labelling(connectivity):
    ndimage = pytest.importorskip("scipy.ndimage")
    from onnxsal.localization import boxes

    rng = np.random.default_rng(3)
    maps = np.stack([ndimage.gaussian_filter(rng.standard_normal((40, 50)), 2.0) for _ in range(6)])
    structure = np.ones((3, 3)) if connectivity == 8 else None
    for m, box in zip(maps, boxes(maps, threshold=0.3, connectivity=connectivity)):
        labels, count = ndimage.label(m >= 0.3 * m.max(), structure=structure)
        sizes = ndimage.sum_labels(np.ones_like(m), labels, index=np.arange(1, count + 1))
        biggest = ndimage.find_objects(labels)[int(np.argmax(sizes))]
        assert box == (biggest[1].start, biggest[0].start, biggest[1].stop, biggest[0].stop)


# -- activation maps ----------------------------------------------------------------------------------------

def test_activation_grid_lays_out_each_channel(resnet):
    from onnxsal.activations import activation_grid, render_grid

    model, ex = resnet
    a, _, _ = captured(model, model.feature, X, TARGETS)  # torch's activations of the same layer
    a = a.numpy()
    n, c, h, w = a.shape
    grid = activation_grid(ex, X, columns=5, gap=2)
    rows = -(-c // 5)
    assert grid.shape == (n, rows * (h + 2) - 2, 5 * (w + 2) - 2)
    for s in range(n):
        for k in range(c):
            r, col = k // 5, k % 5
            cell = grid[s, r * (h + 2):r * (h + 2) + h, col * (w + 2):col * (w + 2) + w]
            span = a[s, k].max() - a[s, k].min()
            want = (a[s, k] - a[s, k].min()) / span if span > 0 else np.zeros((h, w))
            np.testing.assert_allclose(cell, want, atol=1e-5)
    assert np.isnan(grid[0, h, :]).all()  # the gap below the first row of cells
    raw = activation_grid(ex, X, layer="/layer1/relu/Relu_output_0", normalize="none", gap=0)
    assert raw.shape[1:] == (3 * 16, 3 * 16)  # 8 channels at 16x16 in a 3 x 3 grid
    image = render_grid(grid[0], scale=2)
    assert image.size == (grid.shape[2] * 2, grid.shape[1] * 2)


# -- class model visualisation -------------------------------------------------------------------------------

@pytest.mark.parametrize("jitter", [0, 3])
def test_class_model_first_steps_match_a_torch_replica(resnet, jitter):
    from onnxsal.class_model import render, visualize_class

    model, ex = resnet
    lr, l2, steps = 0.5, 0.01, 6
    got = []
    image, history = visualize_class(ex, 4, steps=steps, lr=lr, l2=l2, jitter=jitter, seed=2, progress=got.append)
    # Simonyan et al. 2013 eq. 1 by gradient ascent from zero, gradients from torch autograd
    rng = np.random.default_rng(2)
    want = torch.zeros(1, 3, tm.SIZE, tm.SIZE, dtype=torch.float64)
    objective = []
    for _ in range(steps):
        dy, dx = (int(v) for v in rng.integers(-jitter, jitter + 1, size=2)) if jitter else (0, 0)
        moved = torch.roll(want, (dy, dx), dims=(2, 3)).float().requires_grad_(True)
        score = model(moved)[0, 4]
        (g,) = torch.autograd.grad(score, moved)
        objective.append(score.item() - l2 * float((want * want).sum()))
        want = want + lr * (torch.roll(g.double(), (-dy, -dx), dims=(2, 3)) - 2 * l2 * want)
    close(image, want.numpy(), rel=1e-4)
    np.testing.assert_allclose(history, objective, rtol=1e-4, atol=1e-5)
    assert history[-1] > history[0] and sum(got) == steps
    assert render(image).size == (tm.SIZE, tm.SIZE)
    with pytest.raises(Exception, match="fixed target"):
        visualize_class(ex, "top", steps=1)


# -- pytorch-grad-cam's smoothing options on every CAM ---------------------------------------------------------

def test_eigen_smooth_projects_the_weighted_activations(resnet):
    model, ex = resnet
    a, g, _ = captured(model, model.feature, X, TARGETS, grad=True)
    weights = g.mean(dim=(2, 3), keepdim=True)  # Grad-CAM's alpha (Selvaraju eq. 1)
    want = up(torch.from_numpy(eigen_replica((weights * a).numpy()))[:, None])[:, 0].numpy()
    close(ex.explain(X, "grad_cam", target=TARGETS, eigen_smooth=True).maps, want, rel=1e-4)


def test_aug_smooth_averages_flipped_and_scaled_views(resnet):
    from captum.attr import LayerGradCam

    model, ex = resnet
    xt = torch.from_numpy(X)
    total = 0
    for flip in (False, True):
        for factor in (0.9, 1.0, 1.1):
            view = (torch.flip(xt, dims=[3]) if flip else xt) * factor
            cam = up(LayerGradCam(model, model.feature).attribute(view, target=TARGETS, relu_attributions=True))[:, 0]
            total = total + (torch.flip(cam, dims=[2]) if flip else cam)
    close(ex.explain(X, "grad_cam", target=TARGETS, aug_smooth=True).maps, (total / 6).detach().numpy(), rel=1e-4)
    got = []
    res = ex.explain(X, "score_cam", target=TARGETS, aug_smooth=True, progress=got.append)
    assert sum(got) == 6 * len(X) * ex.layer.channels and res.info["evaluations"] == 6 * ex.layer.channels


def test_xrai_matches_pair(resnet):
    saliency = pytest.importorskip("saliency.core")
    pytest.importorskip("skimage")
    from saliency.core import xrai as pair_xrai

    from onnxsal.methods.path_more import xrai_segments

    _, ex = resnet
    blocks = (np.kron(R.standard_normal((2, 3, 4, 4)), np.ones((8, 8))) + 0.1 * R.standard_normal((2, 3, 32, 32))).astype(np.float32)
    res = ex.explain(blocks, "xrai", target=TARGETS, steps=16, min_pixels=20)
    for s in range(2):
        hwc = blocks[s].transpose(1, 2, 0).astype(np.float64)
        masks = xrai_segments(hwc)
        theirs_masks = pair_xrai._get_segments_felzenszwalb(hwc)
        assert len(masks) == len(theirs_masks) and all((a == b).all() for a, b in zip(masks, theirs_masks))
        params = saliency.XRAIParameters()
        params.experimental_params["min_pixel_diff"] = 20
        theirs = saliency.XRAI().GetMask(hwc, None, base_attribution=res.attributions[s].transpose(1, 2, 0).astype(np.float64),
                                         segments=theirs_masks, extra_parameters=params)
        close(res.maps[s], theirs, rel=1e-6)
        assert len(np.unique(res.maps[s])) > 2


class ChannelsLast(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.permute(0, 3, 1, 2))


@pytest.mark.parametrize("method,options", [
    ("eigen_cam", {}), ("score_cam", {}), ("ablation_cam", {}), ("fullgrad", {}), ("lime", {"samples": 40}),
    ("kernel_shap", {"samples": 40}), ("blur_ig", {"steps": 8, "max_sigma": 4.0}), ("guided_ig", {"steps": 8}),
    ("grad_cam", {"aug_smooth": True}),
])
def test_channels_last_models_give_the_same_maps(resnet, method, options):
    # the same network behind an NHWC input: every map must equal the NCHW model's (checked above against oracles)
    import io

    model, ex = resnet
    buf = io.BytesIO()
    torch.onnx.export(ChannelsLast(model).eval(), torch.zeros(1, tm.SIZE, tm.SIZE, 3), buf, dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    nhwc = Explainer(buf.getvalue(), layer="/inner" + ex.layer.tensor)
    assert nhwc.graph.layout == "NHWC"
    want = ex.explain(X, method, target=TARGETS, **options)
    got = nhwc.explain(X.transpose(0, 2, 3, 1).copy(), method, target=TARGETS, **options)
    close(got.maps, want.maps, rel=1e-4)
