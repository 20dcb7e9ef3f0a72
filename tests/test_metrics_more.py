"""Issue 14, second round: ROAD (noisy linear imputation) against scipy's sparse solver on the system written
from Rong et al. 2022's equations, HOG against scikit-image (or a loop replica), robustness (PGD keeping the
class, Ghorbani et al.'s top-k intersection) on linear models in closed form, localisation from masks and CSV
boxes, the HTML table."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnxsal
from onnxsal.metrics import road
from onnxsal.metrics.runner import Runner
from test_metrics import linear_model  # x -> Flatten -> Gemm: closed-form deletion and attacks
from test_metrics_cli import work  # noqa: F401  (the fixture: a tiny Conv model with a sidecar and two photos)


# -- ROAD ---------------------------------------------------------------------------------------------------

def spsolve_imputation(x: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Rong et al. 2022, sec. 4.2, built pixel by pixel as a sparse matrix and solved by scipy.sparse.linalg.spsolve:
    for each removed p, (sum of in-image neighbour weights) v_p - sum_{removed n} w_n v_n = sum_{kept n} w_n x_n,
    w = 1/6 for the 4 direct neighbours and 1/12 for the 4 diagonal ones."""
    sparse = pytest.importorskip("scipy.sparse")
    linalg = pytest.importorskip("scipy.sparse.linalg")
    c, h, w = x.shape
    index = {p: i for i, p in enumerate(zip(*np.nonzero(removed)))}
    a = sparse.lil_matrix((len(index), len(index)))
    b = np.zeros((len(index), c))
    for (y, xx), i in index.items():
        total = 0.0
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if (dy, dx) == (0, 0):
                    continue
                weight = 1 / 6 if dy == 0 or dx == 0 else 1 / 12
                ny, nx = y + dy, xx + dx
                if not (0 <= ny < h and 0 <= nx < w):
                    continue
                total += weight
                if removed[ny, nx]:
                    a[i, index[(ny, nx)]] -= weight
                else:
                    b[i] += weight * x[:, ny, nx]
        a[i, i] += total
    v = linalg.spsolve(sparse.csc_matrix(a), b).reshape(len(index), c)
    out = x.astype(np.float64).copy()
    for (y, xx), i in index.items():
        out[:, y, xx] = v[i]
    return out


@pytest.mark.parametrize("pattern", ["random", "block", "border", "single"])
def test_road_imputation_matches_spsolve(pattern):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 19, 23))
    removed = np.zeros((19, 23), bool)
    if pattern == "random":
        removed = rng.random((19, 23)) < 0.7
    elif pattern == "block":
        removed[4:15, 3:20] = True
    elif pattern == "border":
        removed[:, :5] = True
        removed[0, :] = True
    else:
        removed[9, 11] = True
    got = road.impute(x, removed, tolerance=1e-10)
    want = spsolve_imputation(x, removed)
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-8)
    assert (got[:, ~removed] == x[:, ~removed]).all()


