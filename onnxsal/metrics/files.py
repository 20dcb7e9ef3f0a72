"""`onnxsal evaluate` on image files: decode, preprocess, map boxes into the model input, evaluate, write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError, MethodError


def parse_assignments(values) -> tuple[dict, dict]:
    """--set NAME.KEY=VALUE (NAME a metric or a method) -> (metric settings, method options); VALUE read as JSON
    when it parses (numbers, true/false, lists), else as a string."""
    from ..methods import METHODS
    from . import DEFAULTS, _checked

    settings: dict = {}
    options: dict = {}
    for text in values or ():
        head, eq, value = text.partition("=")
        name, dot, key = head.partition(".")
        if not eq or not dot or not name or not key:
            raise MethodError(f"--set takes NAME.KEY=VALUE (a metric or method name), e.g. deletion.steps=20; not {text!r}")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        if isinstance(parsed, float) and parsed != parsed or parsed in (float("inf"), float("-inf")):
            raise MethodError(f"--set {head} must be finite, not {value}")
        if name in DEFAULTS:
            if key not in DEFAULTS[name]:
                raise MethodError(f"unknown setting {key!r} for metric {name}; its settings: {', '.join(DEFAULTS[name]) or 'none'}")
            settings.setdefault(name, {})[key] = _checked(name, key, parsed)
        elif name in METHODS:
            if key == "baseline" and isinstance(parsed, str):  # as --baseline reads it: black+blur, a .npy file
                from ..errors import InputError
                from ..workflow import baseline_value

                try:
                    parsed = baseline_value(parsed)
                except InputError as exc:
                    raise MethodError(f"--set {head}: {exc}") from None
            options.setdefault(name, {})[key] = parsed
        else:
            raise MethodError(f"--set {head}: {name!r} is neither a metric nor a method")
    return settings, options


def _warn(line: str) -> None:
    import sys

    print(line, file=sys.stderr)


def input_boxes(objects: list[dict], photo_size: tuple, prep) -> list[dict]:
    """Objects with their boxes mapped from photo pixels to model-input pixels (through crop and resize)."""
    from ..workflow import photo_to_input

    return [{**o, "box": list(photo_to_input(o["box"], photo_size, prep))} for o in objects]


def evaluate_files(explainer, files: list[Path], methods: list[str], metrics: list[str], *, boxes_file=None, masks_dir=None,
                   settings=None, options=None, target="top", out: Path, report: Callable[[str], None] = print,
                   progress=None, batch_size=None, model=None) -> tuple:
    """Evaluate each image (one at a time, so memory stays bounded) and write the JSON, table and plots."""
    from ..preprocess import load_image
    from ..workflow import unique_stems
    from . import Evaluation, evaluate
    from .localisation import find_mask, input_mask, read_boxes
    from .report import write

    prep = explainer.preprocessing
    if prep is None:
        raise InputError("evaluating image files needs the model's preprocessing (a zoo model, a sidecar or the flags)")
    if boxes_file is not None and masks_dir is not None:
        raise InputError("give --boxes or --masks, not both")
    known = read_boxes(boxes_file) if boxes_file is not None else None
    stems = unique_stems(files)
    mask_files = {}
    if masks_dir is not None:
        if not Path(masks_dir).is_dir():
            raise InputError(f"--masks {masks_dir}: not a directory")
        for file, stem in zip(files, stems):
            found = find_mask(masks_dir, stem)
            if found is None:
                raise InputError(f"{masks_dir} has no mask for {file.name} (looked for {stem}.png, {stem}_mask.png "
                                 "and the other image suffixes)")
            mask_files[stem] = found
    total = Evaluation()
    for file, stem in zip(files, stems):
        photo = load_image(file)
        x = prep.batch([photo])
        boxes = None
        if known is not None:
            objects = known.get(stem, known.get(file.name))
            if objects is None:
                raise InputError(f"{boxes_file} has no boxes for {file.name} (its images: {', '.join(sorted(known)) or 'none'})")
            boxes = [input_boxes(objects, photo.size, prep)]
            h, w = explainer.graph.spatial_shape
            for o in boxes[0]:
                x0, y0, x1, y1 = o["box"]
                if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
                    _warn(f"warning: {file.name}: the box of {o.get('label') or 'an object'} lies outside the region "
                          "the model sees (after resize and crop); the pointing games score it 0")
        masks = None
        if masks_dir is not None:
            mask_photo = load_image(mask_files[stem])
            if mask_photo.size != photo.size:
                raise InputError(f"mask {mask_files[stem].name} is {mask_photo.size[0]}x{mask_photo.size[1]}, the photo "
                                 f"{file.name} is {photo.size[0]}x{photo.size[1]}")
            masks = [input_mask(mask_photo, prep)]
            if not np.asarray(masks[0]).any():
                _warn(f"warning: {file.name}: its mask {mask_files[stem].name} is empty in the region the model sees "
                      "(after resize and crop); the pointing games score it 0")
        result = evaluate(explainer, x, methods, metrics, target, boxes=boxes, masks=masks, options=options, settings=settings,
                          names=[stem], batch_size=batch_size, progress=progress, model=model)
        total.records += result.records
        total.model, total.target = result.model, result.target
        report(f"{file.name}: class {result.records[0]['class']} evaluated")
    written = write(total, out)
    return total, written
