"""Nothing lost, never a traceback (issue 13) for attr2img, edit and figure: write failures, huge grids, infinite
and out-of-range numbers, and the input photo that must never be overwritten."""

import contextlib
import inspect
import json
import math
import os
import typing

import numpy as np
import pytest
import typer
from PIL import Image

from jmvae_cli import cli, images
from tests.conftest import fails, run
from tests.model_fixtures import tiny_weights, weights_env, write_photo  # noqa: F401 (fixtures)


@pytest.fixture
def photo(tmp_path):
    return write_photo(tmp_path / "photo.png", 120, 100, seed=3)


WRITERS = {  # each command that writes an image, minus its -o
    "attr2img": lambda photo: ["attr2img", "--set", "Smiling"],
    "edit": lambda photo: ["edit", photo, "--no-detect", "--set", "Smiling", "--force"],
    "figure": lambda photo: ["figure", "edit", photo, "--no-detect", "--size", "48"],
}


# ----------------------------------------------------------------------------- 3: write failures


@pytest.mark.parametrize("command", WRITERS)
def test_output_naming_a_folder_is_one_line(weights_env, photo, tmp_path, command):
    folder = tmp_path / "taken.png"
    folder.mkdir()
    fails(run(*WRITERS[command](photo), "-o", folder), str(folder), "is a folder")
    fails(run(*WRITERS[command](photo), "-o", tmp_path), str(tmp_path), "is a folder")  # no extension
    assert folder.is_dir() and not any(folder.iterdir())


@pytest.mark.parametrize("command", WRITERS)
def test_unwritable_output_folder_is_one_line(weights_env, photo, tmp_path, monkeypatch, command):
    # root writes into read-only folders anyway: refuse the temporary file the way the OS would
    @contextlib.contextmanager
    def refused(path):
        raise PermissionError(13, "Permission denied", str(path))
        yield  # pragma: no cover

    monkeypatch.setattr(images, "replacing", refused)
    out = tmp_path / "out.png"
    r = run(*WRITERS[command](photo), "-o", out)
    # figure edit prints the inferred attributes before it writes
    fails(r, str(out), "cannot write", "Permission denied", after_report=command == "figure")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_for_real(weights_env, photo, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        fails(run("attr2img", "-o", locked / "a.png"), "a.png", "cannot write", "Permission denied")
    finally:
        locked.chmod(0o755)


# ----------------------------------------------------------------------------- 7: --samples


def test_attr2img_samples_beyond_one_grid_are_a_usage_error(weights_env, tmp_path):
    # 30,000 faces at 64 px would make an 11,484 px square grid (132 Mpx): refused before a face is drawn
    r = fails(run("attr2img", "--samples", 30000, "-o", tmp_path / "a.png"), "--samples 30,000", code=2)
    assert "at most 20,448 samples" in r.stderr and not (tmp_path / "a.png").exists()
    fails(run("attr2img", "--samples", 100, "--size", 2048, "-o", tmp_path / "a.png"), "at most 19 samples", code=2)


def test_figure_samples_beyond_one_sheet_are_a_usage_error(weights_env, tmp_path):
    r = run("figure", "faces", "--samples", 100000, "-o", tmp_path / "f.png")
    fails(r, "--samples 100,000", "at most", code=2)


# ----------------------------------------------------------------------------- 8: infinite and out-of-range numbers


@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "-inf", "11"])
@pytest.mark.parametrize("command", WRITERS)
def test_strength_must_be_finite_and_at_most_ten(weights_env, photo, tmp_path, command, value):
    r = run(*WRITERS[command](photo), "--strength", value, "-o", tmp_path / "x.png")
    fails(r, "--strength", code=2)
    assert not (tmp_path / "x.png").exists()


def _float_options(app):
    """(command, parameter, its typer.Option) for every float option of every command, from their signatures."""
    for command in app.registered_commands:
        for name, param in inspect.signature(command.callback).parameters.items():
            if typing.get_origin(param.annotation) is typing.Annotated:
                kind, *extra = typing.get_args(param.annotation)
                for info in extra:
                    if kind in (float, float | None) and isinstance(info, typer.models.OptionInfo):
                        yield command.callback.__name__, name, info
    for group in app.registered_groups:
        yield from _float_options(group.typer_instance)