@pytest.mark.parametrize("pattern", ["random", "block", "border"])
def test_road_numba_kernel_and_numpy_twin_match_spsolve(pattern):
    """kernels/imputation.py: the Numba CG (called directly, whatever the size) and its numpy twin both solve
    the paper's system; a removed region over 4096 pixels takes the Numba path inside impute()."""
    from onnxsal.kernels import imputation

    rng = np.random.default_rng(2)
    h, w = 70, 90
    x = rng.standard_normal((2, h, w))
    removed = np.zeros((h, w), bool)
    if pattern == "random":
        removed = rng.random((h, w)) < 0.8
    elif pattern == "block":
        removed[5:68, 4:85] = True
    else:
        removed[:, 30:] = True
    assert removed.sum() > 4096
    want = spsolve_imputation(x, removed)
    keep = ~removed
    diag = road.neighbour_weight_sum(h, w)
    b = road._neighbour_sum(x * keep) * removed
    for solver in (imputation.neighbour_cg_numba, imputation.neighbour_cg_numpy):
        v = solver(np.zeros_like(x), b, removed, diag, 1e-10, 10000)
        np.testing.assert_allclose(v[:, removed], want[:, removed], rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(road.impute(x, removed, tolerance=1e-10), want, rtol=1e-7, atol=1e-8)


def test_road_single_pixel_is_the_weighted_neighbour_mean():
    """One removed pixel in the interior: 1/6 of each direct plus 1/12 of each diagonal neighbour (hand form)."""
    x = np.arange(25, dtype=np.float64).reshape(1, 5, 5) ** 2
    removed = np.zeros((5, 5), bool)
    removed[2, 2] = True
    direct = x[0, 1, 2] + x[0, 3, 2] + x[0, 2, 1] + x[0, 2, 3]
    diagonal = x[0, 1, 1] + x[0, 1, 3] + x[0, 3, 1] + x[0, 3, 3]
    assert road.impute(x, removed)[0, 2, 2] == pytest.approx(direct / 6 + diagonal / 12, rel=1e-9)
    # a corner pixel has 3 neighbours (two direct, one diagonal): the mean weighted by 1/6, 1/6, 1/12 over 5/12
    removed = np.zeros((5, 5), bool)
    removed[0, 0] = True
    want = (x[0, 0, 1] / 6 + x[0, 1, 0] / 6 + x[0, 1, 1] / 12) / (5 / 12)
    assert road.impute(x, removed)[0, 0, 0] == pytest.approx(want, rel=1e-9)


def test_road_noise_only_on_removed_pixels():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 9, 9))
    removed = rng.random((9, 9)) < 0.4
    clean = road.impute(x, removed, tolerance=1e-12)
    noisy = road.impute(x, removed, noise=0.5, rng=np.random.default_rng(7), tolerance=1e-12)
    draws = np.random.default_rng(7).normal(0.0, 0.5, size=(2, int(removed.sum())))
    np.testing.assert_allclose(noisy[:, removed], clean[:, removed] + draws, rtol=1e-9, atol=1e-9)
    assert (noisy[:, ~removed] == x[:, ~removed]).all()
    with pytest.raises(onnxsal.errors.MethodError, match="at least one kept pixel"):
        road.impute(x, np.ones((9, 9), bool))


def test_road_curves_closed_form_linear():
    """ROAD of a linear model with noise 0: the logit of the spsolve-imputed input at each percentage."""
    rng = np.random.default_rng(5)
    c, h, w, k = 2, 7, 6, 3
    weights = rng.standard_normal((k, c * h * w)).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32)
    ex = onnxsal.Explainer(linear_model(weights, bias, (c, h, w)), batch_size=2)
    x = rng.standard_normal((2, c, h, w)).astype(np.float32)
    maps = rng.standard_normal((2, h, w))
    classes = np.array([1, 2])
    qs = [0.0, 0.25, 0.5, 0.9]
    got = road.curves(Runner(ex, "saliency", batch_size=3), x, classes, maps, percentages=qs, noise=0.0, score="logit")
    for i in range(2):
        for order, sign in (("morf", -1), ("lerf", 1)):
            ranked = np.argsort(sign * maps[i].ravel(), kind="stable")
            for j, q in enumerate(qs):
                removed = np.zeros(h * w, bool)
                removed[ranked[: int(q * h * w)]] = True
                image = spsolve_imputation(x[i].astype(np.float64), removed.reshape(h, w)) if removed.any() else x[i]
                want = weights[classes[i]].astype(np.float64) @ image.ravel() + bias[classes[i]]
                assert got[order][i, j] == pytest.approx(want, rel=1e-4, abs=1e-5), (order, q)
    # through onnxsal.evaluate: the record's figures are the curves' means and their difference
    ev = onnxsal.evaluate(ex, x[:1], "saliency", metrics=["road"], target=1,
                          settings={"road": {"percentages": qs, "noise": 0.0, "score": "logit"}})
    (rec,) = ev.records
    again = road.curves(Runner(ex, "saliency"), x[:1], np.array([1]),
                        ex.explain(x[:1], "saliency", target=1).maps.astype(np.float64), percentages=qs, noise=0.0,
                        score="logit")
    assert rec["figures"]["morf"] == pytest.approx(again["morf"].mean(), rel=1e-6)
    assert rec["figures"]["gap"] == pytest.approx(again["lerf"].mean() - again["morf"].mean(), rel=1e-6, abs=1e-9)


