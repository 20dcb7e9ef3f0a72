"""Class model visualisation (Simonyan, Vedaldi & Zisserman 2013, sec. 2, eq. 1).

    I* = argmax_I  S_c(I) - lambda |I|^2
found by gradient ascent in the model's input space, from the zero image (with mean/std preprocessing, the
dataset's mean pixel, as in the paper, which adds the mean image back for display):
    I_{t+1} = I_t + lr * (dS_c/dI (I_t) - 2 lambda I_t)
S_c is the explained score (the logit by default; any target that does not depend on the score values).
Optional regularisers from later work, off by default: `jitter` rolls the image by a random offset in
[-jitter, jitter] along each spatial axis before the gradient is taken and rolls the gradient back
(drawn from numpy's Generator(seed), two integers per step, rows then columns); `blur_every` > 0 blurs
the image with a Gaussian of `blur_sigma` every that many steps (path_more.spatial_blur).
render(image) scales the result to [0, 255] per image (for display only).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import MethodError, TargetError
from .targets import as_target


def visualize_class(explainer, target, steps: int = 200, lr: float = 1.0, l2: float = 1e-3, jitter: int = 0,
                    blur_every: int = 0, blur_sigma: float = 0.5, seed: int = 0,
                    progress: Callable[[float], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image (1, ...) in the model's input layout, the objective S_c(I_t) - lambda |I_t|^2 before each step)."""
    from .methods.path_more import spatial_blur

    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise MethodError(f"steps must be a positive integer, not {steps!r}")
    if not (lr > 0 and l2 >= 0 and jitter >= 0 and blur_every >= 0 and blur_sigma >= 0):
        raise MethodError("lr must be positive; l2, jitter, blur_every and blur_sigma non-negative")
    graph = explainer.graph
    goal = as_target(target, explainer.labels)
    if goal.needs_scores or graph.score_shape is None:
        raise TargetError("class model visualisation needs a fixed target (a class index, a name or weights), not 'top'")
    if hasattr(goal, "kind"):
        goal.kind = explainer.target_kind
    seeds = goal.seeds(np.zeros((1,) + graph.score_shape, np.float32), graph.class_axis)
    nhwc = graph.layout == "NHWC"
    axes = (1, 2) if nhwc else (2, 3)
    image = np.zeros((1,) + tuple(graph.input_shape[1:]), np.float64)
    rng = np.random.default_rng(seed)
    history = np.empty(steps)
    for t in range(steps):
        shift = rng.integers(-jitter, jitter + 1, size=2) if jitter else np.zeros(2, np.int64)
        moved = np.roll(image, tuple(int(v) for v in shift), axis=axes)
        out = explainer.gradients(moved.astype(np.float32), seeds)
        score = float((out.scores.astype(np.float64) * seeds).sum())
        history[t] = score - l2 * float((image * image).sum())
        grad = np.roll(out.input_grad.astype(np.float64), tuple(-int(v) for v in shift), axis=axes)
        image = image + lr * (grad - 2 * l2 * image)
        if blur_every and (t + 1) % blur_every == 0 and blur_sigma > 0:
            image = spatial_blur(image, blur_sigma, nhwc)
        if progress:
            progress(1)
    return image.astype(np.float32), history


def render(image: np.ndarray, layout: str = "NCHW"):
    """The first image of a batch, min-max scaled to 8-bit, as a PIL image (one or three channels)."""
    from PIL import Image

    a = np.asarray(image[0], np.float64)
    a = a if layout == "NHWC" else a.transpose(1, 2, 0)
    lo, hi = a.min(), a.max()
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    pixels = np.round(a * 255).astype(np.uint8)
    return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels[:, :, :3])
