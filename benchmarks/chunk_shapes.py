"""What a change of batch shape between runs of one session costs: onnxsal's gradients and IG-50 at several chunkings.

    python benchmarks/chunk_shapes.py                 # CPU
    python benchmarks/chunk_shapes.py --device cuda   # onnxruntime-gpu (benchmarks/results/cuda-h200-2026-11-30-*)

For each model (ResNet-50 exported from torch with random weights, the zoo MobileNetV2): Engine.gradients of n copies
of the photo (n = 1, 8, 16, 27, 50: the engine cuts them into chunks of its batch size), IG-50 with method chunks
of several sizes, and one plain session.run of 27 for contrast. Median of 3 calls after 2 warm-ups, ms. On an H200
every run whose batch shape differed from the run before cost 0.45-1.5 s (onnxruntime's CUDA provider re-plans),
which is why the engine pads runs to one shape per session there (Engine.uniform_batches;
ONNXSAL_UNIFORM_BATCHES=0 turns it off, to see the difference).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def timed(fn) -> float:
    """Median ms of 3 calls after 2 warm-ups (session creation, Numba)."""
    from timing import timed as seconds

    return round(1000 * seconds(fn, repeats=3, warmups=2), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", default="resnet50,mobilenet_v2")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    sys.path.insert(0, str(HERE))
    import tempfile

    import run as bench  # noqa: E402  (benchmarks/run.py: the same models and photo)

    from onnxsal import Explainer

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if args.device == "cuda" else None
    folder = Path(tempfile.mkdtemp(prefix="onnxsal-shapes-"))
    for name in args.models.split(","):
        ex = Explainer(str(bench.onnx_file(name, folder)), providers=providers)
        print(name, "engine batch size", ex.engine.batch_size, "uniform batches", ex.engine.uniform_batches, flush=True)
        x = bench.inputs(1)
        for n in (1, 8, 16, 27, 50):
            xs = np.repeat(x, n, 0)
            seeds = np.zeros((n, 1000), np.float32)
            seeds[:, bench.TARGET] = 1
            print(f"  gradients n={n}: {timed(lambda: ex.gradients(xs, seeds))} ms", flush=True)
        for size in (None, 8, 16, 25, 50):
            ms = timed(lambda: ex.explain(x, "integrated_gradients", target=bench.TARGET, steps=50, baseline="zeros",
                                          batch_size=size))
            print(f"  IG-50 batch_size={size}: {ms} ms", flush=True)
        runner, _ = ex.engine.gradient_runner((), "gradient", ex.target_kind, True)
        xs = np.repeat(x, 27, 0)
        seeds = np.zeros((27, 1000), np.float32)
        seeds[:, bench.TARGET] = 1
        feeds = {ex.graph.input_name: xs, runner.input_names[-1]: seeds}
        print(f"  plain session.run n=27: {timed(lambda: runner.session.run(None, feeds))} ms", flush=True)


if __name__ == "__main__":
    main()
