"""`jmvae edit`: change attributes of the face in a photo."""

from pathlib import Path
from typing import Annotated

import typer

from jmvae_cli.commands import common
from jmvae_cli.console import console
from jmvae_cli.errors import JmvaeError


def edit(
    image: Annotated[str, typer.Argument(metavar="IMAGE", help="The photo to edit; - reads it from stdin.")],
    set_: common.SetOpt = [],
    unset: common.UnsetOpt = [],
    strength: common.StrengthOpt = 2.0,
    soft: common.SoftOpt = False,
    output: common.OutputOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    crop_only: Annotated[bool, typer.Option("--crop-only", help="Write the paper's 64x64 result, not the photo.")] = False,
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
    IMAGE-edited.png beside IMAGE unless -o says otherwise; never overwrites a file without --force.
    """
    if not set_ and not unset:
        raise typer.BadParameter("nothing to change: give --set and/or --unset", param_hint="'--set'")
    if crop_only and show:
        raise typer.BadParameter("--crop-only and --show each choose what is written: choose one", param_hint="'--show'")
    common.check_image_output(output)

    import numpy as np

    from jmvae_cli import faces, translate

    if output is None:
        if image == "-":
            raise typer.BadParameter("an image from stdin needs -o", param_hint="'-o'")
        output = str(translate.default_edit_output(image))
    if output != "-" and not force:
        out_path = Path(output)
        if image != "-" and out_path.exists() and Path(image).exists() and out_path.samefile(image):
            raise JmvaeError(f"{output} is the input image: choose another -o, or --force to overwrite it")
        if out_path.exists():
            raise JmvaeError(f"{output} exists: choose another -o, or --force to overwrite it")

    tr = common.load_translator(weights, device, verbose)
    changes = tr.changes(set_, unset, strength)
    data = common.read_stdin_bytes() if image == "-" else image
    name = "<stdin>" if image == "-" else image
    photo, crops = faces.load_faces(data, name, all_faces=all_faces, detect=not no_detect)
    results = [translate.edit_face(tr, c.crop, changes, soft) for c in crops]

    if print_attrs:
        from rich.table import Table

        for c, r in zip(crops, results):
            title = name if len(crops) == 1 else f"{name} (face {c.face})"
            table = Table("attribute", "probability", "w", "w'", title=title, title_justify="left")
            for i, n in enumerate(tr.attr_names):
                new = f"[bold]{float(r.w_new[i]):g}[/]" if i in changes else f"{float(r.w_new[i]):g}"
                table.add_row(n, f"{float(r.probs[i]):.3f}", f"{float(r.w[i]):g}", new)
            console.print(table)

    if show:
        img = translate.grid(np.concatenate([r.strip() for r in results]), size, cols=4)
    elif crop_only:
        img = translate.grid(np.stack([r.pixels("result") for r in results]), size, cols=len(results))
    else:
        img = photo
        for c, r in zip(crops, results):
            img = faces.paste_edit(img, c, r.delta_pixels, feather)
    common.write_output_image(img, output)
