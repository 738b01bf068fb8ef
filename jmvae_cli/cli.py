"""The `jmvae` command line: parse, call the library, print. Data goes to stdout, everything else to stderr.

Exit codes: 0 ok, 1 failure (one clear line, no traceback), 2 usage error, 130 interrupted.
"""

import sys
from typing import Annotated

import typer
from typer.core import TyperGroup

from jmvae_cli import __version__
from jmvae_cli.commands import (
    attr2img,
    attributes,
    calibrate,
    common,
    edit,
    evaluate,
    figure,
    img2attr,
    train,
)
from jmvae_cli.console import console
from jmvae_cli.errors import JmvaeError


class Group(TyperGroup):
    """Turns the library's expected errors, and a stdout that cannot take the data, into one line on stderr and
    exit 1, for every command at once; a closed pipe ends the command quietly."""

    def invoke(self, ctx):
        stdout = sys.stdout
        sys.stdout = common.GuardedStream(stdout, "stdout")
        try:
            try:
                return super().invoke(ctx)
            finally:
                sys.stdout.flush()  # now, so that a full disk is an error line and not a traceback at exit
        except JmvaeError as e:
            common.print_error(str(e))
            raise typer.Exit(e.exit_code) from None
        except common.OutputClosed:
            raise typer.Exit(1) from None  # quietly, as Click, and Python's own advice, end on a closed pipe
        except KeyboardInterrupt:
            console.print("[yellow]interrupted")
            raise typer.Exit(130) from None
        finally:
            sys.stdout = stdout


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


# Heavy imports (torch, cv2, the model) happen inside the commands: `jmvae --help` and usage errors stay instant,
# and a cold `jmvae img2attr` costs little more than importing torch.
for command in (
    train.train,
    img2attr.img2attr,
    attr2img.attr2img,
    edit.edit,
    attributes.attributes,
    evaluate.evaluate,
    calibrate.calibrate,
    figure.figure,
):
    app.command()(command)


def main():
    app()
