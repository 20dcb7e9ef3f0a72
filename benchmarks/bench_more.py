"""Issue 17's methods: onnxsal's time beside its peers' on the same tiny torch model (tests/torch_models.py).

    python benchmarks/bench_more.py [--size 64] [--repeats 3]

Peers: Captum's Lime and KernelShap (same samples, batched by perturbations_per_eval = onnxsal's batch),
PAIR's saliency BlurIG and GuidedIG with torch gradients (batch_size = onnxsal's batch where PAIR has one).
pytorch-grad-cam (Score-CAM, Ablation-CAM, Eigen-CAM, FullGrad) needs torchvision, which this project
does not install: those rows show onnxsal alone. One process, CPU, median of `repeats` after one warm-up;
a rough side-by-side, not benchmarks/run.py's isolated processes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import torch_models as tm  # noqa: E402
from timing import timed  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tm.SIZE = args.size
    from onnxsal import Explainer

    torch.manual_seed(0)
    model = tm.build("resnet").eval()
    ex = Explainer(tm.export(model, "torchscript"))
    x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32)
    xt = torch.from_numpy(x)
    batch = ex.engine.batch_size
    rows = []

    def ours(method, **options):
        return timed(lambda: ex.explain(x, method, target=3, **options), args.repeats)

    from captum.attr import KernelShap, Lime
    from captum._utils.models.linear_model import SkLearnRidge

    labels = torch.from_numpy((np.arange(args.size)[:, None] * 8 // args.size * 8 + np.arange(args.size)[None, :] * 8 // args.size))
    mask = labels[None, None]
    n = 500
    rows.append(("lime", ours("lime", samples=n), timed(lambda: Lime(model, interpretable_model=SkLearnRidge(alpha=1.0)).attribute(
        xt, target=3, n_samples=n, feature_mask=mask, perturbations_per_eval=batch), args.repeats)))
    rows.append(("kernel_shap", ours("kernel_shap", samples=n), timed(lambda: KernelShap(model).attribute(
        xt, target=3, n_samples=n, feature_mask=mask, perturbations_per_eval=batch), args.repeats)))
    try:
        import saliency.core as saliency

        quantile = np.quantile  # PAIR 0.2.1 passes numpy < 2's `interpolation=`; numpy 2 calls it `method=`
        np.quantile = lambda *a, interpolation=None, **k: quantile(*a, **({"method": interpolation} if interpolation else {}), **k)

        def call(b, call_model_args=None, expected_keys=None):
            t = torch.from_numpy(np.asarray(b, np.float32).transpose(0, 3, 1, 2)).requires_grad_(True)
            model(t)[:, 3].sum().backward()
            return {"INPUT_OUTPUT_GRADIENTS": t.grad.numpy().transpose(0, 2, 3, 1)}

        hwc = x[0].transpose(1, 2, 0)
        rows.append(("blur_ig", ours("blur_ig", steps=50, max_sigma=10.0),
                     timed(lambda: saliency.BlurIG().GetMask(hwc, call, steps=50, max_sigma=10.0, batch_size=batch), args.repeats)))
        rows.append(("guided_ig", ours("guided_ig", steps=50, baseline="zeros"),
                     timed(lambda: saliency.GuidedIG().GetMask(hwc, call, x_steps=50), args.repeats)))
    except ImportError:
        pass
    for method in ("eigen_cam", "eigen_grad_cam", "score_cam", "ablation_cam", "fullgrad"):
        rows.append((method, ours(method), None))
    print(f"resnet (tests/torch_models.py) at {args.size}x{args.size}, batch {batch}, median of {args.repeats}")
    print(f"{'method':16} {'onnxsal s':>10} {'peer s':>10} {'ratio':>7}")
    for name, a, b in rows:
        print(f"{name:16} {a:10.4f} {'' if b is None else f'{b:10.4f}':>10} {'' if b is None else f'{a / b:7.2f}':>7}")


if __name__ == "__main__":
    main()
