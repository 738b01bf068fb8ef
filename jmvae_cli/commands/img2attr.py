"""`jmvae img2attr`: photo -> attributes."""

import sys
from typing import Annotated

import typer

from jmvae_cli import formats, photo_files
from jmvae_cli.commands import common
from jmvae_cli.console import console
from jmvae_cli.errors import JmvaeError

# the formats that can leave attributes out
_SELECTIVE = [name for name, writer in formats.FORMATS.items() if not writer.every_attribute]


def img2attr(
    inputs: Annotated[
        list[str],
        typer.Argument(
            metavar="IMAGE...", help="Image files, folders (searched recursively) or globs; - reads one from stdin."
        ),
    ],
    format: common.FormatOpt = None,
    threshold: Annotated[
        float,
        common.number("--threshold", min=0.0, max=1.0, help="Probability from which an attribute is present."),
    ] = 0.5,
    only_positive: Annotated[
        bool,
        typer.Option("--only-positive", help=f"Show only the attributes present ({', '.join(_SELECTIVE)})."),
    ] = False,
    all_faces: common.AllFacesOpt = False,
    no_detect: common.NoDetectOpt = False,
    refine: common.RefineOpt = False,
    weights: common.WeightsOpt = None,
    device: common.DeviceOpt = common.Device.auto,
    verbose: common.VerboseOpt = False,
):
    """Infer the attributes of the face in each image: p(w|z) at the mean of q(z|x)."""
    # Piped output defaults to tsv, or to jsonl when only some attributes are kept (csv/tsv need every column).
    fmt = format or (
        common.Format.table if common.stdout_is_tty() else common.Format.jsonl if only_positive else common.Format.tsv
    )
    writer_class = formats.FORMATS[fmt.value]
    if only_positive and writer_class.every_attribute:
        raise typer.BadParameter(
            f"{fmt.value} keeps every attribute's column; use one of {', '.join(_SELECTIVE)}",
            param_hint="'--only-positive'",
        )
    if inputs.count("-") > 1:
        raise typer.BadParameter("stdin (-) can be read only once", param_hint="IMAGE")
    common.check_refine(refine, no_detect)

    sources = photo_files.expand_inputs(inputs)
    if not sources:
        raise JmvaeError(f"no image files found in {', '.join(inputs)}")
    stdin = common.read_stdin_bytes() if "-" in sources else None
    tr, searched = common.load_translator_searching(
        sources, all_faces, not no_detect, weights, device, verbose, batch=True
    )
    from jmvae_cli import translate

    writer = writer_class(sys.stdout, tr.attr_names, threshold=threshold, only_positive=only_positive, faces=all_faces)
    failed = 0

    with common.progress("img2attr", len(sources)) as advance:
        results = translate.img2attr(
            tr, sources, all_faces=all_faces, detect=not no_detect, refine=refine, stdin=stdin, on_file=advance,
            searched=searched,
        )  # fmt: skip
        for r in results:
            if r.error is not None:
                failed += 1
                common.print_error(r.error)
                continue
            if not all_faces:
                common.note_face_choice(r.file, r.crop)
            writer.write(r.file, r.face, r.probs)
    writer.finish()
    sys.stdout.flush()  # the data before the summary on stderr
    if failed:
        if len(sources) > 1:
            console.print(f"{failed} of {len(sources)} files failed", highlight=False)
        raise typer.Exit(1)
