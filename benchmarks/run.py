"""Speed and memory of onnxsal side by side with its peers, on the same weights and inputs.

    python benchmarks/run.py                          # zoo models + ResNet-50 (if torchvision), batch 1 and 16
    python benchmarks/run.py --models mobilenet_v2 --batches 1 --repeats 3
    python benchmarks/run.py --device cuda            # Captum on torch CUDA vs onnxsal on ORT CUDA

Peers: Captum (Saliency, GuidedBackprop, LayerGradCam + bilinear upsampling, IntegratedGradients,
NoiseTunnel SmoothGrad, Occlusion; for the batched methods several internal batch sizes are tried and
the fastest counts as "Captum's best setting"), pytorch-grad-cam (GradCAM, GradCAM++) when it imports,
onnxruntime-training's gradient graph (input gradient; its own virtual environment, $ONNXSAL_ORTT_PYTHON
or .venv-ortt), and plain onnxruntime running the original model (the floor).

On CUDA every framework computes in strict float32 (TF32 off in torch and onnxruntime).
Every measurement runs in a fresh process: after setup and two warm-up calls (Numba compilation, session
creation), `repeats` calls are timed and the median is reported, with the process's peak resident memory
(VmHWM) and its growth over the resident memory right after setup. All explanations target class 281,
so no method spends a forward pass on finding the top class. Results go to benchmarks/results/ as JSON
and a markdown table of medians and ratios (onnxsal / peer).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET = 281
STEPS = SAMPLES = 50
STDEV = 0.3  # SmoothGrad noise (model-space units), the same for every framework
WINDOW, STRIDE = 32, 16

# (framework, method) -> settings tried (the fastest is reported)
TASKS = {
    ("ort", "forward"): [{}],
    ("onnxsal", "input_gradient"): [{}],
    ("ortt", "input_gradient"): [{}],
    ("onnxsal", "saliency"): [{}],
    ("captum", "saliency"): [{}],
    ("onnxsal", "guided_backprop"): [{}],
    ("captum", "guided_backprop"): [{}],
    ("onnxsal", "grad_cam"): [{}],
    ("captum", "grad_cam"): [{}],
    ("pytorch_grad_cam", "grad_cam"): [{}],
    ("onnxsal", "grad_cam_plus_plus"): [{}],
    ("pytorch_grad_cam", "grad_cam_plus_plus"): [{}],
    ("onnxsal", "integrated_gradients"): [{}],
    ("captum", "integrated_gradients"): [{"internal_batch_size": 10}, {"internal_batch_size": 50}],
    ("onnxsal", "smoothgrad"): [{}],
    ("captum", "smoothgrad"): [{"nt_samples_batch_size": 1}, {"nt_samples_batch_size": 5}, {"nt_samples_batch_size": 25}],  # per input: x batch size
    ("onnxsal", "occlusion"): [{}],
    ("captum", "occlusion"): [{"perturbations_per_eval": 8}, {"perturbations_per_eval": 32}],
}
HEAVY = {"integrated_gradients", "smoothgrad", "occlusion"}
# NoiseTunnel's nt_samples_batch_size multiplies the batch: at batch 16, 25 samples per run is 400 images at once,
# beyond this machine's 24 GB; such settings are skipped (and a run killed for memory is recorded as an error)
MAX_EXPANDED_BATCH = 128


# -- models ---------------------------------------------------------------------------------------------

def torch_model(name: str):
    """(torch module in eval mode, the module whose output CAM methods use)."""
    import torch

    torch.manual_seed(0)
    if name in ("mobilenet_v2", "efficientnet_lite0"):
        sys.path.insert(0, str(ROOT / "model_zoo"))
        import build

        model = getattr(build, name)()
        layer = model.features[18] if name == "mobilenet_v2" else model._bn1
        return model, layer
    if name == "resnet50":
        import torchvision

        model = torchvision.models.resnet50(weights=None).eval()
        return model, model.layer4
    raise SystemExit(f"unknown model {name}")


def onnx_file(name: str, cache: Path) -> Path:
    if name in ("mobilenet_v2", "efficientnet_lite0"):
        return ROOT / "model_zoo" / f"{name}.onnx"
    path = cache / f"{name}.onnx"
    if not path.exists():
        import torch

        model, _ = torch_model(name)
        torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    return path


def inputs(batch: int) -> np.ndarray:
    from onnxsal import zoo
    from onnxsal.preprocess import Preprocessing, load_image

    prep = Preprocessing.from_dict(zoo.entry("mobilenet_v2")["preprocessing"])
    photos = prep.batch([load_image(zoo.example_image(n)) for n in zoo.EXAMPLES])
    rng = np.random.default_rng(0)
    x = np.stack([photos[i % len(photos)] for i in range(batch)])
    return (x + 0.01 * rng.standard_normal(x.shape)).astype(np.float32)


# -- one measurement (runs in its own process) ----------------------------------------------------------

def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it does not carry over across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(spec: dict) -> dict:
    x = np.load(spec["inputs"])
    call = setup(spec, x)
    after_setup = rss_mb()
    for _ in range(spec.get("warmups", 2)):
        call()
    times = []
    for _ in range(spec["repeats"]):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    peak = peak_rss_mb()
    return {"median_ms": 1000 * statistics.median(times), "times_ms": [1000 * t for t in times],
            "peak_rss_mb": peak, "peak_over_setup_mb": peak - after_setup}


def setup(spec: dict, x: np.ndarray):
    framework, method, device = spec["framework"], spec["method"], spec["device"]
    settings = spec["settings"]
    if framework == "ort":
        import onnxruntime as ort

        providers = ([("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"] if device == "cuda"
                     else ["CPUExecutionProvider"])
        sess = ort.InferenceSession(spec["onnx"], providers=providers)
        return lambda: sess.run(None, {sess.get_inputs()[0].name: x})
    if framework == "onnxsal":
        from onnxsal import Explainer

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else None
        ex = Explainer(spec["onnx"], providers=providers)
        if method == "input_gradient":
            seeds = np.zeros((len(x), 1000), np.float32)
            seeds[:, TARGET] = 1
            return lambda: ex.gradients(x, seeds)
        options = {"integrated_gradients": {"steps": STEPS, "baseline": "zeros"},
                   "smoothgrad": {"samples": SAMPLES, "stdev": STDEV},
                   "occlusion": {"window": WINDOW, "stride": STRIDE, "fill": "zeros"}}.get(method, {})
        return lambda: ex.explain(x, method, target=TARGET, **options)
    if framework == "ortt":
        raise RuntimeError("ortt runs in its own environment")
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    # strict float32 everywhere (onnxsal's CUDA sessions too): no TF32 tensor-core rounding
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model, layer = torch_model(spec["model"])
    dev = torch.device(device)
    model = model.to(dev)
    xt = torch.from_numpy(x).to(dev)

    def synced(fn):
        def run():
            out = fn()
            if device == "cuda":
                torch.cuda.synchronize()
            return out
        return run

    if framework == "captum":
        import captum.attr as ca

        target = [TARGET] * len(x)
        if method == "saliency":
            m = ca.Saliency(model)
            return synced(lambda: m.attribute(xt, target=target))
        if method == "guided_backprop":
            m = ca.GuidedBackprop(model)
            return synced(lambda: m.attribute(xt, target=target))
        if method == "grad_cam":
            m = ca.LayerGradCam(model, layer)
            return synced(lambda: ca.LayerAttribution.interpolate(m.attribute(xt, target=target, relu_attributions=True),
                                                                  tuple(xt.shape[2:]), interpolate_mode="bilinear"))
        if method == "integrated_gradients":
            m = ca.IntegratedGradients(model)
            return synced(lambda: m.attribute(xt, baselines=0.0, target=target, n_steps=STEPS, method="gausslegendre",
                                              **settings))
        if method == "smoothgrad":
            m = ca.NoiseTunnel(ca.Saliency(model))
            return synced(lambda: m.attribute(xt, nt_type="smoothgrad", nt_samples=SAMPLES, stdevs=STDEV, target=target,
                                              **settings))
        if method == "occlusion":
            m = ca.Occlusion(model)
            return synced(lambda: m.attribute(xt, sliding_window_shapes=(3, WINDOW, WINDOW), strides=(3, STRIDE, STRIDE),
                                              baselines=0.0, target=target, **settings))
    if framework == "pytorch_grad_cam":
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cls = {"grad_cam": pgc.GradCAM, "grad_cam_plus_plus": pgc.GradCAMPlusPlus}[method]
        cam = cls(model=model, target_layers=[layer])
        targets = [ClassifierOutputTarget(TARGET)] * len(x)
        return synced(lambda: cam(input_tensor=xt, targets=targets))
    raise RuntimeError(f"no task {framework}/{method}")


def ortt_python() -> str | None:
    path = os.environ.get("ONNXSAL_ORTT_PYTHON")
    if path and Path(path).exists():
        return path
    candidate = ROOT / ".venv-ortt" / "bin" / "python"
    return str(candidate) if candidate.exists() else None


def run_one(spec: dict) -> dict:
    if spec["framework"] == "ortt":
        python = ortt_python()
        if python is None:
            return {"error": "no onnxruntime-training environment"}
        cmd = [python, str(HERE / "ortt_bench.py"), json.dumps(spec)]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--task", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    except subprocess.TimeoutExpired:
        return {"error": "timed out after an hour"}
    if proc.returncode < 0 or proc.returncode == 137:
        return {"error": f"killed by signal {-proc.returncode if proc.returncode < 0 else 9} (out of memory?)"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the whole run ----------------------------------------------------------------------------------------

def available(framework: str) -> bool:
    import importlib.util

    module = {"captum": "captum", "pytorch_grad_cam": "pytorch_grad_cam", "onnxsal": "onnxsal", "ort": "onnxruntime"}
    if framework == "ortt":
        return ortt_python() is not None
    return importlib.util.find_spec(module[framework]) is not None


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    for mod in ("onnxruntime", "torch", "captum", "numba"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            pass
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--models", default="mobilenet_v2,efficientnet_lite0,resnet50")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--methods", default="", help="comma-separated subset of methods")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--heavy-repeats", type=int, default=3, help="repeats for IG, SmoothGrad and occlusion")
    parser.add_argument("--heavy-batches", default="1,16", help="batch sizes at which IG and SmoothGrad run")
    parser.add_argument("--occlusion-batches", default="1", help="batch sizes at which occlusion runs")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--name", default="", help="name of this run in the result files (default: the host name)")
    args = parser.parse_args()
    if args.task:
        print(json.dumps(measure(json.loads(args.task))))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="onnxsal-bench-"))
    models = [m for m in args.models.split(",") if m]
    if "resnet50" in models:
        import importlib.util

        if importlib.util.find_spec("torchvision") is None:
            print("torchvision not installed: skipping resnet50")
            models.remove("resnet50")
    wanted = set(filter(None, args.methods.split(",")))
    stem = f"{args.device}-{args.name or platform.node() or 'machine'}-{date.today().isoformat()}"
    results = {"machine": machine(), "device": args.device, "date": date.today().isoformat(), "target": TARGET,
               "steps": STEPS, "samples": SAMPLES, "stdev": STDEV, "window": WINDOW, "stride": STRIDE, "runs": []}
    for model in models:
        onnx_path = onnx_file(model, work)
        for batch in [int(b) for b in args.batches.split(",")]:
            x_path = work / f"x{batch}.npy"
            np.save(x_path, inputs(batch))
            for (framework, method), settings_list in TASKS.items():
                if wanted and method not in wanted and method != "forward":
                    continue
                allowed = args.occlusion_batches if method == "occlusion" else args.heavy_batches
                if method in HEAVY and str(batch) not in allowed.split(","):
                    continue
                if not available(framework):
                    continue
                for settings in settings_list:
                    if settings.get("nt_samples_batch_size", 0) * batch > MAX_EXPANDED_BATCH:
                        continue
                    spec = {"framework": framework, "method": method, "model": model, "onnx": str(onnx_path),
                            "inputs": str(x_path), "device": args.device, "settings": settings,
                            "repeats": args.heavy_repeats if method in HEAVY else args.repeats,
                            "warmups": 1 if (method in HEAVY and batch > 1) else 2}
                    r = run_one(spec)
                    row = {"model": model, "batch": batch, "framework": framework, "method": method, "settings": settings, **r}
                    results["runs"].append(row)
                    shown = f"{r['median_ms']:9.1f} ms  peak {r['peak_rss_mb']:7.0f} MB" if "median_ms" in r else r["error"]
                    print(f"{model:18s} B={batch:<3d} {framework:16s} {method:20s} {json.dumps(settings):34s} {shown}", flush=True)
                    save(out, stem, results)  # after every task: a crash loses nothing measured
    save(out, stem, results)
    print(table(results))


def save(out: Path, stem: str, results: dict) -> None:
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (out / f"{stem}.md").write_text(table(results))


def best(runs, model, batch, framework, method):
    done = [r for r in runs if (r["model"], r["batch"], r["framework"], r["method"]) == (model, batch, framework, method)
            and "median_ms" in r]
    return min(done, key=lambda r: r["median_ms"]) if done else None


def table(results: dict) -> str:
    runs = results["runs"]
    m = results["machine"]
    lines = [f"Machine: {m.get('cpu', '?')}, {m.get('cpus')} CPUs; {results['device']}; onnxruntime {m.get('onnxruntime')}, "
             f"torch {m.get('torch')}, captum {m.get('captum')}; {results['date']}.", ""]
    lines.append("| model | batch | method | onnxsal ms | peer | peer ms | onnxsal / peer | onnxsal / ORT forward | peak MB onnxsal / peer |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for model in dict.fromkeys(r["model"] for r in runs):
        for batch in dict.fromkeys(r["batch"] for r in runs if r["model"] == model):
            floor = best(runs, model, batch, "ort", "forward")
            for method in dict.fromkeys(r["method"] for r in runs if r["framework"] == "onnxsal"):
                ours = best(runs, model, batch, "onnxsal", method)
                if ours is None:
                    continue
                for peer in ("captum", "pytorch_grad_cam", "ortt"):
                    theirs = best(runs, model, batch, peer, method)
                    if theirs is None:
                        continue
                    setting = ", ".join(f"{k}={v}" for k, v in theirs["settings"].items())
                    lines.append(
                        f"| {model} | {batch} | {method} | {ours['median_ms']:.1f} | {peer}{f' ({setting})' if setting else ''} "
                        f"| {theirs['median_ms']:.1f} | {ours['median_ms'] / theirs['median_ms']:.2f} "
                        f"| {ours['median_ms'] / floor['median_ms']:.2f} | {ours['peak_rss_mb']:.0f} / {theirs['peak_rss_mb']:.0f} |"
                        if floor else "")
            if floor:
                lines.append(f"| {model} | {batch} | ORT forward (floor) | | | {floor['median_ms']:.1f} | | 1.00 | {floor['peak_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
