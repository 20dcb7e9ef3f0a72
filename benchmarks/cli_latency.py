"""End-to-end latency of `onnxsal explain` on one photo, split the way issue 19 asks for it.

    python benchmarks/cli_latency.py                 # default zoo model, Grad-CAM and saliency, 5 runs each
    python benchmarks/cli_latency.py --model efficientnet_lite0 --methods grad_cam --runs 7

Each line is the median of `runs` fresh processes (wall clock, as a user sees it):
- import: `python -c "import onnxsal.cli"` (the CLI's imports: onnx, onnxruntime, numpy, click, PIL);
- warm: `onnxsal explain PHOTO` with the graph cache already filled (the usual case after the first run);
- cold: the same with an empty cache folder (canonicalisation, the batch probe, the graph rewrite and the session
  build all run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--methods", default="grad_cam,saliency")
    parser.add_argument("--photo", default=str(ROOT / "model_zoo" / "examples" / "chelsea.png"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--source", default="", help="import onnxsal from this other checkout (before/after comparisons)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="onnxsal-latency-"))
    boot = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
            f"sys.path.insert(0, {args.source!r}); " if args.source else "import sys; ")
    exe = [sys.executable, "-c", boot + "from onnxsal.cli import main; sys.argv[0] = 'onnxsal'; main()"]
    env = {**os.environ, "ONNXSAL_CACHE_DIR": str(work / "cache")}
    imports = [timed([sys.executable, "-c", boot + "import onnxsal.cli; assert onnxsal.cli.__file__.startswith("
                      f"{args.source!r})"], env) for _ in range(args.runs)]
    print(f"load {os.getloadavg()[0]:.1f}; median of {args.runs} processes")
    print(f"import onnxsal.cli                 {1000 * statistics.median(imports):7.0f} ms")
    for method in args.methods.split(","):
        cmd = exe + ["explain", args.photo, "--model", args.model, "--method", method, "--out", str(work / "out"),
                     "--overwrite"]
        cold = []
        for i in range(args.runs):
            cold_env = {**env, "ONNXSAL_CACHE_DIR": str(work / f"cold-{method}-{i}")}
            cold.append(timed(cmd, cold_env))
        timed(cmd, env)  # fill the shared cache
        warm = [timed(cmd, env) for _ in range(args.runs)]
        print(f"explain --method {method:16s} warm {1000 * statistics.median(warm):7.0f} ms   "
              f"cold cache {1000 * statistics.median(cold):7.0f} ms")


if __name__ == "__main__":
    main()