def test_road_setting_refusals():
    ex = onnxsal.Explainer(linear_model(np.ones((2, 4), np.float32), np.zeros(2, np.float32), (1, 2, 2)))
    x = np.ones((1, 1, 2, 2), np.float32)
    with pytest.raises(onnxsal.errors.MethodError, match="percentages must be a list of fractions"):
        onnxsal.evaluate(ex, x, "saliency", metrics=["road"], settings={"road": {"percentages": [0.5, 1.0]}})


# -- localisation: masks and CSV boxes -----------------------------------------------------------------------

def test_mask_pointing_games_hand_cases():
    from onnxsal.metrics import localisation

    m = np.zeros((10, 10))
    m[2, 3] = 5.0
    m[8, 8] = 1.0
    m[0, 0] = -4.0
    mask = np.zeros((10, 10), bool)
    mask[6:9, 6:9] = True  # nearest mask pixel to the maximum (2, 3): (6, 6), distance 5
    assert localisation.mask_pointing_game(m, mask, tolerance=0) == 0.0
    assert localisation.mask_pointing_game(m, mask, tolerance=4.99) == 0.0
    assert localisation.mask_pointing_game(m, mask, tolerance=5) == 1.0
    mask[2, 3] = True
    assert localisation.mask_pointing_game(m, mask, tolerance=0) == 1.0
    assert localisation.mask_energy_pointing_game(m, mask) == pytest.approx(1.0)  # 5 + 1 of 6 inside
    mask[2, 3] = False
    assert localisation.mask_energy_pointing_game(m, mask) == pytest.approx(1 / 6)
    assert localisation.mask_pointing_game(m, np.zeros((10, 10), bool), tolerance=100) == 0.0


def test_box_mask_equals_box_metrics():
    """A mask drawn from a box gives the same energy figure as the box itself."""
    from onnxsal.metrics import localisation

    rng = np.random.default_rng(8)
    m = rng.standard_normal((12, 16))
    box = (3, 2, 11, 9)
    mask = localisation.box_mask([box], m.shape)
    assert mask.sum() == 8 * 7
    assert localisation.mask_energy_pointing_game(m, mask) == pytest.approx(localisation.energy_pointing_game(m, [box]))


def test_read_boxes_csv(tmp_path):
    from onnxsal.metrics.localisation import read_boxes

    path = tmp_path / "boxes.csv"
    path.write_text("image,label,x0,y0,x1,y1,imagenet\nchelsea,cat,0,0,395,300,281 282;285\n"
                    "coffee,cup,172,18,412,305,967\ncoffee,saucer,100,200,500,390,\n")
    got = read_boxes(path)
    assert got == {"chelsea": [{"label": "cat", "box": [0.0, 0.0, 395.0, 300.0], "imagenet": [281, 282, 285]}],
                   "coffee": [{"label": "cup", "box": [172.0, 18.0, 412.0, 305.0], "imagenet": [967]},
                              {"label": "saucer", "box": [100.0, 200.0, 500.0, 390.0], "imagenet": []}]}
    # Excel's "CSV UTF-8" starts with a byte-order mark: the same boxes
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert read_boxes(path) == got
    # the JSON shipped with the photos reads to the same boxes as its CSV twin
    from onnxsal import zoo

    shipped = read_boxes(zoo.example_image("chelsea").parent / "boxes.json")
    assert shipped["chelsea"][0]["box"] == [0.0, 0.0, 395.0, 300.0]


@pytest.mark.parametrize("text, pattern", [
    ("image,x0,y0,x1\na,0,0,1\n", "lacks y1"),
    ("image,x0,y0,x1,y1\na,5,0,1,1\n", "line 2: box"),
    ("image,x0,y0,x1,y1\na,0,0,one,1\n", "line 2"),
    ("image,x0,y0,x1,y1\n", "no rows"),
])
def test_read_boxes_csv_refusals(tmp_path, text, pattern):
    from onnxsal.errors import InputError
    from onnxsal.metrics.localisation import read_boxes

    path = tmp_path / "b.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=pattern):
        read_boxes(path)


