"""CAM channel pooling and the weighted channel sum.

channel_mean:  w[n, c] = 1/(h w) sum_ij g[n, c, i, j]                (Grad-CAM's alpha, Selvaraju 2017 eq. 1)
weighted_sum:  m[n, i, j] = relu?( sum_c w[n, c(, i, j)] * a[n, c, i, j] )   (eq. 2; elementwise weights for
               LayerCAM / HiResCAM-style variants)
Arrays are float32, C-contiguous, channel-first (N, C, h, w).
"""

import numpy as np
from . import jit
from .jit import kernel, prange


@kernel
def _channel_mean(g):
    n, c, h, w = g.shape
    out = np.zeros((n, c), dtype=np.float32)
    for k in prange(n * c):  # one (sample, channel) per iteration: disjoint outputs
        s = 0.0
        for i in range(h):
            for j in range(w):
                s += g[k // c, k % c, i, j]
        out[k // c, k % c] = s / (h * w)
    return out


def channel_mean(g):
    """(N, C) = mean over (h, w) of (N, C, h, w)."""
    return channel_mean_numpy(g) if jit.use_numpy(g) else _channel_mean(g)


def channel_mean_numpy(g):
    return g.mean(axis=(2, 3), dtype=np.float64).astype(np.float32)


@kernel
def _weighted_sum_channel(weights, a, relu):
    n, c, h, w = a.shape
    out = np.zeros((n, h, w), dtype=np.float32)
    for k in prange(n * h):  # one (sample, row) per iteration
        s, i = k // h, k % h
        for j in range(w):
            acc = 0.0
            for ch in range(c):
                acc += weights[s, ch] * a[s, ch, i, j]
            out[s, i, j] = max(acc, 0.0) if relu else acc
    return out


@kernel
def _weighted_sum_elementwise(weights, a, relu):
    n, c, h, w = a.shape
    out = np.zeros((n, h, w), dtype=np.float32)
    for k in prange(n * h):
        s, i = k // h, k % h
        for j in range(w):
            acc = 0.0
            for ch in range(c):
                acc += weights[s, ch, i, j] * a[s, ch, i, j]
            out[s, i, j] = max(acc, 0.0) if relu else acc
    return out


def weighted_sum(weights, a, relu=True):
    """(N, h, w) = relu(sum_c weights * a); weights (N, C) per channel or (N, C, h, w) per element."""
    if jit.use_numpy(a):
        return weighted_sum_numpy(weights, a, relu)
    if weights.ndim == 2:
        return _weighted_sum_channel(weights, a, relu)
    return _weighted_sum_elementwise(weights, a, relu)


def weighted_sum_numpy(weights, a, relu=True):
    w = weights[:, :, None, None] if weights.ndim == 2 else weights
    m = (w.astype(np.float64) * a).sum(axis=1)
    return (np.maximum(m, 0) if relu else m).astype(np.float32)
