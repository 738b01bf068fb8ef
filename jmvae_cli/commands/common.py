"""What the commands share: the options defined once (Annotated), loading the model, writing images, and stdout
errors as one line."""

import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from jmvae_cli import editing, formats, runtime
from jmvae_cli.attributes import MAX_STRENGTH
from jmvae_cli.console import console
from jmvae_cli.errors import JmvaeError


def choices(name: str, values) -> type[Enum]:
    """An option's choices as the Enum Typer wants, made from the library's own list so that it is never repeated."""
    return Enum(name, {v: v for v in values}, type=str)


def finite(value: float | None) -> float | None:
    """A float option's callback: some versions of Typer and Click let NaN through min= and max= (every comparison
    with it is false), and the library would then fail far from the option's name."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def number(*names: str, min: float | None = None, max: float | None = None, help: str) -> typer.models.OptionInfo:
    """A float option within [min, max] that refuses NaN and inf too."""
    return typer.Option(*names, min=min, max=max, callback=finite, help=help)


Device = choices("Device", runtime.DEVICES)
Format = choices("Format", formats.FORMATS)
Method = choices("Method", editing.RULES)


DeviceOpt = Annotated[
    Device, typer.Option("--device", help="Where to run: auto takes CUDA, then MPS, then the CPU.", show_default=True)
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option("--weights", envvar="JMVAE_WEIGHTS", help="A jmvae .safetensors model (default: the bundled model)."),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Say which device and weights are used.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]

# Options of the translation commands (img2attr, attr2img, edit, attributes).
FormatOpt = Annotated[
    Format | None,
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
    number(
        "--strength",
        min=0.0,
        max=MAX_STRENGTH,
        help="Chosen attributes are set to 0.5 +- strength/2: 1 is plain on/off, 2 the paper's +-2 in its +-1 coding.",
    ),
]
EditStrengthOpt = Annotated[
    str,
    typer.Option(
        "--strength",
        metavar="auto|S",
        help="auto: each attribute's strength as calibrated in the weights (`jmvae calibrate`) for the regress "
        "rule, else 2; a number above 0, up to 10, sets every chosen attribute to 0.5 +- S/2 (1 is plain on/off, 2 the "
        "paper's +-2). Name=S in --set / --unset overrides it for one attribute.",
    ),
]
MethodOpt = Annotated[
    Method | None,
    typer.Option(
        "--method",
        help="How the change is made (editing.py): paper is x + x'_mean - x_mean (Suzuki et al.); latent moves the "
        "face's own latent mean of q(z|x) by mu_w(w') - mu_w(w); regress moves it along the attribute's own "
        "direction, only where the attribute shows. Default: regress where the weights carry its constants "
        "(`jmvae calibrate`), else paper.",
        show_default=False,
    ),
]


def parse_strength(text: str) -> float | None:
    """An edit's --strength: auto -> None; a number above 0 up to MAX_STRENGTH -> itself (0 would give the changes no
    direction: attributes.check_directions); anything else is a usage error."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither auto nor a number", param_hint="'--strength'") from None
    if not 0 < value <= MAX_STRENGTH:
        raise typer.BadParameter(f"{text} is not above 0 and at most {MAX_STRENGTH:g}", param_hint="'--strength'")
    return value


SoftOpt = Annotated[
    bool,
    typer.Option("--soft", help="Feed inferred attribute probabilities to q(z|w) as they are, not thresholded at 0.5."),
]
OutputOpt = Annotated[
    str | None,
    typer.Option("--output", "-o", help="Image file to write (.png, .jpg, .webp); - writes PNG to stdout."),
]
SizeOpt = Annotated[
    int | None, typer.Option("--size", min=8, max=2048, help="Upscale each 64x64 face to this many pixels.")
]
AllFacesOpt = Annotated[bool, typer.Option("--all-faces", help="Use every face found, not just the largest.")]
NoDetectOpt = Annotated[
    bool, typer.Option("--no-detect", help="The image already is a face crop: use its centre square as the face.")
]
RefineOpt = Annotated[
    bool,
    typer.Option(
        "--refine",
        help="Cut each found face again at the size the model reconstructs best: more accurate, five model passes "
        "per face slower.",
    ),
]


class Base(str, Enum):
    random = "random"
    zeros = "zeros"


