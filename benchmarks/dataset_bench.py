"""Dataset-scale throughput: `onnxsal batch` over N generated photos vs the onnxruntime floor.

    python benchmarks/dataset_bench.py [--images 1000] [--methods grad_cam] [--format png]

For each N it times the whole command in a fresh process (decode, preprocess, explain, render, write,
index) and reads its peak resident memory; the floor is the same gradient graph (Grad-CAM's layer
gradients, top class chosen in the graph) run by a plain onnxruntime loop over already-preprocessed
batches of 16: what inference plus one backward costs with nothing else. Memory should stay flat as N grows.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_photos(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(8, 300, 400, 3), dtype=np.uint8)
    for i in range(n):
        Image.fromarray(np.roll(base[i % 8], i, axis=1)).save(folder / f"img{i:05d}.jpg", quality=90)


def run_batch(folder: Path, out: Path, methods: str, fmt: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one `onnxsal batch` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "onnxsal.cli", "batch", str(folder), "--out", str(out), "--method", methods,
                    "--format", fmt, "-q"], check=True, capture_output=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak, before) / 1024


def floor(n: int) -> float:
    """Seconds for n images through the Grad-CAM gradient graph alone (plain onnxruntime, batches of 16)."""
    import onnxruntime as ort

    import onnxsal
    from onnxsal.autodiff.augment import gradient_model

    ex = onnxsal.Explainer("mobilenet_v2")
    model, score = gradient_model(ex.graph, [ex.layer.tensor], input_grad=False, top=True)
    options = ort.SessionOptions()
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((16, 3, 224, 224)).astype(np.float32)
    names = [score, ex.layer.tensor, f"{ex.layer.tensor}_grad"]
    session.run(names, {ex.graph.input_name: x})
    start = time.perf_counter()
    for i in range(0, n, 16):
        session.run(names, {ex.graph.input_name: x[: min(16, n - i)]})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--methods", default="grad_cam")
    parser.add_argument("--format", default="png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"| images | method | onnxsal batch s | images/s | peak RSS MB | floor images/s | batch / floor |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for n in args.images:
            folder = tmp / f"in{n}"
            folder.mkdir()
            make_photos(folder, n)
            seconds, peak = run_batch(folder, tmp / f"out{n}", args.methods, args.format)
            f = floor(n)
            print(f"| {n} | {args.methods} ({args.format}) | {seconds:.1f} | {n / seconds:.1f} | {peak:.0f} | {n / f:.1f} "
                  f"| {f / seconds:.2f} |", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("ONNXSAL_CACHE_DIR", tempfile.mkdtemp())
    main()
