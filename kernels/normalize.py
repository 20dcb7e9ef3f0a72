"""Percentile normalisation of maps for display: m' = clip(m / p, -1, 1) (signed) or clip(m / p, 0, 1).

p is the q-th percentile of |m| over each map (q = 99 by default, as in Smilkov et al. 2017's visualisation);
a map that is all zero stays zero. Percentile by linear interpolation between order statistics
(numpy's default 'linear' method), found by selection (np.partition), not a full sort.
"""

import numpy as np
from . import jit
from .jit import kernel, prange


@kernel
def _normalize(maps, q, signed):
    n = maps.shape[0]
    out = np.empty_like(maps)
    for s in prange(n):
        flat = np.abs(maps[s].ravel())
        pos = (flat.shape[0] - 1) * q / 100.0
        lo = int(np.floor(pos))
        flat = np.partition(flat, lo)  # selection, O(n): flat[lo] is the lo-th order statistic, larger ones after it
        upper = flat[lo] if lo + 1 >= flat.shape[0] else flat[lo + 1:].min()
        p = flat[lo] + (upper - flat[lo]) * (pos - lo)
        h, w = maps.shape[1], maps.shape[2]
        for i in range(h):
            for j in range(w):
                v = maps[s, i, j] / p if p > 0 else 0.0
                lower = -1.0 if signed else 0.0
                out[s, i, j] = min(max(v, lower), 1.0)
    return out


# Which path runs (benchmarks/kernels.py, 2-core VM, batches of 224 x 224 maps): numpy's percentile selects in
# C and was never slower than this body, serial or parallel, from 1 to 64 maps (the body sorted each map until
# 2026-11-30 and was then 5-8x slower where it was dispatched). So the numpy twin runs at every size; tests lower
# NUMBA_FROM to run the Numba body.
NUMBA_FROM = float("inf")


def percentile_normalize(maps, q=99.0, signed=False):
    """(N, H, W) float32 -> same shape in [0, 1] (or [-1, 1] when signed)."""
    if jit.use_numpy(maps) or maps.size < NUMBA_FROM:
        return percentile_normalize_numpy(maps, q, signed)
    return _normalize(np.ascontiguousarray(maps, dtype=np.float32), float(q), bool(signed))


def percentile_normalize_numpy(maps, q=99.0, signed=False):
    p = np.percentile(np.abs(maps).reshape(len(maps), -1), q, axis=1).astype(np.float32)
    safe = np.where(p > 0, p, 1)[:, None, None]
    out = np.where(p[:, None, None] > 0, maps / safe, 0)
    return np.clip(out, -1.0 if signed else 0.0, 1.0).astype(np.float32)
