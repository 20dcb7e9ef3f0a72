"""Dataset-scale throughput: `onnxsal batch` over N generated photos vs the onnxruntime floor.

    python benchmarks/dataset_bench.py [--images 1000] [--methods grad_cam] [--format png]

For each N it times the whole command in a fresh process (decode, preprocess, explain, render, write,
index) and reads its peak resident memory; the floor is the same gradient graph (Grad-CAM's layer
gradients, top class chosen in the graph) run by a plain onnxruntime loop over already-preprocessed
batches of 16: what inference plus one backward costs with nothing else. Memory should stay flat as N grows.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_photos(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(8, 300, 400, 3), dtype=np.uint8)
    for i in range(n):
        img = np.roll(base[i % 8], i, axis=1)
        img[0, :4, 0] = np.frombuffer(i.to_bytes(4, "little"), np.uint8)  # every photo distinct (the index dedupes by content)
        Image.fromarray(img).save(folder / f"img{i:05d}.png")


def run_batch(folder: Path, out: Path, methods: str, fmt: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one `onnxsal batch` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "onnxsal.cli", "batch", str(folder), "--out", str(out), "--method", methods,
                    "--format", fmt, "-q"], check=True, capture_output=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak, before) / 1024


def floor(n: int) -> float:
    """Seconds for n images through the Grad-CAM gradient graph alone (plain onnxruntime, batches of 16)."""
    import onnxruntime as ort

    import onnxsal
    from onnxsal.autodiff.augment import gradient_model

    ex = onnxsal.Explainer("mobilenet_v2")
    model, score = gradient_model(ex.graph, [ex.layer.tensor], input_grad=False, top=True)
    options = ort.SessionOptions()
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((16, 3, 224, 224)).astype(np.float32)
    names = [score, ex.layer.tensor, f"{ex.layer.tensor}_grad"]
    session.run(names, {ex.graph.input_name: x})
    start = time.perf_counter()
    for i in range(0, n, 16):
        session.run(names, {ex.graph.input_name: x[: min(16, n - i)]})
    return time.perf_counter() - start


def pytorch_grad_cam_loop(folder: Path, batch: int) -> float | None:
    """Seconds for pytorch-grad-cam's GradCAM over the folder with torchvision's MobileNetV2 (same weights as the
    zoo model when torchvision's are cached; random otherwise: the arithmetic is the same), batches of `batch`,
    decoding with PIL and torchvision's transforms, writing each overlay as PNG. None without the packages."""
    try:
        import torch
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.image import show_cam_on_image
        from torchvision import models, transforms
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    model = models.mobilenet_v2().eval()
    cam = GradCAM(model=model, target_layers=[model.features[-1]])
    prep = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                               transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    files = sorted(folder.glob("*.png"))
    out = folder.parent / f"pgc-{folder.name}"
    out.mkdir(exist_ok=True)
    start = time.perf_counter()
    for i in range(0, len(files), batch):
        photos = [Image.open(f).convert("RGB") for f in files[i:i + batch]]
        x = torch.stack([prep(p) for p in photos])
        maps = cam(input_tensor=x, targets=None)  # None: each sample's top class
        for f, p, m in zip(files[i:i + batch], photos, maps):
            shown = np.asarray(transforms.CenterCrop(224)(transforms.Resize(256)(p)), np.float32) / 255
            Image.fromarray(show_cam_on_image(shown, m, use_rgb=True)).save(out / f"{f.stem}.png")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--methods", default="grad_cam")
    parser.add_argument("--format", default="png")
    parser.add_argument("--peer", action="store_true", help="also time pytorch-grad-cam's loop (needs torchvision, grad-cam)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"| images | method | onnxsal batch s | images/s | peak RSS MB | floor images/s | batch / floor |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for n in args.images:
            folder = tmp / f"in{n}"
            folder.mkdir()
            make_photos(folder, n)
            seconds, peak = run_batch(folder, tmp / f"out{n}", args.methods, args.format)
            f = floor(n)
            print(f"| {n} | {args.methods} ({args.format}) | {seconds:.1f} | {n / seconds:.1f} | {peak:.0f} | {n / f:.1f} "
                  f"| {f / seconds:.2f} |", flush=True)
            if args.peer:
                for b in (1, 16):
                    t = pytorch_grad_cam_loop(folder, b)
                    if t is not None:
                        print(f"|   pytorch-grad-cam, batch {b} | | {t:.1f} | {n / t:.1f} | | | onnxsal / peer speed "
                              f"{t / seconds:.2f} |", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("ONNXSAL_CACHE_DIR", tempfile.mkdtemp())
    main()
