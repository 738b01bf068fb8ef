"""`jmvae evaluate`: measure both directions."""

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from jmvae_cli.commands import common
from jmvae_cli.data import VAL_FRACTION
from jmvae_cli.console import console
from jmvae_cli.errors import JmvaeError


class Split(str, Enum):
    val = "val"
    test = "test"


class Part(str, Enum):
    img2attr = "img2attr"
    attr2img = "attr2img"
    edit = "edit"
    likelihood = "likelihood"


def _finite(obj):
    """NaN and infinities (a standard error of one image) as null: JSON has no such numbers."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def evaluate(
    data: Annotated[
        list[Path],
        typer.Option("--data", help="A data folder, as for train (repeat for several).", show_default=False),
    ],
    split: Annotated[Split, typer.Option("--split", help="The split to evaluate (test needs a CelebA partition file).")] = (
        Split.val
    ),
    max_images: Annotated[
        Optional[int], typer.Option("--max-images", min=1, help="Evaluate a seeded random subset of this many images.")
    ] = None,
    skip: Annotated[
        list[Part], typer.Option("--skip", help="Leave out a part (repeatable).", show_default=False)
    ] = [],
    k: Annotated[int, typer.Option("--k", min=1, help="Importance samples per image for the likelihoods.")] = 100,
    nw: Annotated[int, typer.Option("--nw", min=1, help="Prior samples for the paper's estimate of log p(w).")] = 10,
    classifier: Annotated[
        Optional[Path],
        typer.Option("--classifier", help="Attribute classifier that judges generated and edited faces (default: the bundled one)."),
    ] = None,
    edits: Annotated[
        list[str],
        typer.Option(
            "--edit", help="An edit to score, +Name or -Name (repeatable; default: 13 single-attribute edits).", show_default=False
        ),
    ] = [],
    strength: common.StrengthOpt = 2.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 128,
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Validation share when the data has no partition file (as in training).")
    ] = VAL_FRACTION,
    format: Annotated[
        Optional[common.Format],
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
    if not parts:
        raise typer.BadParameter("every part is skipped: nothing to evaluate", param_hint="'--skip'")

    import numpy as np

    from jmvae_cli import attributes, quality
    from jmvae_cli.data import load_data

    tr = common.load_translator(weights, device, verbose)
    names = tr.attr_names
    faces = quality.align_attributes(
        load_data(data, val_fraction=val_fraction, progress=console.is_terminal), names
    )
    idx = faces.indices(split.value)
    if len(idx) == 0:
        hint = " (only official CelebA with list_eval_partition.txt has one)" if split == Split.test else ""
        raise JmvaeError(f"the data has no {split.value} images{hint}")
    if max_images is not None and max_images < len(idx):
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_images, replace=False))
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
                edits=[attributes.parse_change(e, names) for e in edits] if edits else None,
                strength=strength,
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
    report = _finite(report)
    if fmt == common.Format.json:
        print(json.dumps(report, indent=2))
    else:
        _print_evaluation(report)


def _print_evaluation(report: dict) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    out = Console(highlight=False)
    out.print(f"{report['weights']}: {report['images']} {report['split']} images", soft_wrap=True)
    names = report["attributes"]

    def scores_table(title: str, groups: list[tuple[str, dict, tuple[str, ...]]], caption: str) -> None:
        """One row per attribute, columns grouped as (group heading, summary, scores), the mean row last."""
        heads = {"accuracy": "acc", "balanced_accuracy": "bal", "f1": "F1"}
        table = Table("\nattribute", box=box.SIMPLE_HEAD, title=title, caption=caption, title_justify="left",
                      caption_justify="left")  # fmt: skip
        cells = []
        for heading, summ, keys in groups:
            for j, key in enumerate(keys):
                table.add_column(f"{heading if j == 0 else ''}\n{heads[key]}", justify="right")
                cells.append((summ, key))
        for n in names:
            table.add_row(n, *[f"{s['per_attribute'][n][k]:.3f}" for s, k in cells])
        table.add_section()
        table.add_row("[bold]mean", *[f"[bold]{s['mean'][k]:.3f}" for s, k in cells])
        out.print(table)

    every = ("accuracy", "balanced_accuracy", "f1")
    if "img2attr" in report:
        r = report["img2attr"]
        groups = [("q(z|x)", r["q_x"], every), ("q(z|x,0)", r["q_xw_zero"], every[:2]),
                  ("majority", r["majority"], every[:2])]  # fmt: skip
        scores_table("img->attr", groups, "q(z|x,0): the joint encoder with w = 0; majority: each attribute's commoner value in training")
    if "attr2img" in report:
        r = report["attr2img"]
        groups = [("coherence", r["coherence"], every), ("classifier", r["classifier_on_real"], every)]
        scores_table("attr->img", groups, "classifier: its own scores on the real faces, the ceiling of coherence")

    def pct(v) -> str:
        return "-" if v is None else f"{v:.1%}"

    if "edit" in report:
        e = report["edit"]
        table = Table("edit", "faces", "target before", "flipped", "others unchanged", box=box.SIMPLE_HEAD,
                      title=f"single-attribute edits (strength {e['strength']:g})", title_justify="left",
                      caption="as the classifier sees the faces; only faces not labelled with the target are edited",
                      caption_justify="left")  # fmt: skip
        for col in table.columns[1:]:
            col.justify = "right"
        for r in e["edits"]:
            table.add_row(f"{'+' if r['target'] else '-'}{r['attribute']}", str(r["faces"]), pct(r["target_before"]),
                          pct(r["flipped"]), pct(r["others_unchanged"]))  # fmt: skip
        m = e["mean"]
        table.add_section()
        table.add_row("[bold]mean", "", pct(m["target_before"]), pct(m["flipped"]), pct(m["others_unchanged"]))
        out.print(table)
    if "likelihood" in report:
        table = Table("likelihood", "nats", "± se", "bits/dim", box=box.SIMPLE_HEAD, title="log-likelihoods",
                      title_justify="left")  # fmt: skip
        for col in table.columns[1:]:
            col.justify = "right"
        for key, v in report["likelihood"].items():
            se = "-" if v["nats_se"] is None else f"{v['nats_se']:.1f}"
            table.add_row(key, f"{v['nats']:.1f}", se, f"{v['bits_per_dim']:.4f}")
        out.print(table)
