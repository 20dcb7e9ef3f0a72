"""Bilinear upsampling of maps to the input size.

Convention: half-pixel centres (torch's align_corners=False, ONNX Resize mode=linear with
coordinate_transformation_mode=half_pixel): source coordinate s = (d + 0.5) * in / out - 0.5, clamped
to [0, in - 1], value interpolated between floor(s) and floor(s) + 1 (clamped to the edge).
"""

import numpy as np
from . import jit
from .jit import kernel, prange


def _axis_weights(size_in, size_out):
    """(i0, i1, t) per output index: y = (1 - t) x[i0] + t x[i1]."""
    d = np.arange(size_out, dtype=np.float64)
    s = np.clip((d + 0.5) * size_in / size_out - 0.5, 0.0, size_in - 1)
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, size_in - 1)
    return i0, i1, (s - i0).astype(np.float32)


@kernel
def _bilinear(maps, r0, r1, rt, c0, c1, ct):
    n, _, _ = maps.shape
    out_h, out_w = r0.shape[0], c0.shape[0]
    out = np.empty((n, out_h, out_w), dtype=np.float32)
    for k in prange(n * out_h):  # one output row per iteration
        s, y = k // out_h, k % out_h
        a, b, t = r0[y], r1[y], rt[y]
        for x in range(out_w):
            top = maps[s, a, c0[x]] * (1 - ct[x]) + maps[s, a, c1[x]] * ct[x]
            bottom = maps[s, b, c0[x]] * (1 - ct[x]) + maps[s, b, c1[x]] * ct[x]
            out[s, y, x] = top * (1 - t) + bottom * t
    return out


def bilinear_resize(maps, height, width):
    """(N, h, w) float32 -> (N, height, width) float32."""
    if jit.use_numpy(np.empty((len(maps), height, width), dtype=np.uint8)):
        return bilinear_resize_numpy(maps, height, width)
    r0, r1, rt = _axis_weights(maps.shape[1], height)
    c0, c1, ct = _axis_weights(maps.shape[2], width)
    return _bilinear(np.ascontiguousarray(maps, dtype=np.float32), r0, r1, rt, c0, c1, ct)


def bilinear_resize_numpy(maps, height, width):
    r0, r1, rt = _axis_weights(maps.shape[1], height)
    c0, c1, ct = _axis_weights(maps.shape[2], width)
    rows = maps[:, r0, :] * (1 - rt)[None, :, None] + maps[:, r1, :] * rt[None, :, None]
    return (rows[:, :, c0] * (1 - ct) + rows[:, :, c1] * ct).astype(np.float32)
