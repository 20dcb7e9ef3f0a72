"""The onnxsal command line: one click group, one command per verb; parsing and printing only."""

from __future__ import annotations

import json
import os
import sys

import click

from .errors import OnnxsalError


class Group(click.Group):
    """Turns OnnxsalError into a one-line 'Error: ...' and exit 1; other failures into one line too."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt):
            raise
        except OnnxsalError as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - an internal failure: one line unless debugging
            if os.environ.get("ONNXSAL_DEBUG"):
                raise
            raise click.ClickException(
                f"internal error ({type(exc).__name__}: {exc}); rerun with ONNXSAL_DEBUG=1 for the traceback"
            ) from None


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxsal")
def main():
    """Pixel attribution (saliency maps) for ONNX models, computed by ONNX Runtime."""


def _load(model: str | None, input_shape=None, protected=()):
    from . import zoo
    from .graph.model import load_model

    source, _ = zoo.resolve(model)
    return load_model(source, input_shape=input_shape, protected=protected), source


@main.command()
@click.argument("model", required=False)
@click.option("--size", type=int, help="Input height and width, for models with a dynamic spatial size.")
@click.option("--all-layers", is_flag=True, help="List every candidate layer, not only the last 12.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(model, size, all_layers, as_json):
    """Inputs, outputs, candidate layers and rule coverage of MODEL (a zoo name or an .onnx file)."""
    from .graph.model import read_model
    from .graph.report import format_report, inspect_model
    from .runtime import Engine

    graph, source = _load(model, _spatial(size))
    Engine(graph)  # decides whether the model takes a batch
    original, _, _ = read_model(source)
    report = inspect_model(graph, original)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report, str(source), all_layers))


def _spatial(size):
    return None if size is None else (None, 3, size, size)


@main.command()
@click.argument("model", required=False)
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False), help="Where to write the augmented .onnx file.")
@click.option("--layer", "layers", multiple=True, help="Layer to expose with its gradient (tensor or node name, or 'auto'); repeatable.")
@click.option("--rules", default="gradient", show_default=True, help="Rule set: gradient, guided_backprop or deconvnet.")
@click.option("--target-kind", type=click.Choice(["logit", "probability", "log_probability"]), default="logit", show_default=True,
              help="Which score the seed weights.")
@click.option("--no-input-grad", is_flag=True, help="Only layer gradients (stops the backward pass at the layers).")
@click.option("--size", type=int, help="Input height and width, for models with a dynamic spatial size.")
def export(model, output, layers, rules, target_kind, no_input_grad, size):
    """Write MODEL's explanation graph: inputs <input> and seed, outputs <input>_grad, <layer>, <layer>_grad.

    The file runs in any ONNX runtime; feed `seed` shaped like the score (a one-hot row selects a class).
    """
    from .autodiff.augment import gradient_model
    from .autodiff.registry import rulesets
    from .cache import atomic_write
    from .graph.layers import select_layer

    if rules not in rulesets():
        raise OnnxsalError(f"unknown rule set {rules!r}; choose one of {', '.join(rulesets())}")
    graph, _ = _load(model, _spatial(size), protected=tuple(l for l in layers if l != "auto"))
    chosen = [select_layer(graph, name).tensor for name in layers]
    augmented, score = gradient_model(graph, chosen, rules, target_kind, input_grad=not no_input_grad)
    from pathlib import Path

    atomic_write(Path(output), augmented.SerializeToString())
    click.echo(f"wrote {output}")
    for i in augmented.graph.input:
        if i.name not in {init.name for init in augmented.graph.initializer}:
            click.echo(f"  input   {i.name}")
    wanted = {score, *(f"{t}_grad" for t in [graph.input_name, *chosen]), *chosen}
    for o in augmented.graph.output:
        if o.name in wanted:
            click.echo(f"  output  {o.name}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
