"""Localisation against object boxes (model-input pixels, x0, y0, x1, y1 with x1, y1 exclusive).

Pointing game (Zhang et al. 2018, sec. 5.1): a hit when the map's maximum lies in a box of the explained
object, with a tolerance of `tolerance` pixels (15 in the paper) around the box; the score is 1 (hit) or 0.
Ties for the maximum: the first in raster order.
Energy-based pointing game (Wang et al. 2020, Score-CAM sec. 5.2):
    proportion = sum of max(map, 0) inside the union of the boxes / sum of max(map, 0) over the map.
Boxes are mapped from photo pixels through the preprocessing's crop (workflow.photo_to_input), so they
follow the crop and resize the model saw.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError


def box_mask(boxes, shape: tuple, tolerance: float = 0.0) -> np.ndarray:
    """(H, W) bool: pixels whose centre lies in any box grown by `tolerance` pixels."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    mask = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        mask |= (xx >= x0 - tolerance) & (xx <= x1 + tolerance) & (yy >= y0 - tolerance) & (yy <= y1 + tolerance)
    return mask


def pointing_game(m: np.ndarray, boxes, tolerance: float = 15.0) -> float:
    i = int(np.argmax(np.asarray(m).ravel()))
    y, x = divmod(i, m.shape[1])
    return float(box_mask(boxes, m.shape, tolerance)[y, x])


def energy_pointing_game(m: np.ndarray, boxes) -> float:
    pos = np.maximum(np.asarray(m, np.float64), 0)
    total = pos.sum()
    if total <= 0:
        return 0.0
    return float(pos[box_mask(boxes, m.shape)].sum() / total)


def read_boxes(path) -> dict:
    """{image name: [{"label", "box": [x0, y0, x1, y1], "imagenet": [...]}]} from a boxes JSON file."""
    from ..files import require_regular

    path = require_regular(Path(path), "boxes file")
    try:
        data = json.loads(path.read_text())
        images = data["images"]
        out = {}
        for name, entry in images.items():
            objects = []
            for obj in entry["objects"]:
                box = [float(v) for v in obj["box"]]
                if len(box) != 4 or not all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
                    raise ValueError(f"box {obj['box']} of {name!r} is not x0,y0,x1,y1 with x0 < x1, y0 < y1")
                objects.append({"label": str(obj.get("label", "")), "box": box,
                                "imagenet": [int(c) for c in obj.get("imagenet", [])]})
            out[str(name)] = objects
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: not a boxes file ({{\"images\": {{name: {{\"objects\": [{{\"box\": [x0,y0,x1,y1]}}]}}}}}}): "
                         f"{exc}") from None
    return out


def boxes_for_class(objects: list[dict], cls: int) -> tuple[list, str]:
    """The boxes of objects naming class `cls` (their "imagenet" lists); else every box. Returns (boxes, which)."""
    named = [o["box"] for o in objects if cls in o["imagenet"]]
    if named:
        return named, "objects of the explained class"
    return [o["box"] for o in objects], "every object (none names the explained class)"
