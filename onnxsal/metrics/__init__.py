"""Evaluation metrics of explanations: faithfulness, randomisation sanity checks, localisation, robustness, complexity.

`evaluate(explainer, x, method, metrics=...)` explains x with each method (one class per image, fixed for
every metric), runs each metric and returns an Evaluation: one record per (image, method, metric) with its
figures and settings, plus curves for plotting. Each metric's module gives its paper and equation; the
defaults are in DEFAULTS below and in the README.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import MethodError

# metric -> default settings (documented in each module)
DEFAULTS: dict[str, dict] = {
    "deletion": {"steps": 50, "fill": "zeros", "score": "probability", "blur_sigma": 5.0},
    "insertion": {"steps": 50, "fill": "blur", "score": "probability", "blur_sigma": 5.0},
    "pixel_flipping": {"steps": 50, "fill": "zeros", "score": "probability", "blur_sigma": 5.0},
    "road": {"percentages": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], "noise": 0.01, "score": "probability", "seed": 0},
    "pointing_game": {"tolerance": 15.0},
    "energy_pointing_game": {},
    "infidelity": {"samples": 10, "noise": 0.1, "normalize": True, "seed": 0},
    "sensitivity_max": {"samples": 10, "radius": 0.02, "seed": 0},
    "adversarial": {"epsilon": 0.1, "steps": 5, "topk": 0.02},
    "random_perturbation": {"epsilon": 0.1, "samples": 3, "topk": 0.02, "seed": 0},
    "sparseness": {},
    "entropy": {},
    "randomisation": {"layers": 6, "modes": ["cascading", "independent"], "seed": 0},
    "input_invariance": {"shift": 1.0},
}
METRICS = tuple(DEFAULTS)
DEFAULT_METRICS = ("deletion", "insertion", "pixel_flipping", "sparseness", "entropy")
LOCALISATION = ("pointing_game", "energy_pointing_game")
# the figure shown in tables, and whether higher is better
HEADLINE = {
    "deletion": ("auc", False), "insertion": ("auc", True), "pixel_flipping": ("abpc", True), "road": ("gap", True),
    "pointing_game": ("hit", True), "energy_pointing_game": ("proportion", True),
    "infidelity": ("infidelity", False), "sensitivity_max": ("sensitivity", False),
    "adversarial": ("topk_intersection", True), "random_perturbation": ("topk_intersection", True),
    "sparseness": ("gini", True), "entropy": ("entropy", False), "randomisation": ("spearman_abs", False),
    "input_invariance": ("change", False),
}
REFERENCES = {
    "deletion": "Petsiuk et al. 2018 (RISE), sec. 4.1", "insertion": "Petsiuk et al. 2018 (RISE), sec. 4.1",
    "pixel_flipping": "Bach et al. 2015; Samek et al. 2017 (MoRF / LeRF)",
    "road": "Rong et al. 2022 (ROAD), sec. 4 (noisy linear imputation, MoRF / LeRF)",
    "pointing_game": "Zhang et al. 2018 (excitation backprop), sec. 5.1",
    "energy_pointing_game": "Wang et al. 2020 (Score-CAM), sec. 5.2",
    "infidelity": "Yeh et al. 2019, eq. 1", "sensitivity_max": "Yeh et al. 2019, def. 3.1",
    "adversarial": "Ghorbani et al. 2019, sec. 3 (top-k intersection) under class-keeping PGD (Madry et al. 2018)",
    "random_perturbation": "Ghorbani et al. 2019, sec. 4 (random sign perturbation, top-k intersection)",
    "sparseness": "Chalasani et al. 2020 (Gini index)", "entropy": "Bhatt et al. 2020 (complexity)",
    "randomisation": "Adebayo et al. 2018, sec. 3 (model-parameter randomisation)",
    "input_invariance": "Kindermans et al. 2019, sec. 2 (constant input shift absorbed by the first bias)",
}


@dataclass
class Evaluation:
    """records: [{"image", "class", "method", "metric", "figures": {...}, "settings": {...}, ("curves"|"layers")}]."""

    records: list = field(default_factory=list)
    model: str = ""
    target: str = ""

    def figure(self, method: str, metric: str, image=None) -> float:
        """The headline figure of (method, metric), averaged over images (or of one image)."""
        key = HEADLINE[metric][0]
        values = [r["figures"][key] for r in self.records if r["method"] == method and r["metric"] == metric
                  and (image is None or r["image"] == image)]
        if not values:
            raise KeyError(f"no {metric} figure for {method}")
        return float(np.mean(values))

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(r["method"] for r in self.records))

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(r["metric"] for r in self.records))

    @property
    def images(self) -> list:
        return list(dict.fromkeys(r["image"] for r in self.records))

    def to_dict(self) -> dict:
        return {"model": self.model, "target": self.target,
                "metrics": {m: {"reference": REFERENCES[m], "headline": HEADLINE[m][0],
                                "higher_is_better": HEADLINE[m][1]} for m in self.metrics},
                "records": _plain(self.records)}

    def table(self) -> str:
        from .report import markdown_table

        return markdown_table(self)


def _plain(value):
    """JSON-ready copy: numpy scalars and arrays to Python numbers and lists; non-finite numbers to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _settings(metric: str, given: dict | None) -> dict:
    settings = dict(DEFAULTS[metric])
    for key, value in (given or {}).get(metric, {}).items():
        if key not in settings:
            raise MethodError(f"unknown setting {key!r} for metric {metric}; its settings: {', '.join(settings) or 'none'}")
        settings[key] = _checked(metric, key, value)
    return settings


