"""Architecture matrix (issue 9): real classifiers, both torch exporters, gradients against torch autograd.

For each architecture (seeded random weights, BatchNorm statistics made non-trivial) and each export
(TorchScript at opset 17 and 13, dynamo at opset 18; dynamic batch), it loads the ONNX file with onnxsal,
compares the input gradient of sum(seed * logits) with torch autograd at batch 3 (cosine; the issue asks
>= 0.9999), checks that `inspect`'s dry run agrees with the build, and runs every method once. Prints a
Markdown table. Not run by CI.

    python benchmarks/architecture_matrix.py                 # torchvision models (pip install torchvision)
    python benchmarks/architecture_matrix.py --tiny          # tests/torch_models.py families, no torchvision
    python benchmarks/architecture_matrix.py --only vit_b_16,swin_t
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import traceback
import warnings

import numpy as np

os.environ.setdefault("ONNXSAL_CACHE", "0")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

TORCHVISION = ["resnet18", "vgg11", "densenet121", "inception_v3", "squeezenet1_0", "mobilenet_v2", "mobilenet_v3_small",
               "efficientnet_b0", "shufflenet_v2_x1_0", "regnet_y_400mf", "convnext_tiny", "vit_b_16", "swin_t", "maxvit_t"]
EXPORTS = [("torchscript", 17), ("torchscript", 13), ("dynamo", 18)]


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def build(name: str, tiny: bool):
    import torch

    if tiny:
        import torch_models as tm

        return tm.build(name), tm.SIZE, tm.CLASSES
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
            if isinstance(m, torch.nn.Linear) and not m.weight.any():
                m.weight.normal_(0, 0.02)  # torchvision zero-initialises ViT's head: logits and gradients would be 0
    size = 299 if name == "inception_v3" else 224
    return model.eval(), size, 1000


def export(model, size: int, exporter: str, opset: int) -> bytes:
    import torch

    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(model, (torch.randn(2, 3, size, size),), f, dynamo=True, opset_version=opset,
                              input_names=["image"], dynamic_shapes=({0: torch.export.Dim("batch")},))
        else:
            torch.onnx.export(model, (torch.randn(1, 3, size, size),), f, dynamo=False, opset_version=opset,
                              input_names=["image"], dynamic_axes={"image": {0: "batch"}})
    return f.getvalue()


def check(name: str, tiny: bool, exporter: str, opset: int) -> dict:
    import torch

    import onnxsal
    from onnxsal.autodiff.augment import gradient_model
    from onnxsal.graph import load_model
    from onnxsal.graph.report import inspect_model
    from onnxsal.runtime import Engine

    model, size, classes = build(name, tiny)
    row = {"model": name, "export": f"{exporter} {opset}"}
    start = time.perf_counter()
    try:
        data = export(model, size, exporter, opset)
    except Exception as exc:  # noqa: BLE001
        return {**row, "result": f"export failed: {str(exc).splitlines()[0][:80]}"}
    try:
        graph = load_model(data)
        missing = inspect_model(graph)["missing_rules"]["gradient"]
        try:
            gradient_model(graph)
            built = True
        except onnxsal.errors.OnnxsalError as exc:
            built = False
            row["build"] = str(exc)[:100]
        row["inspect agrees"] = (not missing) == built
        if not built:
            return {**row, "result": "does not build", "inspect": "; ".join(m["node"] for m in missing[:3])}
        rng = np.random.default_rng(0)
        x = rng.standard_normal((3, 3, size, size)).astype(np.float32)
        seed = rng.standard_normal((3, classes)).astype(np.float32)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = Engine(graph).gradients(x, seed)
        xt = torch.tensor(x, requires_grad=True)
        (model(xt) * torch.tensor(seed)).sum().backward()
        row["cosine"] = round(cosine(out.input_grad, xt.grad.numpy()), 7)
        row["batched"] = not any("one sample at a time" in str(w.message) for w in caught)
        explainer = onnxsal.Explainer(data)
        from onnxsal.methods import METHODS

        failed = []
        for method in onnxsal.methods():
            if getattr(METHODS[method], "needs_goal", False):
                continue  # drise explains a detector's box, not a class
            # each method once, at its smallest sensible cost (this checks that it runs, not what it shows)
            opts = {"integrated_gradients": {"steps": 2}, "occlusion": {"window": size // 2, "stride": size // 2},
                    "rise": {"masks": 4}, "lime": {"samples": 8}, "kernel_shap": {"samples": 8},
                    "blur_ig": {"steps": 2}, "guided_ig": {"steps": 2}, "xrai": {"steps": 2}}.get(method, {})
            if method in ("smoothgrad", "smoothgrad_sq", "vargrad"):
                opts = {"samples": 2}
            try:
                explainer.explain(x[:1], method=method, target=1, **opts)
            except onnxsal.errors.MethodError:
                pass  # e.g. cam on a head that is not GAP + linear: refused by design
            except Exception as exc:  # noqa: BLE001
                failed.append(f"{method}: {str(exc)[:60]}")
        row["methods"] = "all run" if not failed else "; ".join(failed)
        row["result"] = "ok" if row["cosine"] >= 0.9999 and not failed else "MISMATCH" if row["cosine"] < 0.9999 else "methods fail"
    except Exception as exc:  # noqa: BLE001
        row["result"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
        if os.environ.get("ONNXSAL_DEBUG"):
            traceback.print_exc()
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="tests/torch_models.py families instead of torchvision")
    parser.add_argument("--only", default="", help="comma-separated model names")
    args = parser.parse_args()
    if args.tiny:
        import torch_models as tm

        names = list(tm.FAMILIES)
    else:
        names = TORCHVISION
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    columns = ["model", "export", "result", "cosine", "batched", "inspect agrees", "methods", "seconds"]
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for name in names:
        for exporter, opset in EXPORTS:
            row = check(name, args.tiny, exporter, opset)
            print("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |", flush=True)


if __name__ == "__main__":
    main()
