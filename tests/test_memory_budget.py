"""One least-recently-used store with a byte budget for canonical graphs, augmented graphs and sessions
(issue 9, kind 8): memory stays bounded however many methods and layers a process explains."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from onnxsal import cache, runtime
from onnxsal.errors import OnnxsalError
from onnxsal.graph import load_model
from onnxsal.runtime import Engine

import torch_models as tm


def test_lru_evicts_least_recently_used_past_the_budget():
    lru = cache.ByteLRU(budget=100)
    lru.put(("model", "a"), "A", 60)
    lru.put(("session", "b"), "B", 30)
    assert lru.get(("model", "a")) == "A"  # a is now the most recently used
    lru.put(("graph", "c"), "C", 30)  # 120 > 100: b goes, not a
    assert ("session", "b") not in lru and lru.get(("model", "a")) == "A" and lru.nbytes == 90
    lru.put(("model", "huge"), "H", 500)  # larger than the budget: kept alone
    assert len(lru) == 1 and lru.get(("model", "huge")) == "H" and lru.nbytes == 500


@pytest.mark.parametrize("text,value", [("512M", 512 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29), ("12345", 12345),
                                        ("", cache.DEFAULT_CACHE_MEMORY)])
def test_budget_from_the_environment(monkeypatch, text, value):
    monkeypatch.setenv("ONNXSAL_CACHE_MEMORY", text)
    assert cache.memory_budget() == value


def test_a_bad_budget_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("ONNXSAL_CACHE_MEMORY", "lots")
    with pytest.raises(OnnxsalError, match="ONNXSAL_CACHE_MEMORY='lots' is not a size"):
        cache.memory_budget()


def _live_sessions() -> int:
    gc.collect()
    return sum(isinstance(o, runtime._Runner) for o in gc.get_objects())


def test_sessions_and_graphs_stay_within_the_budget(monkeypatch, tmp_path):
    monkeypatch.setenv("ONNXSAL_CACHE", "0")
    monkeypatch.setattr(cache, "MEMORY", cache.ByteLRU())
    model = tm.build("resnet")
    data = tm.export(model, "torchscript")
    graph = load_model(data)
    per_session = 2 * graph.model.ByteSize()
    monkeypatch.setenv("ONNXSAL_CACHE_MEMORY", str(int(2.5 * per_session)))  # room for about one session
    engine = Engine(graph)
    x = np.random.default_rng(0).standard_normal((1, 3, tm.SIZE, tm.SIZE)).astype(np.float32)
    seed = np.eye(tm.CLASSES, dtype=np.float32)[:1]
    layers = [n.output[0] for n in graph.graph.node if n.op_type == "Relu"][:3]
    before = _live_sessions()
    first = None
    for layer in layers:
        for ruleset in ("gradient", "guided_backprop"):
            out = engine.gradients(x, seed, layers=[layer], ruleset=ruleset)
            first = out.input_grad if first is None else first
            assert cache.MEMORY.nbytes <= cache.MEMORY.budget or len(cache.MEMORY) == 1
    # six different gradient graphs were used; before, all six sessions (and their graphs) stayed alive
    assert _live_sessions() - before <= 2
    again = engine.gradients(x, seed, layers=[layers[0]])  # rebuilt after eviction: same numbers
    np.testing.assert_allclose(again.input_grad, first, rtol=1e-6, atol=1e-7)
