"""Detections from pre-NMS detector outputs, and the box target that explains one of them.

A decoder reads a detector's raw outputs for one sample and returns Detections: a box (x0, y0, x1, y1)
in model-input pixels, a score, a class, and the position in the *explained* output tensor whose value
is that detection's class score. BoxTarget seeds that position (and optionally the objectness), so the
explained quantity is the detection's own score, as in Grad-CAM / Ablation-CAM for detection.

Layouts (chosen with `decoder=` / `--decoder`, or by the model's sidecar "decoder" field):

  yolov8      one output (N, 4 + K, A): rows cx, cy, w, h (input pixels), then K class scores
  yolov5      one output (N, A, 5 + K): cx, cy, w, h, objectness, K class scores; score = obj * cls
  centernet   heatmap (N, K, h, w), size (N, 2, h, w) as (w, h) in input pixels, offset (N, 2, h, w)
              as (dx, dy) in output cells (Zhou et al. 2019, "Objects as Points")
  centerface  CenterFace's variant: size as log(h / 4), log(w / 4) and offset as (dy, dx) (stride 4)

Peaks of a heatmap are cells above the threshold that equal their 3x3 neighbourhood's maximum.
Non-maximum suppression (greedy, by IoU) runs here, in numpy: NMS is outside the explained graph.
A plain Python decoder (a callable taking {output name: array of one sample} and the input (H, W)
and returning Detections) works too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import TargetError
from .targets import Target


@dataclass
class Detection:
    box: tuple  # (x0, y0, x1, y1) in model-input pixels
    score: float
    label: int
    index: tuple  # position of the class score in one sample of the explained output (no batch axis)
    objectness_index: tuple | None = None

    def describe(self, labels=None) -> str:
        name = labels[self.label] if labels and 0 <= self.label < len(labels) else str(self.label)
        x0, y0, x1, y1 = (round(v) for v in self.box)
        return f"{name} {self.score:.2f} at ({x0}, {y0}, {x1}, {y1})"


def iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def nms(dets: list[Detection], threshold: float) -> list[Detection]:
    """Greedy non-maximum suppression per class, highest score first."""
    kept: list[Detection] = []
    for d in sorted(dets, key=lambda d: -d.score):
        if all(k.label != d.label or iou(k.box, d.box) <= threshold for k in kept):
            kept.append(d)
    return kept


def _xywh(cx, cy, w, h):
    return (float(cx - w / 2), float(cy - h / 2), float(cx + w / 2), float(cy + h / 2))


@dataclass
class Decoder:
    """A named layout: which outputs it reads and how it turns them into Detections."""

    name: str
    threshold: float = 0.5
    iou_threshold: float = 0.45
    outputs: dict = field(default_factory=dict)  # role -> output name ("scores", "size", "offset")

    def roles(self) -> tuple[str, ...]:
        return ("scores", "size", "offset") if self.name in ("centernet", "centerface") else ("scores",)

    def decode(self, arrays: dict, input_hw: tuple) -> list[Detection]:
        """Detections of one sample; arrays maps role -> that output without its batch axis."""
        scores = arrays["scores"]
        if self.name == "yolov8":
            if scores.ndim != 2 or scores.shape[0] < 5:
                raise TargetError(f"a yolov8 output is (N, 4 + K, anchors); this one is {(None,) + scores.shape}")
            cls = scores[4:]
            labels, best = cls.argmax(axis=0), cls.max(axis=0)
            found = [Detection(_xywh(*scores[:4, a]), float(best[a]), int(labels[a]), (4 + int(labels[a]), int(a)))
                     for a in np.nonzero(best > self.threshold)[0]]
        elif self.name == "yolov5":
            if scores.ndim != 2 or scores.shape[1] < 6:
                raise TargetError(f"a yolov5 output is (N, anchors, 5 + K); this one is {(None,) + scores.shape}")
            obj, cls = scores[:, 4], scores[:, 5:]
            labels = cls.argmax(axis=1)
            conf = obj * cls[np.arange(len(cls)), labels]
            found = [Detection(_xywh(*scores[a, :4]), float(conf[a]), int(labels[a]), (int(a), 5 + int(labels[a])), (int(a), 4))
                     for a in np.nonzero(conf > self.threshold)[0]]
        elif self.name in ("centernet", "centerface"):
            found = self._centers(arrays, input_hw)
        else:
            raise TargetError(f"unknown decoder {self.name!r}; choose one of {', '.join(DECODERS)}")
        return nms(found, self.iou_threshold)

    def _centers(self, arrays, input_hw):
        heat, size, offset = arrays["scores"], arrays.get("size"), arrays.get("offset")
        if heat.ndim != 3 or size is None or offset is None or size.shape[0] != 2 or offset.shape[0] != 2:
            raise TargetError(f"the {self.name} decoder needs a heatmap (N, K, h, w) and size and offset outputs (N, 2, h, w)")
        k, h, w = heat.shape
        stride_y, stride_x = input_hw[0] / h, input_hw[1] / w
        padded = np.pad(heat, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
        local = np.max(np.stack([padded[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)]), axis=0)
        found = []
        for c, y, x in zip(*np.nonzero((heat > self.threshold) & (heat >= local))):
            if self.name == "centerface":
                bh, bw = np.exp(size[0, y, x]) * stride_y, np.exp(size[1, y, x]) * stride_x
                cy, cx = (y + offset[0, y, x] + 0.5) * stride_y, (x + offset[1, y, x] + 0.5) * stride_x
            else:
                bw, bh = size[0, y, x], size[1, y, x]
                cx, cy = (x + offset[0, y, x]) * stride_x, (y + offset[1, y, x]) * stride_y
            found.append(Detection(_xywh(cx, cy, bw, bh), float(heat[c, y, x]), int(c), (int(c), int(y), int(x))))
        return found


DECODERS = ("yolov8", "yolov5", "centernet", "centerface")


def make_decoder(spec, graph=None, threshold: float | None = None) -> Decoder | Callable:
    """A Decoder from a name (or a callable, returned as is); finds a CenterNet model's size/offset outputs."""
    if callable(spec) and not isinstance(spec, Decoder):
        return spec
    decoder = spec if isinstance(spec, Decoder) else Decoder(str(spec))
    if decoder.name not in DECODERS:
        raise TargetError(f"unknown decoder {decoder.name!r}; choose one of {', '.join(DECODERS)}")
    if threshold is not None:
        decoder.threshold = float(threshold)
    if graph is not None:
        decoder.outputs.setdefault("scores", graph.output_name)
        if decoder.name in ("centernet", "centerface") and not {"size", "offset"} <= set(decoder.outputs):
            # the other (N, 2, h, w) outputs of the model, in order: size then offset
            h, w = (graph.shapes.get(graph.output_name) or (None,) * 4)[2:4]
            pairs = [o.name for o in graph.graph.output if o.name != graph.output_name
                     and (graph.shapes.get(o.name) or ())[1:] == (2, h, w)]
            if len(pairs) < 2:
                raise TargetError(f"the {decoder.name} decoder needs two (N, 2, {h}, {w}) outputs beside the heatmap "
                                  f'"{graph.output_name}" (size, then offset); the model has: '
                                  + ", ".join(o.name for o in graph.graph.output))
            decoder.outputs.setdefault("size", pairs[0])
            decoder.outputs.setdefault("offset", pairs[1])
    return decoder


