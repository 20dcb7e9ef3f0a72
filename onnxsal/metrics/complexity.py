"""Complexity of a map: sparseness (Gini index) and entropy, both of |map| over its H*W pixels.

Sparseness (Chalasani et al. 2020, after Hurley & Rickard 2009): with |a| sorted ascending, a_(1) <= ... <= a_(P),
    G = 1 - 2 * sum_k (a_(k) / ||a||_1) * (P - k + 1/2) / P         (0: all equal; -> 1: one pixel holds all)
Entropy (Bhatt et al. 2020, "complexity"): p_i = |a_i| / sum_j |a_j|,  H = -sum_i p_i ln p_i  (nats; 0 log 0 = 0).
A constant-zero map has sparseness 0 and entropy ln P (treated as uniform).
"""

from __future__ import annotations

import numpy as np


def sparseness(m: np.ndarray) -> float:
    a = np.sort(np.abs(np.asarray(m, np.float64)).ravel())
    total = a.sum()
    if total <= 0:
        return 0.0
    p = len(a)
    k = np.arange(1, p + 1)
    return float(1.0 - 2.0 * ((a / total) * (p - k + 0.5) / p).sum())


def entropy(m: np.ndarray) -> float:
    a = np.abs(np.asarray(m, np.float64)).ravel()
    total = a.sum()
    if total <= 0:
        return float(np.log(len(a)))
    p = a[a > 0] / total
    return float(-(p * np.log(p)).sum())
