"""onnxsal's reverse-mode autodiff over ONNX graphs: rules, rule sets and the gradient-graph builder."""

from .builder import build_gradient_model, missing_rules
from .registry import rulesets, supported_ops

__all__ = ["build_gradient_model", "missing_rules", "rulesets", "supported_ops"]
