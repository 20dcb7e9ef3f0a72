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
# per model, where one expanded sample's backward is large: Captum's IG at internal_batch_size=50 on ResNet-50 would
# hold ~10 GB on a machine shared by several jobs (MobileNetV2 at 50: 4.3 GB measured)
MAX_EXPANDED_BY_MODEL = {"resnet50": 25}


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
        try:
            import torchvision

            model = torchvision.models.resnet50(weights=None).eval()
        except Exception:  # noqa: BLE001 - no (working) torchvision: the same architecture, written out below
            model = resnet50().eval()
        return model, model.layer4
    raise SystemExit(f"unknown model {name}")


def resnet50():
    """torchvision's ResNet-50 (v1.5: stride on the 3x3 conv), random weights, without needing torchvision."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            cout = 4 * width
            self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
            self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
            self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                               if stride != 1 or cin != cout else None)

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet50(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
            self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
            cin, stages = 64, []
            for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
                layers = []
                for i in range(blocks):
                    layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
                    cin = 4 * width
                stages.append(nn.Sequential(*layers))
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(2048, 1000)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):  # torchvision's zero-init of the last BN would kill the residual branch
                    nn.init.uniform_(m.weight, 0.5, 1.0)
                    nn.init.normal_(m.bias, 0, 0.1)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet50()


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
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--table", action="store_true",
                        help="the ratio table: every gradient method x the three models x batch 1 and 16, each method "
                             "timed in interleaved rounds with its peers and the ORT forward")
    parser.add_argument("--models", default="mobilenet_v2,efficientnet_lite0,resnet50")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--methods", default="", help="comma-separated subset of methods")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--heavy-repeats", type=int, default=3, help="repeats for IG, SmoothGrad and occlusion")
    parser.add_argument("--heavy-batches", default="1,16", help="batch sizes at which IG and SmoothGrad run")
    parser.add_argument("--occlusion-batches", default="1", help="batch sizes at which occlusion runs")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0,
                        help="--table: compute threads of every framework (torch, onnxruntime, onnxsal); 0 = all cores")
    parser.add_argument("--append", default="", help="--table: add to this earlier results JSON (and its table)")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--name", default="", help="name of this run in the result files (default: the host name)")
    args = parser.parse_args()
    if args.task:
        print(json.dumps(measure(json.loads(args.task))))
        return
    if args.worker:
        worker(json.loads(args.worker))
        return
    if args.table:
        run_table(args)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="onnxsal-bench-"))
    models = [m for m in args.models.split(",") if m]
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



# -- the ratio table: every gradient method x model x batch, peers timed interleaved ------------------------

# method -> peers as (framework, settings tried); the fastest setting of a peer counts ("its best setting")
TABLE_METHODS = {
    "input_gradient": [("ortt", [{}])],
    "saliency": [("captum", [{}])],
    "gradient_x_input": [("captum", [{}])],
    "guided_backprop": [("captum", [{}])],
    "deconvnet": [("captum", [{}])],
    "grad_cam": [("captum", [{}]), ("pytorch_grad_cam", [{}])],
    "grad_cam_plus_plus": [("pytorch_grad_cam", [{}])],
    "layer_cam": [],
    "guided_grad_cam": [("captum", [{}])],
    "integrated_gradients": [("captum", [{"internal_batch_size": 10}, {"internal_batch_size": 50}])],
    "smoothgrad": [("captum", [{"nt_samples_batch_size": 1}, {"nt_samples_batch_size": 5}, {"nt_samples_batch_size": 25}])],
}
TABLE_MODELS = ("mobilenet_v2", "efficientnet_lite0", "resnet50")


def table_call(spec: dict):
    """fn(x) -> None: one explanation of batch x by spec's framework and method (setup done here, once)."""
    framework, method, settings = spec["framework"], spec["method"], spec["settings"]
    if framework == "ort":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if spec.get("threads"):
            opts.intra_op_num_threads = spec["threads"]
        sess = ort.InferenceSession(spec["onnx"], opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})
    if framework == "onnxsal":
        if spec.get("threads"):
            os.environ["ONNXSAL_THREADS"] = str(spec["threads"])
        from onnxsal import Explainer

        ex = Explainer(spec["onnx"])
        if spec.get("source"):
            import onnxsal

            assert onnxsal.__file__.startswith(spec["source"]), onnxsal.__file__
        if method == "input_gradient":
            def grad(x):
                seeds = np.zeros((len(x), 1000), np.float32)
                seeds[:, TARGET] = 1
                return ex.gradients(x, seeds)
            return grad
        options = {"integrated_gradients": {"steps": STEPS, "baseline": "zeros"},
                   "smoothgrad": {"samples": SAMPLES, "stdev": STDEV}}.get(method, {})
        return lambda x: ex.explain(x, method, target=TARGET, **options)
    if framework == "ortt":
        raise RuntimeError("ortt runs through ortt_bench.py")
    import torch

    torch.set_num_threads(spec.get("threads") or os.cpu_count() or 1)
    model, layer = torch_model(spec["model"])

    def torch_fn(attribute):
        def call(x):
            with torch.inference_mode(False):
                return attribute(torch.from_numpy(x), [TARGET] * len(x))
        return call

    if framework == "captum":
        import captum.attr as ca

        if method in ("saliency", "gradient_x_input", "guided_backprop", "deconvnet"):
            cls = {"saliency": ca.Saliency, "gradient_x_input": ca.InputXGradient, "guided_backprop": ca.GuidedBackprop,
                   "deconvnet": ca.Deconvolution}[method]
            m = cls(model)
            return torch_fn(lambda xt, t: m.attribute(xt, target=t))
        if method == "grad_cam":
            m = ca.LayerGradCam(model, layer)
            return torch_fn(lambda xt, t: ca.LayerAttribution.interpolate(
                m.attribute(xt, target=t, relu_attributions=True), tuple(xt.shape[2:]), interpolate_mode="bilinear"))
        if method == "guided_grad_cam":
            m = ca.GuidedGradCam(model, layer)
            return torch_fn(lambda xt, t: m.attribute(xt, target=t, interpolate_mode="bilinear"))
        if method == "integrated_gradients":
            m = ca.IntegratedGradients(model)
            return torch_fn(lambda xt, t: m.attribute(xt, baselines=0.0, target=t, n_steps=STEPS, method="gausslegendre",
                                                      **settings))
        if method == "smoothgrad":
            m = ca.NoiseTunnel(ca.Saliency(model))
            return torch_fn(lambda xt, t: m.attribute(xt, nt_type="smoothgrad", nt_samples=SAMPLES, stdevs=STDEV, target=t,
                                                      **settings))
    if framework == "pytorch_grad_cam":
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cls = {"grad_cam": pgc.GradCAM, "grad_cam_plus_plus": pgc.GradCAMPlusPlus}[method]
        cam = cls(model=model, target_layers=[layer])
        return lambda x: cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(TARGET)] * len(x))
    raise RuntimeError(f"no task {framework}/{method}")