def test_mask_follows_the_crop():
    """A mask drawn as the coffee box, through MobileNetV2's resize 256 / crop 224, covers the mapped box."""
    from PIL import Image

    from onnxsal import zoo
    from onnxsal.metrics import localisation
    from onnxsal.preprocess import Preprocessing

    prep = Preprocessing.from_dict(zoo.entry("mobilenet_v2")["preprocessing"])
    photo = np.zeros((400, 600), np.uint8)
    photo[18:305, 172:412] = 1  # nonzero = object (not only 255)
    mask = localisation.input_mask(Image.fromarray(photo), prep)
    # crop x 125..475, y 25..375, scale 0.64: box -> x 30.1..184.3, y -4.5..179.2
    want = localisation.box_mask([((172 - 125) * 0.64, (18 - 25) * 0.64, (412 - 125) * 0.64, (305 - 25) * 0.64)], (224, 224))
    assert mask.shape == (224, 224)
    assert (mask != want).sum() <= 2 * (224 + 224)  # at most a pixel's border differs (resampling)
    assert mask[100, 100] and not mask[100, 10] and not mask[200, 100]


def test_evaluate_with_masks_and_csv(work):
    from PIL import Image
    from test_metrics_cli import cli

    (work / "masks").mkdir()
    a = np.zeros((30, 40), np.uint8)
    a[:, 5:20] = 255  # the left half of a's crop (x 5..35 of the photo -> input x 0..12)
    Image.fromarray(a).save(work / "masks" / "a_mask.png")
    Image.fromarray(np.full((30, 30), 255, np.uint8)).save(work / "masks" / "b.png")
    result = cli("evaluate", "a.png", "b.png", "--model", "tiny.onnx", "--method", "saliency", "--metrics", "localisation",
                 "--masks", "masks", "--out", "ev", "-q")
    assert result.exit_code == 0, result.output
    import json

    records = json.loads((work / "ev" / "evaluation.json").read_text())["records"]
    by = {(r["image"], r["metric"]): r for r in records}
    assert by[("a", "pointing_game")]["mask_pixels"] == 12 * 24
    assert by[("b", "energy_pointing_game")]["figures"]["proportion"] == pytest.approx(1.0)
    # the energy figure of a equals the positive mass of its saliency map in the left 12 columns
    import onnxsal as o
    from onnxsal.preprocess import Preprocessing, load_image

    ex = o.Explainer(str(work / "tiny.onnx"), preprocessing=Preprocessing.from_file(work / "tiny.preprocess.json"))
    x = ex.preprocessing.batch([load_image(work / "a.png")])
    m = np.maximum(ex.explain(x, "saliency", target=by[("a", "pointing_game")]["class"]).maps[0].astype(np.float64), 0)
    assert by[("a", "energy_pointing_game")]["figures"]["proportion"] == pytest.approx(m[:, :12].sum() / m.sum(), rel=1e-5)
    # CSV boxes
    (work / "boxes.csv").write_text("image,x0,y0,x1,y1\na,5,0,17,30\nb,0,0,15,15\n")
    result = cli("evaluate", "a.png", "b.png", "--model", "tiny.onnx", "--method", "saliency", "--metrics",
                 "energy_pointing_game", "--boxes", "boxes.csv", "--out", "ev2", "-q")
    assert result.exit_code == 0, result.output
    assert "warning:" not in result.output
    # a box the centre crop cuts away (photo x 0..4 of a; its crop starts at x 5) scores 0: said, not silent
    (work / "boxes_out.csv").write_text("image,label,x0,y0,x1,y1\na,cat,0,0,4,30\nb,cup,0,0,15,15\n")
    result = cli("evaluate", "a.png", "b.png", "--model", "tiny.onnx", "--method", "saliency", "--metrics",
                 "energy_pointing_game", "--boxes", "boxes_out.csv", "--out", "ev3", "-q")
    assert result.exit_code == 0, result.output
    assert ("warning: a.png: the box of cat lies outside the region the model sees (after resize and crop); "
            "the pointing games score it 0") in result.output
    assert "b.png: the box" not in result.output
    # a mask whose object the crop cuts away: the same
    (work / "masks2").mkdir()
    cut = np.zeros((30, 40), np.uint8)
    cut[:, 0:4] = 255
    Image.fromarray(cut).save(work / "masks2" / "a.png")
    Image.fromarray(np.full((30, 30), 255, np.uint8)).save(work / "masks2" / "b.png")
    result = cli("evaluate", "a.png", "b.png", "--model", "tiny.onnx", "--method", "saliency", "--metrics", "localisation",
                 "--masks", "masks2", "--out", "ev4", "-q")
    assert result.exit_code == 0, result.output
    assert "warning: a.png: its mask a.png is empty in the region the model sees" in result.output
    assert "b.png: its mask" not in result.output
    records = json.loads((work / "ev2" / "evaluation.json").read_text())["records"]
    (ra,) = [r for r in records if r["image"] == "a"]
    np.testing.assert_allclose(ra["boxes"], [[0.0, 0.0, 9.6, 24.0]], rtol=1e-9)  # (17 - 5) * 24 / 30


