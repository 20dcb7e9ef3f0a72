"""Conjugate gradients for ROAD's noisy linear imputation (Rong et al. 2022, sec. 4.2), on the pixel grid.

For the removed pixels R (a bool (H, W) mask) solve, per channel, (D - W_RR) v = b, where
    (W u)_p = sum over p's 8 neighbours n inside the image of w_n u_n,  w = 1/6 direct, 1/12 diagonal,
D = diag(sum of p's in-image neighbour weights) and b = W_RK x_K (the kept neighbours' contribution).
v and b are (C, H, W) float64, zero outside R; v holds the start and is overwritten with the solution.
CG stops when ||r|| <= tolerance * ||b|| in every channel, or after `max_iterations`.

The numpy twin vectorises over the whole grid (the stencil as two separable [1, 2, 1] passes); the Numba
kernel walks only the removed pixels, one channel per parallel iteration (channels write disjoint slices),
which makes the whole iteration one pass over memory instead of about fifteen.
"""

import numpy as np

from . import jit


def _neighbour_sum_numpy(v):
    """sum_n w_n v_n over the in-image neighbours of every pixel of v (C, H, W): [[1,2,1],[2,0,2],[1,2,1]] / 12,
    i.e. the separable [1, 2, 1] x [1, 2, 1] less 4 at the centre."""
    rows = 2.0 * v
    rows[..., 1:] += v[..., :-1]
    rows[..., :-1] += v[..., 1:]
    both = 2.0 * rows
    both[..., 1:, :] += rows[..., :-1, :]
    both[..., :-1, :] += rows[..., 1:, :]
    both -= 4.0 * v
    both *= 1.0 / 12.0
    return both


def neighbour_cg_numpy(v, b, removed, diag, tolerance, max_iterations):
    rmask = removed.astype(np.float64)

    def apply(u):  # (D - W_RR) u on the removed pixels; u is zero on kept pixels
        return (diag * u - _neighbour_sum_numpy(u)) * rmask

    r = b - apply(v)
    p = r.copy()
    rr = (r * r).sum(axis=(1, 2))
    limit = (tolerance ** 2) * np.maximum((b * b).sum(axis=(1, 2)), 1e-300)
    for _ in range(int(max_iterations)):
        if (rr <= limit).all():
            break
        ap = apply(p)
        pap = (p * ap).sum(axis=(1, 2))
        alpha = np.where(pap > 0, rr / np.where(pap > 0, pap, 1.0), 0.0)[:, None, None]
        v += alpha * p
        r -= alpha * ap
        rr_new = (r * r).sum(axis=(1, 2))
        beta = np.where(rr > 0, rr_new / np.where(rr > 0, rr, 1.0), 0.0)[:, None, None]
        p = r + beta * p
        rr = rr_new
    return v


_compiled = {}


def _build():
    """Compile the kernel (serial stencil helper + a prange over channels) on first use; cached on disk."""
    import numba

    @numba.njit(cache=True)
    def apply(u, ys, xs, index, diag, out):  # out[k] = ((D - W_RR) u)[pixel k]; u holds removed pixels only
        h, w = index.shape
        for k in range(len(ys)):
            y, x = ys[k], xs[k]
            s = 0.0
            for dy in range(-1, 2):
                yy = y + dy
                if yy < 0 or yy >= h:
                    continue
                for dx in range(-1, 2):
                    xx = x + dx
                    if (dy == 0 and dx == 0) or xx < 0 or xx >= w:
                        continue
                    j = index[yy, xx]
                    if j >= 0:
                        s += (1.0 / 6.0 if dy == 0 or dx == 0 else 1.0 / 12.0) * u[j]
            out[k] = diag[y, x] * u[k] - s

    @numba.njit(cache=True, parallel=True)
    def solve(v, b, ys, xs, index, diag, tolerance, max_iterations):  # v, b (C, K): the removed pixels only
        channels, count = v.shape
        for c in numba.prange(channels):  # disjoint rows of v
            r = np.empty(count)
            p = np.empty(count)
            ap = np.empty(count)
            apply(v[c], ys, xs, index, diag, ap)
            rr = 0.0
            bb = 0.0
            for k in range(count):
                r[k] = b[c, k] - ap[k]
                p[k] = r[k]
                rr += r[k] * r[k]
                bb += b[c, k] * b[c, k]
            limit = tolerance * tolerance * max(bb, 1e-300)
            for _ in range(max_iterations):
                if rr <= limit:
                    break
                apply(p, ys, xs, index, diag, ap)
                pap = 0.0
                for k in range(count):
                    pap += p[k] * ap[k]
                alpha = rr / pap if pap > 0 else 0.0
                rr_new = 0.0
                for k in range(count):
                    v[c, k] += alpha * p[k]
                    r[k] -= alpha * ap[k]
                    rr_new += r[k] * r[k]
                beta = rr_new / rr if rr > 0 else 0.0
                for k in range(count):
                    p[k] = r[k] + beta * p[k]
                rr = rr_new

    _compiled["solve"] = solve


def neighbour_cg(v, b, removed, diag, tolerance, max_iterations):
    """Solve in place (see the module docstring); returns v. Numba unless ONNXSAL_KERNELS=numpy or the removed
    region is small (under 4096 pixels: compilation would cost more than it saves)."""
    ys, xs = np.nonzero(removed)
    if jit.FORCE_NUMPY or len(ys) < 4096:
        return neighbour_cg_numpy(v, b, removed, diag, tolerance, max_iterations)
    return neighbour_cg_numba(v, b, removed, diag, tolerance, max_iterations)


def neighbour_cg_numba(v, b, removed, diag, tolerance, max_iterations):
    """The Numba kernel whatever the size (the tests call it directly)."""
    if "solve" not in _compiled:
        _build()
    ys, xs = np.nonzero(removed)
    index = np.full(removed.shape, -1, np.int64)
    index[ys, xs] = np.arange(len(ys))
    vk = np.ascontiguousarray(v[:, ys, xs], np.float64)
    bk = np.ascontiguousarray(b[:, ys, xs], np.float64)
    _compiled["solve"](vk, bk, ys.astype(np.int64), xs.astype(np.int64), index, np.ascontiguousarray(diag, np.float64),
                       float(tolerance), int(max_iterations))
    v[:, ys, xs] = vk
    return v
