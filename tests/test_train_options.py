"""TrainOptions is the one list of `jmvae train`'s options: the command is built from its fields."""

import math
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jmvae_cli import train as train_module
from jmvae_cli.cli import app
from jmvae_cli.errors import JmvaeError
from jmvae_cli.train_options import TrainOptions, flag

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def captured(monkeypatch):
    """The options `jmvae train` hands to the library, without training."""
    seen = []

    def fake_train(opts):
        seen.append(opts)
        return {}

    monkeypatch.setattr(train_module, "train", fake_train)
    return seen


def test_the_command_line_defaults_are_those_of_train_options(captured, monkeypatch):
    monkeypatch.delenv("JMVAE_CACHE_DIR")
    result = CliRunner().invoke(app, ["train", "--data", "faces"])
    assert result.exit_code == 0, result.output
    assert captured == [TrainOptions(data=[Path("faces")])]


def test_every_command_line_option_reaches_train_options(captured):
    args = [
        "train",
        "--data",
        "a",
        "--data",
        "b",
        "-o",
        "run",
        "--epochs",
        "3",
        "--model",
        "cvae",
        "--no-flip",
        "--objective",
        "jmvae-zero",
        "--precision",
        "fp32",
        "--time-limit",
        "1.5",
        "--latent-dim",
        "7",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    opts = captured[0]
    assert opts.data == [Path("a"), Path("b")] and opts.out == Path("run") and opts.epochs == 3
    assert (opts.model, opts.objective, opts.precision, opts.flip) == ("cvae", "jmvae-zero", "fp32", False)
    assert (opts.time_limit, opts.latent_dim) == (1.5, 7)
    result = CliRunner().invoke(app, ["train", "--data", "a", "--model", "gpt"])
    assert result.exit_code == 2 and "gpt" in result.stderr


def test_help_shows_every_option_of_the_command_line():
    help_text = CliRunner().invoke(app, ["train", "--help"]).stdout
    for f in fields(TrainOptions):
        assert (flag(f.name) in help_text) == f.metadata["cli"], f.name


def test_library_callers_get_the_same_bounds():
    with pytest.raises(JmvaeError, match="--epochs must be at least 1"):
        TrainOptions(data=[Path("a")], epochs=0).check()
    with pytest.raises(JmvaeError, match="--model must be one of jmvae, vae"):
        TrainOptions(data=[Path("a")], model="gpt").check()
    with pytest.raises(JmvaeError, match="--lr must be a finite number, not nan"):
        TrainOptions(data=[Path("a")], lr=math.nan).check()


def test_the_command_line_does_not_import_torch():
    # the choices of `jmvae train` come from choices.py, so `jmvae --help` need not load torch
    code = "import sys, jmvae_cli.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
