"""`jmvae attr2img`: attributes -> face."""

import sys
from pathlib import Path
from typing import Annotated

import typer

from jmvae_cli.commands import common
from jmvae_cli.console import console
from jmvae_cli.errors import JmvaeError


def attr2img(
    set_: common.SetOpt = [],
    unset: common.UnsetOpt = [],
    strength: common.StrengthOpt = 2.0,
    base: Annotated[
        common.Base | None,
        typer.Option(help="Attributes before --set/--unset: the paper's random base, or all off (default: random)."),
    ] = None,
    attrs: Annotated[
        str | None,
        typer.Option(
            "--attrs", help="Start from img2attr output (json, jsonl, csv, tsv; its first record); - is stdin."
        ),
    ] = None,
    soft: common.SoftOpt = False,
    samples: Annotated[
        int, typer.Option("--samples", min=0, help="Random faces from q(z|w) after the average face.")
    ] = 0,
    zeta: Annotated[
        float,
        # the bound keeps out inf (NaN faces); the paper's figures use zeta <= 1
        common.number(
            "--zeta", min=0.0, max=100.0, help="Variance of the samples' noise: z = mean + sigma * N(0, zeta)."
        ),
    ] = 1.0,
    seed: common.SeedOpt = 0,
    size: common.SizeOpt = None,
    output: common.OutputOpt = None,
    weights: common.WeightsOpt = None,
    device: common.DeviceOpt = common.Device.auto,
    verbose: common.VerboseOpt = False,
):
    """Draw the face of a set of attributes: the decoded mean of q(z|w), and --samples random ones, as a grid.

    --set / --unset take Name or Name=STRENGTH (that attribute's own --strength)."""
    if output is None:
        raise typer.BadParameter("give the image to write, or - for stdout", param_hint="'-o'")
    common.check_image_output(output)
    if base is not None and attrs is not None:
        raise typer.BadParameter(
            "--base and --attrs both give the starting attributes: choose one", param_hint="'--base'"
        )

    from jmvae_cli import attributes, translate

    tr = common.load_translator(weights, device, verbose)
    values = attributes.values(attributes.parse_set_unset(set_, unset, tr.attr_names), strength)
    translate.check_samples(samples, lambda n: translate.grid_size(1 + n, size or tr.image_size))
    if attrs is not None:
        name = "<stdin>" if attrs == "-" else attrs
        try:  # the same bytes read alike from stdin and from a file, whatever the locale
            text = (sys.stdin.buffer.read() if attrs == "-" else Path(attrs).read_bytes()).decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise JmvaeError(f"{name}: cannot read attributes ({getattr(e, 'strerror', None) or e})") from None
        probs, _ = attributes.read_record(text, tr.attr_names, name)
        w = attributes.binarize(probs, soft)
    else:
        w = translate.base_attributes((base or common.Base.random).value, len(tr.attr_names), seed)
    for i, v in values.items():
        w[i] = v
    if verbose:
        on = [n for n, v in zip(tr.attr_names, w) if attributes.present(v)]
        console.print(f"attributes on: {', '.join(on) or 'none'}", highlight=False)
    faces_u8 = translate.average_face(tr, w, samples, zeta, seed)  # (1 + samples, S, S, 3)
    common.write_output_image(translate.grid(faces_u8, size), output)
