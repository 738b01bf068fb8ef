"""Models of other sizes than 64 px run end to end: sizes and framing come from the model's config."""

import json

import numpy as np
import pytest
from PIL import Image

from jmvae_cli import translate
from jmvae_cli.checkpoint import save_model
from tests import conftest
from tests.model_fixtures import ATTRS, tiny_model, write_photo


def run(*args, input=None):
    r = conftest.run(*args, input=input)
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module", params=[32, 128])
def sized_weights(request, tmp_path_factory):
    """A tiny JMVAE for faces of another size, with its preprocessing saying so."""
    size = request.param
    path = tmp_path_factory.mktemp(f"weights{size}") / "tiny.safetensors"
    meta = {"attr_names": ATTRS, "preprocess": {"size": size, "celeba_crop": 148 / 178}}
    save_model(path, tiny_model(image_size=size), meta)
    return size, path


def test_every_translation_command_at_the_models_size(sized_weights, tmp_path, monkeypatch):
    size, weights = sized_weights
    monkeypatch.setenv("JMVAE_WEIGHTS", str(weights))
    assert translate.Translator.from_weights(weights, "cpu").image_size == size
    photo = write_photo(tmp_path / "photo.png", 150, 100, seed=1)

    records = json.loads(run("img2attr", photo, "--no-detect", "-f", "json").stdout)
    assert set(records[0]["attributes"]) == set(ATTRS)
    attrs = json.dumps(records)

    run("attr2img", "--set", "Smiling", "--samples", 3, "-o", tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").size == (2 * size + 2, 2 * size + 2)
    run("attr2img", "--attrs", "-", "--set", "Male=3", "-o", tmp_path / "b.png", input=attrs)
    assert Image.open(tmp_path / "b.png").size == (size, size)

    run("edit", photo, "--no-detect", "--set", "Smiling", "-o", tmp_path / "e.png")
    edited = np.asarray(Image.open(tmp_path / "e.png")).astype(int)
    assert edited.shape == (100, 150, 3)
    before = np.asarray(Image.open(photo)).astype(int)
    assert np.array_equal(edited[:, :25], before[:, :25]) and (edited[:, 25:125] != before[:, 25:125]).any()
    run("edit", photo, "--no-detect", "--set", "Smiling", "--crop-only", "-o", tmp_path / "c.png")
    assert Image.open(tmp_path / "c.png").size == (size, size)
    run("edit", photo, "--no-detect", "--unset", "Young", "--show", "-o", tmp_path / "s.png")
    assert Image.open(tmp_path / "s.png").size == (4 * size + 6, size)

    for kind in ("faces", "pca"):
        run("figure", kind, "--samples", 1, "--bases", 10, "-o", tmp_path / f"{kind}.png")
    r = run("figure", "edit", photo, "--no-detect", "-o", tmp_path / "fig-edit.png")
    assert "inferred" in r.stderr and Image.open(tmp_path / "fig-edit.png").height > 96  # 96 px tiles and labels


def test_evaluate_prepares_the_data_at_the_models_size(sized_weights, tmp_path):
    size, weights = sized_weights
    data = conftest.write_generic(tmp_path, 40, ATTRS)
    r = run("evaluate", "--data", data, "--weights", weights, "--val-fraction", "0.3", "-f", "json",
            "--skip", "attr2img", "--skip", "edit", "--k", 2)  # fmt: skip
    report = json.loads(r.stdout)
    assert report["images"] > 0 and set(report["img2attr"]["q_x"]["per_attribute"]) == set(ATTRS)
    assert report["likelihood"]  # bounds over size x size images: the decoder's output matched the data
