"""From image files to model inputs, and back to the region of the photo the model saw.

Geometry (output H x W; `size` is one side for a square, or (H, W)):
  resize_crop: for a square, resize the short side to round(size / crop) (the long side in proportion,
               truncated), then centre-crop size x size at offsets round((side - size) / 2), as
               torchvision's Resize + CenterCrop; for H x W, resize by s = max(round(H / crop) / h,
               round(W / crop) / w), then centre-crop H x W the same way
  crop_resize: centre-crop the largest region of aspect W:H scaled by crop (for a square: a square of
               side round(min(h, w) * crop)), then resize it to H x W
Values: x = (pixel * scale - mean) / std per channel (pixel in 0..255, RGB unless bgr), then the
model's layout (NCHW or NHWC) with a batch axis in front.

Channels follow the model: 3 (RGB; gray images are repeated), 1 (gray: ITU-R 601-2 luma of colour
images, as PIL's "L"), or 4 (RGBA). Images of more than 8 bits keep their precision: 16-bit images
(PIL modes I;16*, and 16-bit PNGs read as I) are scaled by 255 / 65535, 32-bit integer images by
255 / (2^31 - 1) (negative values clipped to 0), float images are taken as 0..1 and scaled by 255;
pixels stay floats in 0..255 until normalisation.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from .errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1}


CHANNELS = (1, 3, 4)
EXTRA_KEYS = ("decoder",)  # sidecar fields about the model rather than its pixels


@dataclass
class Preprocessing:
    size: object = 224  # one side (square) or (height, width)
    crop: float = 0.875
    order: str = "resize_crop"  # or "crop_resize"
    interpolation: str = "bilinear"
    scale: float = 1.0 / 255.0
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    layout: str = "NCHW"
    bgr: bool = False
    channels: int = 3
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        from .safety import check_fields

        check_fields(self)  # types, finite numbers and ranges, one line naming the field
        if self.channels not in CHANNELS:
            raise InputError(f"channels is 1 (gray), 3 (RGB) or 4 (RGBA), not {self.channels!r}")
        self.mean = _per_channel(self.mean, "mean", self.channels, IMAGENET_MEAN)
        self.std = _per_channel(self.std, "std", self.channels, IMAGENET_STD)
        if self.bgr and self.channels == 1:
            self.bgr = False
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
        self.size = _size(self.size)

    @property
    def height(self) -> int:
        return self.size if isinstance(self.size, int) else self.size[0]

    @property
    def width(self) -> int:
        return self.size if isinstance(self.size, int) else self.size[1]

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the model input."""
        return self.height, self.width

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        """From a sidecar's table; EXTRA_KEYS (not preprocessing, but per model: the detector's decoder) go to extra."""
        known = {f.name for f in fields(cls)} - {"extra"}
        unknown = sorted(set(data) - known - set(EXTRA_KEYS))
        if unknown:
            raise InputError(f"unknown preprocessing keys: {', '.join(unknown)} (known: {', '.join(sorted(known | set(EXTRA_KEYS)))})")
        extra = {k: data[k] for k in EXTRA_KEYS if k in data}
        return cls(**{k: v for k, v in data.items() if k in known}, extra=extra)

    @classmethod
    def from_file(cls, path) -> "Preprocessing":
        """A JSON or TOML sidecar with the fields of this class (a TOML file may nest them under [preprocessing])."""
        path = Path(path)
        from .files import require_regular

        require_regular(path, "preprocessing")  # missing, a folder, a pipe
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
        try:
            return cls.from_dict(data)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if not isinstance(self.size, int):
            d["size"] = list(self.size)
        return d

    # -- pixels -> model space
    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """(H, W, C) pixels in 0..255 -> model values, same layout."""
        x = pixels.astype(np.float32)
        if self.bgr and x.shape[-1] >= 3:
            x = x[..., ::-1]
        return (x * np.float32(self.scale) - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    def pixel_value(self, value: float) -> np.ndarray:
        """Model-space value (per channel) of a uniform pixel value, e.g. 0 for a black image."""
        return self.normalize(np.full((1, 1, self.channels), value, np.float32))[0, 0]

    def _resize_scale(self, width: int, height: int) -> float:
        """resize_crop's scale factor for a (width, height) photo."""
        if isinstance(self.size, int):
            return int(round(self.size / self.crop)) / min(width, height)
        return max(int(round(self.height / self.crop)) / height, int(round(self.width / self.crop)) / width)

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the region of the original photo the model sees."""
        if self.order == "crop_resize":
            if isinstance(self.size, int):
                rw = rh = max(1, int(round(min(width, height) * self.crop)))
            elif width * self.height > height * self.width:  # the photo is wider than the model's aspect
                rh = max(1, int(round(height * self.crop)))
                rw = max(1, int(round(rh * self.width / self.height)))
            else:
                rw = max(1, int(round(width * self.crop)))
                rh = max(1, int(round(rw * self.height / self.width)))
        else:
            scale = self._resize_scale(width, height)
            rw = max(1, int(round(self.width / scale)))
            rh = max(1, int(round(self.height / scale)))
        left, top = (width - rw) // 2, (height - rh) // 2
        return left, top, left + rw, top + rh

    def geometry(self, image):
        """The PIL image the model sees: W x H, in the image's own mode."""
        resample = _RESAMPLE[self.interpolation]
        w, h = image.size
        if self.order == "crop_resize":
            return image.crop(self.crop_box(w, h)).resize((self.width, self.height), resample)
        if isinstance(self.size, int):
            target_short = int(round(self.size / self.crop))
            # torchvision's Resize(int) and CenterCrop: the long side is truncated, the crop offsets rounded
            long_side = max(1, int(target_short * max(w, h) / min(w, h)))
            resized = image.resize((target_short, long_side) if w <= h else (long_side, target_short), resample)
        else:
            scale = self._resize_scale(w, h)
            resized = image.resize((max(1, int(round(w * scale))), max(1, int(round(h * scale)))), resample)
        rw, rh = resized.size
        left, top = int(round((rw - self.width) / 2.0)), int(round((rh - self.height) / 2.0))
        return resized.crop((left, top, left + self.width, top + self.height))

    def array(self, image) -> np.ndarray:
        """(C, H, W) or (H, W, C) float32 model input of one image (no batch axis)."""
        x = self.normalize(pixels(self.geometry(image), self.channels))
        return np.ascontiguousarray(x.transpose(2, 0, 1) if self.layout == "NCHW" else x)

    def batch(self, images) -> np.ndarray:
        return np.stack([self.array(im) for im in images])


SIDECAR_SUFFIXES = (".preprocess.json", ".preprocess.toml")


def sidecar_for(model_path: Path) -> Path | None:
    """`<model>.preprocess.json` or `.preprocess.toml` beside a model file, if there is one."""
    model_path = Path(model_path)
    for suffix in SIDECAR_SUFFIXES:
        candidate = model_path.with_name(model_path.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def _per_channel(value, name, channels: int, default: tuple) -> tuple:
    """One float per channel from a number or a list; ImageNet's 3 defaults become their mean for 1 channel."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * channels
    try:
        value = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{name} takes numbers, one per channel, not {value!r}") from None
    if len(value) == 1 or (len(value) != channels and len(set(value)) == 1):  # one value for every channel
        return (value[0],) * channels
    if len(value) == 3 and channels != 3 and value == tuple(default):
        return (float(np.mean(value)),) * channels
    if len(value) != channels:
        wanted = "1 value" if channels == 1 else f"1 or {channels} values (one per channel)"
        raise InputError(f"{name} needs {wanted} for a {channels}-channel model, got {len(value)}")
    return value


def _size(value):
    """A positive int (square side) or an (H, W) pair; "HxW" strings too."""
    if isinstance(value, str):
        parts = value.lower().replace(" ", "").split("x")
        try:
            value = [int(p) for p in parts] if len(parts) == 2 else int(parts[0])
        except ValueError:
            raise InputError(f"size is a number of pixels or HxW (e.g. 224 or 48x192), not {value!r}") from None
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            value = value[0]
        elif len(value) != 2:
            raise InputError(f"size is one side or (height, width), not {list(value)}")
        else:
            h, w = (_size(v) for v in value)
            return h if h == w else (h, w)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)) or int(value) != value or int(value) < 1:
        raise InputError(f"size must be a positive number of pixels (or HxW), not {value!r}")
    return int(value)


def pixels(image, channels: int = 3) -> np.ndarray:
    """(H, W, channels) float32 pixel values in 0..255 of a PIL image (from load_image)."""
    mode = image.mode
    if mode == "F":
        gray = np.asarray(image, dtype=np.float32)[..., None]
        if channels == 4:
            return np.concatenate([np.repeat(gray, 3, axis=2), np.full_like(gray, 255.0)], axis=2)
        return np.repeat(gray, channels, axis=2)
    wanted = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    if mode != wanted:
        image = image.convert(wanted)
    x = np.asarray(image, dtype=np.float32)
    return x[..., None] if x.ndim == 2 else x


def _high_bit_depth(im, fmt, path):
    """A mode-"F" image with values 0..255 for 16/32-bit integer and float images; None for 8-bit ones."""
    from PIL import Image

    mode = im.mode
    if mode.startswith("I;16"):
        scale = 255.0 / 65535.0
    elif mode == "I":
        scale = 255.0 / 65535.0 if fmt == "PNG" else 255.0 / (2 ** 31 - 1)  # PNG has no 32-bit samples
    elif mode == "F":
        scale = 255.0
    else:
        return None
    values = np.asarray(im, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise InputError(f"{path} holds NaN or infinite pixel values")
    return Image.fromarray((np.clip(values, 0, None if mode != "F" else 1.0) * scale).astype(np.float32), mode="F")


def load_image(path):
    """A PIL image from a file: RGB (RGBA when it has alpha) for 8-bit images, mode "F" (gray, 0..255 floats) for deeper ones.

    Preprocessing.array gives the model's channel count from either. One-line errors for missing,
    non-image and corrupt files. The file is read once.
    """
    from .files import reason, require_regular

    path = require_regular(path, "image")  # missing, a folder, a pipe: one line (a pipe could block forever)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read image file {path}: {reason(exc)}") from None
    return decode_image(data, path)


def decode_image(data: bytes, name):
    """load_image's decoding of a file's bytes (`name` is used in error messages)."""
    import io

    from PIL import Image, ImageOps

    from .safety import check_image_memory

    with image_errors(name):
        with Image.open(io.BytesIO(data)) as im:
            check_image_memory(im.width, im.height, len(im.getbands()), name)
            im.load()
            fmt = im.format
            im = ImageOps.exif_transpose(im)
            deep = _high_bit_depth(im, fmt, name)
            if deep is not None:
                return deep
            alpha = "A" in im.getbands() or (im.mode == "P" and "transparency" in im.info)
            return im.convert("RGBA" if alpha else "RGB")  # alpha kept for 4-channel models, dropped for others


@contextlib.contextmanager
def image_errors(name):
    """PIL's failures while opening or decoding `name` as one-line InputErrors (not an image, a bomb, corrupt)."""
    from PIL import Image, UnidentifiedImageError

    try:
        yield
    except UnidentifiedImageError:
        raise InputError(f"{name} is not an image file PIL can read (PNG, JPEG, ...)") from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"{name}: {_first_line(exc)}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{name} is a corrupt or truncated image: {_first_line(exc)}") from None


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__
