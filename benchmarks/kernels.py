"""Per-kernel timing of the three paths a kernel can take (kernels/jit.py): the numpy twin, the Numba body
compiled serially, and compiled with parallel=True, at the sizes explanations produce. It prints, per kernel
and size, the median time of each path, the fastest, and the path the dispatcher takes today, so that the
thresholds in kernels/ can be set from measurements rather than guessed.

    python benchmarks/kernels.py                    # all kernels, default sizes, 7 repeats
    python benchmarks/kernels.py --kernels percentile_normalize --repeats 15 --json out.json

Not run by CI. On a shared machine repeat a run before trusting a ratio below 1.5.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

R = np.random.default_rng(0)


def f32(*shape):
    return R.standard_normal(shape).astype(np.float32)


# kernel -> (module, body, numpy twin, public dispatcher, argument builder per batch n); sizes: batches of
# 224 x 224 maps, or of 3 x 224 x 224 inputs, or of (C=1280, 7, 7) MobileNetV2 activations
def cases():
    from onnxsal.kernels import cam, moments, normalize, pixelwise, resize

    def resize_args(n):
        maps = f32(n, 7, 7)
        r0, r1, rt = resize._axis_weights(7, 224)
        return (maps, r0, r1, rt, r0, r1, rt), (maps, 224, 224), (maps, 224, 224)

    def accumulate_args(n):
        acc, v = np.zeros((n, 3 * 224 * 224)), f32(n, 3 * 224 * 224)
        owner, weight = np.arange(n), np.ones(n, np.float32)
        return ((acc, v, owner, weight),) * 3

    def moments_args(n):
        s1, s2, v = np.zeros((n, 3 * 224 * 224)), np.zeros((n, 3 * 224 * 224)), f32(n, 3 * 224 * 224)
        return ((s1, s2, v, np.arange(n)),) * 3

    def diff_args(n):
        acc, x, b = f32(n, 3 * 224 * 224), f32(n, 3 * 224 * 224), f32(n, 3 * 224 * 224)
        return ((acc, x, b),) * 3

    return {
        "percentile_normalize": (normalize._normalize, normalize.percentile_normalize_numpy, normalize.percentile_normalize,
                                 lambda n: ((f32(n, 224, 224), 99.0, False),) * 3),
        "bilinear_resize": (resize._bilinear, resize.bilinear_resize_numpy, resize.bilinear_resize, resize_args),
        "channel_mean": (cam._channel_mean, cam.channel_mean_numpy, cam.channel_mean, lambda n: ((f32(n, 1280, 7, 7),),) * 3),
        "weighted_sum": (cam._weighted_sum_channel, cam.weighted_sum_numpy, cam.weighted_sum,
                         lambda n: ((f32(n, 1280), f32(n, 1280, 7, 7), True),) * 3),
        "guided_product": (pixelwise._guided_product, pixelwise.guided_product_numpy, pixelwise.guided_product,
                           lambda n: ((f32(n, 3, 224, 224), f32(n, 224, 224)),) * 3),
        "scale_by_difference": (pixelwise._scale_by_difference, pixelwise.scale_by_difference_numpy,
                                pixelwise.scale_by_difference, diff_args),
        "accumulate": (moments._accumulate, moments.accumulate_numpy, moments.accumulate, accumulate_args),
        "accumulate_moments": (moments._accumulate_moments, moments.accumulate_moments_numpy, moments.accumulate_moments,
                               moments_args),
    }


def timed(fn, args, repeats):
    fn(*args)  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def dispatched(name, body_args, public_args):
    """Which path the public function takes for these arguments today."""
    from onnxsal.kernels import jit

    if name == "bilinear_resize":
        maps, h, w = public_args
        size = len(maps) * h * w
    else:
        size = jit.work(*public_args)
    threshold = getattr(__import__(f"onnxsal.kernels.{MODULES[name]}", fromlist=["x"]), "NUMBA_FROM", jit.NUMPY_BELOW)
    if jit.FORCE_NUMPY or size < threshold:
        return "numpy"
    return "parallel" if jit.work(*body_args) >= jit.PARALLEL_FROM else "serial"


MODULES = {"percentile_normalize": "normalize", "bilinear_resize": "resize", "channel_mean": "cam", "weighted_sum": "cam",
           "guided_product": "pixelwise", "scale_by_difference": "pixelwise", "accumulate": "moments",
           "accumulate_moments": "moments"}


def first_call_ms() -> float:
    """Importing Numba and loading one cached kernel, in a fresh process: what the numpy twins save one photo."""
    import subprocess
    import sys

    code = ("import time, numpy as np; from onnxsal.kernels import cam; t = time.perf_counter(); "
            "cam._channel_mean(np.zeros((1, 1, 2, 2), np.float32)); print((time.perf_counter() - t) * 1e3)")
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
            for _ in range(3)]
    return statistics.median(runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", nargs="*", default=None)
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import numba

    from onnxsal.kernels import jit

    all_cases = cases()
    rows = []
    print(f"numba {numba.__version__}, {numba.config.NUMBA_NUM_THREADS} threads; dispatch: numpy below {jit.NUMPY_BELOW}, "
          f"parallel from {jit.PARALLEL_FROM} elements (kernel-specific NUMBA_FROM where a module sets one)")
    print(f"first Numba call in a process (import + cached kernel load): {first_call_ms():.0f} ms; below NUMPY_BELOW a "
          "kernel call takes well under 1 ms either way, so the twins run there")
    print(f"{'kernel':22} {'batch':>5} {'elements':>10} {'numpy ms':>9} {'serial ms':>9} {'parallel ms':>11} "
          f"{'fastest':>8} {'dispatched':>10} {'loss':>5}")
    for name in args.kernels or all_cases:
        body, twin, _public, build = all_cases[name]
        serial, parallel = body._serial, body._parallel
        if serial is None:
            body._compile()
            serial, parallel = body._serial, body._parallel
        for n in args.batches:
            body_args, twin_args, public_args = build(n)
            t = {"numpy": timed(twin, twin_args, args.repeats), "serial": timed(serial, body_args, args.repeats),
                 "parallel": timed(parallel, body_args, args.repeats)}
            fastest = min(t, key=t.get)
            chosen = dispatched(name, body_args, public_args)
            size = jit.work(*body_args) if name != "bilinear_resize" else n * 224 * 224
            row = {"kernel": name, "batch": n, "elements": size, **{f"{k}_ms": round(v, 3) for k, v in t.items()},
                   "fastest": fastest, "dispatched": chosen, "loss": round(t[chosen] / t[fastest], 2)}
            rows.append(row)
            print(f"{name:22} {n:5d} {size:10d} {t['numpy']:9.2f} {t['serial']:9.2f} {t['parallel']:11.2f} "
                  f"{fastest:>8} {chosen:>10} {row['loss']:5.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