def use_source(directory: str) -> None:
    """Import onnxsal from another checkout (a before/after comparison): `directory` holds its onnxsal/ package
    (with kernels/ and model_zoo/ linked inside it); the editable install's finder is taken out of the way."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, directory)


def worker(spec: dict) -> None:
    """A long-lived measuring process: set up, warm up (on at most `warm_batch` samples), then answer the parent's
    commands on stdin: `run` -> the seconds of one call; `peak` -> peak resident MB and its growth over setup."""
    if spec.get("source"):
        use_source(spec["source"])
    x = np.load(spec["inputs"])
    t0 = time.perf_counter()
    call = table_call(spec)
    t1 = time.perf_counter()
    after_setup = rss_mb()
    for i in range(spec.get("warmups", 2)):
        call(x[: spec.get("warm_batch") or len(x)])
        if i == 0:
            t2 = time.perf_counter()
    reply = sys.stdout
    # set-up (Explainer / session / model) and first-call seconds: the fixed cost a fresh process pays
    reply.write(f"ready {t1 - t0} {t2 - t1 if spec.get('warmups', 2) else 0}\n")
    reply.flush()
    for line in sys.stdin:
        command = line.strip()
        if command == "run":
            t = time.perf_counter()
            call(x)
            reply.write(f"{time.perf_counter() - t}\n")
        elif command == "peak":
            peak = peak_rss_mb()
            reply.write(json.dumps({"peak_rss_mb": peak, "peak_over_setup_mb": peak - after_setup}) + "\n")
        else:
            break
        reply.flush()


class Worker:
    def __init__(self, spec: dict):
        self.spec = spec
        if spec["framework"] == "ortt":
            python = ortt_python()
            cmd = [python, str(HERE / "ortt_bench.py"), "--worker", json.dumps(spec)]
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
        env = {**os.environ, **spec["env"]} if spec.get("env") else None
        self.setup = None
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     bufsize=1, env=env)
        self.times: list[float] = []
        self.error: str | None = None

    def _read(self) -> str | None:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            tail = (self.proc.stderr.read().strip().splitlines() or ["failed"])[-1][:300]
            self.error = f"killed by signal {-code} (out of memory?)" if code < 0 else tail
            return None
        return line.strip()

    def ready(self) -> bool:
        while self.error is None:
            line = self._read()
            if line is not None and line.startswith("ready"):
                parts = line.split()
                self.setup = [1000 * float(p) for p in parts[1:3]] if len(parts) >= 3 else None
                return True
        return False

    def run(self) -> None:
        if self.error is None:
            self.proc.stdin.write("run\n")
            line = self._read()
            if line is not None:
                self.times.append(float(line))

    def finish(self) -> dict:
        out: dict = {}
        if self.error is None:
            self.proc.stdin.write("peak\n")
            line = self._read()
            if line is not None:
                out = json.loads(line)
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self.error is not None:
            return {"error": self.error}
        setup = {"setup_ms": self.setup[0], "first_call_ms": self.setup[1]} if self.setup else {}
        if not self.times:  # a worker no method ran beside (e.g. the forward at a batch with nothing to time)
            return {"error": "no calls", **setup, **out}
        return {"median_ms": 1000 * statistics.median(self.times), "times_ms": [1000 * t for t in self.times], **setup, **out}


def interleaved(specs: list[dict], rounds: int, shared: Worker | None = None) -> list[dict]:
    """Set up one worker per spec (one after another, so set-ups do not disturb each other), then `rounds` rounds in
    which every worker, and `shared` (the forward, kept across methods), makes one call, in an order that rotates
    each round; the result of each spec, then the shared worker's times of these rounds."""
    workers = []
    for spec in specs:
        w = Worker(spec)
        w.ready()
        workers.append(w)
    everyone = workers + ([shared] if shared is not None else [])
    first = len(shared.times) if shared is not None else 0
    for r in range(rounds):
        order = everyone[r % len(everyone):] + everyone[:r % len(everyone)]
        for w in order:
            w.run()
    out = [w.finish() for w in workers]
    if shared is not None:
        mine = shared.times[first:]
        out.append({"median_ms": 1000 * statistics.median(mine), "times_ms": [1000 * t for t in mine]} if mine
                   else {"error": shared.error or "no result"})
    return out


