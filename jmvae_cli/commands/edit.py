"""`jmvae edit`: change attributes of the face in a photo, or in many."""

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from jmvae_cli import editing, images, photo_files
from jmvae_cli.commands import common
from jmvae_cli.console import console
from jmvae_cli.errors import JmvaeError


def edit(
    inputs: Annotated[
        list[str],
        typer.Argument(
            metavar="IMAGE...",
            help="Photos: files, folders (searched recursively) or globs; - reads one photo from stdin.",
        ),
    ],
    set_: common.SetOpt = [],
    unset: common.UnsetOpt = [],
    strength: common.EditStrengthOpt = "auto",
    soft: common.SoftOpt = False,
    method: common.MethodOpt = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", help="Image file to write (.png, .jpg, .webp) for one photo; - writes PNG to stdout."
        ),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out-dir",
            file_okay=False,
            help="Folder for the edits (made if missing): DIR/NAME.png for each photo NAME.jpg, its name kept.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")] = False,
    crop_only: Annotated[
        bool, typer.Option("--crop-only", help="Write the paper's result at the model's size (64x64), not the photo.")
    ] = False,
    show: Annotated[
        bool, typer.Option("--show", help="Write a strip: face | x_mean | x'_mean | result (the paper's Figure 2).")
    ] = False,
    print_attrs: Annotated[
        bool, typer.Option("--print-attrs", help="Print the inferred attributes on stderr.")
    ] = False,
    feather: Annotated[
        float,
        common.number("--feather", min=0.0, max=0.5, help="Share of the face frame over which the edit fades out."),
    ] = 0.15,
    size: common.SizeOpt = None,
    all_faces: common.AllFacesOpt = False,
    no_detect: common.NoDetectOpt = False,
    refine: common.RefineOpt = False,
    weights: common.WeightsOpt = None,
    device: common.DeviceOpt = common.Device.auto,
    verbose: common.VerboseOpt = False,
):
    """Change attributes of the face in each photo: x' = x + the change between the rule's two drawings of it.

    The change is made at the photo's own resolution and the rest of the photo is left untouched. The model then
    reads each edited face back and warns, on stderr, of every requested change it does not see. Writes
    NAME-edited.png beside each photo NAME.jpg, or DIR/NAME.png with --out-dir, or the file -o names (one photo
    only). Never overwrites a file without --force, nor an input photo even with it; two photos whose edits would
    get the same name fail, the later one. A photo that fails is reported and the others are still edited.
    --set / --unset take Name or Name=STRENGTH (that attribute's own --strength).
    """
    if not set_ and not unset:
        raise typer.BadParameter("nothing to change: give --set and/or --unset", param_hint="'--set'")
    if crop_only and show:
        raise typer.BadParameter(
            "--crop-only and --show each choose what is written: choose one", param_hint="'--show'"
        )
    if size is not None and not (crop_only or show):
        raise typer.BadParameter(
            "sizes the faces of --show or --crop-only; an edited photo keeps its own size", param_hint="'--size'"
        )
    if "-" in inputs and len(inputs) > 1:
        raise typer.BadParameter("stdin (-) is read only as the one input", param_hint="IMAGE")
    if output is not None and out_dir is not None:
        raise typer.BadParameter("-o names one file, --out-dir a folder: choose one", param_hint="'-o'")
    if inputs == ["-"] and output is None:
        raise typer.BadParameter("an image from stdin needs -o", param_hint="'-o'")
    common.check_image_output(output)
    common.check_refine(refine, no_detect)
    fixed_strength = common.parse_strength(strength)

    sources = photo_files.expand_inputs(inputs)
    skipped = photo_files.earlier_edits(inputs, sources, out_dir) if output is None else []
    if skipped:
        left_out = set(skipped)
        sources = [s for s in sources if s not in left_out]
        shown = ", ".join(skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        console.print(
            f"note: left out {len(skipped)} earlier edit{'s' if len(skipped) > 1 else ''} of these photos, which this "
            f"command writes again: {shown}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    if not sources:
        raise JmvaeError(f"no image files found in {', '.join(inputs)}")
    if output is not None and len(sources) > 1:
        raise typer.BadParameter(f"-o names one file, for {len(sources)} photos use --out-dir", param_hint="'-o'")
    if out_dir is not None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise JmvaeError(f"{out_dir}: cannot make the output folder ({e.strerror or e})") from None
    if output == "-":
        targets = [None]
    else:
        paths = [Path(output)] if output else [photo_files.default_edit_output(s, out_dir) for s in sources]
        targets = photo_files.check_edit_outputs(sources, paths, force)

    to_edit = [s for s, t in zip(sources, targets) if not isinstance(t, JmvaeError)]
    tr, searched = common.load_translator_searching(to_edit, all_faces, not no_detect, weights, device, verbose)
    from jmvae_cli import attributes, translate

    rule = method.value if method is not None else editing.default_method(tr.model)
    if rule == editing.REGRESS:
        from jmvae_cli.edit_directions import constants_of

        constants_of(tr.model)  # before any photo is read: one error line naming `jmvae calibrate`
    changes = attributes.parse_set_unset(set_, unset, tr.attr_names)
    values = attributes.values(changes, editing.strengths(tr.model, rule, fixed_strength))
    attributes.check_directions(values, tr.attr_names)
    view = translate.EditView("strip" if show else "crops" if crop_only else "photo", size, feather)
    stdin = common.read_stdin_bytes() if sources == ["-"] else None
    failed = 0
    with common.progress("edit", len(sources)) as advance:
        results = translate.edit_photos(
            tr, sources, targets, values, view=view, soft=soft, method=rule,
            all_faces=all_faces, detect=not no_detect, refine=refine, stdin=stdin, searched=searched,
        )  # fmt: skip
        for r in results:
            advance()
            if r.error is not None:
                failed += 1
                common.print_error(r.error)
                continue
            if not all_faces and r.crops:
                common.note_face_choice(r.file, r.crops[0])
            if print_attrs:
                _print_attrs(r, tr.attr_names, values)
            _note_already(r, tr, values)
            _warn_weak(r, tr, values)
            if r.image is not None:
                common.write_output_image(r.image, "-", text=dict([images.EDIT_MARK]))  # redirected, still an edit
            elif len(sources) == 1:
                console.print(f"wrote {r.output}", highlight=False, markup=False, soft_wrap=True)
    if len(sources) > 1:
        where, written = f" to {out_dir}" if out_dir is not None else "", len(sources) - failed
        console.print(
            f"wrote {written} edited photo{'' if written == 1 else 's'}{where}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        if failed:
            console.print(f"{failed} of {len(sources)} photos failed", highlight=False)
    if failed:
        raise typer.Exit(1)


def _where(r, face: int) -> str:
    """The photo, and the face in it where it has several, as stderr names them."""
    name = "<stdin>" if r.file == "-" else r.file
    return name + (f" (face {r.crops[face].face})" if len(r.crops) > 1 else "")


def _note_already(r, tr, values: dict[int, float]) -> None:
    """One line on stderr for each requested change the model was sure the face showed already, which the edit
    therefore did not make (editing.ALREADY_SURE): nobody should wait for it to show."""
    for seen in editing.already(r.edit, values):
        console.print(
            f"note: {_where(r, seen.face)}: {tr.attr_names[seen.index]} is already {'on' if seen.on else 'off'} "
            f"(the model reads p={seen.p:.2f}): left as it is",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


def _warn_weak(r, tr, values: dict[int, float]) -> None:
    """One line on stderr for each requested change the model does not see in its own edit of the face."""
    from jmvae_cli import attributes

    for weak in editing.read_back(tr.model, r.edit, values):
        attr = tr.attr_names[weak.index]
        used = abs(2 * values[weak.index] - 1)
        stronger = min(attributes.MAX_STRENGTH, max(4.0, 2 * used))
        option = "--set" if weak.on else "--unset"
        hint = f"; try {option} {attr}={stronger:g}" if stronger > used else ""
        console.print(
            f"[yellow]warning:[/] {escape(_where(r, weak.face))}: {attr} looks weak after the edit (the model reads p={weak.p:.2f}){hint}",
            highlight=False,
            soft_wrap=True,
        )


def _print_attrs(r, attr_names: list[str], values: dict[int, float]) -> None:
    from rich.table import Table

    name = "<stdin>" if r.file == "-" else r.file
    for k, c in enumerate(r.crops):
        title = name if len(r.crops) == 1 else f"{name} (face {c.face})"
        table = Table("attribute", "probability", "w", "w'", title=escape(title), title_justify="left")
        for i, n in enumerate(attr_names):
            w_new = float(r.edit.w_new[k, i])
            table.add_row(
                n, f"{float(r.edit.probs[k, i]):.3f}", f"{float(r.edit.w[k, i]):g}",
                f"[bold]{w_new:g}[/]" if i in values else f"{w_new:g}",
            )  # fmt: skip
        console.print(table)
