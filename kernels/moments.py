"""Streaming sums over chunks of per-sample results (IG steps, SmoothGrad samples, occlusion windows).

accumulate:          acc[owner[b], d] += weight[b] * v[b, d]                      (IG: sum_k w_k grad(x_k))
accumulate_moments:  s1[owner[b], d] += v[b, d];  s2[owner[b], d] += v[b, d]^2    (SmoothGrad mean / square / variance)
Accumulators are float64 (N, D); chunks are float32 (B, D). Several rows b may share an owner, so the
parallel loop runs over blocks of d (disjoint columns), never over b; inside a block each row is read
contiguously (a loop over d outermost strides across rows and was 10-16x slower than numpy at batch 16).
"""

import numpy as np
from . import jit
from .jit import kernel, prange


BLOCK = 2048  # columns per parallel iteration: rows are walked contiguously inside a block


@kernel
def _accumulate(acc, v, owner, weight):
    columns = v.shape[1]
    for k in prange((columns + BLOCK - 1) // BLOCK):  # disjoint column blocks
        lo, hi = k * BLOCK, min(columns, (k + 1) * BLOCK)
        for b in range(v.shape[0]):
            o, w = owner[b], np.float64(weight[b])
            for d in range(lo, hi):
                acc[o, d] += w * np.float64(v[b, d])


def accumulate(acc, v, owner, weight):
    """acc[owner[b]] += weight[b] * v[b], in place."""
    if jit.use_numpy(v):
        accumulate_numpy(acc, v, owner, weight)
    else:
        _accumulate(acc, v, owner, weight)


def _groups(owner):
    """(owner value, rows) for each distinct owner: rows of one owner are summed with one vectorised call."""
    for o in np.unique(owner):
        yield o, np.flatnonzero(owner == o)


def accumulate_numpy(acc, v, owner, weight):
    for o, rows in _groups(owner):
        acc[o] += weight[rows].astype(np.float64) @ v[rows].astype(np.float64)


@kernel
def _accumulate_moments(s1, s2, v, owner):
    columns = v.shape[1]
    for k in prange((columns + BLOCK - 1) // BLOCK):
        lo, hi = k * BLOCK, min(columns, (k + 1) * BLOCK)
        for b in range(v.shape[0]):
            o = owner[b]
            for d in range(lo, hi):
                x = np.float64(v[b, d])
                s1[o, d] += x
                s2[o, d] += x * x


def accumulate_moments(s1, s2, v, owner):
    """s1[owner[b]] += v[b], s2[owner[b]] += v[b]^2, in place."""
    if jit.use_numpy(v):
        accumulate_moments_numpy(s1, s2, v, owner)
    else:
        _accumulate_moments(s1, s2, v, owner)


def accumulate_moments_numpy(s1, s2, v, owner):
    for o, rows in _groups(owner):
        part = v[rows].astype(np.float64)
        s1[o] += part.sum(axis=0)
        s2[o] += (part * part).sum(axis=0)
