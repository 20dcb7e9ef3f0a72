"""The caches: augmented graphs on disk (reuse, corrupt entries, concurrent writers, off switch) and
onnxruntime sessions shared within a process."""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import onnx
import pytest

from onnxsal import cache
from onnxsal.graph import load_model
from onnxsal.runtime import Engine

def zoo_path():
    from onnxsal import zoo

    return zoo.model_path("mobilenet_v2")


def forget(monkeypatch):
    """Drop every in-process cache: the next use must come from disk or be rebuilt."""
    monkeypatch.setattr(cache, "MEMORY", cache.ByteLRU())


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXSAL_CACHE_DIR", str(tmp_path / "cache"))
    forget(monkeypatch)
    return tmp_path / "cache"


def _seed():
    s = np.zeros((1, 1000), np.float32)
    s[0, 281] = 1
    return s


def test_second_use_reads_the_graph_from_disk(fresh_cache, monkeypatch):
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    first = Engine(load_model(zoo_path())).gradients(x, _seed()).input_grad
    entries = sorted(p.name for p in fresh_cache.iterdir())
    assert any(e.endswith(".onnx") for e in entries) and any(e.endswith(".json") for e in entries)
    forget(monkeypatch)
    from onnxsal.autodiff import augment

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the augmented graph was rebuilt instead of read from the cache")

    monkeypatch.setattr(augment, "gradient_model", no_rebuild)
    monkeypatch.setattr(augment, "forward_model", no_rebuild)
    second = Engine(load_model(zoo_path())).gradients(x, _seed()).input_grad
    np.testing.assert_array_equal(first, second)


def test_corrupt_entries_are_rebuilt(fresh_cache, monkeypatch):
    x = np.zeros((1, 3, 224, 224), np.float32)
    Engine(load_model(zoo_path())).gradients(x, _seed())
    for path in fresh_cache.glob("*.onnx"):
        path.write_bytes(path.read_bytes()[:1000])  # truncated
    for path in list(fresh_cache.glob("*.json"))[:1]:
        path.write_text("{not json")
    forget(monkeypatch)
    engine = Engine(load_model(zoo_path()))
    out = engine.gradients(x, _seed())
    assert np.isfinite(out.input_grad).all()
    # the forward graph too (the batch probe, which used to read it at every start, now keeps its answer on disk)
    assert np.isfinite(engine.forward(x)[0]).all()
    for path in fresh_cache.glob("*.onnx"):
        onnx.load(path)  # every entry on disk parses again


def _hammer(args):
    directory, worker = args
    from pathlib import Path

    from onnxsal.cache import atomic_write

    payload = bytes([worker]) * 3_000_000
    for _ in range(20):
        atomic_write(Path(directory) / "entry.bin", payload)
    return True


def test_concurrent_writers_never_leave_a_torn_entry(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert all(pool.map(_hammer, [(str(tmp_path), w) for w in range(4)]))
    data = (tmp_path / "entry.bin").read_bytes()
    assert len(data) == 3_000_000 and len(set(data)) == 1  # one writer's whole payload
    assert not [p for p in tmp_path.iterdir() if p.name != "entry.bin"]  # no temporary files left


def test_cache_can_be_switched_off(fresh_cache, monkeypatch):
    monkeypatch.setenv("ONNXSAL_CACHE", "0")
    Engine(load_model(zoo_path())).forward(np.zeros((1, 3, 224, 224), np.float32))
    assert not fresh_cache.exists() or not any(fresh_cache.iterdir())


def test_sessions_are_shared_within_the_process(fresh_cache):
    a = Engine(load_model(zoo_path()))
    b = Engine(load_model(zoo_path()))
    assert a.forward_runner()[0] is b.forward_runner()[0]
    assert a.gradient_runner([], "gradient", "logit", True)[0] is b.gradient_runner([], "gradient", "logit", True)[0]
    c = Engine(load_model(zoo_path()), providers=["CPUExecutionProvider"])
    assert c.gradient_runner([], "guided_backprop", "logit", True)[0] is not a.gradient_runner([], "gradient", "logit", True)[0]


def test_model_with_external_data(tmp_path, monkeypatch):
    from onnxsal.graph.model import read_model, model_digest

    model = onnx.load(zoo_path())
    path = tmp_path / "external.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="external.data",
              size_threshold=1024)
    assert (tmp_path / "external.data").stat().st_size > 10_000_000 and os.path.getsize(path) < 1_000_000
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    ours = Engine(load_model(path)).forward(x)[0]
    reference = Engine(load_model(zoo_path())).forward(x)[0]
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)
    # the cache key covers the external weights: change them and the digest changes
    before = model_digest(*read_model(path)[:2])
    data = bytearray((tmp_path / "external.data").read_bytes())
    data[4096:4100] = b"\x00\x00\x80\x3f"
    (tmp_path / "external.data").write_bytes(bytes(data))
    assert model_digest(*read_model(path)[:2]) != before


def test_batch_probe_answer_is_read_from_disk(fresh_cache, monkeypatch):
    Engine(load_model(zoo_path()))
    assert any(p.read_text().find('"batchable"') >= 0 for p in fresh_cache.glob("*.json"))
    forget(monkeypatch)
    from onnxsal import runtime

    def no_probe(engine):
        raise AssertionError("the batch probe ran again instead of reading its answer from the cache")

    monkeypatch.setattr(runtime, "check_batching", no_probe)
    graph = load_model(zoo_path())
    assert Engine(graph).batch_size > 1 and graph.batchable is True


def test_a_corrupt_probe_record_means_probing_again(fresh_cache, monkeypatch):
    Engine(load_model(zoo_path()))
    for path in fresh_cache.glob("*.json"):
        if '"batchable"' in path.read_text():
            path.write_text('{"key": "x", "kind": "batchable", "value": {"batchable": false}}')  # made for another key
    forget(monkeypatch)
    graph = load_model(zoo_path())
    Engine(graph)
    assert graph.batchable is True
