"""Shared timing for the benchmark scripts (run as `python benchmarks/<script>.py`, so this folder is importable)."""

from __future__ import annotations

import statistics
import time


def timed(fn, repeats: int = 3, warmups: int = 1) -> float:
    """Median wall time in seconds of `repeats` calls of fn(), after `warmups` untimed calls."""
    for _ in range(warmups):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
