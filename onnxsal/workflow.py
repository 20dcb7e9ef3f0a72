"""File-level work behind the CLI: pick preprocessing, load and check images, explain them, write pictures.

Usable from Python too; everything here raises OnnxsalError subclasses with one-line messages.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import InputError, MethodError, TargetError
from .preprocess import Preprocessing, image_errors, load_image, sidecar_for

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
CAM_LIKE = ("cam", "grad_cam", "grad_cam_plus_plus", "xgrad_cam", "layer_cam", "hires_cam", "grad_cam_elementwise")
MASK_METHODS = ("rise", "drise")
SMOOTH_MAPS = CAM_LIKE + MASK_METHODS  # low-frequency maps: scaled by their maximum, blended whole


def image_files(paths: Sequence[str], on_bad: Callable[[Path, str], None] | None = None) -> list[Path]:
    """Files from arguments (directories expand to the images inside, sorted); checks each is a regular file
    whose header PIL recognises (pixels are decoded later, once).

    A bad file raises InputError, or, with `on_bad`, is reported to on_bad(path, reason) and left out."""
    from PIL import Image

    from .files import require_regular
    from .safety import check_image_memory

    candidates: list[Path] = []
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
            if not inside:
                raise InputError(f"directory {path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            candidates += inside
        else:
            candidates.append(path)
    files: list[Path] = []
    for path in candidates:
        try:
            require_regular(path, "image")  # never open a pipe: it may block, and it cannot be read twice
            with image_errors(path), warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the budget decides below
                with Image.open(path) as im:  # the header only
                    check_image_memory(im.width, im.height, len(im.getbands()), path)
        except InputError as exc:
            if on_bad is None:
                raise
            on_bad(path, str(exc))
            continue
        files.append(path)
    return files


def read_labels(path) -> list[str]:
    from .files import require_regular

    path = require_regular(path, "labels")
    try:
        return [line.strip() for line in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read labels file {path}: {exc}") from None


@dataclass
class ModelSetup:
    source: object
    zoo_name: str | None
    preprocessing: Preprocessing
    input_shape: tuple
    labels: list[str] | None
    notes: list[str] = field(default_factory=list)
    input_name: str | None = None
    output_name: str | None = None  # as the user gave it (None: onnxsal chooses, and says so)


def setup_model(model: str | None, *, size=None, crop=None, mean=None, std=None, scale=None, layout=None, bgr=None,
                interpolation=None, preprocess_file=None, labels_file=None, input_name=None,
                output_name=None) -> ModelSetup:
    """Model source, preprocessing and labels from a zoo name or an .onnx path plus CLI-style overrides."""
    from . import zoo
    from .graph.model import detect_layout, find_input, pick_output, read_model

    source, zoo_name = zoo.resolve(model)
    notes: list[str] = []
    sized = size is not None  # did the user choose the input size (flag or sidecar)?
    if preprocess_file:
        base = Preprocessing.from_file(preprocess_file)
        sized = sized or "size" in _sidecar_keys(preprocess_file)
        labels = list(zoo.labels(zoo_name)) if zoo_name else None
    elif zoo_name is not None:
        base = Preprocessing.from_dict(zoo.entry(zoo_name)["preprocessing"])
        labels = list(zoo.labels(zoo_name))
    else:
        sidecar = sidecar_for(Path(source))
        base = Preprocessing.from_file(sidecar) if sidecar else Preprocessing()
        if sidecar:
            notes.append(f"preprocessing from {sidecar}")
            sized = sized or "size" in _sidecar_keys(sidecar)
        labels = None
    if labels_file:
        labels = read_labels(labels_file)
    proto, _, _ = read_model(source)
    inp = find_input(proto, input_name)
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise InputError(f"the CLI explains images: input {inp.name!r} has rank {len(dims)}, not 4 (use the Python API)")
    model_layout = layout.upper() if layout else detect_layout(proto, inp.name, tuple(dims))
    spatial = dims[1:3] if model_layout == "NHWC" else dims[2:4]
    channels = dims[3] if model_layout == "NHWC" else dims[1]
    if channels not in (None, 1, 3, 4):
        raise InputError(f"the model takes {channels} channels per pixel; the CLI feeds images with 1 (gray), "
                         "3 (RGB) or 4 (RGBA) channels (use the Python API for other data)")
    channels = channels or base.channels
    overrides = {k: v for k, v in {"crop": crop, "mean": mean, "std": std, "scale": scale, "bgr": bgr,
                                   "interpolation": interpolation}.items() if v is not None}
    model_size = None if spatial[0] is None or spatial[1] is None else (spatial[0], spatial[1])
    if size is not None:
        overrides["size"] = size
    elif model_size is not None and not sized:
        overrides["size"] = model_size
    elif model_size is None and not sized:
        notes.append(f"the model takes any image size; using {base.height}x{base.width} (--size HxW to change)")
    prep = replace(base, layout=model_layout, channels=channels, **overrides)  # replace() re-validates
    h, w = prep.shape  # a size other than the model's declared one overrides it (fully convolutional models); onnxsal says so
    shape = (None, h, w, channels) if model_layout == "NHWC" else (None, channels, h, w)
    output, _ = pick_output(proto, output_name)
    if labels is None and zoo_name is None:
        classes = _output_classes(proto, output)
        if classes == 1000:
            labels = list(zoo.labels())
            notes.append("class names: ImageNet-1k, assumed from the 1000 outputs (--labels FILE to set others)")
    return ModelSetup(source=proto if zoo_name is None else source, zoo_name=zoo_name, preprocessing=prep,
                      input_shape=shape, labels=labels, notes=notes, input_name=inp.name, output_name=output_name)


def _sidecar_keys(path) -> set:
    import json

    path = Path(path)
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except Exception:  # noqa: BLE001 - Preprocessing.from_file reports parse errors
        return set()
    data = data.get("preprocessing", data) if isinstance(data, dict) else {}
    return set(data) if isinstance(data, dict) else set()


def _output_classes(proto, output: str) -> int | None:
    found = [o for o in proto.graph.output if o.name == output]
    if not found:
        return None
    dims = found[0].type.tensor_type.shape.dim
    return dims[1].dim_value if len(dims) == 2 and dims[1].HasField("dim_value") else None


def parse_target(target: str, labels: list[str] | None, classes: int | None):
    """'top', a class index, or a class name (exact, then a unique substring, case-insensitive)."""
    if target in (None, "top"):
        return "top"
    if re.fullmatch(r"-?\d+", target.strip()):
        index = int(target)
        if classes == 1 and index != 0:
            raise TargetError(f"class {index} does not exist: the output has one unit (class 0)")
        if classes is not None and not 0 <= index < classes:
            raise TargetError(f"class index {index} is out of range: the model has {classes} classes (0..{classes - 1})")
        return index
    if not labels:
        raise TargetError(f"target {target!r} is a name, but the model has no class names (--labels FILE, or give an index)")
    lowered = [label.lower() for label in labels]
    key = target.strip().lower()
    if key in lowered:
        return lowered.index(key)
    hits = [i for i, label in enumerate(lowered) if key in label]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise TargetError(f"no class named {target!r}; give a class index (0..{(classes or len(labels)) - 1}) or another name")
    shown = ", ".join(f"{i} {labels[i]}" for i in hits[:6])
    raise TargetError(f"target {target!r} matches several classes ({shown}{', ...' if len(hits) > 6 else ''}); be more precise")


def method_options(method: str, cli: dict) -> dict:
    """The CLI flags that apply to `method`, as its options."""
    from .methods import METHODS

    allowed = METHODS[method].defaults
    mapping = {"steps": "steps", "samples": "samples", "baseline": "baseline", "noise_level": "noise_level",
               "tolerance": "tolerance", "base": "base", "window": "window", "stride": "stride", "batch_size": "batch_size",
               "decoder": "decoder", "composite": "composite", "rules": "rules"}
    options = {}
    for flag, option in mapping.items():
        value = cli.get(flag)
        if value is None:
            continue
        if method in ("occlusion", "rise", "drise") and flag == "baseline":
            options["fill"] = value
        elif method in ("rise", "drise") and flag == "samples":
            options["masks"] = value
        elif option in allowed:
            options[option] = value
    return options


def unused_flags(methods: Sequence[str], cli: dict) -> list[str]:
    """One `warning:` line per method flag given that none of `methods` takes (e.g. --composite with grad_cam),
    instead of ignoring it without a word."""
    lines = []
    for flag, value in cli.items():
        if value is None or flag in ("batch_size", "decoder") or not methods:
            continue
        if not any(method_options(m, {flag: value}) for m in methods):
            lines.append(f"warning: --{flag.replace('_', '-')} applies to none of {', '.join(methods)}; ignored")
    return lines


def baseline_value(text: str | None):
    """A CLI baseline: a name, a number, a .npy file (one sample (C, H, W) / (1, C, H, W) in model space, or one per
    image), or several joined by '+' (averaged). InputError, before any model runs, for an unknown name, an empty
    part ('black+'), a non-finite number or an unreadable .npy file."""
    from .explainer import BASELINES

    if text is None:
        return None
    parts = [p.strip() for p in text.split("+")]
    values = []
    for part in parts:
        if not part:
            raise InputError(f"--baseline {text!r} has an empty part: join names with + (e.g. black+blur)")
        try:
            number = float(part)
        except ValueError:
            number = None
        if number is not None:
            if not np.isfinite(number):
                raise InputError(f"--baseline must be a finite number or a name, not {part}")
            values.append(number)
        elif part.lower().endswith(".npy"):
            try:
                values.append(np.load(part, allow_pickle=False))
            except (OSError, ValueError):
                raise InputError(f"--baseline {part}: not a readable .npy array (write one with numpy.save)") from None
        elif part in BASELINES:
            values.append(part)
        else:
            raise InputError(f"unknown baseline {part!r}; choose one of {', '.join(BASELINES)}, a number or a .npy "
                             "file, or join several with +")
    return values[0] if len(values) == 1 else values


def picture(explanation, index: int, photo, method: str, cmap: str | None, alpha: float, kind: str = "overlay"):
    """Overlay (or the bare map) of one sample of an explanation.

    CAM maps are smooth: scaled by their maximum and blended whole; pixel maps are scaled by the 99th
    percentile of |map| (Smilkov et al. 2017) and shown where they are strong.
    """
    from . import viz

    smooth = method in SMOOTH_MAPS or (method.startswith("smooth") and explanation.attributions is None) \
        or (method == "vargrad" and explanation.attributions is None)
    smooth = smooth or _display(method).startswith("smooth")
    maps = explanation.maps[index:index + 1]
    if method in MASK_METHODS or _display(method).endswith("from_min"):  # RISE maps sit on a large constant (E[f] p): shown from their minimum to their maximum
        maps = maps - maps.min()
    values = viz.normalize(maps, explanation.signed, 100.0 if smooth else 99.0)[0]
    if kind == "map":
        return viz.render_map(values, explanation.signed, cmap if cmap not in (None, "inferno") else None)
    return viz.overlay(photo, values, explanation.signed, cmap, alpha if not smooth else min(alpha, 0.5), smooth=smooth)


def _display(method: str) -> str:
    """How a method says it is drawn: "smooth" (a low-resolution map, blended whole), "smooth_from_min" (the same,
    from its minimum: maps on a large offset), or "" (the defaults above)."""
    from .methods import METHODS

    return getattr(METHODS.get(method), "display", None) or ""


def display_photo(image, prep: Preprocessing, max_side: int = 768):
    """The region of the photo the model saw (RGB, 8-bit), at (up to max_side) its own resolution."""
    from PIL import Image

    region = image.crop(prep.crop_box(*image.size))
    if region.mode == "F":  # deep images hold 0..255 floats
        region = Image.fromarray(np.clip(np.asarray(region), 0, 255).round().astype(np.uint8), mode="L")
    region = region.convert("RGB")
    if max(region.size) > max_side:
        scale = max_side / max(region.size)
        region = region.resize((max(1, round(region.width * scale)), max(1, round(region.height * scale))))
    return region


def unique_stems(files: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for f in files:
        stem = f.stem
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


def _stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr)


def zero_map_warning(file_name: str, method: str, res, k: int) -> str | None:
    """A warning when the map of sample k is identically zero (written anyway, but never silently)."""
    if np.any(res.maps[k]):
        return None
    if res.layer:
        why = (f"no positive evidence at layer {res.layer} (the CAM's ReLU removed every value, or the score does not "
               "depend on that layer); try another --layer or a pixel method")
    else:
        why = "the explained score does not change with the input here"
        why += "; try --target-kind logit" if res.target_kind != "logit" else " (a dead or saturated unit); try another method"
    return f"warning: the {method} map of {file_name} is all zeros: {why}"


@dataclass
class DenseSpec:
    """--region / --box from the command line."""

    region: str | None = None
    region_mean: bool = False
    box: str | None = None
    decoder: str | None = None
    threshold: float | None = None

    def target_for(self, explainer, target, x, photos, prep, report, names):
        """The batch's target, reporting the detections it chose; `target` when neither is set."""
        if self.region is not None:
            return region_target(explainer, self.region, target, photos, prep, self.region_mean)
        if self.box is not None:
            if self.decoder is None:
                raise TargetError("--box needs the detector's layout: --decoder yolov8|yolov5|centernet|centerface "
                                  '(or "decoder" in the model\'s .preprocess.json)')
            goal, _ = box_target(explainer, self.box, self.decoder, self.threshold, x, photos, prep, names)
            for name, photo, det in zip(names, photos, goal.detections):
                box = tuple(round(v) for v in input_to_photo(det.box, photo.size, prep))
                report(f"{name}: box {_class_name(explainer, det.label)} score {det.score:.2f} at {box} (photo pixels)")
            return goal
        return target


