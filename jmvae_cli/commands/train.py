"""`jmvae train`: train a JMVAE, a baseline or the classifier."""

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from jmvae_cli.commands import common
from jmvae_cli.data import VAL_FRACTION
from jmvae_cli.console import console


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
    device: common.DeviceOpt = common.Device.auto,
    precision: Annotated[
        PrecisionChoice, typer.Option(help="auto: bf16 where the hardware supports it, fp32 otherwise.")
    ] = PrecisionChoice.auto,
    seed: common.SeedOpt = 0,
    resume: Annotated[bool, typer.Option(help="Continue the training saved in --out.")] = False,
    init: Annotated[
        Optional[Path], typer.Option(help="Start from this model's weights (fine-tuning), with a fresh optimizer.")
    ] = None,
    max_images: Annotated[Optional[int], typer.Option(min=1, help="Use at most this many images (quick runs).")] = None,
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Validation share when the data has no partition file.")
    ] = VAL_FRACTION,
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
        Optional[common.Format], typer.Option("--format", "-f", help="json: print the last epoch's metrics on stdout.")
    ] = None,
):
    """Train a JMVAE on face images with attributes."""
    if format not in (None, common.Format.table, common.Format.json):
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
    if format == common.Format.json:
        print(json.dumps(metrics))
