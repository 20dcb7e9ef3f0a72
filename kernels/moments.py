"""Streaming sums over chunks of per-sample results (IG steps, SmoothGrad samples, occlusion windows).

accumulate:          acc[owner[b], d] += weight[b] * v[b, d]                      (IG: sum_k w_k grad(x_k))
accumulate_moments:  s1[owner[b], d] += v[b, d];  s2[owner[b], d] += v[b, d]^2    (SmoothGrad mean / square / variance)
Accumulators are float64 (N, D); chunks are float32 (B, D). Several rows b may share an owner, so the
parallel loop runs over d (disjoint columns), never over b.
"""

import numpy as np
from . import jit
from .jit import kernel, prange


@kernel
def _accumulate(acc, v, owner, weight):
    for d in prange(v.shape[1]):
        for b in range(v.shape[0]):
            acc[owner[b], d] += np.float64(weight[b]) * np.float64(v[b, d])


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
    for d in prange(v.shape[1]):
        for b in range(v.shape[0]):
            x = np.float64(v[b, d])
            s1[owner[b], d] += x
            s2[owner[b], d] += x * x


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
