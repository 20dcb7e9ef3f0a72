"""One kernel body, three ways to run it, chosen by the size of the work.

    below NUMPY_BELOW elements         the numpy twin (no Numba import, no compilation: one photo's maps)
    below PARALLEL_FROM elements       the body compiled serially by Numba
    from PARALLEL_FROM elements        the body compiled with parallel=True (prange over disjoint outputs)

Numba is imported on the first call that needs it, and `prange` is bound to numba.prange then; until
that moment the module-level name is Python's range.
"""

import os

NUMPY_BELOW = 1 << 20
PARALLEL_FROM = 1 << 22
FORCE_NUMPY = os.environ.get("ONNXSAL_KERNELS", "numba") == "numpy"
prange = range


def work(*arrays) -> int:
    return max((getattr(a, "size", 0) for a in arrays), default=0)


def use_numpy(*arrays) -> bool:
    return FORCE_NUMPY or work(*arrays) < NUMPY_BELOW


class Kernel:
    """A Numba kernel compiled on demand, serial or parallel by the size of its largest array argument."""

    def __init__(self, fn):
        self.fn = fn
        self._serial = self._parallel = None
        self.__doc__, self.__name__ = fn.__doc__, fn.__name__

    def _compile(self):
        import numba

        self.fn.__globals__["prange"] = numba.prange
        self._serial = numba.njit(cache=True)(self.fn)
        self._parallel = numba.njit(cache=True, parallel=True)(self.fn)

    def __call__(self, *args):
        if self._serial is None:
            self._compile()
        return (self._parallel if work(*args) >= PARALLEL_FROM else self._serial)(*args)

    @property
    def stats(self):
        if self._serial is None:
            self._compile()
        return self._serial.stats


def kernel(fn):
    return Kernel(fn)