def test_every_float_option_refuses_what_is_not_a_finite_number():
    # some versions of Typer and Click let NaN through min= and max=, every comparison with it being false
    options = list(_float_options(cli.app))
    assert {"strength", "zeta", "threshold", "feather", "lr"} <= {name for _, name, _ in options}
    for command, name, info in options:
        assert info.callback is not None, (command, name)
        for bad in (math.nan, math.inf):
            with pytest.raises(typer.BadParameter, match="not a finite number"):
                info.callback(bad)
        assert info.callback(0.5) == 0.5, (command, name)


@pytest.mark.parametrize("value", ["inf", "1e400", "nan"])
def test_zeta_must_be_finite(weights_env, tmp_path, value):
    fails(run("attr2img", "--samples", 1, "--zeta", value, "-o", tmp_path / "a.png"), "--zeta", code=2)
    fails(run("figure", "faces", "--zeta", value, "-o", tmp_path / "f.png"), "--zeta", code=2)


@pytest.mark.parametrize("spec", ["Smiling=inf", "Smiling=nan", "Smiling=1e400", "Smiling=-2", "Smiling=12"])
def test_own_strengths_are_checked_too(weights_env, photo, tmp_path, spec):
    fails(run("attr2img", "--set", spec, "-o", tmp_path / "a.png"), spec, code=2, one_line=True)
    fails(run("edit", photo, "--no-detect", "--set", spec, "-o", tmp_path / "e.png"), spec, code=2, one_line=True)


@pytest.mark.parametrize("soft", [[], ["--soft"]])
@pytest.mark.parametrize(
    "record, words",
    [
        ('{"attributes": {"Smiling": NaN}}', ["Smiling = nan", "not a finite number"]),
        ('{"attributes": {"Smiling": 1e400}}', ["Smiling = inf", "not a finite number"]),
        ("file,Smiling\na.jpg,-inf\n", ["Smiling = -inf", "not a finite number"]),
        ('{"attributes": {"Smiling": 7}}', ["Smiling = 7", "not a probability"]),
        ('{"attributes": {"Male": -3}}', ["Male = -3", "not a probability"]),
        ("file\tYoung\na.jpg\t-1\n", ["Young = -1", "not a probability"]),
    ],
)
def test_attrs_values_must_be_probabilities(weights_env, tmp_path, record, words, soft):
    out = tmp_path / "a.png"
    fails(run("attr2img", "--attrs", "-", *soft, "-o", out, input=record), "<stdin>", *words)
    assert not out.exists()


def test_attrs_at_the_ends_of_the_range_are_fine(weights_env, tmp_path):
    record = json.dumps({"attributes": {"Smiling": 1.0, "Male": 0, "Young": 0.5}})
    r = run("attr2img", "--attrs", "-", "--soft", "-o", tmp_path / "a.png", input=record)
    assert r.exit_code == 0, r.output


# ----------------------------------------------------------------------------- 9: the input is never overwritten


def test_edit_refuses_to_overwrite_its_input_even_with_force(weights_env, photo, tmp_path):
    original = photo.read_bytes()
    link = tmp_path / "link.png"
    link.symlink_to(photo)
    hard = tmp_path / "hard.png"
    os.link(photo, hard)
    spelled = tmp_path / "sub" / ".." / "photo.png"
    (tmp_path / "sub").mkdir()
    for target in (photo, link, hard, spelled):
        r = run("edit", photo, "--no-detect", "--set", "Smiling", "-o", target, "--force")
        fails(r, "is the input image")
    r = run("edit", link, "--no-detect", "--set", "Smiling", "-o", photo, "--force")  # the input given as a link
    fails(r, "is the input image")
    assert photo.read_bytes() == original and link.is_symlink()
    # --force still replaces an output that is not the input
    out = tmp_path / "out.png"
    out.write_bytes(b"old")
    assert run("edit", photo, "--no-detect", "--set", "Smiling", "-o", out, "--force").exit_code == 0
    assert Image.open(out).size == (120, 100) and np.asarray(Image.open(out)).any()
