"""From image files to model inputs, and back to the region of the photo the model saw.

Geometry (square output of side `size`):
  resize_crop: resize the short side to round(size / crop) (the long side in proportion, truncated), then
               centre-crop size x size at offsets round((side - size) / 2), as torchvision's Resize + CenterCrop
  crop_resize: centre-crop a square of side round(min(h, w) * crop), then resize it to size x size
Values: x = (pixel * scale - mean) / std per channel (pixel in 0..255, RGB unless bgr), then the
model's layout (NCHW or NHWC) with a batch axis in front.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from .errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1}


@dataclass
class Preprocessing:
    size: int = 224
    crop: float = 0.875
    order: str = "resize_crop"  # or "crop_resize"
    interpolation: str = "bilinear"
    scale: float = 1.0 / 255.0
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    layout: str = "NCHW"
    bgr: bool = False
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.mean = _triple(self.mean, "mean")
        self.std = _triple(self.std, "std")
        if any(s == 0 for s in self.std):
            raise InputError("std must not contain 0")
        if not 0 < self.crop <= 1:
            raise InputError(f"crop is the fraction of the short side kept, in (0, 1]; got {self.crop}")
        if self.order not in ("resize_crop", "crop_resize"):
            raise InputError(f"order is resize_crop or crop_resize, not {self.order!r}")
        if self.interpolation not in _RESAMPLE:
            raise InputError(f"interpolation is one of {', '.join(_RESAMPLE)}, not {self.interpolation!r}")
        self.layout = self.layout.upper()
        if self.layout not in ("NCHW", "NHWC"):
            raise InputError(f"layout is NCHW or NHWC, not {self.layout!r}")
        if int(self.size) < 1:
            raise InputError(f"size must be a positive number of pixels, not {self.size}")
        self.size = int(self.size)

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        known = {f.name for f in fields(cls)} - {"extra"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown preprocessing keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**data)

    @classmethod
    def from_file(cls, path) -> "Preprocessing":
        """A JSON or TOML sidecar with the fields of this class (a TOML file may nest them under [preprocessing])."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"preprocessing file not found: {path}")
        try:
            if path.suffix.lower() == ".toml":
                import tomllib

                data = tomllib.loads(path.read_text())
            else:
                data = json.loads(path.read_text())
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"cannot parse preprocessing file {path}: {exc}") from None
        if isinstance(data, dict) and isinstance(data.get("preprocessing"), dict):
            data = data["preprocessing"]
        if not isinstance(data, dict):
            raise InputError(f"preprocessing file {path} must hold a table of settings")
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    # -- pixels -> model space
    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """(H, W, 3) pixels in 0..255 -> model values, same layout."""
        x = pixels.astype(np.float32)
        if self.bgr:
            x = x[..., ::-1]
        return (x * np.float32(self.scale) - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    def pixel_value(self, value: float) -> np.ndarray:
        """Model-space value (per channel) of a uniform pixel value, e.g. 0 for a black image."""
        return self.normalize(np.full((1, 1, 3), value, np.float32))[0, 0]

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the region of the original photo the model sees."""
        short = min(width, height)
        if self.order == "crop_resize":
            side = max(1, int(round(short * self.crop)))
        else:
            resized_short = int(round(self.size / self.crop))
            side = max(1, int(round(self.size * short / resized_short)))
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side

    def geometry(self, image):
        """The PIL image the model sees: size x size RGB."""
        resample = _RESAMPLE[self.interpolation]
        w, h = image.size
        if self.order == "crop_resize":
            return image.crop(self.crop_box(w, h)).resize((self.size, self.size), resample)
        target_short = int(round(self.size / self.crop))
        # torchvision's Resize(int) and CenterCrop: the long side is truncated, the crop offsets rounded
        long_side = max(1, int(target_short * max(w, h) / min(w, h)))
        resized = image.resize((target_short, long_side) if w <= h else (long_side, target_short), resample)
        rw, rh = resized.size
        left, top = int(round((rw - self.size) / 2.0)), int(round((rh - self.size) / 2.0))
        return resized.crop((left, top, left + self.size, top + self.size))

    def array(self, image) -> np.ndarray:
        """(C, H, W) or (H, W, C) float32 model input of one image (no batch axis)."""
        x = self.normalize(np.asarray(self.geometry(image), dtype=np.float32))
        return np.ascontiguousarray(x.transpose(2, 0, 1) if self.layout == "NCHW" else x)

    def batch(self, images) -> np.ndarray:
        return np.stack([self.array(im) for im in images])


def _triple(value, name):
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    value = tuple(float(v) for v in value)
    if len(value) == 1:
        return value * 3
    if len(value) != 3:
        raise InputError(f"{name} needs 1 or 3 values, got {len(value)}")
    return value


def load_image(path):
    """An RGB PIL image from a file; one-line errors for missing, non-image and corrupt files."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise InputError(f"image file not found: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a directory, not an image file")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return im.convert("RGB")
    except UnidentifiedImageError:
        raise InputError(f"{path} is not an image file PIL can read (PNG, JPEG, ...)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path} is a corrupt or truncated image: {exc}") from None
