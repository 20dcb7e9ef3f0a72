"""This checkout's onnxsal against another checkout's (before/after a change), timed in interleaved rounds.

    git archive <commit> onnxsal kernels | tar -x -C /tmp/before
    ln -s ../kernels /tmp/before/onnxsal/kernels; ln -s $PWD/model_zoo /tmp/before/onnxsal/model_zoo
    python benchmarks/before_after.py --source /tmp/before --models mobilenet_v2,efficientnet_lite0,resnet50 \
        --methods input_gradient,saliency,grad_cam --rounds 5 --threads 1

Each (model, batch, method) runs one worker per checkout and the ORT forward, as run.py --table does; the
line gives each side's median, its multiple of the forward, its process's peak resident memory, and its
set-up and first-call times (Explainer construction; first explanation, graph cache already filled).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="folder holding the other checkout's onnxsal/ package")
    parser.add_argument("--models", default="mobilenet_v2,efficientnet_lite0,resnet50")
    parser.add_argument("--batches", default="1")
    parser.add_argument("--methods", default="input_gradient,saliency,grad_cam")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="", help="write the rows as JSON here")
    args = parser.parse_args()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "onnxsal-before-after"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.models.split(","):
        onnx_path = run.onnx_file(model, work)
        for batch in [int(b) for b in args.batches.split(",")]:
            x_path = work / f"x{batch}.npy"
            np.save(x_path, run.inputs(batch))
            common = dict(model=model, onnx=str(onnx_path), inputs=str(x_path), device="cpu", batch=batch,
                          threads=args.threads, warmups=2)
            forward = run.Worker({"framework": "ort", "method": "forward", "settings": {}, **common})
            forward.ready()
            for method in args.methods.split(","):
                specs = [{"framework": "onnxsal", "method": method, "settings": {}, "source": args.source,
                          "env": {"ONNXSAL_CACHE_DIR": str(work / "cache-before")}, **common},
                         {"framework": "onnxsal", "method": method, "settings": {},
                          "env": {"ONNXSAL_CACHE_DIR": str(work / "cache-after")}, **common}]
                before, after, fwd = run.interleaved(specs, args.rounds, forward)
                rows.append({"model": model, "batch": batch, "method": method, "before": before, "after": after,
                             "forward": fwd, "load1": os.getloadavg()[0]})
                f = fwd.get("median_ms", float("nan"))

                def show(r):
                    return (f"{r.get('median_ms', float('nan')):7.1f} ms (x{r.get('median_ms', float('nan')) / f:.2f} fwd, "
                            f"peak {r.get('peak_rss_mb', float('nan')):5.0f} MB, set-up {r.get('setup_ms', float('nan')):5.0f} "
                            f"+ first call {r.get('first_call_ms', float('nan')):5.0f} ms)")

                ratio = after.get("median_ms", float("nan")) / before.get("median_ms", float("nan"))
                print(f"{model:18s} B{batch:<2d} {method:16s} before {show(before)}  after {show(after)}  "
                      f"after/before {ratio:.2f}", flush=True)
            forward.finish()
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
