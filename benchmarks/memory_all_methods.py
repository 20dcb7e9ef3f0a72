"""Peak memory of "every method on VGG-11" in one process (issue 9, kind 8). Not run by CI.

VGG-11's architecture (531 MB of float32 weights, random and seeded; torchvision is not needed) is
exported with torch's TorchScript exporter at 224 x 224, then every onnxsal method explains one image in
the same process, with few samples / steps / windows (the sessions and graphs, not the arithmetic, hold
the memory). Prints one JSON line: the cache budget, the peak resident set (VmHWM) after each method, and
what the byte-budgeted store holds at the end.

    ONNXSAL_CACHE_MEMORY=4G python benchmarks/memory_all_methods.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import warnings

os.environ.setdefault("ONNXSAL_CACHE", "0")  # no GB-sized augmented graphs on disk


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def vgg11():
    import torch
    import torch.nn as nn

    layers, cin = [], 3
    for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    torch.manual_seed(0)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Linear(512 * 49, 4096), nn.ReLU(True),
                         nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 1000)).eval()


def main() -> None:
    import numpy as np
    import torch

    import onnxsal
    from onnxsal import cache
    from onnxsal.errors import OnnxsalError

    tmp = tempfile.TemporaryDirectory()  # removed when the process ends
    path = os.path.join(tmp.name, "vgg11.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(vgg11(), (torch.randn(1, 3, 224, 224),), path, dynamo=False, opset_version=17,
                          input_names=["image"], dynamic_axes={"image": {0: "batch"}})
    del torch
    options = {"integrated_gradients": {"steps": 4}, "smoothgrad": {"samples": 4}, "smoothgrad_sq": {"samples": 4},
               "vargrad": {"samples": 4}, "occlusion": {"window": 112, "stride": 112}}
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    ex = onnxsal.Explainer(path)
    rows = []
    for method in onnxsal.methods():
        start = time.perf_counter()
        try:
            ex.explain(x, method=method, target=1, **options.get(method, {}))
            status = "ok"
        except OnnxsalError as exc:  # cam: VGG's head is not GAP + linear
            status = str(exc)[:60]
        rows.append({"method": method, "status": status, "seconds": round(time.perf_counter() - start, 1),
                     "peak_rss_mb": round(peak_rss_mb())})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"budget_bytes": cache.memory_budget(), "weights_mb": round(os.path.getsize(path) / 2**20),
                      "peak_rss_mb": round(peak_rss_mb()), "held_mb": round(cache.MEMORY.nbytes / 2**20),
                      "held": cache.MEMORY.kinds(), "methods": rows}))


if __name__ == "__main__":
    main()
