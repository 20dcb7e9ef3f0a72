"""Elementwise products over (N, C, H, W) attributions.

guided_product:      out[n, c, i, j] = g[n, c, i, j] * m[n, i, j]      (Guided Grad-CAM, Selvaraju 2017 sec. 3.1)
scale_by_difference: out[n, ...] = acc[n, ...] * (x[n, ...] - b[n, ...])  (Integrated Gradients, Sundararajan 2017 eq. 3)
"""

import numpy as np
from . import jit
from .jit import kernel, prange


@kernel
def _guided_product(g, m):
    n, c, h, w = g.shape
    out = np.empty_like(g)
    for k in prange(n * c):
        s, ch = k // c, k % c
        for i in range(h):
            for j in range(w):
                out[s, ch, i, j] = g[s, ch, i, j] * m[s, i, j]
    return out


def guided_product(g, m):
    """(N, C, H, W) = g * m[:, None]."""
    return guided_product_numpy(g, m) if jit.use_numpy(g) else _guided_product(g, m)


def guided_product_numpy(g, m):
    return (g * m[:, None]).astype(np.float32)


@kernel
def _scale_by_difference(acc, x, b):
    out = np.empty_like(acc)
    for k in prange(acc.shape[0]):
        for d in range(acc.shape[1]):
            out[k, d] = acc[k, d] * (x[k, d] - b[k, d])
    return out


def scale_by_difference(acc, x, b):
    """acc * (x - b), all of one shape (N, ...)."""
    if jit.use_numpy(acc):
        return scale_by_difference_numpy(acc, x, b)
    n = acc.shape[0]
    out = _scale_by_difference(acc.reshape(n, -1), np.ascontiguousarray(x, np.float32).reshape(n, -1),
                               np.ascontiguousarray(b, np.float32).reshape(n, -1))
    return out.reshape(acc.shape)


def scale_by_difference_numpy(acc, x, b):
    return (acc * (x.astype(np.float32) - b.astype(np.float32))).astype(np.float32)
