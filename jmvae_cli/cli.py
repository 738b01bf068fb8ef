"""The `jmvae` command line: parse, call the library, print. Data goes to stdout, everything else to stderr.

Exit codes: 0 ok, 1 failure (one clear line, no traceback), 2 usage error, 130 interrupted.
"""

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from jmvae_cli import __version__
from jmvae_cli.console import console
from jmvae_cli.errors import JmvaeError


class Group(TyperGroup):
    """Turns the library's expected errors into one line on stderr and exit 1, for every command at once."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except JmvaeError as e:
            # soft_wrap: one line however narrow the terminal (or 80 columns when stderr is not one)
            console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted")
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=Group,
    help="Translate between face photos and face attributes with a joint multimodal VAE (JMVAE).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool):
    if value:
        print(f"jmvae {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
):
    pass


# ----------------------------------------------------------------------------- options shared by several commands


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Format(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"
    tsv = "tsv"


DeviceOpt = Annotated[
    Device, typer.Option("--device", help="Where to run: auto takes CUDA, then MPS, then the CPU.", show_default=True)
]
WeightsOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--weights", envvar="JMVAE_WEIGHTS", help="A jmvae .safetensors model (default: the bundled model)."
    ),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Say which device and weights are used.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]

# Options of the translation commands (img2attr, attr2img, edit, attributes).
FormatOpt = Annotated[
    Optional[Format],
    typer.Option("--format", "-f", help="Output format (default: table on a terminal, tsv when piped)."),
]
SetOpt = Annotated[
    list[str],
    typer.Option("--set", help="Attribute to turn on (repeatable; case-insensitive).", show_default=False),
]
UnsetOpt = Annotated[
    list[str],
    typer.Option("--unset", help="Attribute to turn off (repeatable; case-insensitive).", show_default=False),
]
StrengthOpt = Annotated[
    float,
    typer.Option(
        "--strength",
        min=0.0,
        help="Chosen attributes are set to 0.5 +- strength/2: 1 is plain on/off, 2 the paper's +-2 in its +-1 coding.",
    ),
]
SoftOpt = Annotated[
    bool,
    typer.Option("--soft", help="Feed inferred attribute probabilities to q(z|w) as they are, not thresholded at 0.5."),
]
OutputOpt = Annotated[
    Optional[str], typer.Option("--output", "-o", help="Image file to write (.png, .jpg, .webp); - writes PNG to stdout.")
]
SizeOpt = Annotated[
    Optional[int], typer.Option("--size", min=8, max=2048, help="Upscale each 64x64 face to this many pixels.")
]
AllFacesOpt = Annotated[bool, typer.Option("--all-faces", help="Use every face found, not just the largest.")]
NoDetectOpt = Annotated[
    bool, typer.Option("--no-detect", help="The image already is a face crop: use its centre square as the face.")
]


# ----------------------------------------------------------------------------- train


class Objective(str, Enum):
    jmvae_kl = "jmvae-kl"
    jmvae_zero = "jmvae-zero"


class ModelKind(str, Enum):
    jmvae = "jmvae"
    vae = "vae"
    cvae = "cvae"
    cmma = "cmma"
    classifier = "classifier"


class PrecisionChoice(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


@app.command()
def train(
    data: Annotated[
        list[Path],
        typer.Option(
            "--data",
            help="A data folder: official CelebA, CelebAMask-HQ, or images + attributes.csv. Repeat for several.",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the model, metrics and sample grids.")] = Path(
        "runs/jmvae"
    ),
    epochs: Annotated[int, typer.Option(min=1, help="Total epochs (also when resuming).")] = 20,
    batch_size: Annotated[int, typer.Option(min=2)] = 100,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate of the cosine schedule.")] = 5e-4,
    alpha: Annotated[float, typer.Option(min=0.0, help="Weight of JMVAE-kl's unimodal KL terms.")] = 0.1,
    cross_weight: Annotated[
        float, typer.Option(min=0.0, help="Weight of a cross-modal term -log p(w|z), z from q(z|x) (0: the paper's).")
    ] = 0.0,
    objective: Annotated[Objective, typer.Option(help="The JMVAE's objective: Eq. 2 (kl) or Eq. 1 (zero).")] = (
        Objective.jmvae_kl
    ),
    model: Annotated[
        ModelKind, typer.Option(help="jmvae, a baseline of the paper (vae, cvae, cmma), or the attribute classifier.")
    ] = ModelKind.jmvae,
    gan: Annotated[bool, typer.Option(help="Add an adversarial loss for sharper faces (JMVAE-GAN).")] = False,
    gan_weight: Annotated[float, typer.Option(min=0.0, help="Weight of the adversarial term, per pixel.")] = 0.1,
    gan_lr: Annotated[float, typer.Option(min=0.0, help="The discriminator's learning rate.")] = 2e-4,
    latent_dim: Annotated[int, typer.Option(min=1)] = 128,
    device: DeviceOpt = Device.auto,
    precision: Annotated[
        PrecisionChoice, typer.Option(help="auto: bf16 where the hardware supports it, fp32 otherwise.")
    ] = PrecisionChoice.auto,
    seed: SeedOpt = 0,
    resume: Annotated[bool, typer.Option(help="Continue the training saved in --out.")] = False,
    init: Annotated[
        Optional[Path], typer.Option(help="Start from this model's weights (fine-tuning), with a fresh optimizer.")
    ] = None,
    max_images: Annotated[Optional[int], typer.Option(min=1, help="Use at most this many images (quick runs).")] = None,
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Validation share when the data has no partition file.")
    ] = 0.1,
    warmup_epochs: Annotated[float, typer.Option(min=0.0, help="Epochs of KL warm-up.")] = 1.0,
    flip: Annotated[bool, typer.Option(help="Random horizontal flips.")] = True,
    ema: Annotated[
        float,
        typer.Option(
            min=0.0, max=0.99999, help="Validate and save a moving average of the weights, e.g. 0.999 (0: off)."
        ),
    ] = 0.0,
    time_limit: Annotated[
        Optional[float], typer.Option(min=0.0, help="Stop after this many minutes (the schedule fits itself to it).")
    ] = None,
    cache_dir: Annotated[
        Optional[Path], typer.Option(envvar="JMVAE_CACHE_DIR", help="Where decoded images are cached.")
    ] = None,
    format: Annotated[
        Optional[Format], typer.Option("--format", "-f", help="json: print the last epoch's metrics on stdout.")
    ] = None,
):
    """Train a JMVAE on face images with attributes."""
    if format not in (None, Format.table, Format.json):
        raise typer.BadParameter("train reports as a table (stderr) or json (stdout)", param_hint="'--format'")
    from jmvae_cli.train import TrainOptions, train as run_training

    opts = TrainOptions(
        data=data,
        out=out,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        alpha=alpha,
        cross_weight=cross_weight,
        objective=objective.value,
        model=model.value,
        gan=gan,
        gan_weight=gan_weight,
        gan_lr=gan_lr,
        latent_dim=latent_dim,
        device=device.value,
        precision=precision.value,
        seed=seed,
        resume=resume,
        init=init,
        max_images=max_images,
        val_fraction=val_fraction,
        warmup_epochs=warmup_epochs,
        flip=flip,
        ema=ema,
        time_limit=time_limit,
        cache_dir=cache_dir,
    )
    metrics = run_training(opts)
    console.print(f"saved {out / 'model.safetensors'}")
    if format == Format.json:
        print(json.dumps(metrics))


# ----------------------------------------------------------------------------- translation commands
# Heavy imports (torch, cv2, the model) happen inside the commands: `jmvae --help` and usage errors stay instant,
# and a cold `jmvae img2attr` costs little more than importing torch.


class Base(str, Enum):
    random = "random"
    zeros = "zeros"


def _load(weights: Optional[Path], device: Device, verbose: bool, batch: bool = False):
    from jmvae_cli.translate import Translator

    tr = Translator.from_weights(weights, device.value)
    if verbose:
        how = tr.precision.name if batch else "fp32"
        console.print(
            f"weights {tr.weights} ({len(tr.attr_names)} attributes), device {tr.device} ({how})", highlight=False
        )
    return tr


def _stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def _error(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def _check_image_output(output: Optional[str]) -> None:
    if output == "-" and _stdout_is_tty():
        raise typer.BadParameter("refusing to write an image to a terminal: redirect stdout or give a file", param_hint="'-o'")


def _write_image(img, output: str) -> None:
    from jmvae_cli import images

    if output == "-":
        stream = sys.stdout.buffer
        images.write_image(img, stream)
        stream.flush()
    else:
        images.write_image(img, Path(output))
        console.print(f"wrote {output}", highlight=False)


def _read_stdin_bytes() -> bytes:
    return sys.stdin.buffer.read()


@app.command()
def img2attr(
    inputs: Annotated[
        list[str],
        typer.Argument(
            metavar="IMAGE...", help="Image files, folders (searched recursively) or globs; - reads one from stdin."
        ),
    ],
    format: FormatOpt = None,
    threshold: Annotated[
        float, typer.Option("--threshold", min=0.0, max=1.0, help="Probability from which an attribute is present.")
    ] = 0.5,
    only_positive: Annotated[
        bool, typer.Option("--only-positive", help="Show only the attributes present (table, json, jsonl).")
    ] = False,
    all_faces: AllFacesOpt = False,
    no_detect: NoDetectOpt = False,
    weights: WeightsOpt = None,
    device: DeviceOpt = Device.auto,
    verbose: VerboseOpt = False,
):
    """Infer the attributes of the face in each image: p(w|z) at the mean of q(z|x)."""
    # Piped output defaults to tsv, or to jsonl when only some attributes are kept (csv/tsv need every column).
    fmt = format or (Format.table if _stdout_is_tty() else Format.jsonl if only_positive else Format.tsv)
    if only_positive and fmt in (Format.csv, Format.tsv):
        raise typer.BadParameter("csv and tsv keep every attribute's column; use json or jsonl", param_hint="'--only-positive'")
    if inputs.count("-") > 1:
        raise typer.BadParameter("stdin (-) can be read only once", param_hint="IMAGE")

    from jmvae_cli import translate

    sources = translate.expand_inputs(inputs)
    if not sources:
        raise JmvaeError(f"no image files found in {', '.join(inputs)}")
    stdin = _read_stdin_bytes() if "-" in sources else None
    tr = _load(weights, device, verbose, batch=True)
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
    if fmt in (Format.csv, Format.tsv):
        import csv

        writer = csv.writer(out, delimiter="," if fmt == Format.csv else "\t", lineterminator="\n")
        header = ["file"] + (["face"] if all_faces else []) + names  # written with the first row
    elif fmt == Format.table:
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
                _error(r.error)
                continue
            if fmt == Format.table:
                from rich.table import Table

                title = r.file if r.face is None else f"{r.file} (face {r.face})"
                table = Table("attribute", "probability", "present", title=title, title_justify="left")
                for n, p in zip(names, r.probs):
                    if not only_positive or p >= threshold:
                        yes = p >= threshold
                        table.add_row(n, f"{p:.3f}", "[green]yes[/]" if yes else "[dim]no[/]")
                table_console.print(table)
            elif fmt == Format.jsonl:
                out.write(json.dumps(record(r)) + "\n")
            elif fmt == Format.json:
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
    if fmt == Format.json:
        out.write(json.dumps(collected, indent=2) + "\n")
    out.flush()
    if failed:
        if len(sources) > 1:
            console.print(f"{failed} of {len(sources)} files failed", highlight=False)
        raise typer.Exit(1)


@app.command()
def attr2img(
    set_: SetOpt = [],
    unset: UnsetOpt = [],
    strength: StrengthOpt = 2.0,
    base: Annotated[
        Optional[Base],
        typer.Option(help="Attributes before --set/--unset: the paper's random base, or all off (default: random)."),
    ] = None,
    attrs: Annotated[
        Optional[str],
        typer.Option("--attrs", help="Start from img2attr output (json, jsonl, csv, tsv; its first record); - is stdin."),
    ] = None,
    soft: SoftOpt = False,
    samples: Annotated[int, typer.Option("--samples", min=0, help="Random faces from q(z|w) after the average face.")] = 0,
    zeta: Annotated[
        float, typer.Option("--zeta", min=0.0, help="Variance of the samples' noise: z = mean + sigma * N(0, zeta).")
    ] = 1.0,
    seed: SeedOpt = 0,
    size: SizeOpt = None,
    output: OutputOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = Device.auto,
    verbose: VerboseOpt = False,
):
    """Draw the face of a set of attributes: the decoded mean of q(z|w), and --samples random ones, as a grid."""
    if output is None:
        raise typer.BadParameter("give the image to write, or - for stdout", param_hint="'-o'")
    _check_image_output(output)
    if base is not None and attrs is not None:
        raise typer.BadParameter("--base and --attrs both give the starting attributes: choose one", param_hint="'--base'")

    from jmvae_cli import translate

    tr = _load(weights, device, verbose)
    changes = tr.changes(set_, unset, strength)
    if attrs is not None:
        if attrs == "-":
            text, name = sys.stdin.read(), "<stdin>"
        else:
            try:
                text, name = Path(attrs).read_text(encoding="utf-8"), attrs
            except (OSError, UnicodeDecodeError) as e:
                raise JmvaeError(f"{attrs}: cannot read attributes ({getattr(e, 'strerror', None) or e})") from None
        probs, _ = translate.read_attrs_record(text, tr.attr_names, name)
        w = translate.binarize(probs, soft)
    else:
        w = translate.base_attributes((base or Base.random).value, len(tr.attr_names), seed)
    for i, v in changes.items():
        w[i] = v
    if verbose:
        on = [n for n, v in zip(tr.attr_names, w) if v >= 0.5]
        console.print(f"attributes on: {', '.join(on) or 'none'}", highlight=False)
    faces_u8 = translate.average_face(tr, w, samples, zeta, seed)  # (1 + samples, 64, 64, 3)
    _write_image(translate.grid(faces_u8, size), output)


@app.command()
def edit(
    image: Annotated[str, typer.Argument(metavar="IMAGE", help="The photo to edit; - reads it from stdin.")],
    set_: SetOpt = [],
    unset: UnsetOpt = [],
    strength: StrengthOpt = 2.0,
    soft: SoftOpt = False,
    output: OutputOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    crop_only: Annotated[bool, typer.Option("--crop-only", help="Write the paper's 64x64 result, not the photo.")] = False,
    show: Annotated[
        bool, typer.Option("--show", help="Write a strip: face | x_mean | x'_mean | result (the paper's Figure 2).")
    ] = False,
    print_attrs: Annotated[bool, typer.Option("--print-attrs", help="Print the inferred attributes on stderr.")] = False,
    feather: Annotated[
        float, typer.Option("--feather", min=0.0, max=0.5, help="Share of the face frame over which the edit fades out.")
    ] = 0.15,
    size: SizeOpt = None,
    all_faces: AllFacesOpt = False,
    no_detect: NoDetectOpt = False,
    weights: WeightsOpt = None,
    device: DeviceOpt = Device.auto,
    verbose: VerboseOpt = False,
):
    """Change attributes of the face in a photo: x' = x + x'_mean - x_mean (Suzuki et al. 2016).

    The change is made at the photo's own resolution and the rest of the photo is left untouched. Writes
    IMAGE-edited.png beside IMAGE unless -o says otherwise; never overwrites a file without --force.
    """
    if not set_ and not unset:
        raise typer.BadParameter("nothing to change: give --set and/or --unset", param_hint="'--set'")
    if crop_only and show:
        raise typer.BadParameter("--crop-only and --show each choose what is written: choose one", param_hint="'--show'")
    _check_image_output(output)

    import numpy as np

    from jmvae_cli import translate

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

    tr = _load(weights, device, verbose)
    changes = tr.changes(set_, unset, strength)
    data = _read_stdin_bytes() if image == "-" else image
    name = "<stdin>" if image == "-" else image
    photo, crops = translate.load_faces(data, name, all_faces=all_faces, detect=not no_detect)
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
            img = translate.paste_edit(img, c.box, r.delta_pixels, feather)
    _write_image(img, output)


@app.command()
def attributes(
    format: FormatOpt = None,
    weights: WeightsOpt = None,
    verbose: VerboseOpt = False,
):
    """List the model's attribute names, one per line (or a JSON list with --format json)."""
    tr = _load(weights, Device.cpu, verbose)
    if format == Format.json:
        print(json.dumps(tr.attr_names))
    elif format == Format.jsonl:
        print("\n".join(json.dumps(n) for n in tr.attr_names))
    else:
        print("\n".join(tr.attr_names))


