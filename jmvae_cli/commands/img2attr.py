"""`jmvae img2attr`: photo -> attributes."""

import json
import sys
from typing import Annotated

import typer

from jmvae_cli.commands import common
from jmvae_cli.console import console
from jmvae_cli.errors import JmvaeError


def img2attr(
    inputs: Annotated[
        list[str],
        typer.Argument(
            metavar="IMAGE...", help="Image files, folders (searched recursively) or globs; - reads one from stdin."
        ),
    ],
    format: common.FormatOpt = None,
    threshold: Annotated[
        float, typer.Option("--threshold", min=0.0, max=1.0, help="Probability from which an attribute is present.")
    ] = 0.5,
    only_positive: Annotated[
        bool, typer.Option("--only-positive", help="Show only the attributes present (table, json, jsonl).")
    ] = False,
    all_faces: common.AllFacesOpt = False,
    no_detect: common.NoDetectOpt = False,
    weights: common.WeightsOpt = None,
    device: common.DeviceOpt = common.Device.auto,
    verbose: common.VerboseOpt = False,
):
    """Infer the attributes of the face in each image: p(w|z) at the mean of q(z|x)."""
    # Piped output defaults to tsv, or to jsonl when only some attributes are kept (csv/tsv need every column).
    fmt = format or (common.Format.table if common.stdout_is_tty() else common.Format.jsonl if only_positive else common.Format.tsv)
    if only_positive and fmt in (common.Format.csv, common.Format.tsv):
        raise typer.BadParameter("csv and tsv keep every attribute's column; use json or jsonl", param_hint="'--only-positive'")
    if inputs.count("-") > 1:
        raise typer.BadParameter("stdin (-) can be read only once", param_hint="IMAGE")

    from jmvae_cli import translate

    sources = translate.expand_inputs(inputs)
    if not sources:
        raise JmvaeError(f"no image files found in {', '.join(inputs)}")
    stdin = common.read_stdin_bytes() if "-" in sources else None
    tr = common.load_translator(weights, device, verbose, batch=True)
    names = tr.attr_names

    def record(r) -> dict:
        rec = {"file": r.file}
        if r.face is not None:
            rec["face"] = r.face
        rec["attributes"] = {
            n: round(float(p), 4) for n, p in zip(names, r.probs) if not only_positive or p >= threshold
        }
        return rec

    out = sys.stdout
    table_console = None
    writer = None
    if fmt in (common.Format.csv, common.Format.tsv):
        import csv

        writer = csv.writer(out, delimiter="," if fmt == common.Format.csv else "\t", lineterminator="\n")
        header = ["file"] + (["face"] if all_faces else []) + names  # written with the first row
    elif fmt == common.Format.table:
        from rich.console import Console

        table_console = Console(highlight=False)
    collected = []
    failed = 0

    progress = None
    if len(sources) >= 20 and console.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(
            TextColumn("img2attr"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True
        )
        task = progress.add_task("img2attr", total=len(sources))
        progress.start()
    try:
        results = translate.img2attr(
            tr,
            sources,
            all_faces=all_faces,
            detect=not no_detect,
            stdin=stdin,
            on_file=(lambda: progress.advance(task)) if progress else None,
        )
        for r in results:
            if r.error is not None:
                failed += 1
                common.print_error(r.error)
                continue
            if fmt == common.Format.table:
                from rich.table import Table

                title = r.file if r.face is None else f"{r.file} (face {r.face})"
                table = Table("attribute", "probability", "present", title=title, title_justify="left")
                for n, p in zip(names, r.probs):
                    if not only_positive or p >= threshold:
                        yes = p >= threshold
                        table.add_row(n, f"{p:.3f}", "[green]yes[/]" if yes else "[dim]no[/]")
                table_console.print(table)
            elif fmt == common.Format.jsonl:
                out.write(json.dumps(record(r)) + "\n")
            elif fmt == common.Format.json:
                collected.append(record(r))
            else:
                if header:
                    writer.writerow(header)
                    header = None
                face = [r.face] if all_faces else []
                writer.writerow([r.file] + face + [f"{float(p):.4f}" for p in r.probs])
    finally:
        if progress:
            progress.stop()
    if fmt == common.Format.json:
        out.write(json.dumps(collected, indent=2) + "\n")
    out.flush()
    if failed:
        if len(sources) > 1:
            console.print(f"{failed} of {len(sources)} files failed", highlight=False)
        raise typer.Exit(1)
