"""Explanations on a Ray cluster: a Ray Dataset of images in, a Ray Dataset of results out (optional extra).

    pip install "onnxsal[ray]"
    import ray, onnxsal.ray
    ds = ray.data.read_images("s3://bucket/photos/", include_paths=True)      # or from_items([{"path": ...}])
    out = onnxsal.ray.explain_dataset(ds, model="model.onnx", method="grad_cam")
    out.write_parquet("s3://bucket/explained/")                               # any Ray Data writer

Each actor of a pool builds its Explainer once from a picklable ExplainerSpec (model path or bytes, layer,
providers, preprocessing, settings) and explains whole batches (`map_batches`). Rows hold either `image`
(an H x W x C uint8 array, as ray.data.read_images gives) or `path`, plus an optional `target`; results add
`map` (float16 or float32, H x W at the model's input size), `class`, `score`, `target`, `method`, `output`.
Threads are not oversubscribed: each actor sets onnxruntime's intra-op threads (and Numba's) to the CPUs
Ray gives it. To use a running cluster: `ray.init(address="ray://HOST:10001")` (or RAY_ADDRESS) before the call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .errors import OnnxsalError


@dataclass
class ExplainerSpec:
    """How an actor builds its Explainer: everything picklable."""

    model: object  # a path, a zoo name or the model's bytes
    layer: str = "auto"
    target_kind: str = "logit"
    providers: tuple | None = None
    preprocessing: dict | None = None
    input_shape: tuple | None = None
    labels: list | None = None
    output_name: str | None = None
    options: dict = field(default_factory=dict)  # the method's options

    def build(self):
        from .explainer import Explainer

        return Explainer(self.model, layer=self.layer, target_kind=self.target_kind, providers=self.providers,
                         preprocessing=self.preprocessing, input_shape=self.input_shape, labels=self.labels,
                         output_name=self.output_name)


class _Actor:
    """One Explainer per actor; __call__ explains a batch (dict of numpy columns) and returns result columns."""

    def __init__(self, spec: ExplainerSpec, method: str, target, map_dtype: str, threads: int):
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        os.environ["ONNXSAL_THREADS"] = str(threads)  # onnxruntime intra-op threads (runtime.session_options)
        try:
            import numba

            numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        except Exception:  # noqa: BLE001 - numba's thread pool is an optimisation here
            pass
        self.ex = spec.build()
        self.method, self.target, self.map_dtype, self.options = method, target, map_dtype, dict(spec.options)
        if self.ex.preprocessing is None:
            raise OnnxsalError("explaining images needs the model's preprocessing (a zoo model, a sidecar, or preprocessing=)")

    def __call__(self, batch: dict) -> dict:
        from PIL import Image

        from .preprocess import load_image

        if "image" in batch:
            photos = [Image.fromarray(np.asarray(a, dtype=np.uint8)) for a in batch["image"]]
        elif "path" in batch:
            photos = [load_image(p) for p in batch["path"]]
        else:
            raise OnnxsalError("each row needs an 'image' (H x W x C uint8) or a 'path' column")
        x = self.ex.preprocessing.batch(photos)
        target = self.target
        if "target" in batch and batch["target"] is not None:
            column = list(batch["target"])
            if all(t is not None and not (isinstance(t, float) and np.isnan(t)) for t in column):
                target = [int(t) for t in column]
        res = self.ex.explain(x, self.method, target=target, **self.options)
        n = len(x)
        out = {k: v for k, v in batch.items() if k != "image"}
        out.update({
            "map": list(res.maps.astype(self.map_dtype)), "class": res.targets.astype(np.int64),
            "score": res.scores.astype(np.float32), "method": np.array([self.method] * n),
            "output": np.array([res.output] * n), "target": np.array([res.target] * n),
            "target_kind": np.array([res.target_kind] * n),
        })
        return out


def explain_dataset(ds, model, method: str = "grad_cam", target="top", *, layer: str = "auto",
                    target_kind: str = "logit", preprocessing: dict | None = None, input_shape: tuple | None = None,
                    labels: list | None = None, output_name: str | None = None, options: dict | None = None,
                    batch_size: int = 16, actors: int | None = None, cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0,
                    map_dtype: str = "float16"):
    """A Ray Dataset of explanations of `ds`'s images (see the module docstring). Lazy, like any Ray Dataset."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise OnnxsalError('onnxsal.ray needs Ray Data: pip install "onnxsal[ray]"') from None
    if map_dtype not in ("float16", "float32"):
        raise OnnxsalError(f"map_dtype is float16 or float32, not {map_dtype!r}")
    if isinstance(model, os.PathLike):
        model = str(model)
    providers = ("CUDAExecutionProvider", "CPUExecutionProvider") if gpus_per_actor else ("CPUExecutionProvider",)
    spec = ExplainerSpec(model, layer, target_kind, providers, preprocessing, input_shape, labels, output_name,
                         dict(options or {}))
    threads = max(1, int(cpus_per_actor))
    if actors is None:
        import ray

        cpus = int(ray.available_resources().get("CPU", 1)) if ray.is_initialized() else 1
        actors = max(1, int(cpus // max(cpus_per_actor, 1e-9)))
    from ray.data import ActorPoolStrategy

    return ds.map_batches(_Actor, fn_constructor_args=(spec, method, target, map_dtype, threads), batch_size=batch_size,
                          batch_format="numpy", compute=ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor,
                          num_gpus=gpus_per_actor or None)