def load_translator_searching(
    sources: list[str], all_faces: bool, detect: bool, weights: Path | None, device: Device, verbose: bool, **kw
):
    """load_translator, and the faces of the first of `sources` found meanwhile (faces.SearchAhead, on every core
    but the one loading the model) where there are enough files to search: the translator and those searches, for
    the library's `searched`."""
    from jmvae_cli import faces
    from jmvae_cli.cpus import available_cpus

    files = [s for s in sources if s != "-" and Path(s).is_file()] if detect else []
    spare = available_cpus() - 1 if len(files) >= faces.SEARCH_AHEAD_MIN else 0
    with faces.SearchAhead(files, all_faces=all_faces, workers=spare) as ahead:
        import torch

        # torch's threads kept off the searchers' cores: a thread waiting for one that shares a core slows every
        # operation of the load many times over
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads - ahead.workers))
        try:
            tr = load_translator(weights, device, verbose, **kw)
        finally:
            torch.set_num_threads(threads)
        return tr, ahead.stop()


def load_translator(weights: Path | None, device: Device, verbose: bool, batch: bool = False):
    from jmvae_cli.translate import Translator

    tr = Translator.from_weights(weights, device.value)
    if verbose:
        how = tr.precision.name if batch else "fp32"
        console.print(
            f"weights {tr.weights} ({len(tr.attr_names)} attributes), device {tr.device} ({how})",
            highlight=False,
            markup=False,
        )
    return tr


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def note_face_choice(file: str, crop) -> None:
    """Where a photo held several faces and one was used, say which (stderr), so that a wrong pick is noticed."""
    if crop is not None and crop.found > 1:
        b, name = crop.box, "<stdin>" if file == "-" else file  # as errors name it
        console.print(
            f"{name}: {crop.found} faces found, used the one at x {b.x:.0f}, y {b.y:.0f}, {b.w:.0f}x{b.h:.0f} px "
            "(--all-faces uses every one)",
            highlight=False,
            markup=False,  # file names hold brackets: "old [draft]/x.jpg"
            soft_wrap=True,
        )


def print_error(message: str) -> None:
    # soft_wrap: one line however narrow the terminal (or 80 columns when stderr is not one)
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


class OutputError(JmvaeError):
    """A stream that cannot take the data: a full disk, a file-size limit."""


class OutputClosed(Exception):
    """The reader went away (`| head`): not an error to report, the command just stops."""


class GuardedStream:
    """A stream whose write errors become an OutputError naming it, one line instead of a traceback, and a closed
    pipe OutputClosed, which no library code mistakes for a failed write of its own."""

    def __init__(self, stream, name: str):
        self._stream, self._name = stream, name

    def __getattr__(self, attr):
        return getattr(self._stream, attr)

    @property
    def buffer(self) -> "GuardedStream":
        return GuardedStream(self._stream.buffer, self._name)

    def write(self, data):
        return self._guarded(self._stream.write, data)

    def flush(self):
        return self._guarded(self._stream.flush)

    def _guarded(self, call, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            self._discard()
            raise OutputClosed from None
        except OSError as e:
            self._discard()
            raise OutputError(f"cannot write to {self._name} ({e.strerror or e})") from None

    def _discard(self) -> None:
        # What is still buffered for the stream cannot be written either: point its descriptor at /dev/null, or
        # the interpreter's last flush would print a traceback of its own.
        try:
            fd = self._stream.fileno()
        except (OSError, ValueError):  # not a real file (a test's stream)
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


def check_refine(refine: bool, no_detect: bool) -> None:
    if refine and no_detect:
        raise typer.BadParameter(
            "--refine cuts found faces again; with --no-detect the image itself is the face", param_hint="'--refine'"
        )


def check_image_output(output: str | None) -> None:
    if output == "-" and stdout_is_tty():
        raise typer.BadParameter(
            "refusing to write an image to a terminal: redirect stdout or give a file", param_hint="'-o'"
        )
    if output not in (None, "-"):  # a bad -o (no such folder, a folder, an unknown extension) before the work
        from jmvae_cli import images

        images.check_output(output)


def write_output_image(img, output: str, text: dict[str, str] | None = None) -> None:
    from jmvae_cli import images

    if output == "-":
        stream = sys.stdout.buffer
        images.write_image(img, stream, text=text)
        stream.flush()
    else:
        images.write_image(img, Path(output), text=text)
        console.print(f"wrote {output}", highlight=False, markup=False, soft_wrap=True)


def read_stdin_bytes() -> bytes:
    return sys.stdin.buffer.read()


PROGRESS_FROM = 20  # files from which a command over many shows a progress bar


@contextmanager
def progress(label: str, total: int) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr for `total` files, shown while the block runs where stderr is a terminal and there
    are at least PROGRESS_FROM files; yields advance(), which counts one more file done (without a bar, nothing)."""
    if total < PROGRESS_FROM or not console.is_terminal:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True
    )
    task = bar.add_task(label, total=total)
    with bar:
        yield lambda: bar.advance(task)
