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
from .preprocess import Preprocessing, load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
CAM_LIKE = ("cam", "grad_cam", "grad_cam_plus_plus", "xgrad_cam", "layer_cam", "hires_cam", "grad_cam_elementwise")


def image_files(paths: Sequence[str], on_bad: Callable[[Path, str], None] | None = None) -> list[Path]:
    """Files from arguments (directories expand to the images inside, sorted); checks each is a regular file
    whose header PIL recognises (pixels are decoded later, once).

    A bad file raises InputError, or, with `on_bad`, is reported to on_bad(path, reason) and left out."""
    from PIL import Image, UnidentifiedImageError

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
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the budget decides below
                    with Image.open(path) as im:  # the header only
                        check_image_memory(im.width, im.height, len(im.getbands()), path)
            except UnidentifiedImageError:
                raise InputError(f"{path} is not an image file PIL can read (PNG, JPEG, ...)") from None
            except Image.DecompressionBombError as exc:
                raise InputError(f"{path}: {str(exc).rstrip('.')}") from None
            except (OSError, SyntaxError, ValueError) as exc:
                raise InputError(f"{path} is a corrupt or truncated image: {exc}") from None
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


def sidecar_for(model_path: Path) -> Path | None:
    for suffix in (".preprocess.json", ".preprocess.toml"):  # README's names only; model.json may be anything
        candidate = model_path.with_name(model_path.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


@dataclass
class ModelSetup:
    source: object
    zoo_name: str | None
    preprocessing: Preprocessing
    input_shape: tuple
    labels: list[str] | None
    notes: list[str] = field(default_factory=list)


def setup_model(model: str | None, *, size=None, crop=None, mean=None, std=None, scale=None, layout=None, bgr=None,
                interpolation=None, preprocess_file=None, labels_file=None, input_name=None) -> ModelSetup:
    """Model source, preprocessing and labels from a zoo name or an .onnx path plus CLI-style overrides."""
    from . import zoo
    from .graph.model import detect_layout, find_input, read_model

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
    if channels not in (None, 3):
        raise InputError(f"the model takes {channels} channels; the CLI feeds RGB images (3 channels)")
    overrides = {k: v for k, v in {"crop": crop, "mean": mean, "std": std, "scale": scale, "bgr": bgr,
                                   "interpolation": interpolation}.items() if v is not None}
    if spatial[0] is not None and spatial[0] != spatial[1]:
        raise InputError(f"the model takes {spatial[0]}x{spatial[1]} images; the CLI makes square crops only")
    if size is not None:
        overrides["size"] = size
    elif spatial[0] is not None and not sized:
        overrides["size"] = spatial[0]
    elif spatial[0] is None and not sized:
        notes.append(f"the model takes any image size; using {base.size}x{base.size} (--size to change)")
    prep = replace(base, layout=model_layout, **overrides)  # replace() re-validates
    if spatial[0] is not None and spatial[0] != prep.size:
        raise InputError(f"input size {prep.size} (from --size or the preprocessing file) does not fit the model, "
                         f"which takes {spatial[0]}x{spatial[1]} images")
    shape = (None, prep.size, prep.size, 3) if model_layout == "NHWC" else (None, 3, prep.size, prep.size)
    if labels is None and zoo_name is None:
        classes = _output_classes(proto)
        if classes == 1000:
            labels = list(zoo.labels())
            notes.append("class names: ImageNet-1k, assumed from the 1000 outputs (--labels FILE to set others)")
    return ModelSetup(source=proto if zoo_name is None else source, zoo_name=zoo_name, preprocessing=prep,
                      input_shape=shape, labels=labels, notes=notes)


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


def _output_classes(proto) -> int | None:
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    return dims[1].dim_value if len(dims) == 2 and dims[1].HasField("dim_value") else None


def parse_target(target: str, labels: list[str] | None, classes: int | None):
    """'top', a class index, or a class name (exact, then a unique substring, case-insensitive)."""
    if target in (None, "top"):
        return "top"
    if re.fullmatch(r"-?\d+", target.strip()):
        index = int(target)
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
               "tolerance": "tolerance", "base": "base", "window": "window", "stride": "stride", "batch_size": "batch_size"}
    options = {}
    for flag, option in mapping.items():
        value = cli.get(flag)
        if value is None:
            continue
        if method == "occlusion" and flag == "baseline":
            options["fill"] = value
        elif option in allowed:
            options[option] = value
    return options


