"""Figures for exported explanation models (onnxsal export --method): per method, the largest difference from
the Python API on the bundled photos, the file size and the batch-1 CPU latency, next to the plain model's.

    python benchmarks/export_figures.py [--model mobilenet_v2] [--threads 1] [--runs 20]

Latency: median of `runs` onnxruntime runs of one preprocessed photo (CPU provider, `threads` intra-op threads,
after two warm-up runs). Differences: max |heatmap_exported - heatmap_python| with both normalised as the CLI
shows maps, over the two bundled photos (Python: Explainer.explain, then postprocess.normalize).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort

from onnxsal import Explainer, postprocess as pp, zoo
from onnxsal.export import EXPORTABLE
from onnxsal.preprocess import load_image


def session(model_bytes: bytes, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def latency(s, feeds, runs):
    for _ in range(2):
        s.run(None, feeds)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        s.run(None, feeds)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--ig-steps", type=int, default=16)
    parser.add_argument("--methods", default=",".join(EXPORTABLE))
    args = parser.parse_args()
    ex = Explainer(args.model)
    x = ex.preprocessing.batch([load_image(zoo.example_image(n)) for n in ("chelsea", "coffee")])
    h, w = ex.graph.spatial_shape
    source, _ = zoo.resolve(args.model)
    plain = open(source, "rb").read()
    base = latency(session(plain, args.threads), {ex.graph.input_name: x[:1]}, args.runs)
    print(f"| plain {args.model} (forward only) | - | {len(plain) / 1e6:.1f} MB | {base:.1f} ms |")
    for method in args.methods.split(","):
        options = {"steps": args.ig_steps} if method == "integrated_gradients" else {}
        model = ex.export(None, method, **options).SerializeToString()
        s = session(model, args.threads)
        heat = s.run(["heatmap"], {"image": x, "class": np.array([-1], np.int64)})[0]
        res = ex.explain(x, method, **options)
        want = pp.normalize(pp.NUMPY, res.maps, h * w, pp.display_percentile(method), res.signed)
        ms = latency(s, {"image": x[:1], "class": np.array([-1], np.int64)}, args.runs)
        label = method + (f" ({args.ig_steps} steps)" if options else "")
        print(f"| {label} | {np.abs(heat - want).max():.1e} | {len(model) / 1e6:.1f} MB | {ms:.1f} ms |")


if __name__ == "__main__":
    main()
