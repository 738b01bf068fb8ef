"""`jmvae figure`: the paper's figures."""

from enum import Enum
from typing import Annotated

import typer

from jmvae_cli.commands import common
from jmvae_cli.console import console


class FigureKind(str, Enum):
    faces = "faces"
    pca = "pca"
    edit = "edit"


def figure(
    kind: Annotated[
        FigureKind, typer.Argument(metavar="KIND", help="faces: Figure 1(a); pca: Figure 1(b); edit: Figure 2.")
    ],
    image: Annotated[
        str | None, typer.Argument(metavar="IMAGE", help="The photo to edit (edit only); - reads it from stdin.")
    ] = None,
    output: common.OutputOpt = None,
    attrs: Annotated[
        list[str],
        typer.Option(
            "--attr",
            help="An attribute to show (repeatable; default: the paper's choice). faces: Name sets it on, -Name or "
            "'not Name' off; pca: the attributes set, one colour each; edit: Name flips the face's inferred value, "
            "+Name / -Name set it on / off. Name=STRENGTH gives it its own --strength.",
            show_default=False,
        ),
    ] = [],
    samples: Annotated[
        int, typer.Option("--samples", min=0, help="faces: rows of random faces under the average.")
    ] = 4,
    zeta: Annotated[
        float,
        common.number("--zeta", min=0.0, max=100.0, help="faces: variance of the rows' noise eps ~ N(0, zeta)."),
    ] = 0.5,
    bases: Annotated[int, typer.Option("--bases", min=2, help="pca: random base vectors per attribute.")] = 200,
    strength: common.StrengthOpt = 2.0,
    seed: common.SeedOpt = 0,
    size: Annotated[
        int, typer.Option("--size", min=48, max=512, help="faces, edit: pixels per face tile (48 fits the labels).")
    ] = 96,
    no_detect: common.NoDetectOpt = False,
    weights: common.WeightsOpt = None,
    device: common.DeviceOpt = common.Device.auto,
    verbose: common.VerboseOpt = False,
):
    """Draw one of the paper's figures as a PNG with the model: `jmvae figure faces -o faces.png`."""
    if output is None:
        raise typer.BadParameter("give the image to write, or - for stdout", param_hint="'-o'")
    common.check_image_output(output)
    if (kind == FigureKind.edit) != (image is not None):
        msg = "figure edit needs the photo to edit" if image is None else f"figure {kind.value} takes no image"
        raise typer.BadParameter(msg, param_hint="IMAGE")

    from jmvae_cli import attributes, faces, figures

    tr = common.load_translator(weights, device, verbose)
    if kind == FigureKind.faces:
        img = figures.faces_figure(tr, attrs, samples, zeta, seed, strength, size)
    elif kind == FigureKind.pca:
        img = figures.pca_figure(tr, attrs, bases, seed, strength)
    else:
        data = common.read_stdin_bytes() if image == "-" else image
        name = "<stdin>" if image == "-" else image
        _, crops = faces.load_faces(data, name, detect=not no_detect, size=tr.image_size)
        img, probs = figures.edit_figure(tr, crops[0].crop, attrs, strength, size)
        on = sorted((p, n) for n, p in zip(tr.attr_names, probs) if attributes.present(p))[::-1]
        console.print(
            "inferred: " + (", ".join(f"{n} {p:.2f}" for p, n in on) or "none"), highlight=False, soft_wrap=True
        )
    common.write_output_image(img, output)