@pytest.mark.parametrize("args, pattern", [
    (["--masks", "nomasks"], "not a directory"),
    (["--masks", "emptymasks"], "has no mask for a.png"),
    (["--masks", "smallmasks"], "mask a.png is 5x5, the photo a.png is 40x30"),
    (["--masks", "emptymasks", "--boxes", "boxes.json"], "not both"),
    (["--boxes", "bad.csv"], "not a boxes CSV"),
])
def test_evaluate_mask_refusals(work, args, pattern):
    from PIL import Image
    from test_metrics_cli import cli, refused

    (work / "emptymasks").mkdir()
    (work / "smallmasks").mkdir()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(work / "smallmasks" / "a.png")
    (work / "bad.csv").write_text("image,x0\na,1\n")
    refused(cli("evaluate", "a.png", "--model", "tiny.onnx", "--metrics", "localisation", "--out", "ev", "-q", *args),
            pattern)
    assert not (work / "ev" / "evaluation.json").exists()


# -- robustness: PGD keeping the class, random sign perturbation, top-k intersection -------------------------

def test_topk_intersection_hand_cases():
    from onnxsal.metrics.robustness import topk_intersection

    a = np.array([[9, 8, 7, 6], [5, 4, 3, 2]], float)
    b = np.array([[9, 1, 7, 0], [8, 4, 3, 2]], float)
    # k = 2 (0.25 of 8): a's top {0, 1}, b's top {0, 4}: 1 of 2
    assert topk_intersection(a, b, 0.25) == pytest.approx(0.5)
    assert topk_intersection(a, b, 0.2) == pytest.approx(0.5)  # k = round(1.6) = 2, not floor
    # k = 4: a {0,1,2,3}, b {0,4,2,5}: {0, 2}
    assert topk_intersection(a, b, 0.5) == pytest.approx(0.5)
    assert topk_intersection(a, a, 0.1) == 1.0  # k = max(1, round(0.8)) = 1
    assert topk_intersection(a, -a, 0.25) == 0.0


def _pgd_oracle(weights, bias, x, cls, eps, steps):
    """Closed form for a linear model: the gradient of class cls is weights[cls] everywhere, so step t proposes
    clip(x_{t-1} - a sign(w), x - eps, x + eps) with a = 2.5 eps / steps, then a / 2, a / 4, ... a / 256 while
    the proposal changes the top class; when none keeps it, stop. Returns (x_adv, steps taken, sizes taken)."""
    a = 2.5 * eps / steps
    w = weights[cls].reshape(x.shape)
    top = np.argmax(weights @ x.ravel() + bias)
    cur, sizes = x.astype(np.float64), []
    for _ in range(steps):
        for j in range(9):
            prop = np.clip(cur - a / 2 ** j * np.sign(w), x - eps, x + eps)
            if np.argmax(weights @ prop.ravel() + bias) == top:
                cur = prop
                sizes.append(a / 2 ** j)
                break
        else:
            break
    return cur, len(sizes), sizes


def _ranked_topk(a, b, fraction):
    k = max(1, int(round(fraction * a.size)))
    ka = set(np.argsort(a.ravel())[::-1][:k].tolist())
    kb = set(np.argsort(b.ravel())[::-1][:k].tolist())
    return len(ka & kb) / k


