"""Issue 13 (LRP): the time of `lrp` beside `saliency` on the zoo's MobileNetV2, and beside Captum's LRP on a
VGG-style torch model Captum can run.

    python benchmarks/lrp_bench.py [--batch 8] [--repeats 3] [--out benchmarks/results/lrp-cpu-DATE.md]

MobileNetV2 (zoo, 224 x 224): saliency, lrp with epsilon_plus_flat (the default), epsilon_gamma_box,
epsilon_alpha2_beta1 and epsilon (one backward pass each; the rule sets emit 1 to 5 convolutions per Conv).
Captum's LRP cannot run MobileNetV2 (its ReLU6 and the functional residual `+` have no rule; Captum raises a
TypeError on nn.ReLU6) and zennit needs torchvision, which this project does not install: the peer
comparison uses VGG11's layout (conv 3x3, ReLU, MaxPool; channels halved) at 224 x 224, random weights,
epsilon rule everywhere on both sides (Captum EpsilonRule on Conv2d, Linear, MaxPool2d, AdaptiveAvgPool2d).
One process, CPU, torch and onnxruntime both at the machine's threads, median of `repeats` after one
warm-up (which builds and caches the graph).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from timing import timed  # benchmarks/timing.py (the script's own folder is on sys.path)


class VGGish(nn.Module):
    """VGG11's layout with half the channels (Captum's LRP supports every module in it)."""

    def __init__(self):
        super().__init__()
        cfg = [32, "M", 64, "M", 128, 128, "M", 256, 256, "M", 256, 256, "M"]
        layers, c = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.fc1, self.r1, self.fc2 = nn.Linear(256 * 49, 512), nn.ReLU(), nn.Linear(512, 1000)

    def forward(self, x):
        return self.fc2(self.r1(self.fc1(torch.flatten(self.pool(self.features(x)), 1))))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from onnxsal import Explainer

    rows = []
    rng = np.random.default_rng(0)
    ex = Explainer("mobilenet_v2")
    x = rng.standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
    base = timed(lambda: ex.explain(x, "saliency"), args.repeats)
    rows.append(("MobileNetV2 (zoo)", "onnxsal saliency", base, 1.0))
    for composite in ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1", "epsilon"):
        t = timed(lambda: ex.explain(x, "lrp", composite=composite), args.repeats)
        rows.append(("MobileNetV2 (zoo)", f"onnxsal lrp {composite}", t, t / base))
    rows.append(("MobileNetV2 (zoo)", "Captum LRP", None, None))

    torch.manual_seed(0)
    net = VGGish().eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 224, 224),), f, dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}})
    vex = Explainer(f.getvalue())
    xv = rng.standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
    vbase = timed(lambda: vex.explain(xv, "saliency"), args.repeats)
    rows.append(("VGG11/2 (torch, random)", "onnxsal saliency", vbase, 1.0))
    ours = timed(lambda: vex.explain(xv, "lrp", composite="epsilon", epsilon=1e-6, stabilizer=1e-6), args.repeats)
    rows.append(("VGG11/2 (torch, random)", "onnxsal lrp epsilon", ours, ours / vbase))
    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import EpsilonRule

    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AdaptiveAvgPool2d)):
            m.rule = EpsilonRule(1e-6)
    xt = torch.tensor(xv)
    targets = torch.tensor(vex.explain(xv, "lrp", composite="epsilon").targets)
    lrp = LRP(net)
    theirs = timed(lambda: lrp.attribute(xt, target=targets), args.repeats)
    rows.append(("VGG11/2 (torch, random)", "Captum LRP epsilon", theirs, theirs / vbase))

    threads = torch.get_num_threads()
    lines = [f"# LRP timing, CPU ({os.cpu_count()} cores, torch threads {threads}), batch {args.batch}, 224 x 224, "
             f"median of {args.repeats} after a warm-up, {datetime.date.today()}", "",
             "| model | method | seconds per batch | x saliency |", "|---|---|---|---|"]
    for model, method, t, ratio in rows:
        lines.append(f"| {model} | {method} | {'n/a' if t is None else f'{t:.3f}'} | {'n/a' if ratio is None else f'{ratio:.2f}'} |")
    lines += ["", "Captum LRP on MobileNetV2: n/a (nn.ReLU6 and the functional residual add have no Captum LRP rule).",
              f"onnxsal lrp epsilon / Captum LRP epsilon on VGG11/2: {ours / theirs:.2f}"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(
            [{"model": m, "method": k, "seconds": t, "x_saliency": r} for m, k, t, r in rows], indent=1))


if __name__ == "__main__":
    main()
