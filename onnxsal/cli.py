"""The onnxsal command line: one click group, one command per verb; parsing and printing only."""

from __future__ import annotations

import json
import os
import sys

import click

from .errors import InputError, OnnxsalError


class Refusal(click.ClickException):
    """One line on stderr, `error: ...`, and an exit code (1 bad input, 2 bad command line, 130/143 signals)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None):
        click.echo(f"error: {self.format_message()}", file=file or sys.stderr)


class Group(click.Group):
    """Every failure becomes one line on stderr (`error: ...`) and a documented exit code (README, exit codes)."""

    def invoke(self, ctx):
        if ctx.parent is not None:
            return self._invoke(ctx)
        from .safety import quiet_runtime

        with quiet_runtime():
            return self._invoke(ctx)

    def _invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, Refusal):
            raise
        except click.UsageError as exc:  # unknown option, a value out of its range: one line, exit 2
            message = exc.format_message()
            raise Refusal(message[0].lower() + message[1:] if message else "bad command line", 2) from None
        except click.ClickException as exc:
            raise Refusal(exc.format_message(), exc.exit_code) from None
        except click.Abort:
            raise Refusal("interrupted", 130) from None
        except KeyboardInterrupt as exc:
            from .safety import Terminated

            raise Refusal("terminated", 143) if isinstance(exc, Terminated) else Refusal("interrupted", 130) from None
        except OnnxsalError as exc:
            raise Refusal(str(exc)) from None
        except MemoryError:
            raise Refusal("out of memory; use a smaller --size, --batch-size or fewer images at once, or a lower "
                          "ONNXSAL_MEMORY_BUDGET so onnxsal refuses such runs up front") from None
        except OSError as exc:
            from .files import reason

            where = f"{exc.filename}: " if exc.filename else ""
            raise Refusal(f"{where}{reason(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - an internal failure: one line unless debugging
            if os.environ.get("ONNXSAL_DEBUG"):
                raise
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise Refusal(
                f"internal error ({type(exc).__name__}: {text}); rerun with ONNXSAL_DEBUG=1 for the traceback"
            ) from None


class Number(click.ParamType):
    """A finite float (NaN and infinities refused) in an optional range."""

    name = "number"

    def __init__(self, low=None, high=None, low_open=False, nonzero=False):
        self.low, self.high, self.low_open, self.nonzero = low, high, low_open, nonzero

    def convert(self, value, param, ctx):
        from .safety import finite_number

        try:
            number = float(value)
        except ValueError:
            self.fail(f"{value!r} is not a number", param, ctx)
        try:
            return finite_number(number, "the value", low=self.low, high=self.high, low_open=self.low_open, nonzero=self.nonzero)
        except OnnxsalError as exc:
            self.fail(str(exc).replace("the value must", "it must"), param, ctx)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxsal")
def main():
    """Pixel attribution (saliency maps) for ONNX models, computed by ONNX Runtime."""


class Size(click.ParamType):
    """An input size: one side (224) or height x width (48x192)."""

    name = "SIZE|HxW"

    def convert(self, value, param, ctx):
        from .errors import InputError
        from .preprocess import _size

        if isinstance(value, (int, tuple)):
            return value
        try:
            return _size(value)
        except InputError as exc:
            self.fail(str(exc), param, ctx)


SIZE = Size()
IO_NAMES = [
    click.option("--input-name", default=None, help="The image input, for models with several float inputs."),
    click.option("--output-name", default=None,
                 help="The output explained (default: the one that looks like class scores; onnxsal says which)."),
]


def io_names(fn):
    for option in reversed(IO_NAMES):
        fn = option(fn)
    return fn


def _load(model: str | None, size=None, protected=(), input_name=None, output_name=None):
    from . import zoo
    from .graph.model import load_model
    from .workflow import model_input_shape

    source, _ = zoo.resolve(model)
    shape = None if size is None else model_input_shape(source, size, input_name)
    graph = load_model(source, input_name=input_name, output_name=output_name, input_shape=shape, protected=protected)
    return graph, source


def _say_choices(graph, quiet=False):
    if not quiet:
        for line in graph.choices:
            click.echo(f"note: {line}", err=True)


@main.command()
@click.argument("model", required=False)
@click.option("--size", type=SIZE, help="Input size (side or HxW), for models with a dynamic spatial size.")
@io_names
@click.option("--all-layers", is_flag=True, help="List every candidate layer, not only the last 12.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(model, size, input_name, output_name, all_layers, as_json):
    """Inputs, outputs, candidate layers and rule coverage of MODEL (a zoo name or an .onnx file)."""
    from .graph.model import read_model
    from .graph.report import format_report, inspect_model
    from .runtime import Engine

    graph, source = _load(model, size, input_name=input_name, output_name=output_name)
    Engine(graph)  # decides whether the model takes a batch
    original, _, _ = read_model(source)
    report = inspect_model(graph, original)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report, str(source), all_layers))


@main.command()
@click.argument("model", required=False)
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False), help="Where to write the augmented .onnx file.")
@click.option("--method", default=None,
              help="Write a finished explanation model for this method (grad_cam, saliency, ...): image in, scores, target "
                   "and heatmap out. Without it: the gradient graph.")
@click.option("--raw", is_flag=True, help="With --method: the heatmap's raw values instead of the normalised map.")
@click.option("--top-only", is_flag=True, help="With --method: no `class` input; the top class is always explained.")
@click.option("--overlay", is_flag=True, help="With --method: also output `overlay`, the map over the photo (uint8 RGB), "
                                               "drawn as `explain` draws it (needs the model's preprocessing).")
@click.option("--with-preprocessing", is_flag=True,
              help="With --method: `image` is uint8 RGB N x H x W x 3 of any size; the model's resize, crop and "
                   "normalisation run in the graph (no antialiasing, unlike the Python decoder).")
@click.option("--baseline", default=None, help="With --method integrated_gradients / deeplift / deeplift_reveal_cancel: the "
                                                "reference baked into the graph: black, zeros, gray, mean or a number "
                                                "(default: black, or zeros without preprocessing).")
@click.option("--layer", "layers", multiple=True, help="Layer to expose with its gradient (tensor or node name, or 'auto'); repeatable.")
@click.option("--rules", default="gradient", show_default=True,
              help="Rule set (`onnxsal rules`): gradient, guided_backprop, deconvnet, deeplift, deeplift_reveal_cancel "
                   "(these two add the input <input>_reference: DeepLIFT's multipliers against it), or "
                   "lrp:<composite or rules>[;epsilon=..;gamma=..;low=..;high=..].")
@click.option("--target-kind", type=click.Choice(["logit", "probability", "log_probability"]), default="logit", show_default=True,
              help="Which score the seed weights.")
@click.option("--no-input-grad", is_flag=True, help="Only layer gradients (stops the backward pass at the layers).")
@click.option("--size", type=SIZE, help="Input size (side or HxW), for models with a dynamic spatial size.")
@io_names
def export(model, output, method, raw, top_only, overlay, with_preprocessing, baseline, layers, rules, target_kind, no_input_grad, size,
           input_name, output_name):
    """Write MODEL's explanation graph: inputs <input> and seed, outputs <input>_grad, <layer>, <layer>_grad.

    The file runs in any ONNX runtime; feed `seed` shaped like the score (a one-hot row selects a class).
    With --method: inputs `image` and int64 `class` (-1 = top; left out with --top-only), outputs `scores`,
    `target` and `heatmap` (N x H x W).
    """
    from pathlib import Path

    from .files import write_output

    takes_reference = ("integrated_gradients", "deeplift", "deeplift_reveal_cancel")
    if baseline is not None:
        from .workflow import baseline_value

        if method not in takes_reference:
            raise click.BadParameter(f"only --method {', '.join(takes_reference)} bake a reference into the graph",
                                     param_hint="--baseline")
        try:
            baseline = baseline_value(baseline)
        except InputError as exc:
            raise click.BadParameter(str(exc), param_hint="--baseline") from None
    if method is not None:
        from . import zoo
        from .explainer import Explainer
        from .workflow import model_input_shape

        if len(layers) > 1:
            raise OnnxsalError("export --method takes at most one --layer")
        source, _ = zoo.resolve(model)
        shape = None if size is None else model_input_shape(source, size, input_name)
        ex = Explainer(model, layer=layers[0] if layers else "auto", input_name=input_name, output_name=output_name,
                       target_kind=target_kind, input_shape=shape)
        _say_choices(ex.graph)
        options = {}
        if method == "lrp" and rules.split(":", 1)[0] == "lrp":  # --rules lrp:<composite or rules>[;...]
            options["rules"] = rules.partition(":")[2] or None
        if baseline is not None:
            options["baseline"] = baseline
        exported = ex.export(output, method, normalize=not raw, class_input=not top_only, overlay=overlay,
                             with_preprocessing=with_preprocessing, **options)
        click.echo(f"wrote {output}")
        if method in takes_reference:
            chosen = baseline if baseline is not None else ("black" if ex.preprocessing is not None else "zeros")
            click.echo(f"  reference  {chosen} (a constant in the graph; --baseline changes it)")
        for i in exported.graph.input:
            click.echo(f"  input   {i.name}" + ("  (int64, one per sample or one for all; -1 = top class)" if i.name == "class" else ""))
        for o in exported.graph.output:
            click.echo(f"  output  {o.name}")
        return
    from .autodiff.augment import gradient_model
    from .autodiff import registry
    from .graph.layers import select_layer

    rules = _lrp_with_bounds(model, rules)
    registry.get(rules)  # an unknown or malformed rule set: one line
    graph, _ = _load(model, size, protected=tuple(l for l in layers if l != "auto"), input_name=input_name,
                     output_name=output_name)
    _say_choices(graph)
    chosen = [select_layer(graph, name).tensor for name in layers]
    augmented, score = gradient_model(graph, chosen, rules, target_kind, input_grad=not no_input_grad)

    write_output(Path(output), augmented.SerializeToString())
    click.echo(f"wrote {output}")
    for i in augmented.graph.input:
        if i.name not in {init.name for init in augmented.graph.initializer}:
            click.echo(f"  input   {i.name}")
    wanted = {score, *(f"{t}_grad" for t in [graph.input_name, *chosen]), *chosen}
    for o in augmented.graph.output:
        if o.name in wanted:
            click.echo(f"  output  {o.name}")


def _lrp_with_bounds(model, rules: str) -> str:
    """An lrp:... rule set without low= / high= gets the pixel range of the model's preprocessing (zoo entry or
    sidecar file), as `explain --method lrp` does, so zB rules need no numbers typed in."""
    if not rules.startswith("lrp:") or any(k in rules for k in ("low=", "high=")):
        return rules
    from . import zoo
    from .explainer import default_preprocessing
    from .methods.lrp import pixel_bounds

    bounds = pixel_bounds(default_preprocessing(*zoo.resolve(model)))
    if bounds is None:
        return rules
    low, high = (",".join(repr(float(v)) for v in b) for b in bounds)
    return f"{rules};low={low};high={high}"


def _floats(text, what):
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"{what} takes numbers separated by commas, e.g. 0.485,0.456,0.406") from None
    from .safety import finite_number

    try:
        return [finite_number(v, what, low=0 if what == "--std" else None, low_open=what == "--std") for v in values]
    except OnnxsalError as exc:
        raise click.BadParameter(str(exc)) from None


def preprocessing_options(fn):
    """The flags that describe how images become inputs of a model that is not from the zoo."""
    options = [
        click.option("--size", type=SIZE, help="Input size in pixels: a side or HxW, e.g. 48x192 (default: the model's, else 224)."),
        click.option("--crop", type=Number(0, 1, low_open=True), help="Fraction of the short side kept by the centre crop (default 0.875)."),
        click.option("--mean", help="Per-channel mean subtracted after scaling, e.g. 0.485,0.456,0.406."),
        click.option("--std", help="Per-channel std divided by, e.g. 0.229,0.224,0.225."),
        click.option("--scale", type=Number(nonzero=True), help="Pixel (0..255) multiplier applied first (default 1/255)."),
        click.option("--layout", type=click.Choice(["nchw", "nhwc"], case_sensitive=False), help="Input layout (default: detected)."),
        click.option("--bgr", is_flag=True, default=None, help="Feed channels in BGR order."),
        click.option("--interpolation", type=click.Choice(["bilinear", "bicubic", "nearest", "lanczos"]), help="Resize filter."),
        click.option("--preprocess", "preprocess_file", type=click.Path(dir_okay=False),
                     help="JSON/TOML sidecar with those settings (default: <model>.preprocess.json beside the model)."),
        click.option("--labels", "labels_file", type=click.Path(dir_okay=False), help="Class names, one per line."),
        *IO_NAMES,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _setup(model, size, crop, mean, std, scale, layout, bgr, interpolation, preprocess_file, labels_file, quiet=False,
           input_name=None, output_name=None):
    from .workflow import setup_model

    setup = setup_model(model, size=size, crop=crop, mean=_floats(mean, "--mean"), std=_floats(std, "--std"), scale=scale,
                        layout=layout, bgr=bgr, interpolation=interpolation, preprocess_file=preprocess_file,
                        labels_file=labels_file, input_name=input_name, output_name=output_name)
    if not quiet:
        for note in setup.notes:
            click.echo(f"note: {note}", err=True)
    return setup


def _explainer(setup, layer, target_kind, batch_size, provider):
    from .explainer import Explainer

    providers = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"], "auto": None}[provider]
    if provider == "cuda":
        from .runtime import available_providers

        if "CUDAExecutionProvider" not in available_providers():
            raise OnnxsalError("--provider cuda needs onnxruntime-gpu (pip install onnxsal[gpu]) and a visible GPU")
    return Explainer(setup.source, layer=layer, target_kind=target_kind, providers=providers, batch_size=batch_size,
                     preprocessing=setup.preprocessing, input_shape=setup.input_shape, labels=setup.labels,
                     input_name=setup.input_name, output_name=setup.output_name)


def method_flags(fn):
    options = [
        click.option("--target", default="top", show_default=True, help="top, a class index, or a class name."),
        click.option("--region", default=None,
                     help="Dense outputs: explain the --target class summed over 'predicted' (its predicted pixels), "
                          "a box x0,y0,x1,y1 in photo pixels, or a mask image the size of the photo."),
        click.option("--region-mean", is_flag=True, help="Average over the region instead of summing."),
        click.option("--box", default=None,
                     help="Detectors: explain detection N (0 = highest score), the one overlapping x0,y0,x1,y1 "
                          "(photo pixels), or 'list' to print the detections."),
        click.option("--decoder", type=click.Choice(["yolov8", "yolov5", "centernet", "centerface"]), default=None,
                     help="Detector output layout for --box (default: the sidecar's \"decoder\")."),
        click.option("--score-threshold", type=click.FloatRange(0, 1), default=None,
                     help="Detections kept for --box (default 0.5)."),
        click.option("--layer", default=None, help="Layer for CAM methods (tensor or node name; default: the zoo's or auto)."),
        click.option("--steps", type=click.IntRange(1), help="integrated_gradients: points on the path (default 50)."),
        click.option("--tolerance", type=Number(0, low_open=True), help="integrated_gradients: refine until |gap| <= tolerance * |F(x) - F(x')|."),
        click.option("--baseline", help="integrated_gradients / deeplift / deeplift_reveal_cancel reference, deeplift_shap / "
                                        "gradient_shap references, occlusion fill: black, zeros, gray, mean, blur, uniform, "
                                        "a number or a .npy file (one sample in model space); join several with + to average."),
        click.option("--samples", type=click.IntRange(1), help="smoothgrad, smoothgrad_sq, vargrad: noisy copies (default 50); "
                                                               "gradient_shap: samples (default 5); rise, drise: masks (default 1000)."),
        click.option("--noise-level", type=Number(0), help="smoothgrad family: noise std as a fraction of the input range (default 0.15); "
                                                           "gradient_shap: the same, default no noise."),
        click.option("--base", help="smoothgrad family: the method averaged (default saliency)."),
        click.option("--composite", default=None, help="lrp: the rule per layer by zennit's composite names: epsilon_plus_flat "
                     "(default), epsilon_gamma_box, epsilon_alpha2_beta1, epsilon_plus, epsilon_plus_box, epsilon (see `onnxsal rules`)."),
        click.option("--rules", "lrp_rules", default=None,
                     help="lrp: rules by selector instead of a composite, e.g. 'first=zbox,conv=gamma,dense=epsilon;gamma=0.5' "
                          "(selectors first, last, conv, dense, linear, op:<OpType>, name:<regex>)."),
        click.option("--window", type=click.IntRange(1), help="occlusion: patch side in pixels (default 32)."),
        click.option("--stride", type=click.IntRange(1), help="occlusion: patch step in pixels (default 16)."),
        click.option("--batch-size", type=click.IntRange(1), help="Samples per onnxruntime run (default: from the input size)."),
        click.option("--target-kind", type=click.Choice(["logit", "probability", "log_probability"]), default="logit",
                     show_default=True, help="Which score is explained."),
        click.option("--provider", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                     help="onnxruntime execution provider."),
        click.option("--cmap", type=click.Choice(["inferno", "viridis", "jet", "gray", "rdbu"]), help="Colormap of the overlays."),
        click.option("--alpha", type=Number(0, 1), default=0.6, show_default=True, help="Overlay opacity at the strongest pixels."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _progress(total: float, label: str, enabled: bool):
    """A click progress bar on stderr fed with fractional work units, or a no-op (also when stderr is not a terminal:
    a log or a pipe gets only note:, warning: and error: lines)."""
    import contextlib

    if not enabled or not sys.stderr.isatty():
        return contextlib.nullcontext(None)

    @contextlib.contextmanager
    def bar():
        with click.progressbar(length=max(1, int(round(total))), label=label, file=sys.stderr, show_pos=True) as b:
            done = [0.0]

            def advance(units):
                before = int(done[0])
                done[0] = min(total, done[0] + units)
                b.update(int(done[0]) - before)

            yield advance
            b.update(max(0, int(round(total)) - int(done[0])))

    return bar()


def _work(explainer, methods, cli, images: int) -> float:
    from .methods import METHODS
    from .workflow import method_options

    return images * sum(METHODS[m](explainer, **method_options(m, cli)).runs_per_sample() for m in methods)


def _cli_options(steps, tolerance, baseline, samples, noise_level, base, window, stride, batch_size):
    from .workflow import baseline_value

    try:
        reference = baseline_value(baseline)
    except InputError as exc:  # a usage error: refused before any model is loaded
        raise click.BadParameter(str(exc)) from None
    return {"steps": steps, "tolerance": tolerance, "baseline": reference, "samples": samples,
            "noise_level": noise_level, "base": base, "window": window, "stride": stride, "batch_size": batch_size}


@main.command()
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--model", default=None, help="Zoo name or .onnx file (default: the zoo's default model).")
@click.option("--method", "methods", multiple=True, help="Method(s), repeatable or comma-separated, or 'all' (default grad_cam).")
@method_flags
@click.option("--out", "out_dir", default="onnxsal-out", show_default=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--format", "fmt", type=click.Choice(["png", "npy", "both"]), default="png", show_default=True,
              help="Overlay PNGs, raw maps (.npy, float32 HxW), or both.")
@preprocessing_options
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first bad image instead of skipping it.")
@click.option("--overwrite", is_flag=True, help="Replace files left in --out by earlier runs (default: new names, cat-2_...).")
def explain(images, model, methods, target, region, region_mean, box, decoder, score_threshold, layer, steps, tolerance,
            baseline, samples, noise_level, base, composite, lrp_rules, window, stride, batch_size, target_kind, provider, cmap, alpha, out_dir, fmt,
            size, crop, mean, std, scale, layout, bgr, interpolation, preprocess_file, labels_file, input_name, output_name,
            quiet, fail_fast, overwrite):
    """Explain IMAGES (files or directories) and write one picture per image and method.

    With no images and no model: the bundled photo of a cat, explained by the default zoo model.
    A bad image (not an image, corrupt, not a regular file) is skipped with a warning and the run ends with
    exit code 1 and a summary; --fail-fast stops at the first one instead.
    """
    from pathlib import Path

    from . import zoo
    from .workflow import explain_files, image_files, parse_methods

    if not images and model is None:
        images = (str(zoo.example_image("chelsea")),)
    if not images:
        raise click.UsageError("give at least one image (file or directory)")
    bad: list = []
    files = image_files(images, on_bad=None if fail_fast else lambda path, why: bad.append(why))
    if not files and len(bad) == 1:
        raise OnnxsalError(bad[0])  # a single input: its reason is the one line
    for why in bad:
        click.echo(f"warning: {why}; skipped", err=True)
    if not files:
        raise OnnxsalError(f"none of the {len(bad)} images could be read (named in the warnings above)")
    inputs = len(files) + len(bad)

    def skip(path, why):
        bad.append(why)
        click.echo(f"warning: {why}; skipped", err=True)

    chosen = parse_methods(methods or ["grad_cam"])
    setup, ex, goal, cli = _prepare(model, layer, target, target_kind, batch_size, provider, quiet, locals())
    total = _work(ex, chosen, cli, len(files))
    dense = _dense(ex, region, region_mean, box, decoder, score_threshold)
    cli["decoder"] = dense.decoder if dense else None
    if box == "list":
        from .workflow import list_detections

        list_detections(ex, files, dense.decoder, score_threshold, report=click.echo)
        return
    if not quiet:
        click.echo(f"explaining {ex.describe()}")
    report = (lambda line: None) if quiet else click.echo
    with _progress(total, "explaining", enabled=not quiet and total > 8) as advance:
        written = explain_files(ex, files, chosen, goal, cli, Path(out_dir), fmt, cmap, alpha, progress=advance, report=report,
                                dense=dense, on_bad=None if fail_fast or inputs == 1 else skip, overwrite=overwrite)
    if not quiet:
        click.echo(f"wrote {len(written)} file(s) to {out_dir}")
    if bad and len(bad) == inputs:
        raise OnnxsalError(f"none of the {inputs} images could be read (named in the warnings above)")
    if bad:
        raise OnnxsalError(f"{len(bad)} of {inputs} images skipped (named in the warnings above); the others were explained")


def _dense(ex, region, region_mean, box, decoder, score_threshold):
    """The --region / --box settings (None when neither is given)."""
    from .errors import TargetError
    from .workflow import DenseSpec

    if region is not None and box is not None:
        raise TargetError("--region and --box explain different things; give one")
    if region is None and box is None:
        if region_mean or decoder or score_threshold is not None:
            raise TargetError("--region-mean goes with --region; --decoder and --score-threshold with --box")
        return None
    if region is not None:
        from .workflow import score_spatial

        score_spatial(ex)  # refuse a classifier's output, or a malformed region, before anything runs
        from pathlib import Path

        from .workflow import parse_box

        if region != "predicted" and parse_box(region) is None and not Path(region).is_file():
            raise TargetError(f"--region is predicted, x0,y0,x1,y1 or a mask image; {region!r} is none of them")
    if box is not None and box != "list" and not box.strip().isdigit():
        from .workflow import parse_box

        if parse_box(box) is None:
            raise TargetError(f"--box is a detection index (0 = the highest score), x0,y0,x1,y1 or list; not {box!r}")
    chosen = decoder or (ex.preprocessing.extra.get("decoder") if ex.preprocessing is not None else None)
    if box is not None and chosen is None:
        raise TargetError("--box needs the detector's layout: --decoder yolov8|yolov5|centernet|centerface "
                               "(or \"decoder\" in the model's .preprocess.json)")
    return DenseSpec(region=region, region_mean=region_mean, box=box, decoder=chosen, threshold=score_threshold)


def _prepare(model, layer, target, target_kind, batch_size, provider, quiet, flags: dict):
    """What explain, compare and batch share: the model's setup, the Explainer (saying what it chose), the
    target and the method options, from the commands' flags."""
    from .workflow import parse_target, unused_flags

    # method flags first: a wrong --baseline is refused before any model is loaded (exit 2)
    cli = _cli_options(flags["steps"], flags["tolerance"], flags["baseline"], flags["samples"], flags["noise_level"],
                       flags["base"], flags["window"], flags["stride"], batch_size)
    setup = _setup(model, flags["size"], flags["crop"], flags["mean"], flags["std"], flags["scale"], flags["layout"],
                   flags["bgr"], flags["interpolation"], flags["preprocess_file"], flags["labels_file"], quiet,
                   flags["input_name"], flags["output_name"])
    ex = _explainer(setup, layer or _zoo_layer(setup), target_kind, batch_size, provider)
    _say_choices(ex.graph, quiet)
    goal = parse_target(target, ex.labels, ex.num_classes)
    cli.update(composite=flags["composite"], rules=flags["lrp_rules"])
    if not quiet:
        for line in unused_flags(flags.get("chosen") or [], cli):
            click.echo(line, err=True)
    return setup, ex, goal, cli


