"""`jmvae evaluate`: measure both directions."""

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from jmvae_cli.commands import common
from jmvae_cli.console import console
from jmvae_cli.data import VAL_FRACTION
from jmvae_cli.errors import JmvaeError


class Split(str, Enum):
    val = "val"
    test = "test"


class Part(str, Enum):
    img2attr = "img2attr"
    attr2img = "attr2img"
    edit = "edit"
    likelihood = "likelihood"


def evaluate(
    data: Annotated[
        list[Path],
        typer.Option("--data", help="A data folder, as for train (repeat for several).", show_default=False),
    ],
    split: Annotated[
        Split, typer.Option("--split", help="The split to evaluate (test needs a CelebA partition file).")
    ] = Split.val,
    max_images: Annotated[
        int | None, typer.Option("--max-images", min=1, help="Evaluate a seeded random subset of this many images.")
    ] = None,
    skip: Annotated[list[Part], typer.Option("--skip", help="Leave out a part (repeatable).", show_default=False)] = [],
    k: Annotated[int, typer.Option("--k", min=1, help="Importance samples per image for the likelihoods.")] = 100,
    nw: Annotated[int, typer.Option("--nw", min=1, help="Prior samples for the paper's estimate of log p(w).")] = 10,
    classifier: Annotated[
        Path | None,
        typer.Option(
            "--classifier",
            help="Attribute classifier that judges generated and edited faces (default: the bundled one).",
        ),
    ] = None,
    edits: Annotated[
        list[str],
        typer.Option(
            "--edit",
            help="An edit to score, +Name or -Name (repeatable; default: both directions of the 13 attributes AttGAN "
            "and STGAN edit).",
            show_default=False,
        ),
    ] = [],
    strength: common.EditStrengthOpt = "auto",
    method: common.MethodOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 128,
    val_fraction: Annotated[
        float | None,
        common.number(
            min=0.0,
            max=0.9,
            help=f"Validation share when the data has no partition file [default: the model's training share, else "
            f"{VAL_FRACTION}].",
        ),
    ] = None,
    format: Annotated[
        common.Format | None,
        typer.Option("--format", "-f", help="table or json (default: table on a terminal, json when piped)."),
    ] = None,
    weights: common.WeightsOpt = None,
    device: common.DeviceOpt = common.Device.auto,
    seed: common.SeedOpt = 0,
    verbose: common.VerboseOpt = False,
):
    """Measure both directions: img->attr accuracy, attr->img coherence, single-attribute edits, likelihoods."""
    fmt = format or (common.Format.table if common.stdout_is_tty() else common.Format.json)
    if fmt not in (common.Format.table, common.Format.json):
        raise typer.BadParameter("evaluate writes a table or json", param_hint="'--format'")
    parts = [p.value for p in Part if p not in skip]
    fixed_strength = common.parse_strength(strength)
    if not parts:
        raise typer.BadParameter("every part is skipped: nothing to evaluate", param_hint="'--skip'")

    from jmvae_cli import attributes, quality
    from jmvae_cli.checkpoint import read_meta
    from jmvae_cli.data import load_data, val_fraction_of

    tr = common.load_translator(weights, device, verbose)
    names = tr.attr_names
    changes = [attributes.parse_change(e, names) for e in edits] if edits else None  # read before the data
    attributes.check_directions({c.index: c.value(1.0) for c in changes or []}, names)  # an own strength of 0
    twice = attributes.first_repeat(changes or [], lambda c: (c.index, c.on))  # it would count twice in the means
    if twice is not None:
        raise attributes.AttributeSpecError(f"--edit {'+' if twice.on else '-'}{twice.name} is given twice")
    if val_fraction is None:  # split as the model's training split these folders: else its faces may be scored
        val_fraction = val_fraction_of(read_meta(tr.weights))
    faces = quality.align_attributes(
        load_data(data, preprocess=tr.preprocess, val_fraction=val_fraction, progress=console.is_terminal), names
    )
    idx = faces.sample(split.value, max_images, seed)
    report: dict = {
        "weights": str(tr.weights),
        "data": [str(d) for d in data],
        "split": split.value,
        "images": int(len(idx)),
        "seed": seed,
        "attributes": names,
    }
    judged = [p for p in parts if p in ("attr2img", "edit")]
    cls = quality.load_classifier(classifier, names, tr.device) if judged else None
    if cls is not None:
        report["classifier"] = str(cls.path)
    if set(parts) - {"likelihood"}:
        train_idx = faces.indices("train")
        if "img2attr" in parts and len(train_idx) == 0:
            raise JmvaeError("the data has no training images for the majority-class baseline")
        report.update(
            quality.evaluate_quality(
                tr.model,
                names,
                faces.images[idx],
                faces.attrs[idx],
                faces.attrs[train_idx],
                classifier=cls,
                parts=parts,
                edits=changes,
                strength=fixed_strength,
                method=None if method is None else method.value,
                batch_size=batch_size,
                device=tr.device,
                progress=console.is_terminal,
            )
        )
    if "likelihood" in parts:
        from rich.progress import Progress

        from jmvae_cli.likelihood import evaluate_likelihoods

        with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task("likelihoods", total=len(idx))
            report["likelihood"] = evaluate_likelihoods(
                tr.model, faces, idx, k=k, nw=nw, batch_size=batch_size, device=tr.device, seed=seed,
                progress=lambda n: bar.advance(task, n),
            )  # fmt: skip
    from jmvae_cli import reports

    report = reports.finite(report)
    if fmt == common.Format.json:
        print(json.dumps(report, indent=2))
    else:
        from rich.console import Console

        reports.print_evaluation(report, Console(highlight=False))
