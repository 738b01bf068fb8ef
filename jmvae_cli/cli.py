"""The `jmvae` command line: parse, call the library, print. Data goes to stdout, everything else to stderr.

Exit codes: 0 ok, 1 failure (one clear line, no traceback), 2 usage error, 130 interrupted.
"""

from typing import Annotated

import typer
from typer.core import TyperGroup

from jmvae_cli import __version__
from jmvae_cli.commands import attr2img, attributes, edit, evaluate, figure, img2attr, train
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




# Heavy imports (torch, cv2, the model) happen inside the commands: `jmvae --help` and usage errors stay instant,
# and a cold `jmvae img2attr` costs little more than importing torch.
for command in (
    train.train,
    img2attr.img2attr,
    attr2img.attr2img,
    edit.edit,
    attributes.attributes,
    evaluate.evaluate,
    figure.figure,
):
    app.command()(command)


def main():
    app()