def test_adversarial_closed_form_linear():
    from onnxsal.metrics import robustness

    rng = np.random.default_rng(11)
    c, h, w, k = 2, 5, 5, 3
    weights = rng.standard_normal((k, c * h * w))
    x = rng.standard_normal((2, c, h, w)).astype(np.float32)
    x[0] *= 20  # margins far beyond what eps can move
    logits = x.reshape(2, -1).astype(np.float64) @ weights.T
    classes = logits.argmax(axis=1)
    # image 0 keeps its class all the way; image 1's margin to its runner-up is 1.3 steps' worth of the margin's
    # fall (before any clipping: a step moves every coordinate by a = 2.5 eps / steps < eps), so the attack stops early
    eps, steps = 0.2, 8
    a = 2.5 * eps / steps
    second = np.argsort(logits[1])[-2]
    fall = a * (np.abs(weights[classes[1]]).sum() - weights[second] @ np.sign(weights[classes[1]]))
    bias = np.zeros(k)
    bias[second] = logits[1, classes[1]] - logits[1, second] - 1.3 * fall
    ex = onnxsal.Explainer(linear_model(weights.astype(np.float32), bias.astype(np.float32), (c, h, w)), batch_size=2)
    x_adv, taken = robustness.pgd_keep_class(Runner(ex, "gradient_x_input"), x, classes, eps, steps)
    wants = [_pgd_oracle(weights, bias, x[i], classes[i], eps, steps) for i in range(2)]
    for i in range(2):
        np.testing.assert_allclose(x_adv[i], wants[i][0], rtol=1e-5, atol=1e-6)
        assert taken[i] == wants[i][1]
    # image 0 takes full steps; image 1 needs halved steps after its first (both branches exercised)
    assert wants[0][2] == [2.5 * eps / steps] * steps
    assert wants[1][2][0] == 2.5 * eps / steps and min(wants[1][2]) < 2.5 * eps / steps / 2
    # through onnxsal.evaluate: gradient x input maps at x and at the oracle's x_adv, compared by the test
    ev = onnxsal.evaluate(ex, x, "gradient_x_input", metrics=["adversarial"],
                          settings={"adversarial": {"epsilon": eps, "steps": steps, "topk": 0.2}})
    rhos = []
    for i, rec in enumerate(ev.records):
        before = ex.explain(x[i:i + 1], "gradient_x_input", target=int(classes[i])).maps[0]
        after = ex.explain(wants[i][0].astype(np.float32)[None], "gradient_x_input", target=int(classes[i])).maps[0]
        assert rec["figures"]["topk_intersection"] == pytest.approx(_ranked_topk(before, after, 0.2))
        stats = pytest.importorskip("scipy.stats")
        rho = stats.spearmanr(before.ravel(), after.ravel()).statistic
        assert rec["figures"]["spearman"] == pytest.approx(rho, rel=1e-6)
        rhos.append(rho)
        assert rec["figures"]["linf"] == pytest.approx(np.abs(wants[i][0] - x[i]).max(), rel=1e-5)
        drop = weights[classes[i]] @ (x[i].ravel() - wants[i][0].ravel())
        assert rec["figures"]["logit_drop"] == pytest.approx(drop, rel=1e-4)
        assert rec["figures"]["steps_taken"] == wants[i][1]
    assert min(rhos) < 0.999  # some map did change


def test_random_perturbation_closed_form_linear():
    from onnxsal.metrics import robustness

    rng = np.random.default_rng(12)
    c, h, w, k = 1, 6, 6, 3
    weights = rng.standard_normal((k, c * h * w))
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    logits = weights @ x.ravel()
    order = np.argsort(logits)
    bias = np.zeros(k)
    bias[order[-2]] = logits[order[-1]] - logits[order[-2]] - 0.1  # a small margin: some draws change the class
    ex = onnxsal.Explainer(linear_model(weights.astype(np.float32), bias.astype(np.float32), (c, h, w)))
    cls = int(np.argmax(weights @ x.ravel() + bias))
    perts = robustness.random_sign_perturbations(x, 8, 0.5, seed=3)
    assert set(np.unique(perts).tolist()) == {-0.5, 0.5}
    (got,) = robustness.random_perturbation(Runner(ex, "gradient_x_input"), x, np.array([cls]),
                                            ex.explain(x, "gradient_x_input", target=cls).maps.astype(np.float64),
                                            perts, topk=0.25)
    before = ex.explain(x, "gradient_x_input", target=cls).maps[0]
    kept, inter = [], []
    for d in perts:
        moved = x + d
        kept.append(np.argmax(weights @ moved.ravel().astype(np.float64) + bias) == cls)
        inter.append(_ranked_topk(before, ex.explain(moved, "gradient_x_input", target=cls).maps[0], 0.25))
    assert 0 < np.mean(kept) < 1
    assert got["class_kept"] == pytest.approx(np.mean(kept))
    assert got["topk_intersection"] == pytest.approx(np.mean(inter))


