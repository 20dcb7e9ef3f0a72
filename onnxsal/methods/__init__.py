"""Attribution methods; importing this package registers every method in METHODS."""

import sys
import types

from .base import METHODS, Attribution, Explanation, Method, reduce_channels
from . import cam, cam_more, deeplift, gradient, integrated_gradients, lrp, occlusion, path_more, rise, smoothgrad, surrogate  # noqa: F401  (registers methods)


def methods() -> dict[str, str]:
    """Method names and their one-line descriptions."""
    return {name: cls.description for name, cls in METHODS.items()}


__all__ = ["METHODS", "Attribution", "Explanation", "Method", "methods", "reduce_channels"]


class _CallableModule(types.ModuleType):
    """`onnxsal.methods()` is documented; importing this package makes `onnxsal.methods` the package itself,
    so the package answers the call (the same dict as methods())."""

    def __call__(self) -> dict[str, str]:
        return methods()


sys.modules[__name__].__class__ = _CallableModule
