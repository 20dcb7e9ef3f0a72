"""Pictures of explanations: colormaps as lookup tables, overlays, gray-scale and diverging maps, grids.

Maps are normalised for display by the 99th percentile of |map| (Smilkov et al. 2017): values above it
saturate. Absolute maps go to [0, 1], signed maps to [-1, 1] (negative blue, positive red).
Colormaps are 256-entry RGB tables: matplotlib's inferno, viridis and jet entry for entry
(`colormap_tables.py`), ColorBrewer's RdBu and gray interpolated between their anchor colours as matplotlib
interpolates them.
"""

from __future__ import annotations

import numpy as np

_ANCHORS = {
    # ColorBrewer RdBu (11 classes), blue for negative through white to red for positive
    "rdbu": [(5, 48, 97), (33, 102, 172), (67, 147, 195), (146, 197, 222), (209, 229, 240), (247, 247, 247),
             (253, 219, 199), (244, 165, 130), (214, 96, 77), (178, 24, 43), (103, 0, 31)],
    "gray": [(0, 0, 0), (255, 255, 255)],
}
COLORMAPS = ("inferno", "viridis", "jet", "gray", "rdbu")


def colormap(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table: entry i is the colour of the value i / 255.

    Raises InputError for a name outside COLORMAPS.
    """
    from .colormap_tables import TABLES

    if name in TABLES:
        return np.frombuffer(bytes.fromhex(TABLES[name]), dtype=np.uint8).reshape(256, 3).copy()
    t = np.linspace(0.0, 1.0, 256)
    if name not in _ANCHORS:
        from .errors import InputError

        raise InputError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    anchors = np.asarray(_ANCHORS[name], dtype=np.float64)
    x = np.linspace(0.0, 1.0, len(anchors))
    rgb = np.stack([np.interp(t, x, anchors[:, c]) for c in range(3)], axis=1)
    return (rgb + 0.5).astype(np.uint8)


def normalize(maps: np.ndarray, signed: bool, percentile: float = 99.0) -> np.ndarray:
    """(N, H, W) maps -> [0, 1] (or [-1, 1] when signed), clipped at the percentile of |map|."""
    from . import kernels

    return kernels.percentile_normalize(np.ascontiguousarray(maps, np.float32), percentile, signed)


def _resize(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of one (H, W) float map to (width, height) = size."""
    from . import kernels

    width, height = size
    if values.shape == (height, width):
        return values
    return kernels.bilinear_resize(np.ascontiguousarray(values[None], np.float32), height, width)[0]


def render_map(values: np.ndarray, signed: bool, cmap: str | None = None):
    """A normalised (H, W) map as an RGB image: gray-scale for absolute maps, blue-white-red for signed ones."""
    from PIL import Image

    lut = colormap(cmap or ("rdbu" if signed else "gray"))
    index = ((values + 1) / 2 if signed else values) * 255
    return Image.fromarray(lut[np.clip(index + 0.5, 0, 255).astype(np.uint8)])


def overlay(photo, values: np.ndarray, signed: bool, cmap: str | None = None, alpha: float = 0.6, smooth: bool = False):
    """The map over the photo.

    smooth (CAM maps): the whole colormap blended at constant opacity alpha (the Grad-CAM paper's look);
    otherwise the photo is dimmed (by 0.75 alpha) and desaturated, and the colormap laid over it with opacity
    sqrt(|map|) (|map| for signed maps), so sparse pixel attributions stand out.
    """
    from PIL import Image

    from . import postprocess as pp

    lut = colormap(cmap or default_cmap(signed, smooth))
    values = _resize(values, photo.size)
    base = np.asarray(photo.convert("RGB"), dtype=np.float32)
    # the blend is postprocess.overlay's equation, the one exported graphs run (export --overlay)
    return Image.fromarray(pp.overlay(pp.NUMPY, base[None], values[None].astype(np.float32), signed, smooth, lut, alpha)[0])


def default_cmap(signed: bool, smooth: bool) -> str:
    """The overlay's colormap: blue-white-red for signed maps, jet for smooth CAM maps, inferno for pixel maps."""
    return "rdbu" if signed else ("jet" if smooth else "inferno")


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def grid(tiles: list, labels: list[str], columns: int = 5, tile: int = 224, title: str | None = None):
    """Labelled tiles (PIL images) in rows of `columns`, with an optional title line."""
    from PIL import Image, ImageDraw

    label_h, pad = 22, 6
    title_h = 28 if title else 0
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    width = columns * (tile + pad) + pad
    height = title_h + rows * (tile + label_h + pad) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 6), title, fill=(0, 0, 0), font=_font(16))
    for k, (image, label) in enumerate(zip(tiles, labels)):
        r, c = divmod(k, columns)
        x, y = pad + c * (tile + pad), title_h + pad + r * (tile + label_h + pad)
        draw.text((x, y + 3), label, fill=(0, 0, 0), font=_font(14))
        sheet.paste(image.convert("RGB").resize((tile, tile)), (x, y + label_h))
    return sheet


def save_png(image, path) -> None:
    """Write a PNG atomically (temporary name, then rename): no half-written file is ever left."""
    import io
    from pathlib import Path

    from .files import write_output

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # lossless either way; level 1 encodes ~5x faster than 6
    write_output(Path(path), buffer.getvalue())


def save_npy(array: np.ndarray, path) -> None:
    import io
    from pathlib import Path

    from .files import write_output

    buffer = io.BytesIO()
    np.save(buffer, array)
    write_output(Path(path), buffer.getvalue())
