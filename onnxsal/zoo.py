"""The model zoo: pretrained classifiers shipped with onnxsal, with their preprocessing and labels."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .errors import ModelError

EXAMPLES = ("chelsea", "coffee")


def _root() -> Path:
    return Path(str(resources.files("onnxsal.model_zoo")))


@lru_cache(maxsize=1)
def manifest() -> dict:
    return json.loads((_root() / "manifest.json").read_text())


def names() -> list[str]:
    return list(manifest()["models"])


def default_name() -> str:
    return manifest()["default"]


def entry(name: str) -> dict:
    models = manifest()["models"]
    if name not in models:
        raise ModelError(f"no zoo model named {name!r}; the zoo has: {', '.join(models)}")
    return models[name]


def model_path(name: str) -> Path:
    return _root() / entry(name)["file"]


@lru_cache(maxsize=4)
def labels(name: str | None = None) -> tuple[str, ...]:
    file = entry(name)["labels"] if name else manifest()["labels"]
    return tuple(line.strip() for line in (_root() / file).read_text().splitlines())


def example_image(name: str = "chelsea") -> Path:
    if name not in EXAMPLES:
        raise ModelError(f"no example photo {name!r}; examples: {', '.join(EXAMPLES)}")
    return _root() / "examples" / f"{name}.png"


_VERIFIED: dict[str, tuple] = {}  # path -> (size, mtime) of a zoo file whose sha256 matched


def verified_path(name: str) -> Path:
    """model_path(name) after checking the file's sha256 against the manifest (once per process and file state)."""
    import hashlib

    path = model_path(name)
    try:
        info = path.stat()
        state = (info.st_size, info.st_mtime_ns)
        if _VERIFIED.get(str(path)) == state:
            return path
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ModelError(f"cannot read zoo model {name} ({path}): {exc.strerror}; reinstall onnxsal") from None
    if digest != entry(name)["sha256"]:
        raise ModelError(f"zoo model {name} ({path}) does not match its sha256 in the manifest (corrupt or replaced); "
                         "reinstall onnxsal or rebuild it with model_zoo/build.py")
    _VERIFIED[str(path)] = state
    return path


def resolve(model) -> tuple[object, str | None]:
    """(what load_model takes, zoo name or None) for a zoo name, a path, bytes or a ModelProto; None = default.

    A zoo model's file is checked against the manifest's sha256."""
    if model is None:
        return verified_path(default_name()), default_name()
    if isinstance(model, str) and model in manifest()["models"]:
        return verified_path(model), model
    if isinstance(model, str) and not model.lower().endswith(".onnx") and not Path(model).exists() and "/" not in model:
        raise ModelError(f"{model!r} is neither a zoo model ({', '.join(names())}) nor an existing .onnx file")
    return model, None
