"""Every Numba kernel, serial and parallel, against its numpy twin and against a formula written here
(einsum, torch's interpolate, numpy's percentile), on random data and on edge cases: 1 x 1 maps, a single
channel or sample, odd sizes, constant and all-zero maps, rows that all share one owner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onnxsal.kernels import cam, moments, normalize, pixelwise, resize

R = np.random.default_rng(1212)
SHAPES = [(1, 1, 1, 1), (2, 3, 1, 5), (1, 7, 9, 1), (3, 2, 13, 11), (1, 1, 6, 6)]


@pytest.fixture(autouse=True, params=["serial", "parallel"])
def numba_only(request, monkeypatch):
    from onnxsal.kernels import jit

    monkeypatch.setattr(jit, "FORCE_NUMPY", False)
    monkeypatch.setattr(jit, "NUMPY_BELOW", 0)
    monkeypatch.setattr(jit, "PARALLEL_FROM", 1 << 62 if request.param == "serial" else 0)
    monkeypatch.setattr(normalize, "NUMBA_FROM", 0)  # the percentile kernel runs numpy at every size otherwise


def f32(*shape):
    return R.standard_normal(shape).astype(np.float32)


def test_dispatch_follows_the_benchmark(monkeypatch):
    # benchmarks/kernels.py: numpy's percentile is never slower than the Numba body, so the twin runs at any size
    # (this fixture lowered the threshold; restore it); the other kernels go to Numba from NUMPY_BELOW on
    from onnxsal.kernels import jit

    monkeypatch.setattr(normalize, "NUMBA_FROM", float("inf"))
    monkeypatch.setattr(jit, "NUMPY_BELOW", 10)
    calls = []
    monkeypatch.setattr(normalize, "percentile_normalize_numpy", lambda *a: calls.append("numpy"))
    monkeypatch.setattr(normalize, "_normalize", lambda *a: calls.append("numba"))
    normalize.percentile_normalize(f32(64, 30, 30))
    monkeypatch.setattr(cam, "channel_mean_numpy", lambda g: calls.append("numpy"))
    monkeypatch.setattr(cam, "_channel_mean", lambda g: calls.append("numba"))
    cam.channel_mean(f32(1, 1, 2, 2))
    cam.channel_mean(f32(2, 8, 5, 5))
    assert calls == ["numpy", "numpy", "numba"]


def agree(got, twin, want, rtol=1e-5):
    atol = 1e-6 * max(1.0, float(np.abs(want).max()) if np.size(want) else 1.0)
    np.testing.assert_allclose(got, twin, rtol=rtol, atol=atol)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape", SHAPES)
def test_channel_mean(shape):
    g = f32(*shape)
    agree(cam.channel_mean(g), cam.channel_mean_numpy(g), np.einsum("ncij->nc", g.astype(np.float64)) / (shape[2] * shape[3]))
    c = np.full(shape, 2.5, np.float32)
    np.testing.assert_array_equal(cam.channel_mean(c), np.full(shape[:2], 2.5, np.float32))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_weighted_sum_per_channel_and_per_element(shape, relu):
    a = f32(*shape)
    for w in (f32(*shape[:2]), f32(*shape)):
        terms = np.einsum("nc,ncij->nij", w, a) if w.ndim == 2 else np.einsum("ncij,ncij->nij", w, a)
        want = np.maximum(terms, 0) if relu else terms
        agree(cam.weighted_sum(w, a, relu), cam.weighted_sum_numpy(w, a, relu), want)


@pytest.mark.parametrize("size_in,size_out", [((1, 1), (1, 1)), ((1, 1), (7, 3)), ((2, 3), (2, 3)), ((3, 5), (1, 1)),
                                              ((9, 7), (4, 3)), ((1, 6), (5, 13)), ((7, 7), (224, 224))])
def test_bilinear_resize(size_in, size_out):
    maps = f32(2, *size_in)
    want = torch.nn.functional.interpolate(torch.from_numpy(maps)[:, None], size=size_out, mode="bilinear",
                                           align_corners=False)[:, 0].numpy()
    agree(resize.bilinear_resize(maps, *size_out), resize.bilinear_resize_numpy(maps, *size_out), want)


def percentile_formula(maps, q, signed):
    out = []
    for m in maps.astype(np.float64):
        p = np.percentile(np.abs(m), q)
        out.append(np.zeros_like(m) if p == 0 else np.clip(m / p, -1.0 if signed else 0.0, 1.0))
    return np.array(out)


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 1, 7), (3, 5, 1), (2, 13, 11), (1, 64, 64)])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("q", [0.0, 50.0, 99.0, 100.0])
def test_percentile_normalize_random(shape, signed, q):
    maps = f32(*shape) * 3
    agree(normalize.percentile_normalize(maps, q, signed), normalize.percentile_normalize_numpy(maps, q, signed),
          percentile_formula(maps, q, signed))


@pytest.mark.parametrize("signed", [False, True])
def test_percentile_normalize_constant_and_zero_maps(signed):
    maps = np.stack([np.full((5, 7), 3.0), np.full((5, 7), -2.0), np.zeros((5, 7)), np.full((5, 7), 1e-30)]).astype(np.float32)
    got = normalize.percentile_normalize(maps, 99.0, signed)
    np.testing.assert_array_equal(got[0], 1.0)  # a constant map is its own percentile
    np.testing.assert_array_equal(got[1], -1.0 if signed else 0.0)
    np.testing.assert_array_equal(got[2], 0.0)  # all zero stays zero (no division by zero)
    np.testing.assert_array_equal(got[3], 1.0)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, normalize.percentile_normalize_numpy(maps, 99.0, signed))


@pytest.mark.parametrize("shape", SHAPES)
def test_guided_product(shape):
    g, m = f32(*shape), f32(shape[0], *shape[2:])
    agree(pixelwise.guided_product(g, m), pixelwise.guided_product_numpy(g, m), np.einsum("ncij,nij->ncij", g, m))


@pytest.mark.parametrize("shape", SHAPES + [(4, 3)])
def test_scale_by_difference(shape):
    acc, x, b = f32(*shape), f32(*shape), f32(*shape)
    agree(pixelwise.scale_by_difference(acc, x, b), pixelwise.scale_by_difference_numpy(acc, x, b),
          acc.astype(np.float64) * (x.astype(np.float64) - b))


@pytest.mark.parametrize("owner", [[0], [0, 0, 0, 0], [3, 0, 3, 1, 0], [1, 1, 2, 2, 2, 0]])
@pytest.mark.parametrize("width", [1, 17])
def test_accumulate_and_moments(owner, width):
    owner = np.array(owner, np.int64)
    v, weight = f32(len(owner), width), R.uniform(0, 2, len(owner)).astype(np.float32)
    groups = int(owner.max()) + 2  # one owner more than used: its row stays at its start value
    start = R.standard_normal((groups, width))
    want, want1, want2 = start.copy(), start.copy(), start.copy() * 0.5
    for b, o in enumerate(owner):  # the formula, one row at a time
        want[o] += float(weight[b]) * v[b].astype(np.float64)
        want1[o] += v[b]
        want2[o] += v[b].astype(np.float64) ** 2
    got, twin = start.copy(), start.copy()
    moments.accumulate(got, v, owner, weight)
    moments.accumulate_numpy(twin, v, owner, weight)
    agree(got, twin, want, rtol=1e-6)
    s1, s2, t1, t2 = start.copy(), start.copy() * 0.5, start.copy(), start.copy() * 0.5
    moments.accumulate_moments(s1, s2, v, owner)
    moments.accumulate_moments_numpy(t1, t2, v, owner)
    agree(s1, t1, want1, rtol=1e-6)
    agree(s2, t2, want2, rtol=1e-6)
