"""The paper's figures: their layout, that their tiles are what attr2img and edit make, and `jmvae figure`."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from jmvae_cli import attributes, editing, figures, translate
from jmvae_cli.checkpoint import save_model
from jmvae_cli.model import JMVAE
from tests.conftest import run
from tests.model_fixtures import (  # noqa: F401 (fixtures)
    ATTRS,
    PREPROCESS,
    photo_array,
    save_tiny,
    tiny_model,
    tiny_weights,
    weights_env,
    write_photo,
)


@pytest.fixture(scope="module")
def tr(tiny_weights):
    return translate.Translator.from_weights(tiny_weights, "cpu", "fp32")


def tile_at(
    img: Image.Image, row: int, col: int, n_rows: int, n_cols: int, tile: int, footer: bool = False
) -> np.ndarray:
    """The (tile, tile, 3) pixels of one tile, found from the bottom-right corner of the tile block."""
    width, height = img.size
    bottom = height - (figures.FOOTER_LINES * figures._line_height(tile) + 6 if footer else 0)
    x0 = width - n_cols * tile - (n_cols - 1) * figures.GAP + col * (tile + figures.GAP)
    y0 = bottom - n_rows * tile - (n_rows - 1) * figures.GAP + row * (tile + figures.GAP)
    return np.array(img)[y0 : y0 + tile, x0 : x0 + tile]


def test_sheet_size_makes_room_for_labels():
    bare = figures.sheet_size(2, 3, 64, col_labels=False)
    assert bare == (3 * 64 + 2 * figures.GAP, 2 * 64 + figures.GAP)
    short = figures.sheet_size(2, 3, 64, ["a", "b"])
    long = figures.sheet_size(2, 3, 64, ["a", "a much longer row label"])
    assert short[0] == bare[0] + figures.ROW_LABEL_WIDTH and long[0] > short[0]
    assert short[1] > bare[1]  # the column labels' header
    assert figures.sheet_size(2, 3, 64, footer_lines=2)[1] > figures.sheet_size(2, 3, 64)[1]


def test_defaults_keep_the_specs_the_model_can_draw():
    assert figures.defaults(("Male", "-Young", "~Smiling", "Bald", "not Eyeglasses"), ATTRS) == [
        "Male", "-Young", "~Smiling", "not Eyeglasses"
    ]  # fmt: skip


def test_faces_figure_layout_and_tiles(tr):
    columns = ["Male", "-Male", "Smiling"]
    img = figures.faces_figure(tr, columns, samples=2, zeta=0.5, seed=3, tile=64)
    n_rows, n_cols = 3, 4  # mean + 2 samples; Base + 3 columns
    assert img.size == figures.sheet_size(n_rows, n_cols, 64, ["mean", "sample 1", "sample 2"])
    assert img.width > n_cols * 64 + (n_cols - 1) * figures.GAP and img.height > n_rows * 64  # room for labels
    base = translate.base_attributes("random", len(ATTRS), 3)
    expected = translate.average_face(tr, base, 2, 0.5, 3)  # (3, 64, 64, 3): what attr2img draws for Base
    for r in range(n_rows):
        assert np.array_equal(tile_at(img, r, 0, n_rows, n_cols, 64), expected[r])
    w = base.copy()
    w[1] = 0.5 - 1.0  # "-Male" at strength 2
    assert np.array_equal(tile_at(img, 1, 2, n_rows, n_cols, 64), translate.average_face(tr, w, 2, 0.5, 3)[1])
    big = figures.faces_figure(tr, columns, samples=1, tile=96)
    assert big.size == figures.sheet_size(2, 4, 96, ["mean", "sample 1"])
    with pytest.raises(attributes.AttributeSpecError, match="flipping"):
        figures.faces_figure(tr, ["~Male"])
    own = figures.faces_figure(tr, ["Male=4"], samples=1, seed=3, tile=64)
    w = base.copy()
    w[1] = 0.5 + 2.0  # Male at its own strength 4
    assert np.array_equal(tile_at(own, 0, 1, 2, 2, 64), translate.average_face(tr, w, 1, 0.5, 3)[0])


def test_pca_points(tr):
    points, labels, explained, names = figures.pca_points(tr, ["Male", "Smiling", "Young"], n_bases=30, seed=1)
    assert points.shape == (90, 2) and labels.tolist() == [0] * 30 + [1] * 30 + [2] * 30
    assert names == ["Male", "Smiling", "Young"]
    assert np.allclose(points.mean(0), 0, atol=1e-9)  # principal components of centred means
    assert explained[0] >= explained[1] > 0 and explained.sum() <= 1 + 1e-9
    assert points[:, 0].var() >= points[:, 1].var()
    assert abs(np.corrcoef(points.T)[0, 1]) < 1e-6  # the components are uncorrelated


def test_pca_figure_has_a_legend_colour_per_attribute(tr):
    img = figures.pca_figure(tr, ["Male", "Smiling"], n_bases=20)
    assert img.size == (720, 540)
    colours = {tuple(c) for c in np.array(img).reshape(-1, 3)}
    assert figures.PALETTE[0] in colours and figures.PALETTE[1] in colours and figures.PALETTE[2] not in colours


def test_pca_refuses_what_it_cannot_tell_apart(tr, tmp_path):
    for attrs, said in [
        (["Male", "male"], "Male is given twice"),
        ([*ATTRS, *["Male"] * 11][: len(figures.PALETTE) + 1], f"at most {len(figures.PALETTE)} attributes"),
    ]:
        with pytest.raises(attributes.AttributeSpecError, match=said):
            figures.pca_points(tr, attrs, n_bases=4)
    other = translate.Translator.from_weights(save_tiny(tmp_path / "o.safetensors", ["Foo", "Bar"]), "cpu", "fp32")
    with pytest.raises(attributes.AttributeSpecError, match="choose some with --attr"):
        figures.pca_points(other, [], n_bases=4)
    one_dim = JMVAE(dataclasses.replace(tiny_model().cfg, latent_dim=1)).eval()
    save_model(tmp_path / "z1.safetensors", one_dim, {"attr_names": ATTRS, "preprocess": PREPROCESS})
    flat = translate.Translator.from_weights(tmp_path / "z1.safetensors", "cpu", "fp32")
    points, _, explained, _ = figures.pca_points(flat, ["Male"], n_bases=4)  # one dimension: one component
    assert points.shape == (4, 2) and not points[:, 1].any() and explained[1] == 0


def test_edit_figure(tr):
    face = photo_array(64, 64, seed=4)
    img, probs = figures.edit_figure(tr, face, ["Smiling", "+Male", "-Young"], tile=64)
    assert img.size == figures.sheet_size(1, 4, 64, footer_lines=figures.FOOTER_LINES)
    assert probs.shape == (len(ATTRS),)
    assert np.array_equal(tile_at(img, 0, 0, 1, 4, 64, footer=True), face)
    smiling = bool(probs[0] >= 0.5)  # a bare name flips what was inferred
    # each tile is exactly what `jmvae edit --crop-only` writes for that change
    x = editing.to_input([face])
    edit = editing.edit(tr.model, x, {0: -0.5 if smiling else 1.5})
    assert np.array_equal(tile_at(img, 0, 1, 1, 4, 64, footer=True), edit.pixels("result")[0])
    edit = editing.edit(tr.model, x, {1: 1.5})
    assert np.array_equal(tile_at(img, 0, 2, 1, 4, 64, footer=True), edit.pixels("result")[0])


# ----------------------------------------------------------------------------- jmvae figure


def test_figure_commands(weights_env, tmp_path):
    out = tmp_path / "faces.png"
    r = run("figure", "faces", "-o", out, "--attr", "Male", "--attr=-Male", "--samples", "2", "--size", "64")
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == figures.sheet_size(3, 3, 64, ["mean", "sample 1", "sample 2"])
    r = run("figure", "faces", "-o", out)
    assert r.exit_code == 0, r.output
    rows = ["mean"] + [f"sample {r}" for r in range(1, 5)]
    assert Image.open(out).size == figures.sheet_size(5, 1 + 7, 96, rows)  # Base and the 7 defaults the model has

    r = run("figure", "pca", "-o", tmp_path / "pca.png", "--bases", "10", "--attr", "Male", "--attr", "Smiling")
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "pca.png").size == (720, 540)

    photo = write_photo(tmp_path / "photo.png", 64, 64, seed=2)
    r = run("figure", "edit", photo, "-o", tmp_path / "edit.png", "--no-detect", "--size", "64")
    assert r.exit_code == 0, r.output
    assert "inferred:" in r.stderr
    n_cols = 1 + 5  # the original and the default edits the model has
    size = figures.sheet_size(1, n_cols, 64, footer_lines=figures.FOOTER_LINES)
    assert Image.open(tmp_path / "edit.png").size == size


def test_figure_errors(weights_env, tmp_path):
    assert run("figure", "edit", "-o", tmp_path / "x.png").exit_code == 2  # no photo
    assert run("figure", "faces", "photo.png", "-o", tmp_path / "x.png").exit_code == 2
    assert run("figure", "faces").exit_code == 2  # no -o
    r = run("figure", "faces", "-o", tmp_path / "x.png", "--attr", "Bald")
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert "Bald" in r.stderr and not (tmp_path / "x.png").exists()
