"""Numba kernels for the per-pixel post-processing of attributions, installed as `onnxsal.kernels`.

Each kernel has a numpy twin of the same name with a `_numpy` suffix and a test that both agree.
"""