def test_perturbation_metrics_refuse_dense_outputs():
    from onnxsal.errors import MethodError
    from onnxsal.metrics import robustness

    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])]
    w = np.ones((2, 1, 3, 3), np.float32)
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 6, 6])],
                              [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())])
    ex = onnxsal.Explainer(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    with pytest.raises(MethodError, match="classifier's"):
        robustness._top_classes(Runner(ex, "saliency"), np.zeros((1, 1, 6, 6), np.float32))


# -- HOG similarity (Adebayo et al.'s randomisation figure) against scikit-image ------------------------------

@pytest.mark.parametrize("shape, cell", [((64, 64), 16), ((50, 37), 8), ((24, 24), 8), ((9, 12), 3)])
def test_hog_matches_scikit_image(shape, cell):
    feature = pytest.importorskip("skimage.feature")
    from onnxsal.metrics import similarity

    rng = np.random.default_rng(sum(shape))
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    images = [rng.random(shape), np.exp(-((yy - shape[0] / 3) ** 2 + (xx - shape[1] / 2) ** 2) / 40.0),
              (xx > shape[1] / 2).astype(float),  # noise, a blob, an edge (orientations on bin borders: 0 and 90)
              1e-5 * rng.random(shape)]  # faint: the blocks' eps (1e-5) matters, so the cell average must be right
    for img in images:
        want = feature.hog(img, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(3, 3), block_norm="L2-Hys")
        got = similarity.hog(img, cell=cell)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)  # scikit-image sums a cell in float32


def test_hog_similarity_is_pearson_of_scikit_image_hogs():
    feature = pytest.importorskip("skimage.feature")
    from onnxsal.metrics import similarity

    rng = np.random.default_rng(3)
    a = rng.standard_normal((224, 224))
    b = a + rng.standard_normal((224, 224))
    hogs = [feature.hog(similarity.scale01(np.abs(m)), pixels_per_cell=(16, 16), cells_per_block=(3, 3)) for m in (a, b)]
    assert similarity.hog_similarity(a, b) == pytest.approx(np.corrcoef(*hogs)[0, 1], rel=1e-6)
    assert similarity.hog_similarity(a, a) == pytest.approx(1.0)
    assert similarity.hog_cell((24, 24)) == 8 and similarity.hog_cell((300, 300)) == 16
    assert np.isnan(similarity.hog_similarity(np.ones((2, 5)), np.ones((2, 5))))
    assert similarity.similarities(a, b)["hog"] == similarity.hog_similarity(a, b)


# -- the HTML report ---------------------------------------------------------------------------------------

def test_html_table_matches_the_json(work):
    import json
    from html.parser import HTMLParser

    from test_metrics_cli import cli

    result = cli("evaluate", "a.png", "b.png", "--model", "tiny.onnx", "--method", "saliency,grad_cam", "--metrics",
                 "deletion,road,sparseness", "--set", "deletion.steps=4", "--set", "road.percentages=[0.25,0.5]",
                 "--out", "ev", "-q")
    assert result.exit_code == 0, result.output

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.images, self._cell = [], [], None

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                self.rows.append([])
            elif tag in ("td", "th"):
                self._cell = ""
            elif tag == "img":
                self.images.append(dict(attrs)["src"])

        def handle_data(self, data):
            if self._cell is not None:
                self._cell += data

        def handle_endtag(self, tag):
            if tag in ("td", "th"):
                self.rows[-1].append(self._cell)
                self._cell = None

    page = Cells()
    page.feed((work / "ev" / "evaluation.html").read_text())
    head, *rows = page.rows
    assert head == ["method", "deletion auc ↓", "road gap ↑", "sparseness gini ↑"]
    records = json.loads((work / "ev" / "evaluation.json").read_text())["records"]
    for cells in rows:
        for metric, key, cell in zip(("deletion", "road", "sparseness"), ("auc", "gap", "gini"), cells[1:]):
            values = [r["figures"][key] for r in records if r["method"] == cells[0] and r["metric"] == metric]
            assert len(values) == 2 and float(cell) == pytest.approx(np.mean(values), abs=5e-4)
    assert [r[0] for r in rows] == ["saliency", "grad_cam"]
    assert sorted(page.images) == ["a_curves.png", "b_curves.png"]
    assert all((work / "ev" / name).is_file() for name in page.images)
    # the ROAD panels are drawn: three panels of 420 px (deletion, ROAD MoRF, ROAD LeRF)
    from PIL import Image

    with Image.open(work / "ev" / "a_curves.png") as im:
        assert im.width == 3 * 420