def main():
    app()


# ----------------------------------------------------------------------------- evaluate and figure


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


@app.command()
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
    strength: StrengthOpt = 2.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 128,
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Validation share when the data has no partition file (as in training).")
    ] = 0.1,
    format: Annotated[
        Optional[Format],
        typer.Option("--format", "-f", help="table or json (default: table on a terminal, json when piped)."),
    ] = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = Device.auto,
    seed: SeedOpt = 0,
    verbose: VerboseOpt = False,
):
    """Measure both directions: img->attr accuracy, attr->img coherence, single-attribute edits, likelihoods."""
    fmt = format or (Format.table if _stdout_is_tty() else Format.json)
    if fmt not in (Format.table, Format.json):
        raise typer.BadParameter("evaluate writes a table or json", param_hint="'--format'")
    parts = [p.value for p in Part if p not in skip]
    if not parts:
        raise typer.BadParameter("every part is skipped: nothing to evaluate", param_hint="'--skip'")

    import numpy as np

    from jmvae_cli import quality
    from jmvae_cli.data import load_data

    tr = _load(weights, device, verbose)
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
                edits=quality.parse_edits(edits, names) if edits else None,
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
    if fmt == Format.json:
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


class FigureKind(str, Enum):
    faces = "faces"
    pca = "pca"
    edit = "edit"