def run_table(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="onnxsal-bench-"))
    models = [m for m in args.models.split(",") if m]
    wanted = [m for m in (args.methods.split(",") if args.methods else TABLE_METHODS) if m]
    stamp = time.strftime("%Y-%m-%dT%H:%M", time.gmtime())
    stem = f"table-cpu-{args.name or platform.node() or 'machine'}-{date.today().isoformat()}"
    if args.append:
        earlier = json.loads(Path(args.append).read_text())
        stem = Path(args.append).stem
        out = Path(args.append).parent
        earlier.setdefault("parts", []).append({"started_utc": stamp, "load_before": os.getloadavg(),
                                                "rounds": args.repeats, "heavy_rounds": args.heavy_repeats,
                                                "threads": args.threads or os.cpu_count(), "methods": wanted})
        results = earlier
    else:
        results = {"machine": machine(), "device": "cpu", "date": date.today().isoformat(), "started_utc": stamp,
                   "load_before": os.getloadavg(), "target": TARGET, "steps": STEPS, "samples": SAMPLES, "stdev": STDEV,
                   "rounds": args.repeats, "heavy_rounds": args.heavy_repeats, "threads": args.threads or os.cpu_count(),
                   "runs": []}
    for model in models:
        onnx_path = onnx_file(model, work)
        for batch in [int(b) for b in args.batches.split(",")]:
            x_path = work / f"x{batch}.npy"
            np.save(x_path, inputs(batch))
            common = dict(model=model, onnx=str(onnx_path), inputs=str(x_path), device="cpu", batch=batch, threads=args.threads)
            forward_spec = {"framework": "ort", "method": "forward", "settings": {}, "warmups": 2, **common}
            forward = Worker(forward_spec)
            forward.ready()
            for method in wanted:
                heavy = method in HEAVY
                if heavy and str(batch) not in args.heavy_batches.split(","):
                    continue
                specs = [{"framework": "onnxsal", "method": method, "settings": {}}]
                for framework, settings_list in TABLE_METHODS[method]:
                    if not available(framework):
                        continue
                    for settings in settings_list:
                        most = MAX_EXPANDED_BY_MODEL.get(model, MAX_EXPANDED_BATCH)
                        if settings.get("nt_samples_batch_size", 0) * batch > most or settings.get("internal_batch_size", 0) > most:
                            continue
                        if settings.get("internal_batch_size", 0) > STEPS * batch:
                            continue
                        specs.append({"framework": framework, "method": method, "settings": settings})
                for spec in specs:
                    spec.update(warmups=1 if heavy else 2, warm_batch=min(batch, 2) if heavy else None, **common)
                rounds = args.heavy_repeats if heavy else args.repeats
                measured = interleaved(specs, rounds, forward)
                specs.append(forward_spec)
                load = os.getloadavg()[0]
                for spec, r in zip(specs, measured):
                    row = {"model": model, "batch": batch, "framework": spec["framework"], "method": spec["method"],
                           "group": method, "settings": spec["settings"], "load1": load, **r}
                    results["runs"].append(row)
                    shown = f"{r['median_ms']:9.1f} ms  peak {r.get('peak_rss_mb', 0):7.0f} MB" if "median_ms" in r else r["error"]
                    print(f"{model:18s} B={batch:<3d} {spec['framework']:16s} {spec['method']:20s} "
                          f"{json.dumps(spec['settings']):34s} {shown}", flush=True)
                (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
            peak = forward.finish()
            for row in results["runs"]:
                if (row["model"], row["batch"], row["framework"]) == (model, batch, "ort") and "median_ms" in row:
                    row.update({k: v for k, v in peak.items() if k.startswith("peak")})
    results["load_after"] = os.getloadavg()
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    text = ratio_table(results)
    (out / f"{stem}.md").write_text(text)
    print(text)


def ratio_table(results: dict) -> str:
    """Markdown: per model and batch, each method's median, its peers' best, the ratio, the forward floor measured in
    the same interleaved rounds, and peak resident memory."""
    runs = results["runs"]
    m = results["machine"]
    lines = [f"Machine: {m.get('cpu', '?')}, {m.get('cpus')} CPUs, shared (1-min load {results['load_before'][0]:.1f} at start); "
             f"onnxruntime {m.get('onnxruntime')}, torch {m.get('torch')}, captum {m.get('captum')}; "
             f"{results['date']} (started {results.get('started_utc', '?')} UTC); {results.get('threads')} compute thread(s) "
             f"in every framework. Medians of {results['rounds']} interleaved "
             f"rounds ({results['heavy_rounds']} for IG / SmoothGrad); onnxsal / forward uses the ORT forward timed in the "
             "same rounds." + "".join(
                 f" Added later: {', '.join(part['methods'])} (started {part['started_utc']} UTC, load {part['load_before'][0]:.1f}, "
                 f"{part['rounds']} / {part['heavy_rounds']} rounds, {part['threads']} thread(s))."
                 for part in results.get("parts", [])), "",
             "| model | B | method | onnxsal ms | × forward | peer (best setting) | peer ms | onnxsal / peer | peak MB onnxsal / peer |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model in dict.fromkeys(r["model"] for r in runs):
        for batch in dict.fromkeys(r["batch"] for r in runs if r["model"] == model):
            floors = []
            for method in dict.fromkeys(r["group"] for r in runs if (r["model"], r["batch"]) == (model, batch)):
                group = [r for r in runs if (r["model"], r["batch"], r["group"]) == (model, batch, method) and "median_ms" in r]
                fwd = next((r for r in group if r["framework"] == "ort"), None)
                ours = next((r for r in group if r["framework"] == "onnxsal"), None)
                if fwd:
                    floors.append(fwd)
                if ours is None:
                    err = next((r["error"] for r in runs if (r["model"], r["batch"], r["group"], r["framework"]) ==
                                (model, batch, method, "onnxsal") and "error" in r), "no result")
                    lines.append(f"| {model} | {batch} | {method} | {err} | | | | | |")
                    continue
                times_fwd = f"{ours['median_ms'] / fwd['median_ms']:.2f}" if fwd else ""
                peers = {}
                for r in group:
                    if r["framework"] in ("ort", "onnxsal"):
                        continue
                    if r["framework"] not in peers or r["median_ms"] < peers[r["framework"]]["median_ms"]:
                        peers[r["framework"]] = r
                if not peers:
                    lines.append(f"| {model} | {batch} | {method} | {ours['median_ms']:.1f} | {times_fwd} | (no peer) | | | "
                                 f"{ours.get('peak_rss_mb', 0):.0f} |")
                for name, theirs in peers.items():
                    setting = ", ".join(f"{k}={v}" for k, v in theirs["settings"].items())
                    lines.append(f"| {model} | {batch} | {method} | {ours['median_ms']:.1f} | {times_fwd} | "
                                 f"{name}{f' ({setting})' if setting else ''} | {theirs['median_ms']:.1f} | "
                                 f"**{ours['median_ms'] / theirs['median_ms']:.2f}** | "
                                 f"{ours.get('peak_rss_mb', 0):.0f} / {theirs.get('peak_rss_mb', 0):.0f} |")
            if floors:
                med = statistics.median(f["median_ms"] for f in floors)
                peak = max(f.get("peak_rss_mb", 0) for f in floors)
                lines.append(f"| {model} | {batch} | ORT forward (floor) | {med:.1f} | 1.00 | | | | {peak:.0f} |")
    return "\n".join(lines) + "\n"

if __name__ == "__main__":
    main()
