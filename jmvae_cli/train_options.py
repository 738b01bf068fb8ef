"""What a training run is asked to do: TrainOptions, the one list of `jmvae train`'s options.

Each option's default, help text, bounds and choices live in its field here; commands/train.py builds the
command's parameters from these fields and train.py reads them, so an option is written once. Free of torch, so
that the command line can build its help without importing it.

An option's `on_resume` says what `--resume` does with it. "keep": it must match the saved run (another value would
train another model than the one saved, under its name); when not given, the saved value is used. "change": it may
differ (how long, how fast); when not given, the saved value is used. "machine": it may differ and, when not given,
takes its default (where to run: a run saved on a GPU may resume on a CPU). "run": it says which run it is.
"""

import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from jmvae_cli import registry
from jmvae_cli.choices import DEVICES, PRECISIONS
from jmvae_cli.data import VAL_FRACTION
from jmvae_cli.errors import JmvaeError

ON_RESUME = ("keep", "change", "machine", "run")
TRAINED_PARTS = {"image-decoder": "dec_x"}  # --train-only's names for the models' modules


def option(default=MISSING, help: str = "", *, cli: bool = True, on_resume: str = "keep", **typer_kw):
    """A TrainOptions field. typer_kw go to typer.Option: flags=("--out", "-o"), min=, max=, envvar=, choices=
    (a tuple of names), above= (a bound the value must exceed, which Typer's inclusive min cannot say)."""
    assert on_resume in ON_RESUME
    meta = {"help": help, "cli": cli, "on_resume": on_resume, **typer_kw}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def choices(meta) -> tuple[str, ...] | None:
    """The names a field accepts (its metadata's "choices", a tuple or a function giving one), or None."""
    names = meta.get("choices")
    return names() if callable(names) else names


