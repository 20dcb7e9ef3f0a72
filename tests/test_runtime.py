"""Engine runs: one batch shape per session where the provider re-plans on shape changes (CUDA), same numbers."""

from __future__ import annotations

import numpy as np

import onnxsal
from tiny_onnx import classifier


def _spy(runner, seen: list):
    real = runner.run

    def run(names, feeds, into=None):
        seen.append(len(next(iter(feeds.values()))))
        return real(names, feeds, into)

    runner.run = run


def test_uniform_batches_pad_to_the_largest_batch_run_and_keep_the_rows():
    """With uniform_batches (on under CUDA: onnxruntime's CUDA provider re-plans at every change of batch shape,
    0.45-1.5 s each on an H200), a chunk smaller than the largest batch the session has run is padded with copies of
    its last sample; the oracle is the same engine without padding (CPU, where it is off by default)."""
    x = np.random.default_rng(0).standard_normal((5, 3, 24, 24)).astype(np.float32)
    seeds = np.eye(5, dtype=np.float32)[[0, 1, 2, 3, 4]]
    plain = onnxsal.Explainer(classifier(), batch_size=2)
    assert plain.engine.uniform_batches is False  # the CPU provider: no padding
    expected = plain.gradients(x, seeds)
    padded = onnxsal.Explainer(classifier(), batch_size=2)
    padded.engine.uniform_batches = True
    runner, _ = padded.engine.gradient_runner((), "gradient", padded.target_kind, True)
    seen: list = []
    _spy(runner, seen)
    got = padded.gradients(x, seeds)  # chunks 2, 2, 1 -> 2, 2, 2
    single = padded.gradients(x[4:], seeds[4:])  # one image after batches of 2 -> padded to 2
    assert seen == [2, 2, 2, 2]
    np.testing.assert_allclose(got.input_grad, expected.input_grad, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(single.input_grad, expected.input_grad[4:], rtol=1e-5, atol=1e-7)
    assert got.input_grad.shape == x.shape and single.input_grad.shape == (1, 3, 24, 24)


def test_uniform_batches_from_the_environment(monkeypatch):
    monkeypatch.setenv("ONNXSAL_UNIFORM_BATCHES", "1")
    assert onnxsal.Explainer(classifier()).engine.uniform_batches is True
    monkeypatch.setenv("ONNXSAL_UNIFORM_BATCHES", "0")
    assert onnxsal.Explainer(classifier()).engine.uniform_batches is False


def test_uniform_batches_never_pad_beyond_this_engines_chunk_size():
    """Found in review: sessions are shared by the Explainers of one model in a process; one that ran batches of 16
    must not make another, given batch_size=2 (to fit the GPU), run 16."""
    x = np.random.default_rng(0).standard_normal((16, 3, 24, 24)).astype(np.float32)
    big = onnxsal.Explainer(classifier(), batch_size=16)
    big.engine.uniform_batches = True
    big.explain(x, "saliency", target=1)
    small = onnxsal.Explainer(classifier(), batch_size=2)
    small.engine.uniform_batches = True
    runner, _ = small.engine.gradient_runner((), "gradient", small.target_kind, True)
    seen: list = []
    _spy(runner, seen)
    small.gradients(x[:3], np.eye(5, dtype=np.float32)[[1, 1, 1]])
    assert seen == [2, 2]