def test_progress_adds_up_to_methods_times_metrics(work):
    """The CLI's bar has files x methods x metrics units; evaluate() reports exactly that many for one image."""
    from onnxsal.preprocess import Preprocessing, load_image

    ex = onnxsal.Explainer(str(work / "tiny.onnx"), preprocessing=Preprocessing.from_file(work / "tiny.preprocess.json"))
    x = ex.preprocessing.batch([load_image(work / "a.png")])
    units = []
    onnxsal.evaluate(ex, x, ["saliency", "grad_cam"], metrics=["deletion", "randomisation", "input_invariance"],
                     model=str(work / "tiny.onnx"), settings={"deletion": {"steps": 2}}, progress=units.append)
    assert sum(units) == pytest.approx(2 * 3)


@pytest.mark.parametrize("args, pattern", [
    (["--set", "road.percentages=[0.5,1.0]"], "road.percentages must be a list of fractions in [0, 1)"),
    (["--set", "road.noise=-1"], "road.noise must be a finite number >= 0"),
    (["--set", "adversarial.topk=0"], "adversarial.topk must be a fraction of the pixels in (0, 1]"),
    (["--set", "adversarial.epsilon=inf"], "adversarial.epsilon must be a finite number >= 0"),
    (["--set", "random_perturbation.samples=0"], "random_perturbation.samples must be an integer of at least 1"),
    (["--metrics", "robustnes"], "unknown metric 'robustnes'"),
])
def test_new_setting_refusals(work, args, pattern):
    from test_metrics_cli import cli, refused

    refused(cli("evaluate", "a.png", "--model", "tiny.onnx", "--out", "ev", "-q", *args), pattern)
    assert not (work / "ev").exists()


@pytest.mark.parametrize("lo, hi, expected", [
    (0.0037, 0.7213, [0.0, 0.2, 0.4, 0.6, 0.8]),     # step 0.1 would need 8 intervals, 0.2 needs 4
    (0.41, 0.43, [0.41, 0.415, 0.42, 0.425, 0.43]),  # 0.001, 0.002, 0.0025 need 20, 10, 8
    (12.3, 870.0, [0.0, 250.0, 500.0, 750.0, 1000.0]),
    (-0.2, 0.9, [-0.5, 0.0, 0.5, 1.0]),              # 0.25 needs -1..4: 5 intervals
    (0.0, 1.0, [0.0, 0.25, 0.5, 0.75, 1.0]),
])
def test_plot_axis_ticks_are_round_values_around_the_data(lo, hi, expected):
    """Curve plots label round values (hand-computed: the smallest step of 1, 2, 2.5, 5 x 10^k with at most 4
    intervals), not the data's extremes, and the labels carry the decimals the step needs."""
    from onnxsal.metrics.report import _tick_label, nice_ticks

    ticks = nice_ticks(lo, hi)
    np.testing.assert_allclose(ticks, expected, atol=1e-12)
    assert ticks[0] <= lo and ticks[-1] >= hi
    assert [_tick_label(t, ticks) for t in ticks[:2]] == {0.0037: ["0.0", "0.2"], 0.41: ["0.410", "0.415"],
                                                          12.3: ["0", "250"], -0.2: ["-0.5", "0.0"],
                                                          0.0: ["0.00", "0.25"]}[lo]