@dataclass
class TrainOptions:
    data: list[Path] = option(
        help="A data folder: official CelebA, CelebAMask-HQ, or images + attributes.csv. Repeat for several.",
        flags=("--data",),
        on_resume="change",  # folders move; their attribute names are still checked against the model's
    )
    out: Path = option(
        Path("runs/jmvae"), "Folder for the model, metrics and sample grids.", flags=("--out", "-o"), on_resume="run"
    )
    epochs: int = option(20, "Total epochs (also when resuming).", min=1, on_resume="change")
    batch_size: int = option(100, "Images per step (the authors' 100).", min=2)
    lr: float = option(
        5e-4,
        "Peak learning rate of the cosine schedule (the authors used a constant 1e-4).",
        min=0.0,
        on_resume="change",
    )
    beta1: float = option(0.5, "Adam's beta1 (the authors').", cli=False)
    alpha: float = option(0.1, "Weight of JMVAE-kl's unimodal KL terms (the paper's 0.1).", min=0.0)
    cross_weight: float = option(
        0.0, "Weight of a cross-modal term -log p(w|z), z from q(z|x) (0: the paper's objective).", min=0.0
    )
    objective: str = option(
        "jmvae-kl", "The JMVAE's objective: Eq. 2 (kl) or Eq. 1 (zero).", choices=registry.OBJECTIVES
    )
    model: str = option(
        "jmvae",
        "jmvae, a baseline of the paper (vae, cvae, cmma), or the attribute classifier.",
        choices=registry.names,  # called when needed: a model registered later is a choice too
    )
    train_only: str = option(
        "all",
        "Train only this part, the rest frozen: image-decoder fine-tunes p(x|z) of an --init model, and img2attr "
        "cannot change.",
        choices=("all", *TRAINED_PARTS),
    )
    gan: bool = option(False, "Add an adversarial loss for sharper faces (JMVAE-GAN, gan.py).")
    gan_weight: float = option(0.1, "Weight of the adversarial term per pixel, against the likelihood's nats.", min=0.0)
    gan_lr: float = option(2e-4, "The discriminator's learning rate.", min=0.0, on_resume="change")
    latent_dim: int = option(128, "Dimensions of z.", min=1)
    decoder_width: float | None = option(
        None,
        "Widen the image decoder p(x|z) by this factor (1: the authors' widths). With --init of a model of "
        "another width, the decoder starts afresh on that model's encoders. Default: the --init model's, else 1.",
        above=0.0,
    )
    device: str = option(
        "auto", "Where to run: auto takes CUDA, then MPS, then the CPU.", choices=DEVICES, on_resume="machine"
    )
    precision: str = option(
        "auto", "auto: bf16 where the hardware supports it, fp32 otherwise.", choices=PRECISIONS, on_resume="change"
    )
    seed: int = option(0, "Random seed.")
    resume: bool = option(False, on_resume="run")  # its help is help_text("resume")
    init: Path | None = option(
        None, "Start from this model's weights (fine-tuning), with a fresh optimizer.", on_resume="run"
    )
    max_images: int | None = option(None, "Use at most this many images (quick runs).", min=1)
    val_fraction: float = option(
        VAL_FRACTION, "Validation share when the data has no partition file.", min=0.0, max=0.9
    )
    warmup_epochs: float = option(
        1.0, "KL warm-up: the prior KL's weight rises from 0 to 1 over this many epochs.", min=0.0
    )
    flip: bool = option(True, "Random horizontal flips (no CelebA attribute is left/right).")
    jitter: float = option(
        0.0,
        "Reframe half of each batch at random: shifted up to this share of the side, scaled up to this share "
        "and turned up to this many radians (0: off), so the model reads faces as the aligner frames them.",
        min=0.0,
        max=0.2,
    )
    compile: bool = option(
        False,
        "Compile the training step with torch.compile, replayed as CUDA graphs on a GPU (about 40 s of compiling "
        "first; docs/results.md, 'Training speed on a GPU').",
        on_resume="machine",
    )
    ema: float = option(
        0.0,
        "Validate and save a moving average of the weights with this decay per step, e.g. 0.999 (0: off).",
        min=0.0,
        max=0.99999,
        on_resume="change",  # a run may start averaging on resume, not stop (train.py)
    )
    time_limit: float | None = option(
        None,
        "Stop after this many minutes (the learning-rate schedule fits itself to it).",
        above=0.0,
        on_resume="change",
    )
    cache_dir: Path | None = option(
        None, "Where decoded images are cached.", envvar="JMVAE_CACHE_DIR", on_resume="machine"
    )
    val_images: int = option(
        5000, "Validation per epoch looks at most this many images.", cli=False, on_resume="change"
    )
    checkpoint_every: float = option(  # epochs can be a few seconds long on a GPU, and a save is ~100 MB
        60.0, "Seconds between checkpoints (the last epoch is always saved).", cli=False, on_resume="change"
    )
    progress: bool = option(True, "Show a progress bar.", cli=False, on_resume="machine")
    arch: dict = option({}, "Other JMVAEConfig fields (widths, image_size...), for small models in tests.", cli=False)

    def __post_init__(self):
        self.data = [Path(p) for p in self.data]
        self.out = Path(self.out)
        self.init = Path(self.init) if self.init is not None else None
        self.cache_dir = Path(self.cache_dir) if self.cache_dir is not None else None

    def check(self) -> None:
        """The bounds of the fields, for library callers (the command line's parser applies the same ones)."""
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None or isinstance(value, (list, dict, Path)):
                continue
            names = choices(meta)
            bad = (
                (names is not None and value not in names and f"one of {', '.join(names)}")
                or (isinstance(value, float) and not math.isfinite(value) and "a finite number")
                or ("min" in meta and value < meta["min"] and f"at least {meta['min']}")
                or ("max" in meta and value > meta["max"] and f"at most {meta['max']}")
                or ("above" in meta and value <= meta["above"] and f"more than {meta['above']}")
            )
            if bad:
                raise JmvaeError(f"{flag(f.name)} must be {bad}, not {value}")

    def to_dict(self) -> dict:
        """The options as JSON, paths absolute: a run resumed from another folder finds its data."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, Path):
                d[k] = os.path.abspath(v)
        d["data"] = [os.path.abspath(p) for p in self.data]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainOptions":
        """Options saved by to_dict, by this or an earlier version: names no longer known are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _field(name: str):
    return next(f for f in fields(TrainOptions) if f.name == name)


def default_of(name: str):
    """An option's default value."""
    return _field(name).default


def flag(name: str) -> str:
    """The command line's spelling of an option: --latent-dim."""
    return _field(name).metadata.get("flags", (f"--{name.replace('_', '-')}",))[0]


def describe_value(name: str, value) -> str:
    """An option as one would type it: --gan, --no-flip, --latent-dim 16."""
    if isinstance(value, bool):
        return flag(name) if value else f"--no-{flag(name)[2:]}"
    return f"{flag(name)} {value}"


def options_on_resume(kind: str) -> list[str]:
    """Names of the options whose on_resume is `kind` ("keep", "change" or "run")."""
    return [f.name for f in fields(TrainOptions) if f.metadata["on_resume"] == kind]


def options_that_may_change() -> list[str]:
    return options_on_resume("change") + options_on_resume("machine")


def option_on_cli(name: str) -> bool:
    """Whether the command line offers the option (some are the library's alone)."""
    return _field(name).metadata["cli"]


def help_text(name: str) -> str:
    if name == "resume":  # names the options that may change, which exist only once the class does
        changeable = ", ".join(flag(n) for n in options_that_may_change() if option_on_cli(n))
        return (
            "Continue the training saved in --out. Options not given keep the saved run's values; of those given, "
            f"only {changeable} may differ from them."
        )
    return _field(name).metadata["help"]