def detect(explainer, x: np.ndarray, decoder) -> list[list[Detection]]:
    """Decoded detections of each sample of x (model-input pixels), highest score first."""
    decoder = make_decoder(decoder, explainer.graph)
    graph = explainer.graph
    names = dict(getattr(decoder, "outputs", {}) or {"scores": graph.output_name})
    names.setdefault("scores", graph.output_name)
    extra = [n for role, n in names.items() if role != "scores"]
    scores, acts = explainer.engine.forward(explainer._batch(x), "probability" if graph.final_activation else "logit",
                                            layers=extra)
    values = {"scores": scores, **{role: acts[n] for role, n in names.items() if role != "scores"}}
    hw = graph.spatial_shape
    out = []
    for i in range(len(scores)):
        arrays = {role: v[i] for role, v in values.items()}
        dets = decoder.decode(arrays, hw) if isinstance(decoder, Decoder) else decoder(arrays, hw)
        out.append(sorted(dets, key=lambda d: -d.score))
    return out


@dataclass
class BoxTarget(Target):
    """Explain one detection per sample: its class score (plus its objectness for yolov5 layouts).

    detections: one Detection per sample (from `detect`), or None for a sample with nothing to explain.
    """

    detections: list
    objectness: bool = True

    def seeds(self, scores, class_axis):
        if len(self.detections) != len(scores):
            raise TargetError(f"{len(self.detections)} detections for a batch of {len(scores)}")
        seed = np.zeros(scores.shape, np.float32)
        for i, det in enumerate(self.detections):
            if det is None:
                continue
            try:
                seed[(i,) + tuple(det.index)] = 1.0
                if self.objectness and det.objectness_index is not None:
                    seed[(i,) + tuple(det.objectness_index)] = 1.0
            except IndexError:
                raise TargetError(f"detection index {det.index} does not fit the explained output {scores.shape[1:]}; "
                                  "explain the output the decoder read (--output-name)") from None
        return seed

    def classes(self, scores, class_axis):
        return np.array([-1 if d is None else d.label for d in self.detections], np.int64)

    def describe(self, labels=None):
        if len(self.detections) == 1 and self.detections[0] is not None:
            return f"box {self.detections[0].describe(labels)}"
        return "one detected box per sample"


def pick(detections: list[Detection], which, min_iou: float = 0.3) -> Detection:
    """A detection by index (in score order) or by the box (x0, y0, x1, y1) it overlaps most (IoU >= min_iou)."""
    if not detections:
        raise TargetError("the detector found nothing above the threshold in this image (lower --score-threshold)")
    if isinstance(which, (int, np.integer)):
        if not 0 <= which < len(detections):
            raise TargetError(f"box {which} does not exist: {len(detections)} detection(s) (0..{len(detections) - 1})")
        return detections[int(which)]
    overlaps = [iou(which, d.box) for d in detections]
    best = int(np.argmax(overlaps))
    if overlaps[best] < min_iou:
        raise TargetError(f"no detection overlaps box {tuple(round(v) for v in which)} (best IoU {overlaps[best]:.2f} "
                          f"< {min_iou}); list the detections with --box list")
    return detections[best]
