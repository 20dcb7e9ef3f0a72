"""Metrics (issue 14) against independent oracles: closed forms on linear models (hand-computed or written in
the test from the definition), a loop-by-loop SSIM replica of Wang et al. 2004, Captum's infidelity and
sensitivity_max on the same perturbation draws, and a torch model whose layers get the randomised values."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxsal
from onnxsal.metrics import complexity, faithfulness, localisation, randomisation, robustness, similarity
from onnxsal.metrics.runner import Runner, pixel_attributions


def linear_model(weights: np.ndarray, bias: np.ndarray, shape) -> onnx.ModelProto:
    """x (N, *shape) -> Flatten -> Gemm(weights (K, prod(shape)), bias) -> logits (N, K)."""
    k = len(weights)
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", k])],
                              [helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.astype(np.float32).ravel()),
                               helper.make_tensor("b", TensorProto.FLOAT, bias.shape, bias.astype(np.float32).ravel())])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# -- faithfulness ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_linear():
    # class 0 scores 4*x00 + 3*x01 + 2*x10 + 1*x11; class 1 a second row so the model has two classes
    w = np.array([[4, 3, 2, 1], [1, 1, 1, 1]], np.float32)
    return onnxsal.Explainer(linear_model(w, np.zeros(2, np.float32), (1, 2, 2)))


def test_deletion_insertion_hand_computed(tiny_linear):
    runner = Runner(tiny_linear, "saliency")
    x = np.ones((1, 1, 2, 2), np.float32)
    maps = np.array([[[4.0, 3.0], [2.0, 1.0]]])
    common = dict(fill="zeros", steps=4, score="logit")
    deletion = faithfulness.curves(runner, x, np.array([0]), maps, mode="delete", **common)[0]
    insertion = faithfulness.curves(runner, x, np.array([0]), maps, mode="insert", **common)[0]
    lerf = faithfulness.curves(runner, x, np.array([0]), maps, mode="delete", most_first=False, **common)[0]
    np.testing.assert_allclose(deletion, [10, 6, 3, 1, 0], rtol=1e-6)
    np.testing.assert_allclose(insertion, [0, 4, 7, 9, 10], rtol=1e-6)
    np.testing.assert_allclose(lerf, [10, 9, 7, 4, 0], rtol=1e-6)
    # trapezoids with dx = 1/4, by hand: (16 + 9 + 4 + 1) / 8, (4 + 11 + 16 + 19) / 8, (19 + 16 + 11 + 4) / 8
    assert faithfulness.auc(deletion) == pytest.approx(3.75)
    assert faithfulness.auc(insertion) == pytest.approx(6.25)
    assert faithfulness.auc(lerf) == pytest.approx(6.25)


@pytest.mark.parametrize("score", ["logit", "probability"])
@pytest.mark.parametrize("batch", [3, 64])
def test_deletion_closed_form_linear(score, batch):
    """Deletion/insertion of a linear model: the score of x with a set S of pixels filled is known in closed form."""
    rng = np.random.default_rng(1)
    c, h, w, k = 3, 8, 8, 4
    weights = rng.standard_normal((k, c * h * w)).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32)
    ex = onnxsal.Explainer(linear_model(weights, bias, (c, h, w)), batch_size=batch)
    x = rng.standard_normal((2, c, h, w)).astype(np.float32)
    maps = rng.standard_normal((2, h, w))  # distinct values: no ties
    classes = np.array([2, 0])
    steps, fill = 7, 0.5  # 64 pixels in 7 steps: floor(k * 64 / 7) pixels at step k
    runner = Runner(ex, "saliency", batch_size=batch)
    got_del = faithfulness.curves(runner, x, classes, maps, mode="delete", fill=fill, steps=steps, score=score)
    got_ins = faithfulness.curves(runner, x, classes, maps, mode="insert", fill=fill, steps=steps, score=score)
    for i in range(2):
        order = np.argsort(-maps[i].ravel())
        for step in range(steps + 1):
            chosen = np.zeros(h * w, bool)
            chosen[order[: (step * h * w) // steps]] = True
            deleted = np.where(chosen.reshape(1, h, w), fill, x[i]).astype(np.float64)
            inserted = np.where(chosen.reshape(1, h, w), x[i], fill).astype(np.float64)
            for got, image in ((got_del, deleted), (got_ins, inserted)):
                logits = weights.astype(np.float64) @ image.ravel() + bias
                want = logits[classes[i]] if score == "logit" else np.exp(logits - logits.max())[classes[i]] / np.exp(logits - logits.max()).sum()
                assert got[i, step] == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_evaluate_api_linear_model_gradient_x_input():
    """onnxsal.evaluate end to end: gradient x input of a 1-channel linear model is w * x, so its deletion curve
    removes the largest contributions first: the closed form sum of the remaining ones."""
    rng = np.random.default_rng(2)
    h = w = 6
    weights = rng.standard_normal((3, h * w)).astype(np.float32)
    ex = onnxsal.Explainer(linear_model(weights, np.zeros(3, np.float32), (1, h, w)))
    x = rng.standard_normal((1, 1, h, w)).astype(np.float32)
    ev = onnxsal.evaluate(ex, x, "gradient_x_input", metrics=["deletion", "sparseness"], target=1,
                          settings={"deletion": {"steps": 6, "score": "logit"}})
    contrib = (weights[1].astype(np.float64) * x.ravel())
    remaining = np.sort(contrib)[::-1]
    want = [remaining[(s * 36) // 6:].sum() for s in range(7)]
    (rec,) = [r for r in ev.records if r["metric"] == "deletion"]
    np.testing.assert_allclose(rec["curve"], want, rtol=1e-4, atol=1e-5)
    assert rec["class"] == 1 and rec["settings"]["steps"] == 6
    assert ev.figure("gradient_x_input", "deletion") == pytest.approx((np.sum(want) * 2 - want[0] - want[-1]) / 12, rel=1e-4)


def test_blur_fill_matches_gaussian(tiny_linear):
    runner = Runner(tiny_linear, "saliency")
    x = np.random.default_rng(3).standard_normal((1, 1, 2, 2)).astype(np.float32)
    # sigma 0 is no blur at all: the fill is x itself, so deletion never changes the score
    curve = faithfulness.curves(runner, x, np.array([0]), np.ones((1, 2, 2)), fill="blur", blur_sigma=0.0, steps=2, score="logit")
    np.testing.assert_allclose(curve[0], curve[0, 0], rtol=1e-6)


# -- complexity, similarity, localisation: hand-computed --------------------------------------------------

def test_sparseness_and_entropy_hand_values():
    assert complexity.sparseness([0, 0, 0, 1]) == pytest.approx(0.75)  # one of n holds all: 1 - 1/n
    assert complexity.sparseness([1, 2, 3, 4]) == pytest.approx(0.25)
    assert complexity.sparseness(np.ones(9)) == pytest.approx(0.0)
    assert complexity.entropy([1, 1, 2]) == pytest.approx(1.5 * np.log(2))
    assert complexity.entropy(np.ones((4, 4))) == pytest.approx(np.log(16))
    assert complexity.entropy([0, 0, 5]) == pytest.approx(0.0)
    # Gini by the mean absolute difference: sum_ij |a_i - a_j| / (2 n^2 mean)
    a = np.abs(np.random.default_rng(4).standard_normal(50))
    gini = np.abs(a[:, None] - a[None, :]).sum() / (2 * len(a) ** 2 * a.mean())
    assert complexity.sparseness(-a) == pytest.approx(gini, rel=1e-9)


def test_spearman_oracles():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal(40), rng.standard_normal(40)
    d = similarity.rankdata(a) - similarity.rankdata(b)
    assert similarity.spearman(a, b) == pytest.approx(1 - 6 * (d * d).sum() / (40 * (40 ** 2 - 1)))
    assert similarity.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1)
    # ties: ranks of [1, 1, 2] are [1.5, 1.5, 3]; of [1, 2, 3] [1, 2, 3]; Pearson of those by hand = sqrt(3)/2
    assert similarity.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(np.sqrt(3) / 2)
    assert similarity.spearman(np.zeros(5), a[:5]) == 0.0


def _ssim_replica(a, b, L=1.0):
    """Wang et al. 2004 eq. 13 window by window: 11x11 Gaussian (sigma 1.5) weights, means, variances, covariance."""
    t = np.arange(11) - 5.0
    g = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * 1.5 ** 2))
    g /= g.sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    values = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            ma, mb = (g * pa).sum(), (g * pb).sum()
            va, vb = (g * (pa - ma) ** 2).sum(), (g * (pb - mb) ** 2).sum()
            cov = (g * (pa - ma) * (pb - mb)).sum()
            values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_against_window_replica():
    rng = np.random.default_rng(6)
    a = rng.random((20, 17))
    b = np.clip(a + 0.3 * rng.standard_normal(a.shape), 0, 1)
    assert similarity.ssim(a, b) == pytest.approx(_ssim_replica(a, b), rel=1e-9)
    assert similarity.ssim(a, a) == pytest.approx(1.0)
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        return
    want = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert similarity.ssim(a, b) == pytest.approx(want, rel=0.05)  # skimage pads the border; we crop it


def test_pointing_games_hand_cases():
    m = np.zeros((10, 10))
    m[2, 3] = 5.0  # maximum at x = 3, y = 2 (pixel centre 3.5, 2.5)
    m[8, 8] = 1.0
    m[0, 0] = -4.0
    assert localisation.pointing_game(m, [(0, 0, 5, 5)], tolerance=0) == 1.0
    assert localisation.pointing_game(m, [(5, 5, 10, 10)], tolerance=0) == 0.0
    assert localisation.pointing_game(m, [(5, 5, 10, 10)], tolerance=3) == 1.0  # 3.5 >= 5 - 3, 2.5 >= 5 - 3
    assert localisation.pointing_game(m, [(6, 6, 10, 10)], tolerance=3) == 0.0
    # energy: positive part only; inside [5, 10)^2 lies 1 of the 6 units
    assert localisation.energy_pointing_game(m, [(5, 5, 10, 10)]) == pytest.approx(1 / 6)
    assert localisation.energy_pointing_game(m, [(0, 0, 5, 5), (5, 5, 10, 10)]) == pytest.approx(1.0)


def test_boxes_follow_the_crop():
    """coffee.png is 600x400; mobilenet_v2 resizes the short side to 256 and crops 224: the crop covers photo
    pixels x 125..475, y 25..375 (350 = 224 / 0.64), and input = (photo - (125, 25)) * 0.64."""
    from onnxsal import zoo
    from onnxsal.metrics.files import input_boxes
    from onnxsal.preprocess import Preprocessing

    prep = Preprocessing.from_dict(zoo.entry("mobilenet_v2")["preprocessing"])
    (obj,) = input_boxes([{"box": [172, 18, 412, 305], "imagenet": [967]}], (600, 400), prep)
    np.testing.assert_allclose(obj["box"], [(172 - 125) * 0.64, (18 - 25) * 0.64, (412 - 125) * 0.64, (305 - 25) * 0.64], atol=0.7)


# -- infidelity and sensitivity-max against Captum --------------------------------------------------------

@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory):
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.4).astype(np.float32)
    fc = rng.standard_normal((5, 4)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                              [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()),
                               helper.make_tensor("fc", TensorProto.FLOAT, fc.shape, fc.ravel())])
    return onnxsal.Explainer(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), batch_size=7)


@pytest.mark.parametrize("method", ["gradient_x_input", "grad_cam"])
@pytest.mark.parametrize("normalize", [True, False])
def test_infidelity_matches_captum(small_cnn, method, normalize):
    torch = pytest.importorskip("torch")
    from captum.metrics import infidelity as captum_infidelity

    ex = small_cnn
    x = np.random.default_rng(8).standard_normal((2, 3, 12, 12)).astype(np.float32)
    classes = np.array([1, 3])
    runner = Runner(ex, method)
    res = runner.explain(x, classes)
    attributions = pixel_attributions(res, x, "NCHW")
    perts = robustness.gaussian_perturbations(x, 6, 0.2, seed=0)
    ours = robustness.infidelity(runner, x, classes, attributions, perts, normalize=normalize)
    # Captum repeats each input S times (sample-major: x0 s0, x0 s1, ...): hand it our draws in that order
    noise = torch.from_numpy(perts.transpose(1, 0, 2, 3, 4).reshape(-1, 3, 12, 12).astype(np.float64))

    def perturb(inputs):
        return noise, inputs - noise

    def forward(t):
        return torch.from_numpy(ex.predict(t.numpy().astype(np.float32)).astype(np.float64))

    want = captum_infidelity(forward, perturb, torch.from_numpy(x.astype(np.float64)),
                             torch.from_numpy(attributions), target=torch.from_numpy(classes), n_perturb_samples=6,
                             normalize=normalize).numpy()
    np.testing.assert_allclose(ours, want, rtol=1e-4)


def test_sensitivity_max_matches_captum(small_cnn):
    torch = pytest.importorskip("torch")
    from captum.metrics import sensitivity_max as captum_sensitivity

    ex = small_cnn
    x = np.random.default_rng(9).standard_normal((2, 3, 12, 12)).astype(np.float32)
    classes = np.array([0, 4])
    runner = Runner(ex, "saliency")
    maps = runner.explain(x, classes).maps
    perts = robustness.uniform_perturbations(x, 4, 0.05, seed=1)
    ours = robustness.sensitivity_max(runner, x, classes, maps, perts)
    noise = torch.from_numpy(perts.transpose(1, 0, 2, 3, 4).reshape(-1, 3, 12, 12))

    def perturb(inputs, radius):
        t = inputs[0] if isinstance(inputs, tuple) else inputs
        assert t.shape == noise.shape
        return t + noise

    def explanation(inputs, target):
        t = inputs[0] if isinstance(inputs, tuple) else inputs
        return (torch.from_numpy(ex.explain(t.numpy(), "saliency", target=[int(c) for c in target]).maps),)  # Captum wants a tuple

    want = captum_sensitivity(explanation, torch.from_numpy(x), perturb, n_perturb_samples=4,
                              target=torch.from_numpy(classes)).numpy()
    np.testing.assert_allclose(ours, want, rtol=1e-4)
    assert (ours > 0).all()


# -- randomisation: the rewritten ONNX model against torch with the same layers re-initialised -------------

def _torch_net(torch):
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1),
                        nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return net.eval()


def test_randomised_model_matches_reinitialised_torch():
    torch = pytest.importorskip("torch")
    net = _torch_net(torch)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), f, dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}}, do_constant_folding=False)
    proto = onnx.load_from_string(f.getvalue())
    assert "BatchNormalization" in {n.op_type for n in proto.graph.node}  # the canonicaliser folds it later
    layers = randomisation.parameter_layers(proto)
    # torch's Conv/Linear modules in forward order: 0, 3, 8
    assert [l["initializers"] for l in layers] == [["0.weight", "0.bias"], ["3.weight", "3.bias"], ["8.weight", "8.bias"]]
    ex = onnxsal.Explainer(proto)
    x = np.random.default_rng(10).standard_normal((3, 3, 16, 16)).astype(np.float32)
    for indices in ([2], [1, 2], [1], [0, 1, 2]):  # cascading from the output down, and one layer alone
        model, written = randomisation.randomised(proto, indices, seed=3)
        assert set(written) == {name for j in indices for name in layers[j]["initializers"]}
        twin = randomisation.twin(ex, model)
        reference = _torch_net(torch)
        state = reference.state_dict()
        with torch.no_grad():
            for name, values in written.items():
                assert values.shape == tuple(state[name].shape)
                assert not np.allclose(values, state[name].numpy())
                state[name].copy_(torch.from_numpy(values))
            want = reference(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(twin.predict(x), want, rtol=1e-4, atol=1e-5)
        # the gradient (saliency) of the twin is the re-initialised torch model's
        xt = torch.from_numpy(x).requires_grad_(True)
        reference(xt)[:, 2].sum().backward()
        np.testing.assert_allclose(twin.explain(x, "saliency", target=2).maps, xt.grad.abs().amax(1).numpy(),
                                   rtol=1e-4, atol=1e-6)
    # the same layer gets the same values in cascading and independent randomisation
    _, alone = randomisation.randomised(proto, [1], seed=3)
    _, cascade = randomisation.randomised(proto, [1, 2], seed=3)
    np.testing.assert_array_equal(alone["3.weight"], cascade["3.weight"])


def test_randomisation_linear_closed_form():
    """Saliency of a linear model is |w_c| (one channel): randomising its only layer gives |w'_c|, so the similarity
    figures are those of the two weight vectors, computed here from the written values."""
    rng = np.random.default_rng(11)
    weights = rng.standard_normal((3, 25)).astype(np.float32)
    proto = linear_model(weights, np.zeros(3, np.float32), (1, 5, 5))
    ex = onnxsal.Explainer(proto)
    x = rng.standard_normal((1, 1, 5, 5)).astype(np.float32)
    ev = onnxsal.evaluate(ex, x, "saliency", metrics=["randomisation"], target=0, model=proto,
                          settings={"randomisation": {"layers": "all", "seed": 4}})
    _, written = randomisation.randomised(proto, [0], seed=4)
    new = np.abs(written["w"][0]).reshape(5, 5)
    old = np.abs(weights[0]).reshape(5, 5)
    d = similarity.rankdata(old) - similarity.rankdata(new)
    (rec,) = ev.records
    for mode in ("cascading", "independent"):
        (row,) = rec["layers"][mode]
        assert row["spearman_abs"] == pytest.approx(1 - 6 * (d * d).sum() / (25 * 624), abs=1e-6)
    assert rec["figures"]["passes"] == (abs(rec["figures"]["spearman_abs"]) < 0.5)


# -- input invariance: the shifted twin ----------------------------------------------------------------------

def test_input_invariance_twin_and_closed_form():
    """The shifted twin computes the same scores at x + m as the model at x (zero padding included); saliency is
    unchanged, and gradient x input changes by exactly sum_c m_c * grad_c (the gradient is the same)."""
    from onnxsal.metrics import invariance

    rng = np.random.default_rng(12)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.4).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    fc = rng.standard_normal((5, 4)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                              [numpy_helper_from(w, "w"), numpy_helper_from(b, "b"), numpy_helper_from(fc, "fc")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ex = onnxsal.Explainer(proto)
    shift = [1.0, -0.5, 2.0]
    twin = randomisation.twin(ex, invariance.shifted_twin(proto, "x", (None, 3, 10, 10), shift))
    x = rng.standard_normal((2, 3, 10, 10)).astype(np.float32)
    m = np.array(shift, np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(twin.predict(x + m), ex.predict(x), rtol=1e-5, atol=1e-5)
    ev = onnxsal.evaluate(ex, x, ["saliency", "gradient_x_input"], metrics=["input_invariance"], target=[1, 3],
                          model=proto, settings={"input_invariance": {"shift": shift}})
    by = {(r["method"], r["image"]): r["figures"] for r in ev.records}
    grad = ex.gradients(x, np.eye(5, dtype=np.float32)[[1, 3]]).input_grad.astype(np.float64)
    original = (x * grad).sum(axis=1)
    shifted = ((x + m) * grad).sum(axis=1)
    for i in range(2):
        assert by[("saliency", i)]["change"] < 1e-5
        assert by[("saliency", i)]["output_gap"] < 1e-4
        want = np.linalg.norm(shifted[i] - original[i]) / np.linalg.norm(original[i])
        assert by[("gradient_x_input", i)]["change"] == pytest.approx(want, rel=1e-3)
        assert want > 0.1


def numpy_helper_from(array, name):
    from onnx import numpy_helper

    return numpy_helper.from_array(array, name)


def test_input_invariance_refuses_models_without_a_first_conv():
    ex = onnxsal.Explainer(linear_model(np.ones((2, 4), np.float32), np.zeros(2, np.float32), (1, 2, 2)))
    proto = linear_model(np.ones((2, 4), np.float32), np.zeros(2, np.float32), (1, 2, 2))
    with pytest.raises(onnxsal.OnnxsalError, match="feeds one Conv"):
        onnxsal.evaluate(ex, np.ones((1, 1, 2, 2), np.float32), "saliency", metrics=["input_invariance"], model=proto)
