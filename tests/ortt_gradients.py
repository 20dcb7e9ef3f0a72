"""Runs inside the onnxruntime-training virtual environment (never imports onnxsal).

argv[1]: JSON {model, feeds (.npz), out (.npz), wrt: [names], loss, optimize (default true)}. Builds the gradient graph of
`loss` with GradientGraphBuilder, runs it on CPU and saves `<name>_grad` for each name in wrt.
"""

import json
import sys

import numpy as np
import onnxruntime as ort
from onnxruntime.capi._pybind_state import GradientGraphBuilder


def main() -> None:
    spec = json.loads(sys.argv[1])
    with open(spec["model"], "rb") as f:
        data = f.read()
    builder = GradientGraphBuilder(data, {spec["loss"]}, set(spec["wrt"]), spec["loss"])
    builder.build()
    grad_path = spec["model"] + ".grad.onnx"
    builder.save(grad_path)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if spec.get("optimize") is False:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(grad_path, opts, providers=["CPUExecutionProvider"])
    feeds = dict(np.load(spec["feeds"]))
    wanted = {i.name for i in sess.get_inputs()}
    outputs = [f"{name}_grad" for name in spec["wrt"]]
    values = sess.run(outputs, {k: v for k, v in feeds.items() if k in wanted})
    np.savez(spec["out"], **dict(zip(outputs, values)))


if __name__ == "__main__":
    main()
