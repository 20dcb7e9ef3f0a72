"""Attribution methods; importing this package registers every method in METHODS."""

from .base import METHODS, Attribution, Explanation, Method, reduce_channels
from . import cam, gradient, integrated_gradients, occlusion, rise, smoothgrad  # noqa: F401  (registers methods)


def methods() -> dict[str, str]:
    """Method names and their one-line descriptions."""
    return {name: cls.description for name, cls in METHODS.items()}


__all__ = ["METHODS", "Attribution", "Explanation", "Method", "methods", "reduce_channels"]