def list_detections(explainer, files: list[Path], decoder, threshold, report: Callable[[str], None] = print) -> int:
    """Print every decoded detection of every file (in photo pixels); returns how many."""
    from .detection import detect, make_decoder

    decoder = make_decoder(decoder, explainer.graph, threshold)
    prep = explainer.preprocessing
    count = 0
    for f in files:
        photo = load_image(f)
        found = detect(explainer, prep.batch([photo]), decoder)[0]
        report(f"{f.name}: {len(found)} detection(s)")
        for i, det in enumerate(found):
            box = tuple(round(v) for v in input_to_photo(det.box, photo.size, prep))
            report(f"  {i}: {_class_name(explainer, det.label)} score {det.score:.2f} at {box}")
        count += len(found)
    return count


def explain_files(explainer, files: list[Path], methods: list[str], target, cli_options: dict, out: Path, fmt: str,
                  cmap: str | None, alpha: float, chunk: int = 16, progress: Callable[[float], None] | None = None,
                  report: Callable[[str], None] = print, on_bad: Callable[[Path, str], None] | None = None,
                  overwrite: bool = False, warn: Callable[[str], None] = _stderr,
                  dense: DenseSpec | None = None) -> list[Path]:
    """Explain every file with every method; write <stem>_<method>.png / .npy into `out`; returns what was written.

    Per image it reports the top classes (by the head's own activation) and, per method, what was explained:
    the target, the target kind, the output and the score; an all-zero map gets a warning.
    Output stems are unique in the run and, unless `overwrite`, against files already in `out` (cat, cat-2, ...).
    A file that cannot be decoded raises InputError, or, with `on_bad`, is reported to on_bad(path, reason)
    and skipped. Scores or maps that come out NaN or infinite raise ModelError naming the file."""
    from .files import OutputNames, make_folder, remove_stale_temporaries
    from .safety import check_scores, images_per_chunk

    written: list[Path] = []
    make_folder(out)
    remove_stale_temporaries(out, endings=(".png", ".npy"))  # left by a killed run
    extensions = {"png": ["png"], "npy": ["npy"], "both": ["png", "npy"]}[fmt]
    names = OutputNames(out, overwrite)
    stems = [names.claim(f.stem, [f"_{m}.{e}" for m in methods for e in extensions]) for f in files]
    prep = explainer.preprocessing
    chunk = images_per_chunk(explainer.graph, chunk)
    warned: set = set()
    for start in range(0, len(files), chunk):
        batch_files, batch_stems, photos = [], [], []
        for f, stem in zip(files[start:start + chunk], stems[start:start + chunk]):
            try:
                photos.append(load_image(f))
            except InputError as exc:
                if on_bad is None:
                    raise
                on_bad(f, str(exc))
                continue
            batch_files.append(f)
            batch_stems.append(stem)
        if not batch_files:
            continue
        x = prep.batch(photos)
        tops = explainer.top_classes(x, 3)
        for k, f in enumerate(batch_files):
            if any(not np.isfinite(p) for _, _, p in tops[k]):
                check_scores(explainer.predict(x[k:k + 1]), explainer.graph.output_name, f.name, explainer.graph.model)
        for k, f in enumerate(batch_files):
            if tops[k]:
                report(f"{f.name}: " + ", ".join(f"{c} {name} {p:.1%}" if name != str(c) else f"{c} {p:.1%}"
                                                  for c, name, p in tops[k]))
        goal = dense.target_for(explainer, target, x, photos, prep, report, [f.name for f in batch_files]) if dense else target
        for method in methods:
            res = explainer.explain(x, method, target=goal, progress=progress, **method_options(method, cli_options))
            _check_result(explainer, res, method, batch_files)
            for line in res.info.get("warnings", []):
                if (method, line) not in warned:
                    warned.add((method, line))
                    warn(f"warning: {method}: {line}")
            for k, f in enumerate(batch_files):
                stem = batch_stems[k]
                name = _target_text(explainer, res, k)
                if explainer.graph.head.dense and " over " not in name and not name.startswith("box"):
                    name += " summed over every position"
                line = f'  {method}: {res.target_kind} of {name} at output "{res.output}" = {res.scores[k]:.4g}'
                warning = zero_map_warning(f.name, method, res, k)
                if warning:
                    warn(warning)
                if res.delta is not None:
                    line += _gap_text(explainer, res, k, x[k:k + 1])
                if fmt in ("png", "both"):
                    path = out / f"{stem}_{method}.png"
                    from . import viz

                    image = picture(res, k, display_photo(photos[k], prep), method, cmap, alpha)
                    if goal is not target:
                        image = draw_target(image, goal, k, photos[k].size, prep)
                    viz.save_png(image, path)
                    written.append(path)
                    line += f" -> {path}"
                if fmt in ("npy", "both"):
                    from . import viz

                    path = out / f"{stem}_{method}.npy"
                    viz.save_npy(res.maps[k], path)
                    written.append(path)
                    line += f"{' +' if fmt == 'both' else ' ->'} {path}"
                report(line)
    return written