def _checked(metric: str, key: str, value):
    """A setting's value, refused with one line when it has the wrong type or range."""
    def bad(want):
        raise MethodError(f"setting {metric}.{key} must be {want}, not {value!r}")

    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key in ("steps", "samples"):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            bad("an integer of at least 1")
    elif key == "seed":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            bad("a non-negative integer")
    elif key == "topk":
        if not number or not 0 < value <= 1:
            bad("a fraction of the pixels in (0, 1]")
    elif key in ("noise", "radius", "tolerance", "blur_sigma", "epsilon"):
        if not number or not math.isfinite(value) or value < 0:
            bad("a finite number >= 0")
    elif key == "fill":
        from ..explainer import BASELINES

        if not ((number and math.isfinite(value)) or value in BASELINES):
            bad(f"a finite number or one of {', '.join(BASELINES)}")
    elif key == "score":
        if value not in ("logit", "probability", "log_probability"):
            bad("logit, probability or log_probability")
    elif key == "shift":
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            bad("a finite number or a list of them (one per channel)")
    elif key == "percentages":
        if not (isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                          and 0 <= v < 1 for v in value)):
            bad("a list of fractions in [0, 1)")
    elif key == "normalize":
        if not isinstance(value, bool):
            bad("true or false")
    elif key == "modes":
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not value or any(v not in ("cascading", "independent") for v in value):
            bad('"cascading", "independent" or a list of them')
    elif key == "layers":
        if not (value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
                or (isinstance(value, list) and value and all(isinstance(v, int) for v in value))):
            bad('"all", a number of checkpoints (>= 1) or a list of layer indices')
    return value


def parse_metrics(values, boxes: bool = False) -> list[str]:
    """Metric names from strings (comma-separated, 'all', 'default'); localisation metrics need boxes."""
    names: list[str] = []
    for value in values or ["default"]:
        for name in (v.strip() for v in str(value).split(",")):
            if not name:
                continue
            group = {"all": METRICS, "default": DEFAULT_METRICS + (LOCALISATION if boxes else ()),
                     "faithfulness": ("deletion", "insertion", "pixel_flipping", "road"), "localisation": LOCALISATION,
                     "complexity": ("sparseness", "entropy"), "robustness": ("infidelity", "sensitivity_max", "adversarial", "random_perturbation"),
                     "sanity": ("randomisation", "input_invariance")}.get(name)
            if group is None and name not in METRICS:
                raise MethodError(f"unknown metric {name!r}; choose from {', '.join(METRICS)} (or all, default, "
                                  "faithfulness, localisation, complexity, robustness, sanity)")
            for n in group or (name,):
                if n in LOCALISATION and not boxes:
                    if group is None:
                        raise MethodError(f"{n} needs object boxes or masks (--boxes FILE or --masks DIR; boxes= or "
                                          "masks= in Python)")
                    continue
                if n not in names:
                    names.append(n)
    return names


