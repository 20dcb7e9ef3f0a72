"""onnxsal: pixel attribution (saliency maps) for any ONNX model.

Heavy modules (onnxruntime, numba) load on first use, so `import onnxsal` and the CLI start fast.
"""

__version__ = "0.1.0"

_LAZY = {
    "Explainer": ("onnxsal.explainer", "Explainer"),
    "Explanation": ("onnxsal.methods.base", "Explanation"),
    "Preprocessing": ("onnxsal.preprocess", "Preprocessing"),
    "methods": ("onnxsal.methods", "methods"),
    "load_model": ("onnxsal.graph.model", "load_model"),
    "ModelGraph": ("onnxsal.graph.model", "ModelGraph"),
    "OnnxsalError": ("onnxsal.errors", "OnnxsalError"),
    "TopTarget": ("onnxsal.targets", "TopTarget"),
    "ClassTarget": ("onnxsal.targets", "ClassTarget"),
    "TopKTarget": ("onnxsal.targets", "TopKTarget"),
    "WeightsTarget": ("onnxsal.targets", "WeightsTarget"),
    "RegionTarget": ("onnxsal.targets", "RegionTarget"),
    "evaluate": ("onnxsal.metrics", "evaluate"),
}


def layers(model, **kwargs):
    """Candidate layers of a model (path, bytes, ModelProto or zoo name), last = deepest; see Layer.describe()."""
    from .explainer import Explainer

    return Explainer(model, **kwargs).layers()


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'onnxsal' has no attribute {name!r}")