def _target_text(explainer, res, k: int) -> str:
    """'class 281 (tabby)' for one class, else the target's own description."""
    c = int(res.targets[k])
    if c >= 0 and (res.target in ("the top class", "one class per sample") or res.target.startswith("class ")) \
            and " over " not in res.target:
        return f"class {_class_name(explainer, c)}"
    return res.target


def model_input_shape(source, size, input_name=None) -> tuple:
    """(None, C, H, W) or (None, H, W, C) for a model at `size` (a side or (H, W)): layout and channels from the model."""
    from .graph.model import detect_layout, find_input, read_model
    from .preprocess import _size

    size = _size(size)
    h, w = (size, size) if isinstance(size, int) else size
    proto, _, _ = read_model(source)
    inp = find_input(proto, input_name)
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise InputError(f"--size applies to image inputs; input {inp.name!r} has rank {len(dims)}")
    layout = detect_layout(proto, inp.name, tuple(dims))
    channels = dims[3] if layout == "NHWC" else dims[1]
    return (None, h, w, channels) if layout == "NHWC" else (None, channels, h, w)


def _check_result(explainer, res, method: str, files: list[Path]) -> None:
    """ModelError naming the first file whose explained score or map is NaN or infinite."""
    from .errors import ModelError
    from .safety import check_scores

    for k, f in enumerate(files):
        check_scores(res.scores[k:k + 1], explainer.graph.output_name, f.name, explainer.graph.model)
        if not np.isfinite(res.maps[k]).all():
            raise ModelError(f"{method} gave NaN or infinite values for {f.name}; the model's gradients overflow "
                             "(try another method or target)")