@app.command()
def figure(
    kind: Annotated[
        FigureKind, typer.Argument(metavar="KIND", help="faces: Figure 1(a); pca: Figure 1(b); edit: Figure 2.")
    ],
    image: Annotated[
        Optional[str], typer.Argument(metavar="IMAGE", help="The photo to edit (edit only); - reads it from stdin.")
    ] = None,
    output: OutputOpt = None,
    attrs: Annotated[
        list[str],
        typer.Option(
            "--attr",
            help="An attribute to show (repeatable; default: the paper's choice). faces: Name sets it on, -Name or "
            "'not Name' off; pca: the attributes set, one colour each; edit: Name flips the face's inferred value, "
            "+Name / -Name set it on / off.",
            show_default=False,
        ),
    ] = [],
    samples: Annotated[int, typer.Option("--samples", min=0, help="faces: rows of random faces under the average.")] = 4,
    zeta: Annotated[float, typer.Option("--zeta", min=0.0, help="faces: variance of the rows' noise eps ~ N(0, zeta).")] = 0.5,
    bases: Annotated[int, typer.Option("--bases", min=2, help="pca: random base vectors per attribute.")] = 200,
    strength: StrengthOpt = 2.0,
    seed: SeedOpt = 0,
    size: Annotated[int, typer.Option("--size", min=16, max=512, help="faces, edit: pixels per face tile.")] = 96,
    no_detect: NoDetectOpt = False,
    weights: WeightsOpt = None,
    device: DeviceOpt = Device.auto,
    verbose: VerboseOpt = False,
):
    """Draw one of the paper's figures as a PNG with the model: `jmvae figure faces -o faces.png`."""
    if output is None:
        raise typer.BadParameter("give the image to write, or - for stdout", param_hint="'-o'")
    _check_image_output(output)
    if (kind == FigureKind.edit) != (image is not None):
        msg = "figure edit needs the photo to edit" if image is None else f"figure {kind.value} takes no image"
        raise typer.BadParameter(msg, param_hint="IMAGE")

    from jmvae_cli import figures, translate

    tr = _load(weights, device, verbose)
    if kind == FigureKind.faces:
        img = figures.faces_figure(tr, attrs, samples, zeta, seed, strength, size)
    elif kind == FigureKind.pca:
        img = figures.pca_figure(tr, attrs, bases, seed, strength)
    else:
        data = _read_stdin_bytes() if image == "-" else image
        _, crops = translate.load_faces(data, "<stdin>" if image == "-" else image, detect=not no_detect)
        img, probs = figures.edit_figure(tr, crops[0].crop, attrs, strength, size)
        on = sorted((p, n) for n, p in zip(tr.attr_names, probs) if p >= 0.5)[::-1]
        console.print("inferred: " + (", ".join(f"{n} {p:.2f}" for p, n in on) or "none"), highlight=False, soft_wrap=True)
    _write_image(img, output)
