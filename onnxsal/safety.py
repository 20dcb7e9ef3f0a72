"""Checks made before work starts: values that must be finite numbers in a range, and the memory budget.

Memory budget: the bytes one run may allocate for model tensors, images and probes. A run estimates
what it needs from the shapes (tensor elements x 4 bytes, forward and backward) before allocating
anything, and refuses with a one-line error when the estimate is over the budget.
Default: half of the machine's physical memory or the container's limit (at least 1 GiB); ONNXSAL_MEMORY_BUDGET
overrides it
("8G", "512M", "1.5GiB" or a number of bytes).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import sys
import warnings

import numpy as np

from .errors import InputError, ModelError, OnnxsalError


class ResourceError(OnnxsalError):
    """A request that would need more memory than the budget allows."""


class ImageTooLarge(ResourceError, InputError):
    """An image file whose decoded pixels would not fit the budget (a bad file: skipped like a corrupt one)."""


# -- numbers --------------------------------------------------------------------------------------------

def finite_number(value, name: str, *, low: float | None = None, high: float | None = None, low_open: bool = False,
                  nonzero: bool = False) -> float:
    """`value` as a float, or InputError naming `name` when it is not a finite number in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{name} must be a number, not {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise InputError(f"{name} must be a finite number, not {number}")
    if low is not None and (number < low or (low_open and number == low)):
        bound = f"greater than {low:g}" if low_open else f"at least {low:g}"
        raise InputError(f"{name} must be {bound}, not {number:g}")
    if high is not None and number > high:
        raise InputError(f"{name} must be at most {high:g}, not {number:g}")
    if nonzero and number == 0:
        raise InputError(f"{name} must not be 0")
    return number


def whole_number(value, name: str, *, low: int = 1) -> int:
    """`value` as an int (a float with no fraction is accepted), or InputError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{name} must be a whole number, not {value!r}")
    if not math.isfinite(float(value)) or float(value) != int(value):
        raise InputError(f"{name} must be a whole number, not {value!r}")
    if int(value) < low:
        raise InputError(f"{name} must be at least {low}, not {int(value)}")
    return int(value)


def check_scores(scores: np.ndarray, output: str, where: str, model=None) -> None:
    """Refuse scores that are NaN or infinite: say for which input and, when found, which weights are to blame."""
    scores = np.asarray(scores)
    if np.isfinite(scores).all():
        return
    kind = "NaN" if np.isnan(scores).any() else "infinite"
    blame = ""
    if model is not None:
        bad = nonfinite_initializers(model)
        if bad:
            shown = ", ".join(repr(b) for b in bad[:3]) + (", ..." if len(bad) > 3 else "")
            blame = f"; the model's weights {shown} hold NaN or infinite values"
    raise ModelError(f"the model's output {output!r} is {kind} for {where}{blame}; check the model and its preprocessing")


def nonfinite_initializers(model) -> list[str]:
    """Names of the model's float initializers that hold a NaN or an infinity."""
    from onnx import numpy_helper

    names = []
    for init in model.graph.initializer:
        try:
            values = numpy_helper.to_array(init)
        except Exception:  # noqa: BLE001 - external data not loaded, odd types: not our question here
            continue
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            names.append(init.name)
    return names


def check_fields(prep) -> None:
    """The fields of a Preprocessing (from flags, a sidecar or the API): right types, finite, in range."""
    if isinstance(prep.size, (list, tuple)):  # (height, width); "HxW" strings are parsed by Preprocessing
        for side in prep.size:
            whole_number(side, "size")
    elif not isinstance(prep.size, str):
        whole_number(prep.size, "size")
    finite_number(prep.crop, "crop", low=0, high=1, low_open=True)
    finite_number(prep.scale, "scale", nonzero=True)
    for name in ("mean", "std"):
        value = getattr(prep, name)
        values = [value] if isinstance(value, (int, float, np.number)) or isinstance(value, str) else value
        if not isinstance(values, (list, tuple, np.ndarray)):
            raise InputError(f"{name} must be a number or a list of numbers (one per channel), not {value!r}")
        for v in values:
            finite_number(v, name, low=0 if name == "std" else None, low_open=name == "std")
    for name in ("order", "interpolation", "layout"):
        if not isinstance(getattr(prep, name), str):
            raise InputError(f"{name} must be a string, not {getattr(prep, name)!r}")
    if not isinstance(prep.bgr, (bool, np.bool_)):
        raise InputError(f"bgr must be true or false, not {prep.bgr!r}")


# -- memory ---------------------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def parse_bytes(text: str, name: str = "ONNXSAL_MEMORY_BUDGET") -> int:
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise InputError(f"{name} must be a size such as 8G, 512M or a number of bytes, not {text!r}")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise InputError(f"{name} must be a positive size, not {text!r}")
    return value


CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def physical_memory() -> int | None:
    """The machine's memory, or the container's limit (cgroup v2 or v1) when that is lower."""
    try:
        total = int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        total = None
    for path in CGROUP_LIMITS:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and (total is None or int(text) < total):
            total = int(text)
    return total


def memory_budget() -> int:
    """Bytes a run may allocate: $ONNXSAL_MEMORY_BUDGET, else half the physical memory (at least 1 GiB)."""
    text = os.environ.get("ONNXSAL_MEMORY_BUDGET")
    if text:
        return parse_bytes(text)
    total = physical_memory()
    return max(1 << 30, total // 2) if total else 8 << 30


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def fits_budget(needed: int) -> bool:
    return needed <= memory_budget()


def sample_bytes(shapes: dict, names) -> int:
    """float32 bytes of one sample's share of the named batch-first tensors (unknown dimensions count as 1)."""
    total = 0
    for name in set(names):
        shape = shapes.get(name)
        if shape:
            total += 4 * int(np.prod([d for d in shape[1:] if isinstance(d, int) and d > 0], dtype=np.float64))
    return total


def check_memory(needed: int, what: str, advice: str) -> None:
    """ResourceError when `needed` bytes are over the budget; `what` says for what, `advice` what to change."""
    budget = memory_budget()
    if needed > budget:
        raise ResourceError(f"{what} needs about {human_bytes(needed)}, over the memory budget of {human_bytes(budget)}; "
                            f"{advice} (or raise ONNXSAL_MEMORY_BUDGET)")


def model_run_bytes(graph, batch: int = 1) -> int:
    """Bytes of a gradient run of a canonical model over `batch` samples: each sample's batch-dependent tensors,
    forward and backward (~3x; the batch-of-2 probe, 2x forward, fits the bound of batch 1), plus the weights,
    held by up to three sessions. Unknown dimensions count as 1."""
    per_sample = 0
    for shape in list(graph.shapes.values()) + [graph.input_shape]:
        if not shape or shape[0] is not None:
            continue
        dims = [d for d in shape[1:] if d is not None]
        per_sample += 4 * int(np.prod(dims, dtype=np.float64))
    return 3 * per_sample * max(1, batch) + 3 * model_bytes(graph)


def model_bytes(graph) -> int:
    """graph.model.ByteSize(), computed once per canonical graph (protobuf walks every tensor: ~15 ms on a 14 MB
    model, and it was asked three times per Explainer)."""
    known = graph.__dict__.get("_model_bytes")
    if known is None or known[0] is not graph.model:
        known = (graph.model, graph.model.ByteSize())
        graph.__dict__["_model_bytes"] = known
    return known[1]


def check_model_memory(graph, batch: int = 1) -> None:
    shape = "x".join("N" if d is None else str(d) for d in graph.input_shape)
    check_memory(model_run_bytes(graph), f"one sample of input {shape}",
                 "use a smaller --size (or input_shape=) or a smaller model")
    if batch > 1:
        check_memory(model_run_bytes(graph, batch), f"a batch of {batch} samples of input {shape}",
                     "use a smaller --batch-size (batch_size=)")


def images_per_chunk(graph, most: int) -> int:
    """How many images to decode and explain together (at most `most`) so that their inputs and the arrays the
    methods keep per image (~8 input-sized float32 arrays: input, baselines or noise, attributions, sums) fit the
    budget next to one model run."""
    per_image = 8 * 4 * int(np.prod([d for d in graph.input_shape[1:] if d is not None], dtype=np.float64))
    room = memory_budget() - model_run_bytes(graph)
    return int(max(1, min(most, room // max(per_image, 1))))


def check_image_memory(width: int, height: int, bands: int, path) -> None:
    """Decoding an image takes width x height x bands bytes, and its float copy four times that."""
    try:
        check_memory(width * height * max(bands, 3) * 5, f"{path} ({width}x{height} pixels)", "use a smaller image")
    except ResourceError as exc:
        raise ImageTooLarge(str(exc)) from None


# -- signals and warnings (the command line) ------------------------------------------------------------

class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like SIGINT's KeyboardInterrupt so every `finally` and temporary clean-up runs."""


def _terminate(signum, frame):
    raise Terminated()


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
    print(f"warning: {text}", file=file or sys.stderr)


@contextlib.contextmanager
def quiet_runtime():
    """While a command runs: SIGTERM behaves like SIGINT, and Python warnings print as one `warning:` line
    (no file names or source lines). Both are restored afterwards."""
    previous_warning = warnings.showwarning
    warnings.showwarning = _one_line_warning
    previous_signal = None
    try:
        previous_signal = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: signals stay as they are
        pass
    try:
        yield
    finally:
        warnings.showwarning = previous_warning
        if previous_signal is not None:
            signal.signal(signal.SIGTERM, previous_signal)
