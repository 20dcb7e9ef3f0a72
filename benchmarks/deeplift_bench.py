"""DeepLIFT speed: onnxsal's deeplift against its own saliency and against Captum's DeepLift, same weights.

    python benchmarks/deeplift_bench.py                   # zoo MobileNetV2, batch 1 and 16
    python benchmarks/deeplift_bench.py --batches 1 --repeats 3

Models: the zoo's MobileNetV2 (onnxsal, onnxruntime CPU) and its torch twin built from the very same ONNX weights
(tests/test_deeplift.py OnnxTwin; ReLU6 as ReLU(x) - ReLU(x - 6) so that Captum hooks it; Captum DeepLift,
DeepLiftShap, GradientShap and Saliency, torch CPU). Every call explains class 281 against the black baseline, so no
method spends a forward pass on finding the top class; the SHAP methods (at batch 1 by default) take three
references (black, blur, uniform) and GradientShap 5 samples. After two warm-up calls (session creation), `repeats`
rounds call every task once in turn (interleaved: the machine may be shared) and the median per task is reported.
torch and onnxruntime get the same number of threads (--threads, default: all cores).
Targets of issue 13: deeplift <= 1.5x saliency, <= 0.6x Captum's DeepLift.
Results: benchmarks/results/deeplift-cpu-<date>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET = 281


def timed_round_robin(tasks: dict, repeats: int) -> dict:
    """Median seconds per task: two warm-up calls each, then `repeats` rounds that call every task once in turn (a
    shared, loaded machine drifts; interleaving gives every task the same conditions)."""
    for fn in tasks.values():
        fn()
        fn()
    times = {key: [] for key in tasks}
    for _ in range(repeats):
        for key, fn in tasks.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shap-batches", default="1",
                        help="batches at which the SHAP methods run too (Captum's DeepLiftShap at batch 16 holds 96 "
                             "MobileNetV2 activations with hooks: beyond a 24 GB machine)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    os.environ["ONNXSAL_THREADS"] = str(args.threads)
    os.environ.setdefault("ONNXSAL_CACHE", "0")
    warnings.simplefilter("ignore")

    import onnx
    import torch
    from captum.attr import DeepLift, DeepLiftShap, GradientShap, Saliency

    sys.path.insert(0, str(ROOT / "tests"))
    from test_deeplift import OnnxTwin  # noqa: E402  (test-only helper: torch module running the ONNX graph)

    from onnxsal import Explainer, zoo
    from onnxsal.autodiff.rules.deeplift import EPS
    from onnxsal.preprocess import Preprocessing, load_image

    torch.set_num_threads(args.threads)
    path = zoo.resolve("mobilenet_v2")[0]
    twin = OnnxTwin(onnx.load(str(path))).eval()
    prep = Preprocessing.from_dict(zoo.entry("mobilenet_v2")["preprocessing"])
    photos = prep.batch([load_image(zoo.example_image(n)) for n in zoo.EXAMPLES])
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        # runs of up to 16 samples: the SHAP methods stream their (image, reference or sample) pairs in batches of
        # 16 (Captum runs all of them at once); at batch 1 the single-pass methods run one image all the same
        ex = Explainer("mobilenet_v2", batch_size=16)
        rng = np.random.default_rng(0)
        x = np.stack([photos[i % len(photos)] for i in range(batch)])
        x = (x + 0.01 * rng.standard_normal(x.shape)).astype(np.float32)
        black = ex.baselines(x, "black")[0]
        refs = np.stack([ex.baselines(x[:1], s)[0][0] for s in ("black", "blur", "uniform")])
        xt, bt, rt = torch.as_tensor(x), torch.as_tensor(black), torch.as_tensor(refs)
        dl = DeepLift(twin, eps=EPS)
        dls = DeepLiftShap(twin)
        dls.eps = EPS
        gs = GradientShap(twin)
        sal = Saliency(twin)
        tasks = {
            ("onnxsal", "saliency"): lambda: ex.explain(x, "saliency", target=TARGET),
            ("captum", "saliency"): lambda: sal.attribute(xt, target=TARGET, abs=True),
            ("onnxsal", "deeplift"): lambda: ex.explain(x, "deeplift", target=TARGET, baseline=black),
            ("captum", "deeplift"): lambda: dl.attribute(xt, bt, target=TARGET),
            ("onnxsal", "deeplift_shap"): lambda: ex.explain(x, "deeplift_shap", target=TARGET, references=refs),
            ("captum", "deeplift_shap"): lambda: dls.attribute(xt, rt, target=TARGET),
            ("onnxsal", "gradient_shap"): lambda: ex.explain(x, "gradient_shap", target=TARGET, references=refs,
                                                             samples=5, stdev=0.1),
            ("captum", "gradient_shap"): lambda: gs.attribute(xt, rt, n_samples=5, stdevs=0.1, target=TARGET),
        }
        if batch not in [int(b) for b in args.shap_batches.split(",") if b]:
            tasks = {key: fn for key, fn in tasks.items() if not key[1].endswith("_shap")}
        for (framework, method), seconds in timed_round_robin(tasks, args.repeats).items():
            rows.append({"batch": batch, "framework": framework, "method": method, "seconds": seconds})
            print(f"batch {batch:>3}  {framework:<8} {method:<14} {seconds * 1000:9.1f} ms", flush=True)

    def get(batch, framework, method):
        return next(r["seconds"] for r in rows if (r["batch"], r["framework"], r["method"]) == (batch, framework, method))

    today = date.today().isoformat()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": today, "machine": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "threads": args.threads, "repeats": args.repeats, "model": "zoo mobilenet_v2 (224x224), CPU"}
    (out / f"deeplift-cpu-{today}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"# DeepLIFT speed, zoo MobileNetV2, CPU ({today})", "",
             f"{meta['machine']}, {meta['cpus']} CPUs, {args.threads} threads for torch and onnxruntime; median of "
             f"{args.repeats} interleaved rounds after two warm-ups; load average at the start {os.getloadavg()[0]:.1f}; class {TARGET}, black baseline; SHAP methods: 3 references, "
             "GradientShap 5 samples.", "",
             "| batch | method | onnxsal (ms) | Captum (ms) | onnxsal / Captum | onnxsal / onnxsal saliency |",
             "|---:|---|---:|---:|---:|---:|"]
    for batch in sorted({r["batch"] for r in rows}):
        base = get(batch, "onnxsal", "saliency")
        for method in ("saliency", "deeplift", "deeplift_shap", "gradient_shap"):
            if not any(r["batch"] == batch and r["method"] == method for r in rows):
                continue
            ours, theirs = get(batch, "onnxsal", method), get(batch, "captum", method)
            lines.append(f"| {batch} | {method} | {ours * 1000:.1f} | {theirs * 1000:.1f} | {ours / theirs:.2f} | "
                         f"{ours / base:.2f} |")
    (out / f"deeplift-cpu-{today}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
