"""Issue 14, second round: ROAD (noisy linear imputation) against scipy's sparse solver on the system written
from Rong et al. 2022's equations, HOG against scikit-image (or a loop replica), robustness (PGD keeping the
class, Ghorbani et al.'s top-k intersection) on linear models in closed form, localisation from masks and CSV
boxes, the HTML table."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxsal
from onnxsal.metrics import road
from onnxsal.metrics.runner import Runner


def linear_model(weights: np.ndarray, bias: np.ndarray, shape) -> onnx.ModelProto:
    """x (N, *shape) -> Flatten -> Gemm(weights (K, prod(shape)), bias) -> logits (N, K)."""
    k = len(weights)
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", k])],
                              [helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.astype(np.float32).ravel()),
                               helper.make_tensor("b", TensorProto.FLOAT, bias.shape, bias.astype(np.float32).ravel())])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


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