def _class_name(explainer, c: int) -> str:
    if c < 0:
        return "weighted classes"
    if explainer.labels and c < len(explainer.labels):
        return f"{c} ({explainer.labels[c]})"
    return str(c)


def _gap_text(explainer, res, k: int, x) -> str:
    # delta = sum(attr) - (F(x) - F(x')), so F(x) - F(x') = sum(attr) - delta
    span = float(res.attributions[k].astype(np.float64).sum() - res.delta[k])
    rel = abs(float(res.delta[k])) / max(abs(span), 1e-12)
    text = f", completeness gap {float(res.delta[k]):+.3f} ({rel:.1%} of F(x) - F(x'))"
    if rel > 0.05:
        hints = {"gradient_shap": "a Monte-Carlo estimate: raise --samples",
                 "deeplift": "ops without a DeepLIFT rule keep their gradient (`onnxsal rules`)",
                 "deeplift_reveal_cancel": "ops without a DeepLIFT rule keep their gradient (`onnxsal rules`)",
                 "deeplift_shap": "ops without a DeepLIFT rule keep their gradient (`onnxsal rules`)"}
        text += f" [large: {hints.get(res.method, 'raise --steps or pass --tolerance 0.01')}]"
    return text


def compare_image(explainer, file: Path, methods: list[str], target, cli_options: dict, cmap: str | None, alpha: float,
                  progress: Callable[[float], None] | None = None, dense: DenseSpec | None = None,
                  report: Callable[[str], None] = print):
    """One labelled grid: the photo, then each method (CAM methods over the photo, pixel methods as maps)."""
    from . import viz
    from .detection import BoxTarget

    photo = load_image(file)
    prep = explainer.preprocessing
    x = prep.batch([photo])
    shown = display_photo(photo, prep)
    goal = dense.target_for(explainer, target, x, [photo], prep, report, [file.name]) if dense else target
    if isinstance(goal, BoxTarget):
        shown = draw_target(shown, goal, 0, photo.size, prep)
    tiles, labels, chosen = [shown], ["input"], None
    for method in methods:
        res = explainer.explain(x, method, target=goal, progress=progress, **method_options(method, cli_options))
        _check_result(explainer, res, method, [file])
        if goal is not target and not tiles[1:] and getattr(goal, "last_mask", None) is not None:
            tiles[0] = draw_target(shown, goal, 0, photo.size, prep)
        chosen = _target_text(explainer, res, 0)
        if isinstance(goal, BoxTarget):
            det = goal.detections[0]
            where = tuple(round(v) for v in input_to_photo(det.box, photo.size, prep))
            chosen = f"box {_class_name(explainer, det.label)} score {det.score:.2f} at {where}"
        kind = "overlay" if method in SMOOTH_MAPS else "map"
        tiles.append(picture(res, 0, shown, method, cmap, alpha, kind))
        labels.append(method)
    title = f"{file.name}: {chosen}" if chosen is not None else file.name
    rows = 1 if len(tiles) <= 8 else -(-len(tiles) // 7)
    return viz.grid(tiles, labels, columns=-(-len(tiles) // rows), tile=224, title=title)


# -- dense and detection targets from the command line (coordinates in the photo's pixels)

def photo_to_input(box, photo_size: tuple, prep: Preprocessing) -> tuple:
    """(x0, y0, x1, y1) in a photo's pixels -> model-input pixels (through the crop and resize)."""
    left, top, right, bottom = prep.crop_box(*photo_size)
    sx, sy = prep.width / (right - left), prep.height / (bottom - top)
    return ((box[0] - left) * sx, (box[1] - top) * sy, (box[2] - left) * sx, (box[3] - top) * sy)


def input_to_photo(box, photo_size: tuple, prep: Preprocessing) -> tuple:
    left, top, right, bottom = prep.crop_box(*photo_size)
    sx, sy = (right - left) / prep.width, (bottom - top) / prep.height
    return (box[0] * sx + left, box[1] * sy + top, box[2] * sx + left, box[3] * sy + top)


def parse_box(text: str):
    """'x0,y0,x1,y1' -> a tuple of 4 floats, or None when text is not four numbers."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 4:
        return None
    try:
        box = tuple(float(p) for p in parts)
    except ValueError:
        return None
    if not all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
        raise TargetError(f"box {text!r} must be x0,y0,x1,y1 with x0 < x1 and y0 < y1 (photo pixels)")
    return box


def score_spatial(explainer) -> tuple[int, int]:
    """(h, w) of a dense score: the two axes that are neither batch nor class."""
    shape = explainer.graph.score_shape
    axis = explainer.graph.class_axis
    if shape is None or len(shape) < 3:
        dims = "?" if shape is None else "x".join(["N", *map(str, shape)])
        raise TargetError(f'--region needs a dense output (N, K, H, W); output "{explainer.graph.output_name}" is {dims} '
                          "(choose another with --output-name)")
    rest = [d for a, d in enumerate(shape, start=1) if a != axis]
    return rest[-2], rest[-1]


def region_target(explainer, spec: str, target, photos, prep: Preprocessing, mean: bool = False):
    """RegionTarget for a batch from --region predicted | x0,y0,x1,y1 | mask.png and --target."""
    from .targets import RegionTarget

    index = None if target == "top" else int(target)
    h, w = score_spatial(explainer)
    if spec == "predicted":
        return RegionTarget(index, "predicted", mean=mean)
    box = parse_box(spec)
    masks = np.zeros((len(photos), h, w), np.float32)
    if box is not None:
        for i, photo in enumerate(photos):
            x0, y0, x1, y1 = photo_to_input(box, photo.size, prep)
            sx, sy = w / prep.width, h / prep.height
            c0, r0 = max(0, int(np.floor(x0 * sx))), max(0, int(np.floor(y0 * sy)))
            c1, r1 = min(w, int(np.ceil(x1 * sx))), min(h, int(np.ceil(y1 * sy)))
            if c1 <= c0 or r1 <= r0:
                raise TargetError(f"box {spec} lies outside the part of the photo the model sees")
            masks[i, r0:r1, c0:c1] = 1.0
        return RegionTarget(index, masks, mean=mean)
    path = Path(spec)
    if not path.is_file():
        raise TargetError(f"--region is predicted, x0,y0,x1,y1 or a mask image; {spec!r} is none of them")
    from PIL import Image

    try:
        with Image.open(path) as im:
            mask = im.convert("L")
    except Exception:  # noqa: BLE001 - PIL raises many types
        raise TargetError(f"{path} is not a mask image PIL can read") from None
    for i, photo in enumerate(photos):
        if mask.size != photo.size:
            raise TargetError(f"mask {path} is {mask.size[0]}x{mask.size[1]}, the photo {photo.size[0]}x{photo.size[1]}: "
                              "draw the mask on the photo itself")
        region = mask.crop(prep.crop_box(*photo.size)).resize((w, h), Image.BILINEAR)
        masks[i] = np.asarray(region, np.float32) > 127.5
    if not masks.any():
        raise TargetError(f"mask {path} is empty (no pixel above 50% gray) where the model looks")
    return RegionTarget(index, masks, mean=mean)


def box_target(explainer, spec: str, decoder, threshold, x, photos, prep: Preprocessing, names=None):
    """(BoxTarget, [Detection per sample]) from --box N | x0,y0,x1,y1 and the decoded detections."""
    from .detection import BoxTarget, detect, make_decoder, pick

    decoder = make_decoder(decoder, explainer.graph, threshold)
    found = detect(explainer, x, decoder)
    box = parse_box(spec)
    chosen = []
    for i, photo in enumerate(photos):
        try:
            if box is not None:
                chosen.append(pick(found[i], photo_to_input(box, photo.size, prep)))
            else:
                try:
                    which = int(spec)
                except ValueError:
                    raise TargetError(f"--box is a detection index (0 = the highest score), x0,y0,x1,y1 or list; not {spec!r}") from None
                chosen.append(pick(found[i], which))
        except TargetError as exc:
            raise TargetError(f"{names[i]}: {exc}" if names else str(exc)) from None
    return BoxTarget(chosen), found


def draw_target(picture_image, target, index: int, photo_size: tuple, prep: Preprocessing):
    """Draw the explained box (rectangle) or region (its outline) on a picture of the photo's crop."""
    from PIL import Image, ImageDraw

    from .detection import BoxTarget
    from .targets import RegionTarget

    img = picture_image.convert("RGB")
    W, H = img.size
    colour = (0, 255, 255)
    if isinstance(target, BoxTarget) and target.detections[index] is not None:
        x0, y0, x1, y1 = target.detections[index].box
        sx, sy = W / prep.width, H / prep.height
        ImageDraw.Draw(img).rectangle([x0 * sx, y0 * sy, x1 * sx, y1 * sy], outline=colour, width=max(2, W // 160))
    elif isinstance(target, RegionTarget) and getattr(target, "last_mask", None) is not None:
        mask = target.last_mask[index] > 0
        up = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((W, H), Image.NEAREST)) > 0
        edge = up & ~(np.roll(up, 1, 0) & np.roll(up, -1, 0) & np.roll(up, 1, 1) & np.roll(up, -1, 1))
        pixels = np.asarray(img).copy()
        pixels[edge] = colour
        img = Image.fromarray(pixels)
    return img


def all_methods() -> list[str]:
    from .methods import METHODS

    return list(METHODS)


def _installed(method: str) -> bool:
    """Whether `method`'s optional packages import; 'all' leaves a method out without them and says so."""
    import importlib.util
    import sys

    from .methods import METHODS

    missing = [pip for module, pip in METHODS[method].requires if importlib.util.find_spec(module) is None]
    if missing:
        print(f"warning: all: leaving out {method}, which needs {', '.join(missing)} (pip install {' '.join(missing)})",
              file=sys.stderr)
    return not missing


def parse_methods(values: Sequence[str]) -> list[str]:
    from .methods import METHODS

    names: list[str] = []
    for value in values:
        for name in (v.strip() for v in value.split(",")):
            if not name:
                continue
            if name == "all":
                names += [m for m in METHODS if m not in names and _installed(m)]
                continue
            if name not in METHODS:
                raise MethodError(f"unknown method {name!r}; `onnxsal methods` lists them")
            if name not in names:
                names.append(name)
    return names
