"""LRP agreement with zennit on ResNet-18 and a VGG-11 layout (outside CI: zennit is not a test dependency, it
imports torchvision, which this project does not install), and the time of both.

    pip install --no-deps zennit==0.5.1
    python benchmarks/zennit_agreement.py [--size 112] [--out results.json]

ResNet-18 is written here with torchvision's module names and order (conv1, bn1, relu, maxpool, layer1-4 of
BasicBlocks with conv1, bn1, relu, conv2, bn2, downsample; avgpool, fc), and its BasicBlock is registered as
`torchvision.models.resnet.BasicBlock` (a stand-in module when torchvision is absent) so that zennit's
ResNetCanonizer applies: BatchNorm merged into the Conv, the residual sum as a module with the Norm rule.
VGG-11/2 is benchmarks/lrp_bench.py's. Seeded random weights, BatchNorm statistics randomised so that folding
matters; exported to ONNX by torch's TorchScript exporter (opset 17). zennit composites EpsilonPlusFlat,
EpsilonGammaBox (zB bounds: ImageNet normalisation of 0..1), EpsilonAlpha2Beta1, EpsilonPlus, relevance started
from output * one-hot (onnxsal's convention), in float64; onnxsal in float32 from the ONNX file, the top class
chosen in the graph; ResNet-18 at --size, VGG at 224. Max relative error = max |a - b| / max |b|. Timing: both float32 on this CPU, batch 2,
median of 3 after a warm-up; zennit's composite registered once, only the attributions timed.
"""

from __future__ import annotations

import argparse
import io
import json
import warnings

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (same attribute names and order)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=False)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + identity)


class ResNet18(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.relu, self.maxpool = nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        chans, c = [64, 128, 256, 512], 64
        for i, out in enumerate(chans):
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(c, out, 1 if i == 0 else 2), BasicBlock(out, out, 1)))
            c = out
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(512, 1000)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


if importlib.util.find_spec("torchvision") is None:  # zennit.torchvision imports these two classes
    _tv, _models, _resnet = (types.ModuleType(n) for n in ("torchvision", "torchvision.models", "torchvision.models.resnet"))
    _resnet.BasicBlock, _resnet.Bottleneck = BasicBlock, type("Bottleneck", (nn.Module,), {})
    _tv.models, _models.resnet = _models, _resnet
    sys.modules.update({"torchvision": _tv, "torchvision.models": _models, "torchvision.models.resnet": _resnet})
    import zennit.torchvision as _zt

    _zt.ResNetBasicBlock = BasicBlock
else:  # torchvision's own BasicBlock class is what the canonizer looks for: register ours in its place
    import zennit.torchvision as _zt

    _zt.ResNetBasicBlock = BasicBlock

from zennit.attribution import Gradient  # noqa: E402
from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat  # noqa: E402
from zennit.torchvision import ResNetCanonizer, VGGCanonizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lrp_bench import VGGish  # noqa: E402
from timing import timed  # noqa: E402

from onnxsal.graph import load_model  # noqa: E402
from onnxsal.runtime import Engine  # noqa: E402

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
LOW, HIGH = (0 - MEAN) / STD, (1 - MEAN) / STD
COMPOSITES = {"epsilon_plus_flat": EpsilonPlusFlat, "epsilon_gamma_box": EpsilonGammaBox,
              "epsilon_alpha2_beta1": EpsilonAlpha2Beta1, "epsilon_plus": EpsilonPlus}


def zennit_lrp(model, x, composite, canonizer, dtype, repeats=0):
    """(relevance, median seconds of `repeats` attributions inside one registered composite, or None)."""
    model = model.to(dtype)
    xt = torch.tensor(x, dtype=dtype)
    kwargs = {}
    if composite == "epsilon_gamma_box":
        shape = (len(x), 3) + x.shape[2:]
        kwargs = {"low": torch.tensor(LOW, dtype=dtype).view(1, 3, 1, 1).expand(shape),
                  "high": torch.tensor(HIGH, dtype=dtype).view(1, 3, 1, 1).expand(shape)}
    with Gradient(model=model, composite=COMPOSITES[composite](canonizers=[canonizer()], **kwargs)) as attributor:
        with torch.no_grad():
            top = model(xt).argmax(1)

        def start(y):
            onehot = torch.zeros_like(y)
            onehot[torch.arange(len(y)), top] = 1
            return y * onehot

        _, relevance = attributor(xt, start)
        seconds = timed(lambda: attributor(xt, start), repeats) if repeats else None
    return relevance.detach().numpy(), seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--size", type=int, default=112)
    args = parser.parse_args()
    rows = []
    bounds = ";low=" + ",".join(map(repr, LOW.tolist())) + ";high=" + ",".join(map(repr, HIGH.tolist()))
    for arch, build, canonizer, size in (("resnet18", ResNet18, ResNetCanonizer, args.size),
                                         ("vgg11/2", VGGish, VGGCanonizer, 224)):  # VGG's pool to 7 x 7 needs 224
        torch.manual_seed(0)
        model = build().eval()
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
        f = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(1, 3, size, size),), f, dynamo=False, opset_version=17,
                              input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}})
        engine = Engine(load_model(f.getvalue()))
        rng = np.random.default_rng(0)
        x = ((rng.uniform(0, 1, (2, size, size, 3)) - MEAN) / STD).transpose(0, 3, 1, 2).astype(np.float32)
        for composite in COMPOSITES:
            spec = f"lrp:{composite}{bounds}"
            ours = engine.gradients(x, None, ruleset=spec).input_grad
            reference, _ = zennit_lrp(model, x, composite, canonizer, torch.float64)
            err = float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))
            t_ours = timed(lambda: engine.gradients(x, None, ruleset=spec))
            _, t_zennit = zennit_lrp(model, x, composite, canonizer, torch.float32, repeats=3)
            row = {"model": arch, "composite": composite, "max_rel_err": err, "onnxsal_s": t_ours, "zennit_s": t_zennit,
                   "relevance_sum_ours": ours.reshape(2, -1).sum(1).tolist(),
                   "relevance_sum_zennit": reference.reshape(2, -1).sum(1).tolist()}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("| model | composite | max rel err vs zennit (float64) | onnxsal s | zennit s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['composite']} | {r['max_rel_err']:.1e} | {r['onnxsal_s']:.3f} | {r['zennit_s']:.3f} |")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
