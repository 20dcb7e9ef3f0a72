"""Dataset-scale runs: inputs from folders, patterns and lists, the index, resuming after a kill.

Oracles: the Python API's maps for the same images and targets (a different code path than the streaming
pipeline), an uninterrupted run for the resumed one, and the rows of the list files written in the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import onnxsal
from onnxsal.cli import main
from onnxsal.errors import InputError
from onnxsal.pipeline import Index, explain_dataset, read_inputs
from onnxsal.preprocess import load_image

RNG = np.random.default_rng(5)


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(10):
        Image.fromarray(RNG.integers(0, 256, size=(40 + i, 50, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def test_inputs_from_folders_patterns_and_lists(photos, tmp_path):
    assert [i.path.name for i in read_inputs([str(photos)])] == [f"p{i}.png" for i in range(10)]
    assert len(read_inputs([str(photos / "p[0-2].png")])) == 3
    (photos / "list.csv").write_text("path,target\np1.png,7\np2.png,\np3.png,tabby\n")
    rows = read_inputs([str(photos / "list.csv")])
    assert [(r.path.name, r.target) for r in rows] == [("p1.png", 7), ("p2.png", None), ("p3.png", "tabby")]
    (photos / "list.jsonl").write_text('{"path": "p4.png", "target": 3}\n\n{"path": "p5.png"}\n')
    assert [(r.path.name, r.target) for r in read_inputs([str(photos / "list.jsonl")])] == [("p4.png", 3), ("p5.png", None)]
    with pytest.raises(InputError, match="matches no image files"):
        read_inputs([str(photos / "*.bmp")])
    (photos / "bad.jsonl").write_text('{"file": "p4.png"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:1: each line is"):
        read_inputs([str(photos / "bad.jsonl")])


def _run(ex, items, out, methods=("grad_cam", "saliency"), **kw):
    return explain_dataset(ex, items, list(methods), "top", lambda m: {}, out, fmt="npy", map_dtype="float32", **kw)


def test_maps_and_index_equal_the_python_api(photos, tmp_path):
    ex = onnxsal.Explainer("mobilenet_v2")
    (photos / "list.csv").write_text("p0.png,281\np1.png,7\np2.png,954\n")
    items = read_inputs([str(photos / "list.csv")])
    summary = _run(ex, items, tmp_path / "out", batch=2)
    assert summary.done == 6 and not summary.failed
    entries = [json.loads(line) for line in (tmp_path / "out" / "index.jsonl").read_text().splitlines()]
    assert len(entries) == 6
    for item, cls in zip(items, (281, 7, 954)):
        x = ex.preprocessing.batch([load_image(item.path)])
        for method in ("grad_cam", "saliency"):
            (entry,) = [e for e in entries if e["image"] == str(item.path) and e["method"] == method]
            want = ex.explain(x, method, target=cls)
            assert entry["class"] == cls and entry["score"] == pytest.approx(float(want.scores[0]), rel=1e-5)
            np.testing.assert_allclose(np.load(entry["files"]["npy"]), want.maps[0], rtol=1e-5, atol=1e-7)
            assert entry["sha256"] == __import__("hashlib").sha256(item.path.read_bytes()).hexdigest()
            assert entry["model"] == ex.graph.sha256


def test_a_torn_index_resumes_to_the_same_results(photos, tmp_path):
    ex = onnxsal.Explainer("mobilenet_v2")
    items = read_inputs([str(photos)])
    _run(ex, items, tmp_path / "full", batch=4)
    full = {json.loads(line)["key"]: json.loads(line) for line in (tmp_path / "full" / "index.jsonl").read_text().splitlines()}
    # an interrupted run: the first 7 entries, then half a line
    (tmp_path / "part").mkdir()
    lines = (tmp_path / "full" / "index.jsonl").read_text().splitlines()
    (tmp_path / "part" / "index.jsonl").write_text("\n".join(lines[:7]) + "\n" + lines[7][:40])
    summary = _run(ex, items, tmp_path / "part", batch=4)
    assert summary.skipped == 7 and summary.done == 13
    index = Index(tmp_path / "part" / "index.jsonl")
    assert set(index.done) == set(full)
    for key, entry in index.done.items():
        assert entry["score"] == pytest.approx(full[key]["score"], rel=1e-5)
    again = _run(ex, items, tmp_path / "part", batch=4)
    assert again.done == 0 and again.skipped == 20


def test_cli_batch_skips_a_bad_file_writes_float16_and_summarises(photos, tmp_path):
    (photos / "broken.png").write_bytes(b"not an image at all")
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(main, ["batch", str(photos), "--out", str(out), "--method", "saliency", "--format", "npy"])
    assert result.exit_code == 1
    assert "warning: " in result.output and "broken.png" in result.output
    assert "11 image(s): 10 result(s) written, 0 already done, 1 failed" in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: 1 of 11 images failed")
    maps = sorted(out.glob("*.npy"))
    assert len(maps) == 10 and np.load(maps[0]).dtype == np.float16


def test_sigint_mid_run_then_rerun_completes_the_index(photos, tmp_path):
    for i in range(10, 40):
        Image.fromarray(RNG.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "onnxsal.cli", "batch", str(photos), "--out", str(out), "--method", "grad_cam,saliency"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    index = out / "index.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if index.exists() and len(index.read_text().splitlines()) >= 6:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    proc.wait(timeout=120)
    first = len(Index(index).done)
    assert first >= 6
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    entries = Index(index).done
    assert len(entries) == 80  # 40 images x 2 methods, each once
    assert {e["image"] for e in entries.values()} == {str(p) for p in photos.glob("*.png")}
    for e in entries.values():
        assert Path(e["files"]["png"]).is_file()
    assert not list(out.glob(".*.tmp"))