def _zoo_layer(setup):
    from . import zoo

    if setup.zoo_name is None:
        return "auto"
    return zoo.entry(setup.zoo_name).get("default_layer", "auto")


@main.command()
@click.argument("image", type=click.Path())
@click.option("--model", default=None, help="Zoo name or .onnx file (default: the zoo's default model).")
@click.option("--methods", "methods", default="all", show_default=True, help="Comma-separated methods, or all.")
@method_flags
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output PNG (default: onnxsal-out/<image>_compare.png).")
@preprocessing_options
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def compare(image, model, methods, target, region, region_mean, box, decoder, score_threshold, layer, steps, tolerance, baseline, samples, noise_level, base, composite, lrp_rules, window, stride,
            batch_size, target_kind, provider, cmap, alpha, output, size, crop, mean, std, scale, layout, bgr,
            interpolation, preprocess_file, labels_file, input_name, output_name, quiet):
    """One picture: IMAGE and every chosen method's map side by side, labelled."""
    from pathlib import Path

    from . import viz
    from .workflow import compare_image, image_files, parse_methods

    files = image_files([image])
    if len(files) != 1:
        raise click.BadParameter(f"compare draws one image; {image} holds {len(files)}: give one of them, or use "
                                 "explain for a folder", param_hint="IMAGE")
    (file,) = files
    chosen = parse_methods([methods])
    setup, ex, goal, cli = _prepare(model, layer, target, target_kind, batch_size, provider, quiet, locals())
    if not quiet:
        click.echo(f"explaining {ex.describe()}")
    dense = _dense(ex, region, region_mean, box, decoder, score_threshold)
    cli["decoder"] = dense.decoder if dense else None
    report = (lambda line: None) if quiet else click.echo
    with _progress(_work(ex, chosen, cli, 1), "comparing", enabled=not quiet) as advance:
        sheet = compare_image(ex, file, chosen, goal, cli, cmap, alpha, progress=advance, dense=dense, report=report)
    if output:
        path = Path(output)
    else:
        from .files import OutputNames

        path = Path("onnxsal-out") / (OutputNames("onnxsal-out").claim(file.stem, ["_compare.png"]) + "_compare.png")
    viz.save_png(sheet, path)
    if not quiet:
        click.echo(f"wrote {path}")


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--model", default=None, help="Zoo name or .onnx file (default: the zoo's default model).")
@click.option("--method", "methods", multiple=True, help="Method(s), repeatable or comma-separated, or 'all' (default grad_cam).")
@method_flags
@click.option("--out", "out_dir", default="onnxsal-out", show_default=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--format", "fmt", type=click.Choice(["png", "npy", "both", "none"]), default="png", show_default=True,
              help="Overlays, maps (.npy), both, or none (the index only).")
@click.option("--map-dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="dtype of the .npy maps.")
@click.option("--index", "index_file", type=click.Path(dir_okay=False), help="The run's index (default: OUT/index.jsonl).")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True, help="Decoding and writing threads.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first bad image instead of skipping it.")
@preprocessing_options
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors and the summary.")
def batch(inputs, model, methods, target, region, region_mean, box, decoder, score_threshold, layer, steps, tolerance,
          baseline, samples, noise_level, base, composite, lrp_rules, window, stride, batch_size, target_kind, provider, cmap, alpha, out_dir, fmt,
          map_dtype, index_file, workers, fail_fast, size, crop, mean, std, scale, layout, bgr, interpolation, preprocess_file,
          labels_file, input_name, output_name, quiet):
    """Explain a whole dataset: INPUTS are folders, glob patterns, files, or .csv/.jsonl lists of path[,target].

    Streams images through decoding, explaining and writing with bounded memory; writes one index line per
    image and method (OUT/index.jsonl). Rerunning the same command skips what the index already holds.
    A bad image is skipped with a warning (--fail-fast stops instead); the run ends with a summary.
    """
    from pathlib import Path

    from .pipeline import explain_dataset, read_inputs
    from .workflow import method_options, parse_methods

    if region is not None or box is not None:
        raise OnnxsalError("batch explains classes; --region and --box work with `explain` (per image)")
    items = read_inputs(inputs)
    if not items:
        raise OnnxsalError("no images to explain")
    chosen = parse_methods(methods or ["grad_cam"])
    setup, ex, goal, cli = _prepare(model, layer, target, target_kind, batch_size, provider, quiet, locals())
    if not quiet:
        click.echo(f"explaining {ex.describe()}", err=True)
    warn = lambda line: click.echo(line, err=True)  # noqa: E731
    with _progress(len(items), "explaining", enabled=not quiet) as advance:
        summary = explain_dataset(ex, items, chosen, goal, lambda m: method_options(m, cli), Path(out_dir), fmt=fmt,
                                  map_dtype=map_dtype, index_path=Path(index_file) if index_file else None, workers=workers,
                                  cmap=cmap, alpha=alpha, fail_fast=fail_fast, progress=advance, report=warn)
    rate = summary.images / summary.seconds if summary.seconds else 0.0
    click.echo(f"{summary.images} image(s): {summary.done} result(s) written, {summary.skipped} already done, "
               f"{len(summary.failed)} failed; {rate:.1f} images/s; index {index_file or Path(out_dir) / 'index.jsonl'}")
    if summary.failed:
        raise OnnxsalError(f"{len(summary.failed)} of {summary.images} images failed (named in the warnings above)")


@main.command()
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--model", default=None, help="Zoo name or .onnx file (default: the zoo's default model).")
@click.option("--method", "methods", multiple=True, help="Method(s), repeatable or comma-separated, or 'all' (default grad_cam).")
@click.option("--metrics", "metrics", multiple=True,
              help="Metric(s), comma-separated: deletion, insertion, pixel_flipping, road, pointing_game, energy_pointing_game, "
                   "infidelity, sensitivity_max, adversarial, random_perturbation, sparseness, entropy, randomisation, "
                   "input_invariance; or default, all, faithfulness, localisation, robustness, complexity, sanity (default: "
                   "deletion, insertion, pixel_flipping, sparseness, entropy, plus localisation with --boxes or --masks).")
@click.option("--boxes", "boxes_file", type=click.Path(dir_okay=False),
              help='Object boxes per image, photo pixels: JSON ({"images": {name: {"objects": [{"box": [x0,y0,x1,y1], '
                   '"imagenet": [...]}]}}}) or CSV (header image,x0,y0,x1,y1[,label][,imagenet]).')
@click.option("--masks", "masks_dir", type=click.Path(file_okay=False),
              help="Folder of object masks (nonzero = object), one per image: <stem>.png or <stem>_mask.png, photo size.")
@click.option("--set", "assignments", multiple=True, metavar="NAME.KEY=VALUE",
              help="A metric setting or method option, e.g. deletion.steps=20, insertion.fill=zeros, randomisation.layers=all, "
                   "integrated_gradients.steps=16; repeatable.")
@click.option("--target", default="top", show_default=True, help="top, a class index, or a class name.")
@click.option("--layer", default=None, help="Layer for CAM methods (default: the zoo's or auto).")
@click.option("--batch-size", type=click.IntRange(1), help="Perturbed inputs per onnxruntime run (default: from the input size).")
@click.option("--target-kind", type=click.Choice(["logit", "probability", "log_probability"]), default="logit",
              show_default=True, help="Which score the methods explain.")
@click.option("--out", "out_dir", default="onnxsal-eval", show_default=True, type=click.Path(file_okay=False), help="Output directory.")
@preprocessing_options
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def evaluate(images, model, methods, metrics, boxes_file, masks_dir, assignments, target, layer, batch_size, target_kind, out_dir,
             size, crop, mean, std, scale, layout, bgr, interpolation, preprocess_file, labels_file, input_name, output_name,
             quiet):
    """Evaluate methods' maps of IMAGES: faithfulness, sanity checks, localisation, robustness, complexity.

    Writes evaluation.json (every figure with its settings), evaluation.md and evaluation.html (a table) and PNG
    plots into --out.
    With no images and no model: the two bundled photos and their boxes.
    """
    from pathlib import Path

    from . import zoo
    from .metrics import parse_metrics
    from .metrics.files import evaluate_files, parse_assignments
    from .workflow import image_files, parse_methods, parse_target

    if not images and model is None:
        images = (str(zoo.example_image("chelsea")), str(zoo.example_image("coffee")))
        if masks_dir is None:
            boxes_file = boxes_file or str(zoo.example_image("chelsea").parent / "boxes.json")
    if not images:
        raise click.UsageError("give at least one image (file or directory)")
    files = image_files(images)
    chosen = parse_methods(methods or ["grad_cam"])
    if any("all" in m.split(",") for m in methods) and "drise" in chosen:
        chosen.remove("drise")  # 'all' means the methods for this model: D-RISE explains detectors only
    wanted = parse_metrics(list(metrics) or ["default"], boxes=boxes_file is not None or masks_dir is not None)
    settings, options = parse_assignments(assignments)
    setup = _setup(model, size, crop, mean, std, scale, layout, bgr, interpolation, preprocess_file, labels_file, quiet,
                   input_name, output_name)
    ex = _explainer(setup, layer or _zoo_layer(setup), target_kind, batch_size, "auto")
    _say_choices(ex.graph, quiet)
    goal = parse_target(target, ex.labels, ex.num_classes)
    if not quiet:
        click.echo(f"evaluating {', '.join(chosen)} with {', '.join(wanted)} on {len(files)} image(s); {ex.describe()}")
    report = (lambda line: None) if quiet else click.echo
    with _progress(len(files) * len(chosen) * len(wanted), "evaluating", enabled=not quiet) as advance:
        result, written = evaluate_files(ex, files, chosen, wanted, boxes_file=boxes_file, masks_dir=masks_dir,
                                         settings=settings, options=options, target=goal, out=Path(out_dir),
                                         report=report, batch_size=batch_size, model=setup.source, progress=advance)
    if not quiet:
        click.echo(result.table())
        click.echo(f"wrote {len(written)} file(s) to {out_dir}")


@main.command("visualize-class")
@click.option("--model", default=None, help="Zoo name or .onnx file (default: the zoo's default model).")
@click.option("--class", "target", required=True, help="The class: an index or a name.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output PNG (default: onnxsal-out/class_<c>.png).")
@click.option("--steps", type=click.IntRange(1), default=200, show_default=True, help="Gradient ascent steps.")
@click.option("--lr", type=Number(0, low_open=True), default=1.0, show_default=True, help="Step size.")
@click.option("--l2", type=Number(0), default=1e-3, show_default=True, help="L2 penalty lambda on the image.")
@click.option("--jitter", type=click.IntRange(0), default=0, show_default=True, help="Random shift in pixels per step.")
@click.option("--blur-every", type=click.IntRange(0), default=0, show_default=True, help="Blur the image every N steps (0: never).")
@preprocessing_options
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def visualize_class(model, target, output, steps, lr, l2, jitter, blur_every, size, crop, mean, std, scale, layout, bgr,
                    interpolation, preprocess_file, labels_file, input_name, output_name, quiet):
    """The input a model scores highest for a class: gradient ascent from the zero image (Simonyan et al. 2013, sec. 2).

    Maximises S_c(I) - l2 |I|^2 over the model input I (the score before the softmax); the picture is the result
    min-max scaled to 8 bits.
    """
    from pathlib import Path

    from . import viz
    from .class_model import render
    from .class_model import visualize_class as run
    from .workflow import parse_target

    setup = _setup(model, size, crop, mean, std, scale, layout, bgr, interpolation, preprocess_file, labels_file, quiet,
                   input_name, output_name)
    ex = _explainer(setup, "auto", "logit", None, "auto")
    _say_choices(ex.graph, quiet)
    goal = parse_target(target, ex.labels, ex.num_classes)
    if isinstance(goal, str):
        raise OnnxsalError("--class needs a class index or name, not 'top'")
    with _progress(steps, "ascending", enabled=not quiet) as advance:
        image, history = run(ex, goal, steps=steps, lr=lr, l2=l2, jitter=jitter, blur_every=blur_every, progress=advance)
    path = Path(output) if output else Path("onnxsal-out") / f"class_{goal}.png"
    viz.save_png(render(image, ex.graph.layout), path)
    if not quiet:
        top = ex.top_classes(image, 1)[0]
        said = f"; the model now says {top[0][0]} {top[0][1]} {top[0][2]:.1%}" if top else ""
        click.echo(f"objective {history[0]:.3f} -> {history[-1]:.3f} over {steps} steps{said}; wrote {path}")


@main.group(cls=Group)
def zoo():
    """The bundled pretrained models."""


@zoo.command("list")
def zoo_list():
    """Name, input and description of every zoo model."""
    from . import zoo as z

    default = z.default_name()
    for name in z.names():
        e = z.entry(name)
        mark = " (default)" if name == default else ""
        click.echo(f"{name}{mark}  {e['preprocessing']['size']}x{e['preprocessing']['size']} {e['layout']}  {e['description']}")


@zoo.command("info")
@click.argument("name")
def zoo_info(name):
    """Everything the manifest says about one model."""
    from . import zoo as z

    e = z.entry(name)
    click.echo(f"name           {name}")
    click.echo(f"description    {e['description']}")
    click.echo(f"file           {z.model_path(name)}")
    click.echo(f"sha256         {e['sha256']}")
    click.echo(f"input          {e['input']} (N, 3, {e['preprocessing']['size']}, {e['preprocessing']['size']}) {e['layout']}")
    click.echo(f"output         {e['output']} ({e['classes']} ImageNet-1k classes, logits)")
    p = e["preprocessing"]
    click.echo(f"preprocessing  {p['order'].replace('_', ' then ')} {p['interpolation']}, size {p['size']}, crop {p['crop']}, "
               f"x = (pixel * {p['scale']:.6g} - mean) / std, mean {p['mean']}, std {p['std']}")
    click.echo(f"default layer  {e['default_layer']}")
    click.echo(f"licence        {e['licence']}")
    click.echo(f"source         {e['source']}")


@main.command("methods")
def methods_cmd():
    """The attribution methods, with their papers."""
    from .methods import METHODS

    width = max(len(n) for n in METHODS)
    for name, cls in METHODS.items():
        click.echo(f"{name:<{width}}  {cls.description}")
        click.echo(f"{'':<{width}}  {cls.reference}")


@main.command("rules")
def rules_cmd():
    """The backward rule sets, and the ONNX ops that have a rule."""
    from .autodiff.registry import citations, rulesets, supported_ops

    sets = rulesets()
    width = max(len(n) for n in sets)
    for name, doc in sets.items():
        click.echo(f"{name:<{width}}  {doc}")
    for name, cite in citations().items():
        click.echo(f"\n{name}: {cite}")
    from .autodiff.rules.lrp import LAYER_RULES

    click.echo("lrp rules (per linear layer): " + ", ".join(LAYER_RULES) + "; parameters epsilon, gamma, stabilizer, low, high, "
               "zero_bias; BatchNormalization must be folded into its Conv (onnxsal folds Conv -> BatchNormalization)")
    click.echo(f"\nops with a backward rule ({len(supported_ops())}): " + ", ".join(supported_ops()))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