def baseline_value(text: str | None):
    """A CLI baseline: a name, a number, or several joined by '+' (averaged)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split("+")]
    values = []
    for part in parts:
        try:
            values.append(float(part))
        except ValueError:
            values.append(part)
    return values[0] if len(values) == 1 else values


def picture(explanation, index: int, photo, method: str, cmap: str | None, alpha: float, kind: str = "overlay"):
    """Overlay (or the bare map) of one sample of an explanation.

    CAM maps are smooth: scaled by their maximum and blended whole; pixel maps are scaled by the 99th
    percentile of |map| (Smilkov et al. 2017) and shown where they are strong.
    """
    from . import viz

    smooth = method in CAM_LIKE or (method.startswith("smooth") and explanation.attributions is None) \
        or (method == "vargrad" and explanation.attributions is None)
    values = viz.normalize(explanation.maps[index:index + 1], explanation.signed, 100.0 if smooth else 99.0)[0]
    if kind == "map":
        return viz.render_map(values, explanation.signed, cmap if cmap not in (None, "inferno") else None)
    return viz.overlay(photo, values, explanation.signed, cmap, alpha if not smooth else min(alpha, 0.5), smooth=smooth)


def display_photo(image, prep: Preprocessing, max_side: int = 768):
    """The region of the photo the model saw, at (up to max_side) its own resolution."""
    region = image.crop(prep.crop_box(*image.size))
    if max(region.size) > max_side:
        region = region.resize((max_side, max_side))
    return region


def explain_files(explainer, files: list[Path], methods: list[str], target, cli_options: dict, out: Path, fmt: str,
                  cmap: str | None, alpha: float, chunk: int = 16, progress: Callable[[float], None] | None = None,
                  report: Callable[[str], None] = print, on_bad: Callable[[Path, str], None] | None = None,
                  overwrite: bool = False) -> list[Path]:
    """Explain every file with every method; write <stem>_<method>.png / .npy into `out`; returns what was written.

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
                report(f"{f.name}: " + ", ".join(f"{c} {name} {p:.1%}" for c, name, p in tops[k]))
        for method in methods:
            res = explainer.explain(x, method, target=target, progress=progress, **method_options(method, cli_options))
            _check_result(explainer, res, method, batch_files)
            for k, f in enumerate(batch_files):
                stem = batch_stems[k]
                name = _class_name(explainer, int(res.targets[k]))
                line = f"  {method}: target {name}, score {res.scores[k]:.3f}"
                if res.delta is not None:
                    line += _gap_text(explainer, res, k, x[k:k + 1])
                if fmt in ("png", "both"):
                    path = out / f"{stem}_{method}.png"
                    from . import viz

                    viz.save_png(picture(res, k, display_photo(photos[k], prep), method, cmap, alpha), path)
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
    seeds = np.zeros((1,) + explainer.predict(x).shape[1:], np.float32)
    if res.targets[k] >= 0:
        seeds[0, res.targets[k]] = 1
    baselines = explainer.baselines(x, res.options.get("baseline"))
    span = float(explainer.score(x, seeds)[0] - np.mean([explainer.score(b, seeds)[0] for b in baselines]))
    rel = abs(float(res.delta[k])) / max(abs(span), 1e-12)
    text = f", completeness gap {float(res.delta[k]):+.3f} ({rel:.1%} of F(x) - F(x'))"
    if rel > 0.05:
        text += " [large: raise --steps or pass --tolerance 0.01]"
    return text


def compare_image(explainer, file: Path, methods: list[str], target, cli_options: dict, cmap: str | None, alpha: float,
                  progress: Callable[[float], None] | None = None):
    """One labelled grid: the photo, then each method (CAM methods over the photo, pixel methods as maps)."""
    from . import viz

    photo = load_image(file)
    x = explainer.preprocessing.batch([photo])
    shown = display_photo(photo, explainer.preprocessing)
    tiles, labels, chosen = [shown], ["input"], None
    for method in methods:
        res = explainer.explain(x, method, target=target, progress=progress, **method_options(method, cli_options))
        _check_result(explainer, res, method, [file])
        chosen = int(res.targets[0])
        kind = "overlay" if method in CAM_LIKE else "map"
        tiles.append(picture(res, 0, shown, method, cmap, alpha, kind))
        labels.append(method)
    title = f"{file.name}: target {_class_name(explainer, chosen)}" if chosen is not None else file.name
    rows = 1 if len(tiles) <= 8 else -(-len(tiles) // 7)
    return viz.grid(tiles, labels, columns=-(-len(tiles) // rows), tile=224, title=title)


def all_methods() -> list[str]:
    from .methods import METHODS

    return list(METHODS)


def parse_methods(values: Sequence[str]) -> list[str]:
    from .methods import METHODS

    names: list[str] = []
    for value in values:
        for name in (v.strip() for v in value.split(",")):
            if not name:
                continue
            if name == "all":
                names += [m for m in METHODS if m not in names]
                continue
            if name not in METHODS:
                raise MethodError(f"unknown method {name!r}; `onnxsal methods` lists them")
            if name not in names:
                names.append(name)
    return names
