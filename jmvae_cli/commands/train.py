"""`jmvae train`: train a JMVAE, a baseline or the classifier.

The command's options are TrainOptions' fields (train_options.py), turned into Typer parameters here: their
defaults, help, bounds and choices are written there once.
"""

import inspect
import json
from dataclasses import MISSING, fields
from typing import Annotated, Literal

import typer

from jmvae_cli.commands import common
from jmvae_cli.console import console
from jmvae_cli.train_options import TrainOptions, choices, help_text


def _above(bound: float):
    def check(value):
        if common.finite(value) is not None and value <= bound:
            raise typer.BadParameter(f"must be more than {bound}, not {value}")
        return value

    return check


def _parameter(f) -> inspect.Parameter:
    """A TrainOptions field as a keyword parameter of the command, annotated with its typer.Option."""
    meta = f.metadata
    kw = {k: meta[k] for k in ("min", "max", "envvar") if k in meta}
    if "above" in meta:
        kw["callback"] = _above(meta["above"])
    elif f.type in (float, float | None):
        kw["callback"] = common.finite
    if f.name == "data":  # required, but by train() below: --resume takes the saved run's
        kw["show_default"] = False
    names = choices(meta)
    annotation = Literal[names] if names is not None else f.type
    option = typer.Option(*meta.get("flags", ()), help=help_text(f.name), **kw)
    if f.name == "data":
        default = None
    elif f.default is not MISSING:
        default = f.default
    elif f.default_factory is not MISSING:
        default = f.default_factory()
    else:
        default = inspect.Parameter.empty
    return inspect.Parameter(
        f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[annotation, option], default=default
    )


def train(ctx: typer.Context, format: common.Format | None = None, **options):
    """Train a JMVAE on face images with attributes."""
    if format not in (None, common.Format.table, common.Format.json):
        raise typer.BadParameter("train reports as a table (stderr) or json (stdout)", param_hint="'--format'")
    from jmvae_cli.train import options_for
    from jmvae_cli.train import train as run_training

    # Only what was typed (or set in the environment): on --resume the rest comes from the saved run.
    given = {k: v for k, v in options.items() if ctx.get_parameter_source(k).name != "DEFAULT"}
    if "data" not in given and not given.get("resume"):
        raise typer.BadParameter("give the training images: --data FOLDER (repeat for several)", param_hint="'--data'")
    opts = options_for(given)
    metrics = run_training(opts)
    if metrics is None:  # another process of a torchrun than rank 0, which reports
        return
    console.print(f"saved {opts.out / 'model.safetensors'}", highlight=False, markup=False)
    if format == common.Format.json:
        print(json.dumps(metrics))


_P = inspect.Parameter
train.__signature__ = inspect.Signature(
    [
        _P("ctx", _P.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        *(_parameter(f) for f in fields(TrainOptions) if f.metadata["cli"]),
        _P(
            "format",
            _P.KEYWORD_ONLY,
            annotation=Annotated[
                common.Format | None,
                typer.Option("--format", "-f", help="json: print the last epoch's metrics on stdout."),
            ],
            default=None,
        ),
    ]
)
