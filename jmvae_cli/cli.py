"""The `jmvae` command line: parse, call the library, print. Data goes to stdout, everything else to stderr.

Exit codes: 0 ok, 1 failure (one clear line, no traceback), 2 usage error, 130 interrupted.
"""

import json
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
            console.print(f"[bold red]error:[/] {e}", highlight=False)
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
        "--weights", envvar="JMVAE_WEIGHTS", help="A jmvae .safetensors model [default: the bundled model]."
    ),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Say which device and weights are used.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]


# ----------------------------------------------------------------------------- train


class Objective(str, Enum):
    jmvae_kl = "jmvae-kl"
    jmvae_zero = "jmvae-zero"


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
    objective: Annotated[Objective, typer.Option()] = Objective.jmvae_kl,
    latent_dim: Annotated[int, typer.Option(min=1)] = 128,
    device: DeviceOpt = Device.auto,
    precision: Annotated[
        PrecisionChoice, typer.Option(help="auto: bf16 where the hardware supports it, fp32 otherwise.")
    ] = PrecisionChoice.auto,
    seed: SeedOpt = 0,
    resume: Annotated[bool, typer.Option(help="Continue the training saved in --out.")] = False,
    max_images: Annotated[Optional[int], typer.Option(min=1, help="Use at most this many images (quick runs).")] = None,
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Validation share when the data has no partition file.")
    ] = 0.1,
    warmup_epochs: Annotated[float, typer.Option(min=0.0, help="Epochs of KL warm-up.")] = 1.0,
    flip: Annotated[bool, typer.Option(help="Random horizontal flips.")] = True,
    time_limit: Annotated[
        Optional[float], typer.Option(min=0.0, help="Stop after this many minutes (the schedule fits itself to it).")
    ] = None,
    cache_dir: Annotated[
        Optional[Path], typer.Option(envvar="JMVAE_CACHE_DIR", help="Where decoded images are cached.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the final metrics as JSON on stdout.")] = False,
):
    """Train a JMVAE on face images with attributes."""
    from jmvae_cli.train import TrainOptions, train as run_training

    opts = TrainOptions(
        data=data,
        out=out,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        alpha=alpha,
        objective=objective.value,
        latent_dim=latent_dim,
        device=device.value,
        precision=precision.value,
        seed=seed,
        resume=resume,
        max_images=max_images,
        val_fraction=val_fraction,
        warmup_epochs=warmup_epochs,
        flip=flip,
        time_limit=time_limit,
        cache_dir=cache_dir,
    )
    metrics = run_training(opts)
    console.print(f"saved {out / 'model.safetensors'}")
    if json_out:
        print(json.dumps(metrics))


def main():
    app()
