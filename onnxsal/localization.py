"""Weakly supervised localisation: a bounding box from any saliency map.

Zhou et al. 2016 (CAM, sec. 3.1): keep the pixels whose value is above `threshold` (20%) of the map's
maximum, take the largest connected component (8-connected by default) and return the box around it.
scale='minmax' thresholds (m - min) / (max - min) instead, for maps on a large offset (RISE, FullGrad).
Simonyan et al. 2013 (sec. 6) refine such a mask with GraphCut colour segmentation; that step is not
done here. Boxes are (x0, y0, x1, y1) in map pixels with exclusive ends, as RegionTarget's boxes, so
m[y0:y1, x0:x1] is the box; None when no pixel passes the threshold.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from .errors import MethodError


def components(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """(labels, count): labels 1..count of the connected components of a boolean (H, W) mask, 0 elsewhere,
    numbered in raster order of their first pixel (breadth-first search)."""
    if connectivity not in (4, 8):
        raise MethodError(f"connectivity is 4 or 8, not {connectivity!r}")
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    labels = np.zeros((h, w), np.int64)
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    count = 0
    for y, x in zip(*np.nonzero(mask)):
        if labels[y, x]:
            continue
        count += 1
        labels[y, x] = count
        queue = deque([(y, x)])
        while queue:
            cy, cx = queue.popleft()
            for dy, dx in steps:
                ny, nx = cy + dy, cx + dx
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = count
                    queue.append((ny, nx))
    return labels, count


def localize(saliency_map: np.ndarray, threshold: float = 0.2, scale: str = "max",
             connectivity: int = 8) -> tuple[int, int, int, int] | None:
    """The box (x0, y0, x1, y1) around the largest connected region of an (H, W) map above threshold."""
    m = np.asarray(saliency_map, np.float64)
    if m.ndim != 2:
        raise MethodError(f"localize takes one (H, W) map, not shape {m.shape}")
    if not 0 <= threshold <= 1:
        raise MethodError(f"threshold is a fraction in [0, 1], not {threshold!r}")
    if scale == "max":
        top = m.max()
        if not top > 0:
            return None
        keep = m >= threshold * top
    elif scale == "minmax":
        lo, hi = m.min(), m.max()
        if not hi > lo:
            return None
        keep = (m - lo) >= threshold * (hi - lo)
    else:
        raise MethodError(f"scale is 'max' or 'minmax', not {scale!r}")
    labels, count = components(keep, connectivity)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    ys, xs = np.nonzero(labels == int(np.argmax(sizes)) + 1)  # ties: the first component in raster order
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def boxes(maps: np.ndarray, threshold: float = 0.2, scale: str = "max", connectivity: int = 8) -> list:
    """One box (or None) per map of an (N, H, W) batch, e.g. Explanation.maps."""
    return [localize(m, threshold, scale, connectivity) for m in np.asarray(maps)]
