"""Localisation against object boxes (model-input pixels, x0, y0, x1, y1 with x1, y1 exclusive).

Pointing game (Zhang et al. 2018, sec. 5.1): a hit when the map's maximum lies in a box of the explained
object, with a tolerance of `tolerance` pixels (15 in the paper) around the box; the score is 1 (hit) or 0.
Ties for the maximum: the first in raster order.
Energy-based pointing game (Wang et al. 2020, Score-CAM sec. 5.2):
    proportion = sum of max(map, 0) inside the union of the boxes / sum of max(map, 0) over the map.
Boxes are mapped from photo pixels through the preprocessing's crop (workflow.photo_to_input), so they
follow the crop and resize the model saw.

Masks instead of boxes (an object mask per image, nonzero = object; mapped through the same resize and crop
as the photo): the pointing game hits when the maximum lies within `tolerance` pixels (Euclidean distance
between pixel centres) of a mask pixel; the energy game sums the positive map inside the mask.

Box files: JSON ({"images": {name: {"objects": [{"box": [x0, y0, x1, y1], "label", "imagenet": [...]}]}}})
or CSV with a header naming at least image, x0, y0, x1, y1 (optional label, and imagenet: class indices
separated by spaces or semicolons); one row per object, photo pixels.
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


def mask_pointing_game(m: np.ndarray, mask: np.ndarray, tolerance: float = 15.0) -> float:
    """1 when the map's maximum (first in raster order) is within `tolerance` pixels of a mask pixel, else 0."""
    i = int(np.argmax(np.asarray(m).ravel()))
    y, x = divmod(i, m.shape[1])
    ys, xs = np.nonzero(np.asarray(mask, bool))
    if len(ys) == 0:
        return 0.0
    return float(((ys - y) ** 2 + (xs - x) ** 2).min() <= float(tolerance) ** 2)


def mask_energy_pointing_game(m: np.ndarray, mask: np.ndarray) -> float:
    pos = np.maximum(np.asarray(m, np.float64), 0)
    total = pos.sum()
    if total <= 0:
        return 0.0
    return float(pos[np.asarray(mask, bool)].sum() / total)


def _object(name, box, label="", imagenet=()) -> dict:
    box = [float(v) for v in box]
    if len(box) != 4 or not all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"box {list(box)} of {name!r} is not x0,y0,x1,y1 with x0 < x1, y0 < y1")
    return {"label": str(label), "box": box, "imagenet": [int(c) for c in imagenet]}


def _read_csv(text: str) -> dict:
    import csv
    import io

    rows = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in rows.fieldnames or []]
    missing = [f for f in ("image", "x0", "y0", "x1", "y1") if f not in fields]
    if missing:
        raise ValueError(f"the CSV header lacks {', '.join(missing)} (it needs image, x0, y0, x1, y1; label and "
                         "imagenet are optional)")
    out: dict = {}
    for line, row in enumerate(rows, start=2):
        row = {str(k).strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
        try:
            classes = [int(c) for c in row.get("imagenet", "").replace(";", " ").split()]
            obj = _object(row["image"], [row[k] for k in ("x0", "y0", "x1", "y1")], row.get("label", ""), classes)
        except ValueError as exc:
            raise ValueError(f"line {line}: {exc}") from None
        if not row["image"]:
            raise ValueError(f"line {line}: no image name")
        out.setdefault(row["image"], []).append(obj)
    if not out:
        raise ValueError("no rows")
    return out


def read_boxes(path) -> dict:
    """{image name: [{"label", "box": [x0, y0, x1, y1], "imagenet": [...]}]} from a boxes JSON or CSV file."""
    from ..files import require_regular

    path = require_regular(Path(path), "boxes")
    try:
        text = path.read_text(encoding="utf-8-sig")  # utf-8-sig: a spreadsheet's CSV may start with a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the boxes file ({exc})") from None
    if path.suffix.lower() == ".csv":
        try:
            return _read_csv(text)
        except (ValueError, KeyError) as exc:
            raise InputError(f"{path}: not a boxes CSV: {exc}") from None
    try:
        data = json.loads(text)
        images = data["images"]
        out = {}
        for name, entry in images.items():
            out[str(name)] = [_object(name, obj["box"], obj.get("label", ""), obj.get("imagenet", []))
                              for obj in entry["objects"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: not a boxes file ({{\"images\": {{name: {{\"objects\": [{{\"box\": [x0,y0,x1,y1]}}]}}}}}}): "
                         f"{exc}") from None
    return out


def find_mask(folder, stem: str):
    """The mask image of `stem` in `folder`: <stem>.<image suffix> or <stem>_mask.<image suffix>; None if absent."""
    from ..workflow import IMAGE_SUFFIXES

    folder = Path(folder)
    for base in (stem, f"{stem}_mask"):
        for suffix in IMAGE_SUFFIXES:
            for candidate in (folder / f"{base}{suffix}", folder / f"{base}{suffix.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def input_mask(photo_mask, prep) -> np.ndarray:
    """(H, W) bool mask in model-input pixels: the mask image (nonzero = object) through the photo's resize and crop."""
    grey = photo_mask.convert("L").point(lambda v: 255 if v else 0)
    return np.asarray(prep.geometry(grey), np.float64) >= 127.5


def boxes_for_class(objects: list[dict], cls: int) -> tuple[list, str]:
    """The boxes of objects naming class `cls` (their "imagenet" lists); else every box. Returns (boxes, which)."""
    named = [o["box"] for o in objects if cls in o["imagenet"]]
    if named:
        return named, "objects of the explained class"
    return [o["box"] for o in objects], "every object (none names the explained class)"