def evaluate(explainer, x, method, metrics=DEFAULT_METRICS, target="top", *, boxes=None, masks=None, model=None,
             options: dict | None = None, settings: dict | None = None, names=None, batch_size: int | None = None,
             progress=None) -> Evaluation:
    """Evaluate the maps of `method` (a name or a list) on the batch x.

    target: as in Explainer.explain; the class it picks per image (with the original model) is kept for every
        metric, perturbed input and randomised model.
    boxes: per image, a list of (x0, y0, x1, y1) boxes in model-input pixels, or of objects {"box": ..., "imagenet":
        [classes]} of which those naming the explained class are used (localisation metrics).
    masks: instead of boxes, per image an (H, W) object mask in model-input pixels (nonzero = object).
    model: the original model (path, bytes, ModelProto) for the randomisation test; a zoo explainer finds its own.
    options: {method: {option: value}} passed to each method; settings: {metric: {setting: value}} (see DEFAULTS).
    names: one name per image for the records (default 0, 1, ...).
    """
    from . import complexity, faithfulness, localisation, randomisation, robustness
    from .runner import Runner, pixel_attributions
    from ..targets import as_target

    methods = [method] if isinstance(method, str) else list(method)
    if boxes is not None and masks is not None:
        raise MethodError("give boxes or masks for the localisation metrics, not both")
    metrics = parse_metrics([metrics] if isinstance(metrics, str) else list(metrics),
                            boxes=boxes is not None or masks is not None)
    x = explainer._batch(x)
    n = len(x)
    names = list(names) if names is not None else list(range(n))
    if len(names) != n:
        raise MethodError(f"{len(names)} names for {n} images")
    if boxes is not None and len(boxes) != n:
        raise MethodError(f"boxes are given for {len(boxes)} images, x holds {n}")
    if masks is not None:
        masks = [np.asarray(mk) != 0 for mk in masks]
        if len(masks) != n:
            raise MethodError(f"masks are given for {len(masks)} images, x holds {n}")
    for m in settings or {}:
        if m not in DEFAULTS:
            raise MethodError(f"settings for unknown metric {m!r}")
    config = {m: _settings(m, settings) for m in metrics}
    goal = as_target(target, explainer.labels)
    logits = explainer.engine.forward(x, explainer.target_kind)[0]
    classes = np.asarray(goal.classes(logits, explainer.graph.class_axis), np.int64)
    if (classes < 0).any():
        raise MethodError("evaluate needs one class per image (a target such as 'top' or a class index)")
    result = Evaluation(model=explainer.describe(), target=goal.describe(explainer.labels))
    runners = {m: Runner(explainer, m, (options or {}).get(m), batch_size) for m in methods}
    explained = {m: r.explain(x, classes) for m, r in runners.items()}

    def record(i, m, metric, figures, **extra):
        result.records.append({"image": names[i], "class": int(classes[i]), "method": m, "metric": metric,
                               "figures": figures, "settings": {**config[metric], **({"options": runners[m].options}
                                                                                   if runners[m].options else {})},
                               **extra})

    for m, runner in runners.items():
        res = explained[m]
        maps = res.maps.astype(np.float64)
        for metric in metrics:
            s = config[metric]
            if metric in ("deletion", "insertion"):
                curve = faithfulness.curves(runner, x, classes, maps, mode="delete" if metric == "deletion" else "insert",
                                            fill=s["fill"], steps=s["steps"], score=s["score"], blur_sigma=s["blur_sigma"])
                for i in range(n):
                    record(i, m, metric, {"auc": faithfulness.auc(curve[i])}, curve=curve[i])
            elif metric == "pixel_flipping":
                common = dict(mode="delete", fill=s["fill"], steps=s["steps"], score=s["score"], blur_sigma=s["blur_sigma"])
                morf = faithfulness.curves(runner, x, classes, maps, most_first=True, **common)
                lerf = faithfulness.curves(runner, x, classes, maps, most_first=False, **common)
                for i in range(n):
                    a, b = faithfulness.auc(morf[i]), faithfulness.auc(lerf[i])
                    record(i, m, metric, {"morf_auc": a, "lerf_auc": b, "abpc": b - a}, curves={"morf": morf[i], "lerf": lerf[i]})
            elif metric == "road":
                from . import road

                found = road.curves(runner, x, classes, maps, percentages=s["percentages"], noise=float(s["noise"]),
                                    score=s["score"], seed=int(s["seed"]))
                for i in range(n):
                    record(i, m, metric, road.figures(found["morf"][i], found["lerf"][i]),
                           curves={"percentages": list(s["percentages"]), "morf": found["morf"][i], "lerf": found["lerf"][i]})
            elif metric in LOCALISATION and masks is not None:
                for i in range(n):
                    if masks[i].shape != maps[i].shape:
                        raise MethodError(f"mask {i} is {masks[i].shape}, the maps are {maps[i].shape}")
                    if metric == "pointing_game":
                        figures = {"hit": localisation.mask_pointing_game(maps[i], masks[i], s["tolerance"])}
                    else:
                        figures = {"proportion": localisation.mask_energy_pointing_game(maps[i], masks[i])}
                    record(i, m, metric, figures, mask_pixels=int(masks[i].sum()))
            elif metric in LOCALISATION:
                for i in range(n):
                    chosen, which = _boxes(boxes[i], int(classes[i]))
                    if metric == "pointing_game":
                        figures = {"hit": localisation.pointing_game(maps[i], chosen, s["tolerance"])}
                    else:
                        figures = {"proportion": localisation.energy_pointing_game(maps[i], chosen)}
                    record(i, m, metric, figures, boxes=chosen, boxes_used=which)
            elif metric == "infidelity":
                perts = robustness.gaussian_perturbations(x, int(s["samples"]), float(s["noise"]), int(s["seed"]))
                values = robustness.infidelity(runner, x, classes, pixel_attributions(res, x, runner.layout), perts,
                                               bool(s["normalize"]))
                for i in range(n):
                    record(i, m, metric, {"infidelity": values[i]})
            elif metric == "sensitivity_max":
                perts = robustness.uniform_perturbations(x, int(s["samples"]), float(s["radius"]), int(s["seed"]))
                values = robustness.sensitivity_max(runner, x, classes, maps, perts)
                for i in range(n):
                    record(i, m, metric, {"sensitivity": values[i]})
            elif metric == "adversarial":
                found = robustness.adversarial(runner, x, classes, maps, epsilon=float(s["epsilon"]), steps=int(s["steps"]),
                                               topk=float(s["topk"]))
                for i in range(n):
                    record(i, m, metric, found[i])
            elif metric == "random_perturbation":
                perts = robustness.random_sign_perturbations(x, int(s["samples"]), float(s["epsilon"]), int(s["seed"]))
                found = robustness.random_perturbation(runner, x, classes, maps, perts, topk=float(s["topk"]))
                for i in range(n):
                    record(i, m, metric, found[i])
            elif metric == "sparseness":
                for i in range(n):
                    record(i, m, metric, {"gini": complexity.sparseness(maps[i])})
            elif metric == "entropy":
                for i in range(n):
                    record(i, m, metric, {"entropy": complexity.entropy(maps[i])})
            if progress and metric not in ("randomisation", "input_invariance"):  # those two report below
                progress(1)
    if "randomisation" in metrics:
        s = config["randomisation"]
        proto = _original_model(explainer, model)
        found = randomisation.run(runners, x, classes, {m: explained[m].maps for m in methods}, proto,
                                  layers=s["layers"], modes=tuple(s["modes"]), seed=int(s["seed"]), progress=progress)
        for m in methods:
            verdict = randomisation.passes(found[m]) if "cascading" in found[m] else [None] * n
            for i in range(n):
                per_layer = {mode: [{"layer": c["layer"], "index": c["index"], "op": c["op"],
                                     **{k: c[k][i] for k in ("spearman_abs", "spearman", "ssim", "hog")}} for c in rows]
                             for mode, rows in found[m].items()}
                rows = per_layer.get("cascading", next(iter(per_layer.values())))
                first, last = rows[0], rows[-1]
                record(i, m, "randomisation", {"spearman_abs": last["spearman_abs"], "spearman": last["spearman"],
                                               "ssim": last["ssim"], "hog": last["hog"],
                                               "spearman_abs_output_layer": first["spearman_abs"],
                                               "passes": verdict[i]}, layers=per_layer)
    if "input_invariance" in metrics:
        from . import invariance
        from .randomisation import no_disk_cache, twin

        shift = config["input_invariance"]["shift"]
        g = explainer.graph
        proto = invariance.shifted_twin(_original_model(explainer, model), g.input_name, tuple(g.input_shape), shift)
        m = np.broadcast_to(np.asarray(shift, np.float32).reshape(-1), (x.shape[1],)).reshape(1, -1, 1, 1)
        x2 = (x + m).astype(np.float32)
        with no_disk_cache():
            other = twin(explainer, proto)
            gap = np.abs(other.engine.forward(x2, explainer.target_kind)[0].astype(np.float64) - logits).reshape(n, -1).max(axis=1)
            for meth, runner in runners.items():
                maps2 = runner.explain(x2, classes, explainer=other).maps
                for i in range(n):
                    record(i, meth, "input_invariance", {**invariance.compare(explained[meth].maps[i], maps2[i]),
                                                         "output_gap": float(gap[i])})
                if progress:
                    progress(1)
    return result


def _boxes(given, cls: int) -> tuple[list, str]:
    """Boxes of one image: (x0, y0, x1, y1) tuples, or objects {"box", "imagenet"} (those naming `cls` are used)."""
    from .localisation import boxes_for_class

    items = list(given)
    if not items:
        raise MethodError("an image has no boxes; localisation metrics need at least one")
    if isinstance(items[0], dict):
        objects = [{"box": [float(v) for v in o["box"]], "imagenet": [int(c) for c in o.get("imagenet", [])]} for o in items]
        return boxes_for_class(objects, cls)
    chosen = [[float(v) for v in b] for b in items]
    if any(len(b) != 4 for b in chosen):
        raise MethodError("a box is (x0, y0, x1, y1)")
    return chosen, "the boxes given"


def _original_model(explainer, model):
    from ..graph.model import read_model

    if model is None:
        if explainer.zoo_name is None:
            raise MethodError("the randomisation test rewrites the original model: pass model= (its path, bytes or ModelProto)")
        from .. import zoo

        model = zoo.model_path(explainer.zoo_name)
    return read_model(model)[0]
