"""`jmvae edit`: change attributes of the face in a photo."""

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from jmvae_cli import editing
from jmvae_cli.commands import common
from jmvae_cli.console import console
from jmvae_cli.errors import JmvaeError

Method = Enum("Method", {name: name for name in editing.RULES}, type=str)  # the rules editing.py has


def edit(
    image: Annotated[str, typer.Argument(metavar="IMAGE", help="The photo to edit; - reads it from stdin.")],
    set_: common.SetOpt = [],
    unset: common.UnsetOpt = [],
    strength: common.StrengthOpt = 2.0,
    soft: common.SoftOpt = False,
    method: Annotated[
        Method, typer.Option("--method", help="How the change is made: paper is x + x'_mean - x_mean (Suzuki et al.).")
    ] = Method(editing.DEFAULT_METHOD),
    output: common.OutputOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    crop_only: Annotated[
        bool, typer.Option("--crop-only", help="Write the paper's result at the model's size (64x64), not the photo.")
    ] = False,
    show: Annotated[
        bool, typer.Option("--show", help="Write a strip: face | x_mean | x'_mean | result (the paper's Figure 2).")
    ] = False,
    print_attrs: Annotated[bool, typer.Option("--print-attrs", help="Print the inferred attributes on stderr.")] = False,
    feather: Annotated[
        float, typer.Option("--feather", min=0.0, max=0.5, help="Share of the face frame over which the edit fades out.")
    ] = 0.15,
    size: common.SizeOpt = None,
    all_faces: common.AllFacesOpt = False,
    no_detect: common.NoDetectOpt = False,
    weights: common.WeightsOpt = None,
    device: common.DeviceOpt = common.Device.auto,
    verbose: common.VerboseOpt = False,
):
    """Change attributes of the face in a photo: x' = x + x'_mean - x_mean (Suzuki et al. 2016).

    The change is made at the photo's own resolution and the rest of the photo is left untouched. Writes
    IMAGE-edited.png beside IMAGE unless -o says otherwise; never overwrites a file without --force, nor the
    input image even with it. --set / --unset take Name or Name=STRENGTH (that attribute's own --strength).
    """
    if not set_ and not unset:
        raise typer.BadParameter("nothing to change: give --set and/or --unset", param_hint="'--set'")
    if crop_only and show:
        raise typer.BadParameter("--crop-only and --show each choose what is written: choose one", param_hint="'--show'")
    common.check_image_output(output)

    from jmvae_cli import attributes, faces, images, translate

    if output is None:
        if image == "-":
            raise typer.BadParameter("an image from stdin needs -o", param_hint="'-o'")
        output = str(translate.default_edit_output(image))
    if output != "-":
        out_path = Path(output)
        # --force or not: the README promises the input is never overwritten (samefile: links and other spellings)
        if image != "-" and out_path.exists() and Path(image).exists() and out_path.samefile(image):
            raise JmvaeError(f"{output} is the input image: choose another -o (the input is never overwritten)")
        images.check_output(output)
        if out_path.exists() and not force:
            raise JmvaeError(f"{output} exists: choose another -o, or --force to overwrite it")

    tr = common.load_translator(weights, device, verbose)
    values = attributes.values(attributes.parse_set_unset(set_, unset, tr.attr_names), strength)
    data = common.read_stdin_bytes() if image == "-" else image
    name = "<stdin>" if image == "-" else image
    photo, crops = faces.load_faces(data, name, all_faces=all_faces, detect=not no_detect, size=tr.image_size)
    x = editing.to_input([c.crop for c in crops], tr.device)  # (B, 3, S, S)
    edited = editing.edit(tr.model, x, values, soft=soft, method=method.value)

    if print_attrs:
        from rich.table import Table

        for k, c in enumerate(crops):
            title = name if len(crops) == 1 else f"{name} (face {c.face})"
            table = Table("attribute", "probability", "w", "w'", title=title, title_justify="left")
            for i, n in enumerate(tr.attr_names):
                w_new = float(edited.w_new[k, i])
                table.add_row(
                    n, f"{float(edited.probs[k, i]):.3f}", f"{float(edited.w[k, i]):g}",
                    f"[bold]{w_new:g}[/]" if i in values else f"{w_new:g}",
                )  # fmt: skip
            console.print(table)

    if show:
        img = translate.grid(edited.strip(), size, cols=4)
    elif crop_only:
        img = translate.grid(edited.pixels("result"), size, cols=len(crops))
    else:
        img = photo
        for c, delta in zip(crops, edited.delta_pixels):
            img = faces.paste_edit(img, c.box, delta, feather)
    common.write_output_image(img, output)
