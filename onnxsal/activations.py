"""Activation maps (tf-explain's "activations visualization"): a layer's feature maps laid out as a grid.

activation_grid(explainer, x, layer=None, columns=None, normalize="channel") -> (N, rows*(h+gap)-gap, ...)
each channel c of the layer's activations A (N, C, h, w) in its cell (row c // columns, column c % columns),
`columns` = ceil(sqrt(C)) by default, cells separated by `gap` pixels of NaN (drawn as background).
normalize: "channel" scales each map to [0, 1] by its own min and max (a constant map becomes 0),
"layer" by the min and max over all channels of the sample, "none" keeps the values.
render_grid(grid) turns one grid into a PIL image with one of viz's colormaps.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import MethodError
from .methods.base import to_nchw


def layer_activations(explainer, x, layer: str | None = None) -> np.ndarray:
    """(N, C, h, w) activations of `layer` (a tensor or node name; default: the explainer's CAM layer)."""
    from .graph.layers import select_layer

    chosen = explainer.layer if layer is None else select_layer(explainer.graph, layer)
    a = explainer.activations(explainer._batch(x), chosen.tensor)
    if a.ndim != 4:
        raise MethodError(f"layer {chosen.tensor} has shape {a.shape}: a grid needs spatial feature maps")
    return to_nchw(a, chosen.layout or "NCHW")


def tile(a: np.ndarray, columns: int | None = None, normalize: str = "channel", gap: int = 1) -> np.ndarray:
    """(N, C, h, w) -> (N, H, W) grids (see the module docstring)."""
    n, c, h, w = a.shape
    columns = int(columns or math.ceil(math.sqrt(c)))
    if columns < 1 or gap < 0:
        raise MethodError("columns must be positive and gap non-negative")
    rows = math.ceil(c / columns)
    a = a.astype(np.float32)
    if normalize == "channel":
        lo = a.min(axis=(2, 3), keepdims=True)
        span = a.max(axis=(2, 3), keepdims=True) - lo
        a = np.where(span > 0, (a - lo) / np.where(span > 0, span, 1), 0)
    elif normalize == "layer":
        lo = a.min(axis=(1, 2, 3), keepdims=True)
        span = a.max(axis=(1, 2, 3), keepdims=True) - lo
        a = np.where(span > 0, (a - lo) / np.where(span > 0, span, 1), 0)
    elif normalize != "none":
        raise MethodError(f"normalize is 'channel', 'layer' or 'none', not {normalize!r}")
    grid = np.full((n, rows * (h + gap) - gap, columns * (w + gap) - gap), np.nan, np.float32)
    for k in range(c):
        r, col = divmod(k, columns)
        grid[:, r * (h + gap):r * (h + gap) + h, col * (w + gap):col * (w + gap) + w] = a[:, k]
    return grid


def activation_grid(explainer, x, layer: str | None = None, columns: int | None = None, normalize: str = "channel",
                    gap: int = 1) -> np.ndarray:
    return tile(layer_activations(explainer, x, layer), columns, normalize, gap)


def render_grid(grid: np.ndarray, cmap: str = "viridis", scale: int = 4):
    """One (H, W) grid as an RGB PIL image (NaN gaps black), each map pixel drawn as scale x scale pixels."""
    from PIL import Image

    from . import viz

    values = np.nan_to_num(np.clip(grid, 0, 1), nan=0.0)
    rgb = viz.colormap(cmap)[np.round(values * 255).astype(np.int64)]
    rgb[np.isnan(grid)] = 0
    image = Image.fromarray(rgb)
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)
