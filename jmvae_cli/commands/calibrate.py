"""`jmvae calibrate`: add the regress edit's constants and per-attribute strengths to a model file."""

from pathlib import Path
from typing import Annotated

import typer

from jmvae_cli.commands import common
from jmvae_cli.console import console


def calibrate(
    weights: Annotated[Path, typer.Option("--weights", help="The model file to calibrate.", show_default=False)],
    data: Annotated[
        list[Path],
        typer.Option("--data", help="A data folder, as for train (repeat for several).", show_default=False),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Where to write the calibrated model (.safetensors).", show_default=False)
    ],
    classifier: Annotated[
        Path | None,
        typer.Option("--classifier", help="The attribute classifier that judges the edits (default: the bundled one)."),
    ] = None,
    goal: Annotated[
        float,
        common.number("--goal", min=0.05, max=1.0, help="Share of training faces on which the edit must show."),
    ] = 0.6,
    trade_off: Annotated[
        float,
        common.number(
            "--trade-off",
            min=0.0,
            help="Of the strengths that reach --goal, the one with the most target seen less this times the share "
            "of other attributes changed (5: the bundled model's).",
        ),
    ] = 5.0,
    faces: Annotated[
        int, typer.Option("--faces", min=10, help="Training faces per attribute and direction to calibrate on.")
    ] = 100,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
    device: common.DeviceOpt = common.Device.auto,
    seed: common.SeedOpt = 0,
):
    """Fit the regress edit's constants on the training split and calibrate each attribute's strength.

    For every attribute and direction, of the strengths 0.5 1 1.5 2 3 4, each with the attribute's footprint as
    fitted and cubed (kept nearer where the attribute shows most) and each along the attribute's regression
    direction and along the face's neighbours' (what the attribute changes on faces like it), at which the
    classifier sees the change on --goal of the training faces that lack it (where none does, 4), the one with the
    most target seen less --trade-off times the share of the other attributes changed; `jmvae edit --strength
    auto` (the default) uses them. Five cells are held where a person sees the change differently from the
    classifier: Eyeglasses on from 3, Mustache on to the 8th power along the regression direction, Brown_Hair on
    and Young on as fitted along the neighbours' and at most 2, and Bald on drawn by the model outright (the hair
    goes) along the neighbours', its footprint's square root, at most 2. The footprints of Mustache and
    Bushy_Eyebrows are scaled to their strongest 3% (the mouth, the brows) rather than a tenth of the crop.
    Validation faces are never used. Writes --out with the model's own tensors unchanged.
    """
    from jmvae_cli import edit_directions
    from jmvae_cli.runtime import pick_device

    def report(name: str, on: bool, cell: edit_directions.Cell) -> None:
        seen = "too few faces" if cell.seen is None else f"seen on {cell.seen:.0%} of {cell.faces}"
        if cell.kept is not None:
            seen += f", others kept {cell.kept:.0%}"
        along = ", along the neighbours' direction" if cell.local else ""
        console.print(
            f"{'+' if on else '-'}{name}: strength {cell.strength:g}, footprint power {cell.power:g}{along} ({seen})",
            highlight=False,
            soft_wrap=True,
        )

    cfg = edit_directions.CalibrateConfig(goal=goal, trade=trade_off, faces=faces, seed=seed)
    edit_directions.calibrate_weights(
        weights, data, out, classifier=classifier, cfg=cfg, force=force, device=pick_device(device.value),
        progress=console.is_terminal, on_cell=report,
    )  # fmt: skip
    console.print(f"wrote {out}", highlight=False, soft_wrap=True, markup=False)
