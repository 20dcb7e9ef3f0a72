"""Loading, canonicalizing and inspecting ONNX models."""

from .layers import Layer, candidate_layers, select_layer
from .model import ModelGraph, load_model

__all__ = ["Layer", "ModelGraph", "candidate_layers", "load_model", "select_layer"]
