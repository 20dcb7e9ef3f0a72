"""The onnxruntime-training peer of benchmarks/run.py: input gradient from GradientGraphBuilder's graph.

Runs inside the onnxruntime-training virtual environment (never imports onnxsal). argv[1] is the JSON
task spec of run.py; prints one JSON line with the median time and memory figures. With `--worker SPEC` it
answers run.py's interleaved rounds instead (run.py's worker protocol: `run`, `peak`, `quit` on stdin).
"""

import json
import os
import resource
import statistics
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from onnxruntime.capi._pybind_state import GradientGraphBuilder


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    worker = sys.argv[1] == "--worker"
    spec = json.loads(sys.argv[2] if worker else sys.argv[1])
    x = np.load(spec["inputs"])
    model = onnx.load(spec["onnx"])
    g = model.graph
    inp, out = g.input[0].name, g.output[0].name
    seed = np.zeros((len(x), 1000), np.float32)
    seed[:, 281] = 1
    g.initializer.append(numpy_helper.from_array(seed, "bench_seed"))
    g.node.extend([helper.make_node("Mul", [out, "bench_seed"], ["bench_weighted"]),
                   helper.make_node("ReduceSum", ["bench_weighted"], ["bench_loss"], keepdims=0)])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("bench_loss", onnx.TensorProto.FLOAT, []))
    # fix the batch so the seed initializer matches
    g.input[0].type.tensor_type.shape.dim[0].Clear()
    g.input[0].type.tensor_type.shape.dim[0].dim_value = len(x)
    model.ir_version = min(model.ir_version, 9)
    builder = GradientGraphBuilder(model.SerializeToString(), {"bench_loss"}, {inp}, "bench_loss")
    builder.build()
    path = os.path.join(tempfile.mkdtemp(), "grad.onnx")
    builder.save(path)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if spec.get("threads"):
        opts.intra_op_num_threads = spec["threads"]
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    after_setup = rss_mb()
    run = lambda: sess.run([f"{inp}_grad"], {inp: x})  # noqa: E731
    for _ in range(2):
        run()
    if worker:
        print("ready", flush=True)
        for line in sys.stdin:
            if line.strip() == "run":
                t = time.perf_counter()
                run()
                print(time.perf_counter() - t, flush=True)
            elif line.strip() == "peak":
                peak = peak_rss_mb()
                print(json.dumps({"peak_rss_mb": peak, "peak_over_setup_mb": peak - after_setup}), flush=True)
            else:
                break
        return
    times = []
    for _ in range(spec["repeats"]):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    peak = peak_rss_mb()
    print(json.dumps({"median_ms": 1000 * statistics.median(times), "times_ms": [1000 * t for t in times],
                      "peak_rss_mb": peak, "peak_over_setup_mb": peak - after_setup}))


if __name__ == "__main__":
    main()
