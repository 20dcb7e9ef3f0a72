"""Deletion + insertion (Petsiuk et al. 2018) for one 224x224 image at 50 steps with MobileNetV2 (issue 14).

    python benchmarks/eval_bench.py [--repeats 5] [--batch-size N] [--method grad_cam] [--threads N]

Times onnxsal.metrics.faithfulness.curves for both curves (2 x 51 forward passes, batched), after one
warm-up call that creates the session; prints the median and every run, and the time of one forward pass
of a 51-image batch for comparison. The map is computed once, outside the timing. Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--method", default="grad_cam")
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args()

    import onnxsal
    from onnxsal import zoo
    from onnxsal.metrics.faithfulness import curves
    from onnxsal.metrics.runner import Runner
    from onnxsal.preprocess import load_image

    ex = onnxsal.Explainer("mobilenet_v2", layer=zoo.entry("mobilenet_v2").get("default_layer", "auto"),
                           batch_size=args.batch_size)
    x = ex.preprocessing.batch([load_image(zoo.example_image("chelsea"))])
    runner = Runner(ex, args.method, batch_size=args.batch_size)
    res = ex.explain(x, args.method, target=281)
    classes = np.array([281])

    def once():
        curves(runner, x, classes, res.maps, mode="delete", fill="zeros", steps=args.steps)
        curves(runner, x, classes, res.maps, mode="insert", fill="blur", steps=args.steps)

    once()  # sessions, Numba
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    batch = np.repeat(x, args.steps + 1, axis=0)
    ex.predict(batch)
    t = time.perf_counter()
    ex.predict(batch)
    forward = time.perf_counter() - t
    print(f"deletion + insertion, 224x224, {args.steps} steps, MobileNetV2, {args.method} map, batch size "
          f"{runner.batch_size}, {os.cpu_count()} CPU(s): median {statistics.median(times):.2f} s "
          f"(runs: {', '.join(f'{v:.2f}' for v in times)}); one forward of {args.steps + 1} images: {forward:.2f} s")


if __name__ == "__main__":
    main()
